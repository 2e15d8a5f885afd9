//! `tessera preflight CONFIG`: a pass/fail checklist to read before spending a cluster on a run.
//!
//! The checks, in order (each later one needs what the earlier ones found; when a prerequisite
//! failed, a check is reported as skipped, never as passed):
//! 1. **config** — the YAML validates; the global batch splits over the devices;
//! 2. **model** — the architecture resolves (fields or a pretrained `config.json`) and covers
//!    `max_seq_len`;
//! 3. **tokenizer** — `tokenizer.name` loads and its vocabulary fits `model.vocab_size`;
//! 4. **train data** — the loader opens as the trainer opens it, its first batch reads with
//!    every id inside the vocabulary, and an epoch holds at least one global batch;
//!    `max_duration` is converted to steps and epochs (warning above `max_epochs`);
//! 5. **eval data** — every eval loader opens;
//! 6. **save folder** — writable, with disk for the checkpoints the run keeps at once
//!    ([`checks::checkpoints_on_disk`], sizes from [`checks::checkpoint_bytes`]), and no other
//!    run's checkpoints in the way;
//! 7. **forward/backward** — the model is built with the run's weights and one real step
//!    (forward, backward, clip, update) runs on one real microbatch; its time gives the step
//!    time (× microbatches per step) and the host's peak RSS is read;
//! 8. **memory** — `plan::memory_estimate` for one microbatch against `--device-memory`, or the
//!    host RAM when the device is the host;
//! 9. **autoresume** — on, with a save interval inside the run;
//! 10. **checkpoint interval** — the expected work lost to failures (formula in [`checks`]).

pub mod checks;
pub mod system;
pub mod trial;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::checkpoint::CheckpointStore;
use crate::config::{LoadedConfig, MicroBatchSize, TrainConfig};
use crate::finetune::{FinetuneTokenizer, tokenizer_file};
use crate::optim::OptimizerName;
use crate::plan::{MemoryInput, OptimizerStateKind, memory_estimate};
use checks::{FailureBudget, FailureInput, SaveFacts};
use trial::Loader;

pub const CONFIG: &str = "config";
pub const MODEL: &str = "model";
pub const TOKENIZER: &str = "tokenizer";
pub const TRAIN_DATA: &str = "train data";
pub const EVAL_DATA: &str = "eval data";
pub const SAVE_FOLDER: &str = "save folder";
pub const FORWARD_BACKWARD: &str = "forward/backward";
pub const MEMORY: &str = "memory";
pub const AUTORESUME: &str = "autoresume";
pub const CHECKPOINT_INTERVAL: &str = "checkpoint interval";

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Runs, but something deserves a look.
    Warn,
    /// Would not run, or would run badly.
    Fail,
    /// Not checked, because something it needs failed or was switched off.
    Skip,
}

impl Status {
    /// The checklist mark.
    pub fn mark(&self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skip => "-",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    pub fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self { name, status, detail: detail.into() }
    }

    fn skip(name: &'static str, why: &str) -> Self {
        Self::new(name, Status::Skip, format!("skipped: {why}"))
    }
}

/// Settings that come from the command line.
#[derive(Debug, Clone)]
pub struct PreflightOptions {
    /// The YAML file (its stem names the run when the config does not, as for `train`).
    pub config_path: Option<PathBuf>,
    /// The run folder (default `runs/<run_name>`), where the default save folder lives.
    pub run_dir: Option<PathBuf>,
    /// For the report: "cpu (flex)", "cuda:0"…
    pub device_label: String,
    /// Whether the device's memory is the host's RAM (CPU backends).
    pub device_is_host: bool,
    /// Memory of one device in bytes (`--device-memory`); default: host RAM on the host.
    pub device_memory: Option<u64>,
    /// Devices of the launch: splits the global batch, and scales the failure rate.
    pub world_size: usize,
    /// Step time on the target hardware, replacing the one measured here (seconds).
    pub step_time_s: Option<f64>,
    /// Expected failures per device per day (default 1/1000).
    pub failures_per_device_day: f64,
    /// Warn when checkpoints are further apart than this (default 1 h).
    pub max_save_interval_s: f64,
    /// Warn when one failure loses more than this share of the run (default 2 %).
    pub max_loss_per_failure: f64,
    /// Warn when `max_duration` repeats the data more than this many times (default 4).
    pub max_epochs: f64,
    /// Run the forward/backward check (it builds the model and takes one step).
    pub run_step: bool,
}

