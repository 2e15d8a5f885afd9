//! The verdict of each pre-flight check, as pure functions of what was measured, so every
//! threshold is unit-tested without building a model or touching a disk.
//!
//! **Checkpoint interval versus failures.** With `D` devices failing independently at `λ`
//! failures per device-day (about 1 per 1000 GPU-days, the rate large runs report: OPT-175B's
//! logbook, Llama 3's 419 interruptions in 54 days on 16k GPUs), the run fails on average every
//! `MTBF = 86 400 / (D·λ)` seconds. A failure lands uniformly within a save interval of `T`
//! seconds (`save_interval` steps × step time), so it loses `T/2` of work on average; over a run
//! of `R` seconds that is `F = R / MTBF` failures and an expected `F·T/2` lost, i.e. a fraction
//! `T / (2·MTBF)` of the run. Young's (1974) optimum interval `√(2·C·MTBF)`, with `C` the time
//! to write one checkpoint (estimated at 1 GiB/s), is printed for reference. The check warns when
//! `T` exceeds `max_save_interval_s` (1 h), or when one failure would lose more than
//! `max_loss_per_failure` (2 %) of the run while a failure is plausible (`F ≥ 0.05`) — a
//! minutes-long laptop run is not asked to checkpoint every few seconds.

use std::path::Path;

use serde::Serialize;

use super::{Check, Status, bytes, secs};
use crate::config::{LoadedConfig, TrainConfig};
use crate::plan::OptimizerStateKind;

/// Bytes of a checkpoint's small files (`state.json`, the manifest, `latest`), rounded up.
const SMALL_FILES: u64 = 64 * 1024;
/// Assumed write speed for Young's interval.
const SAVE_BYTES_PER_S: f64 = (1u64 << 30) as f64;
/// A failure is "plausible" over a run from this many expected failures.
const PLAUSIBLE_FAILURES: f64 = 0.05;

/// The config as a whole: validation, the world size, and what tessera will not act on.
pub fn config_check(loaded: &LoadedConfig, world_size: usize) -> Check {
    let cfg = &loaded.config;
    if let Err(e) = cfg.validate() {
        return Check::new(super::CONFIG, Status::Fail, e.to_string());
    }
    if world_size == 0 || !cfg.global_train_batch_size.is_multiple_of(world_size) {
        return Check::new(
            super::CONFIG,
            Status::Fail,
            format!(
                "global_train_batch_size {} does not split over {world_size} devices",
                cfg.global_train_batch_size
            ),
        );
    }
    let mut detail = "valid".to_string();
    if !loaded.ignored_keys.is_empty() {
        detail += &format!(
            "; {} llm-foundry keys ignored ({})",
            loaded.ignored_keys.len(),
            loaded.ignored_keys.join(", ")
        );
    }
    Check::new(super::CONFIG, Status::Pass, detail)
}

/// The tokenizer's ids must all index the model's embedding.
pub fn vocab_check(tokenizer: &Path, tokenizer_vocab: usize, model_vocab: usize) -> Check {
    if tokenizer_vocab > model_vocab {
        return Check::new(
            super::TOKENIZER,
            Status::Fail,
            format!(
                "{} has {tokenizer_vocab} tokens but model.vocab_size is {model_vocab}: ids ≥ {model_vocab} have no embedding",
                tokenizer.display()
            ),
        );
    }
    Check::new(
        super::TOKENIZER,
        Status::Pass,
        format!(
            "{}: {tokenizer_vocab} tokens fit model.vocab_size {model_vocab}",
            tokenizer.display()
        ),
    )
}

/// How long the run is in steps and epochs, given the training data's size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DurationFacts {
    /// Optimizer steps in one epoch (whole global batches).
    pub steps_per_epoch: u64,
    /// Optimizer steps in the run (`max_duration` in steps).
    pub max_steps: u64,
    /// Epochs the run covers.
    pub epochs: f64,
}

