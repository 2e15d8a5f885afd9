//! The checklist in order: each step records its verdict and the facts later steps need.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use tessera_model::MptConfig;

use super::checks::{self, FailureInput, SaveFacts};
use super::parallel;
use super::trial::{self, Loader};
use super::*;
use crate::batch::Example;
use crate::checkpoint::CheckpointStore;
use crate::config::{LoadedConfig, MicroBatchSize, TrainConfig};
use crate::finetune::{FinetuneTokenizer, Packing, tokenizer_file};
use crate::plan::{MemoryInput, OptimizerStateKind, memory_estimate};
use crate::run_dir::{RunDir, SaveFolder, run_name};

/// The checks in report order.
pub(super) const ORDER: [&str; 11] = [
    CONFIG,
    PARALLELISM,
    MODEL,
    TOKENIZER,
    TRAIN_DATA,
    EVAL_DATA,
    SAVE_FOLDER,
    FORWARD_BACKWARD,
    MEMORY,
    AUTORESUME,
    CHECKPOINT_INTERVAL,
];

/// Loads `path` (with `--set` overrides) and checks it; a config that does not load is the
/// first, failed, line of the report and every other check is skipped.
pub fn preflight_file<B: AutodiffBackend>(
    path: &Path,
    overrides: &[String],
    opts: &PreflightOptions,
    device: &B::Device,
) -> PreflightReport {
    let opts = PreflightOptions {
        config_path: Some(path.to_path_buf()),
        ..opts.clone()
    };
    match crate::config::load_file(path, overrides) {
        Ok(loaded) => run_preflight::<B>(&loaded, &opts, device),
        Err(e) => {
            let subject = format!("{} on {}", path.display(), opts.device_label);
            let mut r = PreflightReport {
                subject,
                ..Default::default()
            };
            r.push(Check::new(CONFIG, Status::Fail, e.to_string()));
            skip_rest(&mut r, "the config does not load");
            r
        }
    }
}

/// Runs every check against a loaded config on `device`.
pub fn run_preflight<B: AutodiffBackend>(
    loaded: &LoadedConfig,
    opts: &PreflightOptions,
    device: &B::Device,
) -> PreflightReport {
    let cfg = &loaded.config;
    let run_name = run_name(cfg.run_name.as_deref(), opts.config_path.as_deref());
    let mut r = PreflightReport {
        subject: format!("{run_name} on {}", opts.device_label),
        ..Default::default()
    };
    if r.push(checks::config_check(loaded, opts.world_size)) == Status::Fail {
        skip_rest(&mut r, "the config is invalid");
        return r;
    }
    if r.push(parallel::parallel_check(cfg, opts)) == Status::Fail {
        skip_rest(&mut r, "this build cannot run the launch as configured");
        return r;
    }
    let world = opts.world_size.max(1);
    let device_batch = cfg.global_train_batch_size / world;
    let ctx = Ctx {
        cfg,
        opts,
        world,
        device_batch,
        microbatch: match cfg.device_train_microbatch_size {
            MicroBatchSize::Fixed(m) => m.min(device_batch),
            // As the trainer: `auto` is the whole device batch in one microbatch.
            MicroBatchSize::Auto => device_batch,
        },
        optimizer: OptimizerStateKind::of(cfg.optimizer.name),
    };
    let mpt = model(&mut r, cfg);
    let tokenizer = tokenizer(&mut r, cfg, mpt.as_ref());
    let first_micro = train_data(&mut r, &ctx, mpt.as_ref(), tokenizer.as_ref());
    eval_data(&mut r, cfg, mpt.as_ref(), tokenizer.as_ref());
    let save_every = save(&mut r, &ctx, &run_name);
    step::<B>(&mut r, &ctx, mpt.as_ref(), first_micro, device);
    memory(&mut r, &ctx, mpt.as_ref());
    failures(&mut r, &ctx, save_every);
    r
}