impl Default for PreflightOptions {
    fn default() -> Self {
        Self {
            config_path: None,
            run_dir: None,
            device_label: "cpu".into(),
            device_is_host: true,
            device_memory: None,
            world_size: 1,
            step_time_s: None,
            failures_per_device_day: 1e-3,
            max_save_interval_s: 3600.0,
            max_loss_per_failure: 0.02,
            max_epochs: 4.0,
            run_step: true,
        }
    }
}

/// The numbers behind the verdicts (absent where a check could not compute them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Facts {
    pub params: Option<u64>,
    pub sequences_per_epoch: Option<u64>,
    pub tokens_per_epoch: Option<u64>,
    pub steps_per_epoch: Option<u64>,
    pub max_steps: Option<u64>,
    pub epochs: Option<f64>,
    pub save_every_steps: Option<u64>,
    pub checkpoint_bytes: Option<u64>,
    pub checkpoints_on_disk: Option<u64>,
    pub free_disk_bytes: Option<u64>,
    pub first_loss: Option<f64>,
    /// Seconds per optimizer step (measured here, or given).
    pub step_time_s: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub memory_estimate_bytes: Option<f64>,
    pub device_memory_bytes: Option<u64>,
    pub failure: Option<FailureBudget>,
}

/// The checklist.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PreflightReport {
    /// What was checked ("runs/x on cpu").
    pub subject: String,
    pub checks: Vec<Check>,
    pub facts: Facts,
}

impl PreflightReport {
    /// No check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The verdict of the check called `name`.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.checks.iter().find(|c| c.name == name).map(|c| c.status)
    }

    /// `✓ name  detail` lines and a summary.
    pub fn render(&self) -> String {
        let mut s = format!("preflight: {}\n", self.subject);
        let width = self.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
        for c in &self.checks {
            let _ = writeln!(s, "  {} {:<width$}  {}", c.status.mark(), c.name, c.detail);
        }
        let count = |st| self.checks.iter().filter(|c| c.status == st).count();
        let _ = writeln!(
            s,
            "{}: {} passed, {} warnings, {} failed, {} skipped",
            if self.passed() { "ready" } else { "NOT ready" },
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        );
        s
    }

    /// `{"passed": …, "subject": …, "checks": [{name, status, detail}], "facts": {…}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("passed".into(), self.passed().into());
        }
        v
    }

    fn push(&mut self, c: Check) -> Status {
        let st = c.status;
        self.checks.push(c);
        st
    }
}

/// Loads `path` (with `--set` overrides) and checks it; a config that does not load is the
/// first, failed, line of the report and every other check is skipped.
pub fn preflight_file<B: AutodiffBackend>(
    path: &Path,
    overrides: &[String],
    opts: &PreflightOptions,
    device: &B::Device,
) -> PreflightReport {
    let opts = PreflightOptions { config_path: Some(path.to_path_buf()), ..opts.clone() };
    match crate::config::load_file(path, overrides) {
        Ok(loaded) => run_preflight::<B>(&loaded, &opts, device),
        Err(e) => {
            let mut r = PreflightReport { subject: format!("{} on {}", path.display(), opts.device_label), ..Default::default() };
            r.push(Check::new(CONFIG, Status::Fail, e.to_string()));
            skip_rest(&mut r, "the config does not load");
            r
        }
    }
}

const ORDER: [&str; 10] =
    [CONFIG, MODEL, TOKENIZER, TRAIN_DATA, EVAL_DATA, SAVE_FOLDER, FORWARD_BACKWARD, MEMORY, AUTORESUME, CHECKPOINT_INTERVAL];

fn skip_rest(r: &mut PreflightReport, why: &str) {
    for name in ORDER {
        if r.status(name).is_none() {
            r.push(Check::skip(name, why));
        }
    }
}