/// Enough data for `max_duration`: at least one global batch per epoch, and few repeats
/// (Muennighoff et al. 2023: up to ~4 epochs are worth almost as much as fresh data, beyond
/// that returns fall quickly).
pub fn duration_check(
    cfg: &TrainConfig,
    sequences_per_epoch: u64,
    tokens_per_epoch: u64,
    max_epochs: f64,
) -> (Check, Option<DurationFacts>) {
    let name = super::TRAIN_DATA;
    let global = cfg.global_train_batch_size as u64;
    let steps_per_epoch = sequences_per_epoch / global;
    if steps_per_epoch == 0 {
        let d = format!(
            "an epoch holds {sequences_per_epoch} sequences, fewer than one global batch ({global}); the run cannot take a step"
        );
        return (Check::new(name, Status::Fail, d), None);
    }
    let max_steps = match cfg.max_batches(Some(steps_per_epoch)) {
        Ok(n) => n,
        Err(e) => return (Check::new(name, Status::Fail, e.to_string()), None),
    };
    let epochs = max_steps as f64 / steps_per_epoch as f64;
    let detail = format!(
        "{sequences_per_epoch} sequences ({} tokens) per epoch = {steps_per_epoch} steps; max_duration {} = {max_steps} steps = {epochs:.2} epochs",
        crate::metrics::report::human(tokens_per_epoch as f64),
        cfg.max_duration
    );
    let facts = DurationFacts {
        steps_per_epoch,
        max_steps,
        epochs,
    };
    if epochs > max_epochs {
        let d = format!(
            "{detail}; more than {max_epochs} passes over the same data add little (get more data, or train shorter)"
        );
        return (Check::new(name, Status::Warn, d), Some(facts));
    }
    (Check::new(name, Status::Pass, detail), Some(facts))
}

/// Bytes of one checkpoint: fp32 weights, the optimizer's fp32 moments, small files.
pub fn checkpoint_bytes(params: u64, optimizer: OptimizerStateKind) -> u64 {
    let moments = match optimizer {
        OptimizerStateKind::Adam => 2,
        OptimizerStateKind::Lion => 1,
    };
    params * 4 * (1 + moments) + SMALL_FILES
}

/// Checkpoints a run keeps on disk at its peak: those kept (`keep`, or every save when -1) plus
/// the one being written before the oldest is pruned.
pub fn checkpoints_on_disk(keep: i64, saves: u64) -> u64 {
    let kept = if keep < 0 {
        saves
    } else {
        saves.min(keep as u64)
    };
    kept.max(1) + 1
}

/// Saves a run makes: every `save_every` steps, and at the end.
pub fn saves_in_run(max_steps: u64, save_every: Option<u64>) -> u64 {
    match save_every {
        Some(n) if n > 0 => max_steps / n + u64::from(!max_steps.is_multiple_of(n)),
        _ => 1,
    }
}

/// What was found about the save folder.
#[derive(Debug, Clone, PartialEq)]
pub struct SaveFacts {
    /// The save folder.
    pub folder: std::path::PathBuf,
    /// `Err(why)` when a file could not be created there.
    pub writable: Result<(), String>,
    /// Free space on its file system, in bytes, when known.
    pub free_bytes: Option<u64>,
    /// Estimated size of one checkpoint, in bytes.
    pub checkpoint_bytes: u64,
    /// Checkpoints on disk at the run's peak (see [`checkpoints_on_disk`]).
    pub checkpoints: u64,
    /// Checkpoints already in the folder.
    pub existing: usize,
    /// The config's `autoresume`.
    pub autoresume: bool,
    /// The config's `save_overwrite`.
    pub save_overwrite: bool,
}

/// The save folder accepts files, has room for the run's checkpoints, and will not be refused
/// by the trainer for holding another run's checkpoints.
pub fn save_folder_check(f: &SaveFacts) -> Check {
    let name = super::SAVE_FOLDER;
    let folder = f.folder.display();
    if let Err(why) = &f.writable {
        return Check::new(
            name,
            Status::Fail,
            format!("{folder} is not writable: {why}"),
        );
    }
    if f.existing > 0 && !f.autoresume && !f.save_overwrite {
        return Check::new(
            name,
            Status::Fail,
            format!(
                "{folder} already holds {} checkpoint(s); set autoresume: true to continue them, or save_overwrite: true",
                f.existing
            ),
        );
    }
    let need = f.checkpoint_bytes.saturating_mul(f.checkpoints);
    let what = format!(
        "{} checkpoints × {} = {}",
        f.checkpoints,
        bytes(f.checkpoint_bytes as f64),
        bytes(need as f64)
    );
    let resume = if f.existing > 0 {
        format!(
            "; will resume from the newest of {} checkpoint(s)",
            f.existing
        )
    } else {
        String::new()
    };
    match f.free_bytes {
        Some(free) if free < need => Check::new(
            name,
            Status::Fail,
            format!("{folder}: {what} needed, {} free", bytes(free as f64)),
        ),
        Some(free) => Check::new(
            name,
            Status::Pass,
            format!(
                "{folder} writable; {what} of {} free{resume}",
                bytes(free as f64)
            ),
        ),
        None => Check::new(
            name,
            Status::Warn,
            format!("{folder} writable; {what} needed, free space unknown{resume}"),
        ),
    }
}