/// What every step shares.
struct Ctx<'a> {
    cfg: &'a TrainConfig,
    opts: &'a PreflightOptions,
    world: usize,
    device_batch: usize,
    microbatch: usize,
    optimizer: OptimizerStateKind,
}

fn skip_rest(r: &mut PreflightReport, why: &str) {
    for name in ORDER {
        if r.status(name).is_none() {
            r.push(Check::skip(name, why));
        }
    }
}

fn model(r: &mut PreflightReport, cfg: &TrainConfig) -> Option<MptConfig> {
    match trial::resolve_model(cfg) {
        Ok(m) if m.max_seq_len < cfg.max_seq_len => {
            let d = format!(
                "max_seq_len {} exceeds the model's {}",
                cfg.max_seq_len, m.max_seq_len
            );
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
    }
}

fn tokenizer(
    r: &mut PreflightReport,
    cfg: &TrainConfig,
    mpt: Option<&MptConfig>,
) -> Option<FinetuneTokenizer> {
    match FinetuneTokenizer::load(&cfg.tokenizer.name) {
        Ok(t) => {
            let file = tokenizer_file(&cfg.tokenizer.name)
                .unwrap_or_else(|_| PathBuf::from(&cfg.tokenizer.name));
            r.push(match mpt {
                Some(m) => checks::vocab_check(&file, t.tokenizer.vocab_size(), m.vocab_size),
                None => Check::skip(TOKENIZER, "loaded, but the model's vocabulary is unknown"),
            });
            Some(t)
        }
        Err(e) => {
            r.push(Check::new(TOKENIZER, Status::Fail, e.to_string()));
            None
        }
    }
}

/// Opens the train loader, sizes the run, and returns the first microbatch for the step.
fn train_data(
    r: &mut PreflightReport,
    ctx: &Ctx,
    mpt: Option<&MptConfig>,
    tok: Option<&FinetuneTokenizer>,
) -> Option<Vec<Example>> {
    let cfg = ctx.cfg;
    let mut loader = match trial::open_loader(
        "train_loader",
        &cfg.train_loader,
        cfg,
        mpt,
        tok,
        ctx.device_batch,
    ) {
        Ok(l) => l,
        Err(e) => {
            r.push(Check::new(TRAIN_DATA, Status::Fail, e));
            return None;
        }
    };
    let (sequences, tokens) = (
        loader.epoch_size(),
        loader.tokens_per_epoch(cfg.max_seq_len),
    );
    r.facts.sequences_per_epoch = Some(sequences);
    r.facts.tokens_per_epoch = Some(tokens);
    let (check, facts) = checks::duration_check(cfg, sequences, tokens, ctx.opts.max_epochs);
    let Some(f) = facts else {
        r.push(check);
        return None;
    };
    r.facts.steps_per_epoch = Some(f.steps_per_epoch);
    r.facts.max_steps = Some(f.max_steps);
    r.facts.epochs = Some(f.epochs);
    let batch = match loader.next_batch() {
        Ok(b) => b,
        Err(e) => {
            r.push(Check::new(
                TRAIN_DATA,
                Status::Fail,
                format!("the first batch does not read: {e}"),
            ));
            return None;
        }
    };
    let top = batch
        .iter()
        .flat_map(|e| e.input_ids.iter().copied())
        .max()
        .unwrap_or(0);
    if let Some(m) = mpt
        && top as usize >= m.vocab_size
    {
        let d = format!(
            "token id {top} in the first batch is outside model.vocab_size {}",
            m.vocab_size
        );
        r.push(Check::new(TRAIN_DATA, Status::Fail, d));
        return None;
    }
    let mut check = check;
    if let (Loader::Finetune(d), Some(m)) = (&loader, mpt)
        && matches!(d.packing(), Packing::Packed { .. })
        && !m.attn_config.attn_uses_sequence_id
    {
        check.status = Status::Warn;
        check.detail += "; packed examples will attend to each other: set model.attn_config.attn_uses_sequence_id: true";
    }
    r.push(check);
    Some(batch.into_iter().take(ctx.microbatch).collect())
}

fn eval_data(
    r: &mut PreflightReport,
    cfg: &TrainConfig,
    mpt: Option<&MptConfig>,
    tok: Option<&FinetuneTokenizer>,
) {
    let mut notes = Vec::new();
    let mut status = Status::Pass;
    for (i, l) in cfg.eval_loader.iter().enumerate() {
        let key = if cfg.eval_loader.len() == 1 {
            "eval_loader".to_string()
        } else {
            format!("eval_loader[{i}]")
        };
        match trial::open_loader(&key, l, cfg, mpt, tok, cfg.eval_batch_size()) {
            Ok(d) => notes.push(format!("{key}: {} sequences", d.epoch_size())),
            Err(e) => {
                status = Status::Fail;
                notes.push(e);
            }
        }
    }
    if notes.is_empty() {
        notes.push("no eval_loader: the run will report no eval loss".into());
    }
    r.push(Check::new(EVAL_DATA, status, notes.join("; ")));
}

/// Checks the save folder; returns the save interval in steps.
fn save(r: &mut PreflightReport, ctx: &Ctx, run_name: &str) -> Option<u64> {
    let cfg = ctx.cfg;
    let time = cfg.time_context(r.facts.steps_per_epoch);
    let save_every = cfg
        .save_interval
        .whole_batches(&time)
        .ok()
        .filter(|&n| n > 0);
    r.facts.save_every_steps = save_every;
    r.facts.checkpoint_bytes = r
        .facts
        .params
        .map(|p| checks::checkpoint_bytes(p, ctx.optimizer));
    let (Some(size), Some(max_steps)) = (r.facts.checkpoint_bytes, r.facts.max_steps) else {
        r.push(Check::skip(
            SAVE_FOLDER,
            "the model size or the run length is unknown",
        ));
        return save_every;
    };
    let folder = save_folder(cfg, ctx.opts, run_name);
    let count = checks::checkpoints_on_disk(
        cfg.save_num_checkpoints_to_keep,
        checks::saves_in_run(max_steps, save_every),
    );
    let free = system::free_bytes(&folder);
    r.facts.checkpoints_on_disk = Some(count);
    r.facts.free_disk_bytes = free;
    let facts = SaveFacts {
        writable: system::probe_writable(&folder),
        free_bytes: free,
        checkpoint_bytes: size,
        checkpoints: count,
        existing: CheckpointStore::new(&folder, None)
            .list()
            .map(|l| l.len())
            .unwrap_or(0),
        autoresume: cfg.autoresume,
        save_overwrite: cfg.save_overwrite,
        folder,
    };
    r.push(checks::save_folder_check(&facts));
    save_every
}

/// One real training step; its time × microbatches per step is the step time.
fn step<B: AutodiffBackend>(
    r: &mut PreflightReport,
    ctx: &Ctx,
    mpt: Option<&MptConfig>,
    micro: Option<Vec<Example>>,
    device: &B::Device,
) {
    if !ctx.opts.run_step {
        r.push(Check::skip(FORWARD_BACKWARD, "switched off"));
        return;
    }
    let (Some(m), Some(micro)) = (mpt, micro) else {
        r.push(Check::skip(
            FORWARD_BACKWARD,
            "the model or the first batch is unavailable",
        ));
        return;
    };
    let outcome = trial::build_model::<B>(ctx.cfg, m, device)
        .and_then(|model| trial::trial(model, ctx.cfg, micro, device));
    r.facts.peak_rss_bytes = system::peak_rss();
    let t = match outcome {
        Ok(t) => t,
        Err(e) => {
            r.push(Check::new(FORWARD_BACKWARD, Status::Fail, e));
            return;
        }
    };
    let per_step = ctx.device_batch.div_ceil(ctx.microbatch.max(1));
    let step_s = t.forward_backward_s * per_step as f64 + t.update_s;
    r.facts.first_loss = Some(t.loss);
    r.facts.step_time_s = Some(step_s);
    let detail = format!(
        "loss {:.4}, grad norm {:.4}; {} per microbatch of {} × {per_step} microbatches + {} update ≈ {} per step{}{}",
        t.loss,
        t.grad_norm,
        secs(t.forward_backward_s),
        ctx.microbatch,
        secs(t.update_s),
        secs(step_s),
        if t.warm {
            ""
        } else {
            " (first step, includes one-time setup)"
        },
        r.facts
            .peak_rss_bytes
            .map(|b| format!("; host peak RSS {}", bytes(b as f64)))
            .unwrap_or_default()
    );
    let ok = t.loss.is_finite() && t.grad_norm.is_finite();
    r.push(Check::new(
        FORWARD_BACKWARD,
        if ok { Status::Pass } else { Status::Fail },
        detail,
    ));
}

fn memory(r: &mut PreflightReport, ctx: &Ctx, mpt: Option<&MptConfig>) {
    let Some(m) = mpt else {
        r.push(Check::skip(MEMORY, "the model is unknown"));
        return;
    };
    // What one rank allocates under the run's fsdp_config and adapter (the model `tessera plan
    // --memory` prints).
    let input = match MemoryInput::from_train_config(ctx.cfg, m, ctx.world, ctx.opts.nodes) {
        Ok(input) => input,
        Err(e) => {
            r.push(Check::new(MEMORY, Status::Fail, e.to_string()));
            return;
        }
    };
    let estimate = memory_estimate(&input).total();
    r.facts.memory_estimate_bytes = Some(estimate);
    let capacity = match (ctx.opts.device_memory, ctx.opts.device_is_host) {
        (Some(b), _) => Some((b, "--device-memory")),
        (None, true) => system::total_memory().map(|b| (b, "host RAM")),
        (None, false) => None,
    };
    r.facts.device_memory_bytes = capacity.map(|c| c.0);
    let measured = if ctx.opts.device_is_host {
        r.facts.peak_rss_bytes
    } else {
        None
    };
    r.push(checks::memory_check(estimate, capacity, measured));
}

/// Autoresume and the failure budget.
fn failures(r: &mut PreflightReport, ctx: &Ctx, save_every: Option<u64>) {
    r.push(checks::resume_check(
        ctx.cfg.autoresume,
        save_every,
        r.facts.max_steps,
    ));
    let step_time = ctx.opts.step_time_s.or(r.facts.step_time_s);
    r.facts.step_time_s = step_time;
    let (Some(step_time_s), Some(max_steps), Some(checkpoint_bytes)) =
        (step_time, r.facts.max_steps, r.facts.checkpoint_bytes)
    else {
        r.push(Check::skip(
            CHECKPOINT_INTERVAL,
            "needs a step time (measured, or --step-time) and the run length",
        ));
        return;
    };
    let input = FailureInput {
        step_time_s,
        save_every,
        max_steps,
        devices: ctx.world,
        failures_per_device_day: ctx.opts.failures_per_device_day,
        checkpoint_bytes,
        max_interval_s: ctx.opts.max_save_interval_s,
        max_loss_per_failure: ctx.opts.max_loss_per_failure,
    };
    let budget = checks::failure_budget(&input);
    r.facts.failure = Some(budget);
    r.push(checks::failure_check(&input, &budget));
}

/// Where the run will write checkpoints on this machine (as `train` resolves it: the staging
/// folder for a remote `save_folder`).
fn save_folder(cfg: &TrainConfig, opts: &PreflightOptions, run_name: &str) -> PathBuf {
    let dir = RunDir::for_run(opts.run_dir.as_deref(), run_name);
    SaveFolder::resolve(cfg.save_folder.as_deref(), run_name, &dir).local(&dir)
}