/// Runs every check against a loaded config on `device`.
pub fn run_preflight<B: AutodiffBackend>(loaded: &LoadedConfig, opts: &PreflightOptions, device: &B::Device) -> PreflightReport {
    let cfg = &loaded.config;
    let run_name = run_name(cfg, opts);
    let mut r = PreflightReport { subject: format!("{run_name} on {}", opts.device_label), ..Default::default() };
    if r.push(checks::config_check(loaded, opts.world_size)) == Status::Fail {
        skip_rest(&mut r, "the config is invalid");
        return r;
    }
    let world = opts.world_size.max(1);
    let device_batch = cfg.global_train_batch_size / world;
    let microbatch = match cfg.device_train_microbatch_size {
        MicroBatchSize::Fixed(m) => m.min(device_batch),
        MicroBatchSize::Auto => device_batch,
    };

    // Model.
    let mpt = match trial::resolve_model(cfg) {
        Ok(m) if m.max_seq_len < cfg.max_seq_len => {
            let d = format!("max_seq_len {} exceeds the model's {}", cfg.max_seq_len, m.max_seq_len);
            r.push(Check::new(MODEL, Status::Fail, d));
            None
        }
        Ok(m) => {
            r.facts.params = Some(m.num_params());
            let d = format!(
                "MPT, {} parameters: d_model {}, {} layers, {} heads, vocab {}, max_seq_len {}",
                crate::metrics::report::human(m.num_params() as f64),
                m.d_model,
                m.n_layers,
                m.n_heads,
                m.vocab_size,
                m.max_seq_len
            );
            r.push(Check::new(MODEL, Status::Pass, d));
            Some(m)
        }
        Err(e) => {
            r.push(Check::new(MODEL, Status::Fail, e));
            None
        }
    };

    // Tokenizer.
    let tokenizer = match FinetuneTokenizer::load(&cfg.tokenizer.name) {
        Ok(t) => {
            let file = tokenizer_file(&cfg.tokenizer.name).unwrap_or_else(|_| PathBuf::from(&cfg.tokenizer.name));
            r.push(match &mpt {
                Some(m) => checks::vocab_check(&file, t.tokenizer.vocab_size(), m.vocab_size),
                None => Check::skip(TOKENIZER, "loaded, but the model's vocabulary is unknown"),
            });
            Some(t)
        }
        Err(e) => {
            r.push(Check::new(TOKENIZER, Status::Fail, e.to_string()));
            None
        }
    };

    // Train data, and how long the run is.
    let mut first_micro = None;
    match Loader::open("train_loader", &cfg.train_loader, cfg, mpt.as_ref(), tokenizer.as_ref(), device_batch) {
        Err(e) => {
            r.push(Check::new(TRAIN_DATA, Status::Fail, e));
        }
        Ok(mut loader) => {
            let (sequences, tokens) = (loader.epoch_size(), loader.tokens_per_epoch(cfg.max_seq_len));
            r.facts.sequences_per_epoch = Some(sequences);
            r.facts.tokens_per_epoch = Some(tokens);
            let (mut check, facts) = checks::duration_check(cfg, sequences, tokens, opts.max_epochs);
            if let Some(f) = facts {
                r.facts.steps_per_epoch = Some(f.steps_per_epoch);
                r.facts.max_steps = Some(f.max_steps);
                r.facts.epochs = Some(f.epochs);
                match loader.next_batch() {
                    Err(e) => check = Check::new(TRAIN_DATA, Status::Fail, format!("the first batch does not read: {e}")),
                    Ok(batch) => {
                        let top = batch.iter().flat_map(|e| e.input_ids.iter().copied()).max().unwrap_or(0);
                        match &mpt {
                            Some(m) if top as usize >= m.vocab_size => {
                                let d = format!("token id {top} in the first batch is outside model.vocab_size {}", m.vocab_size);
                                check = Check::new(TRAIN_DATA, Status::Fail, d);
                            }
                            _ => first_micro = Some(batch.into_iter().take(microbatch).collect::<Vec<_>>()),
                        }
                    }
                }
            }
            r.push(check);
        }
    }

    // Eval data.
    let mut eval_notes = Vec::new();
    let mut eval_status = Status::Pass;
    for (i, l) in cfg.eval_loader.iter().enumerate() {
        let key = if cfg.eval_loader.len() == 1 { "eval_loader".to_string() } else { format!("eval_loader[{i}]") };
        match Loader::open(&key, l, cfg, mpt.as_ref(), tokenizer.as_ref(), cfg.eval_batch_size()) {
            Ok(d) => eval_notes.push(format!("{key}: {} sequences", d.epoch_size())),
            Err(e) => {
                eval_status = Status::Fail;
                eval_notes.push(e);
            }
        }
    }
    if eval_notes.is_empty() {
        eval_notes.push("no eval_loader: the run will report no eval loss".into());
    }
    r.push(Check::new(EVAL_DATA, eval_status, eval_notes.join("; ")));

    // Save folder.
    let ctx = cfg.time_context(r.facts.steps_per_epoch);
    let save_every = cfg.save_interval.whole_batches(&ctx).ok().filter(|&n| n > 0);
    r.facts.save_every_steps = save_every;
    let optimizer = match cfg.optimizer.name {
        OptimizerName::DecoupledLionw => OptimizerStateKind::Lion,
        _ => OptimizerStateKind::Adam,
    };
    let ck_bytes = r.facts.params.map(|p| checks::checkpoint_bytes(p, optimizer));
    r.facts.checkpoint_bytes = ck_bytes;
    match (ck_bytes, r.facts.max_steps) {
        (Some(size), Some(max_steps)) => {
            let folder = save_folder(cfg, opts, &run_name);
            let count = checks::checkpoints_on_disk(cfg.save_num_checkpoints_to_keep, checks::saves_in_run(max_steps, save_every));
            let free = system::free_bytes(&folder);
            r.facts.checkpoints_on_disk = Some(count);
            r.facts.free_disk_bytes = free;
            let facts = SaveFacts {
                writable: system::probe_writable(&folder),
                free_bytes: free,
                checkpoint_bytes: size,
                checkpoints: count,
                existing: CheckpointStore::new(&folder, None).list().map(|l| l.len()).unwrap_or(0),
                autoresume: cfg.autoresume,
                save_overwrite: cfg.save_overwrite,
                folder,
            };
            r.push(checks::save_folder_check(&facts));
        }
        _ => {
            r.push(Check::skip(SAVE_FOLDER, "the model size or the run length is unknown"));
        }
    }

    // One step.
    let micro_per_step = device_batch.div_ceil(microbatch.max(1)) as f64;
    match (&mpt, first_micro, opts.run_step) {
        (_, _, false) => {
            r.push(Check::skip(FORWARD_BACKWARD, "switched off"));
        }
        (Some(m), Some(micro), true) => {
            let outcome = trial::build_model::<B>(cfg, m, device).and_then(|model| trial::trial(model, cfg, micro, device));
            r.facts.peak_rss_bytes = system::peak_rss();
            match outcome {
                Err(e) => {
                    r.push(Check::new(FORWARD_BACKWARD, Status::Fail, e));
                }
                Ok(t) => {
                    let step_s = t.forward_backward_s * micro_per_step + t.update_s;
                    r.facts.first_loss = Some(t.loss);
                    r.facts.step_time_s = Some(step_s);
                    let detail = format!(
                        "loss {:.4}, grad norm {:.3e}; {} per microbatch of {microbatch} × {micro_per_step} + {} update ≈ {} per step{}{}",
                        t.loss,
                        t.grad_norm,
                        secs(t.forward_backward_s),
                        secs(t.update_s),
                        secs(step_s),
                        if t.warm { "" } else { " (first step, includes one-time setup)" },
                        r.facts.peak_rss_bytes.map(|b| format!("; host peak RSS {}", bytes(b as f64))).unwrap_or_default()
                    );
                    let ok = t.loss.is_finite() && t.grad_norm.is_finite();
                    r.push(Check::new(FORWARD_BACKWARD, if ok { Status::Pass } else { Status::Fail }, detail));
                }
            }
        }
        _ => {
            r.push(Check::skip(FORWARD_BACKWARD, "the model or the first batch is unavailable"));
        }
    }

    // Memory.
    match &mpt {
        Some(m) => {
            let input = MemoryInput::from_mpt(m, cfg.max_seq_len, microbatch, cfg.precision, optimizer, world, false);
            let estimate = memory_estimate(&input).total();
            r.facts.memory_estimate_bytes = Some(estimate);
            let capacity = match (opts.device_memory, opts.device_is_host) {
                (Some(b), _) => Some((b, "--device-memory")),
                (None, true) => system::total_memory().map(|b| (b, "host RAM")),
                (None, false) => None,
            };
            r.facts.device_memory_bytes = capacity.map(|c| c.0);
            let measured = if opts.device_is_host { r.facts.peak_rss_bytes } else { None };
            r.push(checks::memory_check(estimate, capacity, measured));
        }
        None => {
            r.push(Check::skip(MEMORY, "the model is unknown"));
        }
    }

    // Resumption and the failure budget.
    r.push(checks::resume_check(cfg.autoresume, save_every, r.facts.max_steps));
    let step_time = opts.step_time_s.or(r.facts.step_time_s);
    r.facts.step_time_s = step_time;
    match (step_time, r.facts.max_steps, ck_bytes) {
        (Some(step_time_s), Some(max_steps), Some(checkpoint_bytes)) => {
            let input = FailureInput {
                step_time_s,
                save_every,
                max_steps,
                devices: world,
                failures_per_device_day: opts.failures_per_device_day,
                checkpoint_bytes,
                max_interval_s: opts.max_save_interval_s,
                max_loss_per_failure: opts.max_loss_per_failure,
            };
            let budget = checks::failure_budget(&input);
            r.facts.failure = Some(budget);
            r.push(checks::failure_check(&input, &budget));
        }
        _ => {
            r.push(Check::skip(CHECKPOINT_INTERVAL, "needs a step time (measured, or --step-time) and the run length"));
        }
    }
    r
}