/// The estimated per-device memory against the device's.
pub fn memory_check(
    estimate: f64,
    capacity: Option<(u64, &str)>,
    measured_peak: Option<u64>,
) -> Check {
    let name = super::MEMORY;
    let measured = measured_peak
        .map(|m| format!("; measured host peak {}", bytes(m as f64)))
        .unwrap_or_default();
    let Some((cap, source)) = capacity else {
        return Check::new(
            name,
            Status::Warn,
            format!(
                "estimated {} per device, device memory unknown (pass --device-memory){measured}",
                bytes(estimate)
            ),
        );
    };
    let share = estimate / cap as f64;
    let detail = format!(
        "estimated {} of {} ({source}), {:.0}%{measured}",
        bytes(estimate),
        bytes(cap as f64),
        100.0 * share
    );
    let status = if share > 1.0 {
        Status::Fail
    } else if share > 0.9 {
        Status::Warn
    } else {
        Status::Pass
    };
    Check::new(name, status, detail)
}

/// Autoresume on, and checkpoints before the end.
pub fn resume_check(autoresume: bool, save_every: Option<u64>, max_steps: Option<u64>) -> Check {
    let name = super::AUTORESUME;
    let mut problems = Vec::new();
    if !autoresume {
        problems.push("autoresume is off: after a failure the run restarts from scratch unless relaunched by hand".to_string());
    }
    match (save_every, max_steps) {
        (None, _) => {
            problems.push("save_interval is zero: only the final checkpoint is written".into())
        }
        (Some(n), Some(m)) if n >= m => problems.push(format!(
            "save_interval ({n} steps) is not shorter than the run ({m} steps)"
        )),
        _ => {}
    }
    if problems.is_empty() {
        let every = save_every
            .map(|n| format!(", a checkpoint every {n} steps"))
            .unwrap_or_default();
        return Check::new(name, Status::Pass, format!("autoresume on{every}"));
    }
    Check::new(name, Status::Warn, problems.join("; "))
}

/// Inputs of the failure-budget arithmetic (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureInput {
    /// Seconds per optimizer step.
    pub step_time_s: f64,
    /// Steps between checkpoints (`None`: only the final one).
    pub save_every: Option<u64>,
    /// Optimizer steps in the run.
    pub max_steps: u64,
    /// Devices of the launch (`D`).
    pub devices: usize,
    /// Expected failures per device per day (`λ`).
    pub failures_per_device_day: f64,
    /// Size of one checkpoint, in bytes (for Young's interval).
    pub checkpoint_bytes: u64,
    /// Warn above this many seconds between checkpoints.
    pub max_interval_s: f64,
    /// Warn when one failure loses more than this share of the run.
    pub max_loss_per_failure: f64,
}

/// What a failure costs this run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FailureBudget {
    /// Wall time between checkpoints (`T`).
    pub interval_s: f64,
    /// Wall time of the whole run (`R`).
    pub run_s: f64,
    /// Mean time between failures of the whole job.
    pub mtbf_s: f64,
    /// Failures expected over the run (`R / MTBF`).
    pub expected_failures: f64,
    /// Work lost by one failure, on average (`T / 2`).
    pub loss_per_failure_s: f64,
    /// That loss as a share of the run.
    pub loss_per_failure_fraction: f64,
    /// Expected share of the run lost to failures (`T / (2·MTBF)`).
    pub expected_loss_fraction: f64,
    /// Young's optimal interval for this checkpoint size.
    pub young_interval_s: f64,
}

/// The arithmetic of the module docs.
pub fn failure_budget(i: &FailureInput) -> FailureBudget {
    let run_s = i.max_steps as f64 * i.step_time_s;
    // Without periodic saves the only checkpoint is the final one: a failure loses everything.
    let interval_s = i
        .save_every
        .map_or(run_s, |n| n.min(i.max_steps) as f64 * i.step_time_s);
    let rate_per_s = i.devices.max(1) as f64 * i.failures_per_device_day / 86_400.0;
    let mtbf_s = if rate_per_s > 0.0 {
        1.0 / rate_per_s
    } else {
        f64::INFINITY
    };
    let loss_per_failure_s = interval_s / 2.0;
    let write_s = i.checkpoint_bytes as f64 / SAVE_BYTES_PER_S;
    FailureBudget {
        interval_s,
        run_s,
        mtbf_s,
        expected_failures: run_s / mtbf_s,
        loss_per_failure_s,
        loss_per_failure_fraction: if run_s > 0.0 {
            loss_per_failure_s / run_s
        } else {
            0.0
        },
        expected_loss_fraction: loss_per_failure_s / mtbf_s,
        young_interval_s: (2.0 * write_s * mtbf_s).sqrt(),
    }
}