/// `run_name`, else `$RUN_NAME`, else the config file's stem, else "tessera" (as `train`).
fn run_name(cfg: &TrainConfig, opts: &PreflightOptions) -> String {
    cfg.run_name
        .clone()
        .or_else(|| std::env::var("RUN_NAME").ok())
        .or_else(|| opts.config_path.as_ref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "tessera".into())
}

/// Where the run will write checkpoints (as `train` resolves it).
fn save_folder(cfg: &TrainConfig, opts: &PreflightOptions, run_name: &str) -> PathBuf {
    match &cfg.save_folder {
        Some(f) => PathBuf::from(f.replace("{run_name}", run_name)),
        None => opts.run_dir.clone().unwrap_or_else(|| PathBuf::from("runs").join(run_name)).join("checkpoints"),
    }
}

/// 1536 → `1.5 KiB`.
pub(crate) fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// 0.25 → `250 ms`, 75 → `1m 15s`, 3600 → `1h 00m`, 200 000 → `2.3 days`.
pub(crate) fn secs(s: f64) -> String {
    if !s.is_finite() {
        return "never".into();
    }
    if s < 1.0 {
        return format!("{:.0} ms", s * 1e3);
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let whole = s.round() as u64;
    if whole < 3_600 {
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else if whole < 172_800 {
        format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

#[cfg(test)]
mod run_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * (1u64 << 30) as f64), "3.0 GiB");
        assert_eq!(secs(0.25), "250 ms");
        assert_eq!(secs(75.0), "1m 15s");
        assert_eq!(secs(3600.0), "1h 00m");
        assert_eq!(secs(200_000.0), "2.3 days");
        assert_eq!(secs(f64::INFINITY), "never");
    }

    #[test]
    fn the_report_renders_marks_and_counts_and_fails_on_any_failure() {
        let mut r = PreflightReport { subject: "x on cpu".into(), ..Default::default() };
        r.push(Check::new(CONFIG, Status::Pass, "valid"));
        r.push(Check::new(TOKENIZER, Status::Warn, "hmm"));
        assert!(r.passed());
        r.push(Check::new(MEMORY, Status::Fail, "too big"));
        r.push(Check::skip(AUTORESUME, "off"));
        let text = r.render();
        assert!(text.contains("  ✓ config      valid\n") && text.contains("  ! tokenizer   hmm\n"), "{text}");
        assert!(text.contains("  ✗ memory      too big\n") && text.contains("  - autoresume  skipped: off\n"), "{text}");
        assert!(text.ends_with("NOT ready: 1 passed, 1 warnings, 1 failed, 1 skipped\n"), "{text}");
        let j = r.to_json();
        assert_eq!(j["passed"], false);
        assert_eq!(j["checks"][2]["status"], "fail");
        assert_eq!(j["checks"][1]["name"], "tokenizer");
    }
}