/// Warns when checkpoints are too far apart for the failure rate (see the module docs).
pub fn failure_check(i: &FailureInput, b: &FailureBudget) -> Check {
    let name = super::CHECKPOINT_INTERVAL;
    let detail = format!(
        "a checkpoint every {} of a {} run on {} device(s); one failure expected every {} ({:.2} over the run), each losing {} ({:.1}% of the run); Young's optimum ≈ {}",
        secs(b.interval_s),
        secs(b.run_s),
        i.devices,
        secs(b.mtbf_s),
        b.expected_failures,
        secs(b.loss_per_failure_s),
        100.0 * b.loss_per_failure_fraction,
        secs(b.young_interval_s)
    );
    let mut why = Vec::new();
    if b.interval_s > i.max_interval_s {
        why.push(format!("the interval exceeds {}", secs(i.max_interval_s)));
    }
    if b.loss_per_failure_fraction > i.max_loss_per_failure
        && b.expected_failures >= PLAUSIBLE_FAILURES
    {
        why.push(format!(
            "a failure would lose more than {:.0}% of the run",
            100.0 * i.max_loss_per_failure
        ));
    }
    if why.is_empty() {
        return Check::new(name, Status::Pass, detail);
    }
    Check::new(
        name,
        Status::Warn,
        format!("{}: {detail}", why.join(" and ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const YAML: &str = r#"
model: {name: mpt_causal_lm, d_model: 16, n_heads: 2, n_layers: 1, vocab_size: 64, max_seq_len: 16}
tokenizer: {name: tok.json}
train_loader: {name: text, dataset: {local: /data}}
optimizer: {name: decoupled_adamw, lr: 1.0e-3}
scheduler: {name: constant_with_warmup, t_warmup: 0ba}
max_duration: 100ba
max_seq_len: 16
global_train_batch_size: 8
device_train_microbatch_size: 4
"#;

    fn cfg(extra: &[&str]) -> LoadedConfig {
        let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        load_str(YAML, "test", &sets).unwrap()
    }

    #[test]
    fn config_passes_and_fails_on_an_indivisible_batch() {
        assert_eq!(config_check(&cfg(&[]), 2).status, Status::Pass);
        let c = config_check(&cfg(&[]), 3);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("does not split over 3 devices"),
            "{}",
            c.detail
        );
        let mut broken = cfg(&[]);
        broken.config.global_train_batch_size = 0;
        assert_eq!(config_check(&broken, 1).status, Status::Fail);
    }

    #[test]
    fn vocab_must_fit_the_embedding() {
        assert_eq!(
            vocab_check(Path::new("t.json"), 50277, 50432).status,
            Status::Pass
        );
        let c = vocab_check(Path::new("t.json"), 50277, 50000);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail
                .contains("50277 tokens but model.vocab_size is 50000"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn duration_counts_epochs_and_warns_on_many_repeats() {
        let c = cfg(&[]);
        // 400 sequences / 8 = 50 steps per epoch; 100 steps = 2 epochs.
        let (check, facts) = duration_check(&c.config, 400, 6400, 4.0);
        assert_eq!(check.status, Status::Pass, "{}", check.detail);
        assert_eq!(
            facts.unwrap(),
            DurationFacts {
                steps_per_epoch: 50,
                max_steps: 100,
                epochs: 2.0
            }
        );
        let (check, facts) = duration_check(&c.config, 160, 2560, 4.0);
        assert_eq!((check.status, facts.unwrap().epochs), (Status::Warn, 5.0));
        let (check, facts) = duration_check(&c.config, 7, 112, 4.0);
        assert_eq!(check.status, Status::Fail);
        assert!(
            facts.is_none() && check.detail.contains("fewer than one global batch (8)"),
            "{}",
            check.detail
        );
        // Epoch durations convert through the data's size.
        let (_, facts) = duration_check(&cfg(&["max_duration=3ep"]).config, 400, 6400, 4.0);
        assert_eq!(facts.unwrap().max_steps, 150);
    }

    #[test]
    fn checkpoint_counts_and_sizes() {
        assert_eq!(
            checkpoint_bytes(1000, OptimizerStateKind::Adam),
            12_000 + SMALL_FILES
        );
        assert_eq!(
            checkpoint_bytes(1000, OptimizerStateKind::Lion),
            8_000 + SMALL_FILES
        );
        assert_eq!(saves_in_run(100, Some(30)), 4); // 30, 60, 90 and the end
        assert_eq!(saves_in_run(90, Some(30)), 3);
        assert_eq!(checkpoints_on_disk(2, 4), 3);
        assert_eq!(checkpoints_on_disk(-1, 4), 5);
        assert_eq!(checkpoints_on_disk(0, 4), 2);
    }

    fn save(free: Option<u64>) -> SaveFacts {
        SaveFacts {
            folder: "/ck".into(),
            writable: Ok(()),
            free_bytes: free,
            checkpoint_bytes: 1000,
            checkpoints: 3,
            existing: 0,
            autoresume: true,
            save_overwrite: false,
        }
    }

    #[test]
    fn save_folder_needs_room_permission_and_no_foreign_checkpoints() {
        assert_eq!(save_folder_check(&save(Some(3000))).status, Status::Pass);
        let c = save_folder_check(&save(Some(2999)));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("needed"), "{}", c.detail);
        assert_eq!(save_folder_check(&save(None)).status, Status::Warn);
        let locked = SaveFacts {
            writable: Err("permission denied".into()),
            ..save(Some(1 << 40))
        };
        assert_eq!(save_folder_check(&locked).status, Status::Fail);
        let foreign = SaveFacts {
            existing: 2,
            autoresume: false,
            ..save(Some(1 << 40))
        };
        assert_eq!(save_folder_check(&foreign).status, Status::Fail);
        let resuming = SaveFacts {
            existing: 2,
            ..save(Some(1 << 40))
        };
        assert!(save_folder_check(&resuming).detail.contains("will resume"));
    }

    #[test]
    fn memory_fits_warns_near_the_limit_and_fails_above() {
        assert_eq!(
            memory_check(50.0, Some((100, "RAM")), Some(40)).status,
            Status::Pass
        );
        assert_eq!(
            memory_check(95.0, Some((100, "RAM")), None).status,
            Status::Warn
        );
        assert_eq!(
            memory_check(101.0, Some((100, "RAM")), None).status,
            Status::Fail
        );
        assert_eq!(memory_check(1.0, None, None).status, Status::Warn);
    }

    #[test]
    fn resume_settings_want_autoresume_and_an_interval_inside_the_run() {
        assert_eq!(
            resume_check(true, Some(100), Some(1000)).status,
            Status::Pass
        );
        assert_eq!(
            resume_check(false, Some(100), Some(1000)).status,
            Status::Warn
        );
        assert_eq!(resume_check(true, None, Some(1000)).status, Status::Warn);
        assert_eq!(
            resume_check(true, Some(1000), Some(1000)).status,
            Status::Warn
        );
    }

    fn input(step_time_s: f64, save_every: u64, max_steps: u64, devices: usize) -> FailureInput {
        FailureInput {
            step_time_s,
            save_every: Some(save_every),
            max_steps,
            devices,
            failures_per_device_day: 1e-3,
            checkpoint_bytes: 1 << 30,
            max_interval_s: 3600.0,
            max_loss_per_failure: 0.02,
        }
    }

    #[test]
    fn failure_budget_follows_the_documented_formula() {
        // 512 devices at 1/1000 per device-day: a failure every 86400/0.512 s ≈ 46.9 h.
        let i = input(2.0, 900, 300_000, 512);
        let b = failure_budget(&i);
        assert!((b.mtbf_s - 86_400.0 / 0.512).abs() < 1e-6);
        assert_eq!(
            (b.interval_s, b.run_s, b.loss_per_failure_s),
            (1800.0, 600_000.0, 900.0)
        );
        assert!((b.expected_failures - 600_000.0 * 0.512 / 86_400.0).abs() < 1e-9);
        assert!((b.expected_loss_fraction - 900.0 / b.mtbf_s).abs() < 1e-12);
        assert!((b.young_interval_s - (2.0 * b.mtbf_s).sqrt()).abs() < 1e-6);
        assert_eq!(failure_check(&i, &b).status, Status::Pass);
    }

    #[test]
    fn long_intervals_and_costly_failures_warn() {
        // Every 5000 steps of 2 s is 2.8 h between checkpoints.
        let i = input(2.0, 5000, 300_000, 512);
        let c = failure_check(&i, &failure_budget(&i));
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.starts_with("the interval exceeds 1h 00m"),
            "{}",
            c.detail
        );
        // A 10 h run on 4096 devices saving every 30 min: each failure loses 2.5% of it.
        let i = input(1.0, 1800, 36_000, 4096);
        let c = failure_check(&i, &failure_budget(&i));
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("lose more than 2%"), "{}", c.detail);
        // The same proportions on one laptop CPU: a failure is not plausible, no warning.
        let i = input(1.0, 1800, 36_000, 1);
        assert_eq!(failure_check(&i, &failure_budget(&i)).status, Status::Pass);
    }
}
