//! The training loop.
//!
//! [`train`] reads top to bottom: build the run (fresh, or resumed from the newest checkpoint
//! that verifies), then per step: data → forward/backward → guards → update → log → eval →
//! checkpoint. The pieces it calls (`step`, `schedule`, `checkpoint`, `metrics`, `guard`) never
//! import one another. Every random stream derives from the run seed, a purpose and the step,
//! and the data position is part of every checkpoint, so a resumed run reproduces the
//! uninterrupted one bit for bit on the same backend.

pub mod checkpointing;
pub mod data;
mod log;
pub mod setup;
pub mod state;
pub mod timing;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use tessera_data::stream::StreamError;
use tessera_model::Mpt;

use crate::batch::Example;
use crate::checkpoint::CheckpointError;
use crate::guard::{NanVerdict, SpikeAction, SpikeVerdict, Watchdog};
use crate::metrics::{Incident, IncidentKind, MetricsError, RunFacts, read_jsonl, write_report};
use crate::schedule::lr_at;
use crate::step::{eval_loss, mix};

use checkpointing::{RankSnapshot, restore};
use setup::Run;
use timing::{Phase, Timing};

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("{key}: {source}")]
    Data {
        key: String,
        #[source]
        source: Box<StreamError>,
    },
    #[error(transparent)]
    Finetune(Box<crate::finetune::FinetuneError>),
    #[error("model: {0}")]
    Model(String),
    /// The LoRA adapter (`model.peft_config` or `model.pretrained_lora_id_or_path`) does not
    /// fit the model, or its folder is unreadable.
    #[error("{key}: {source}")]
    Adapter {
        key: &'static str,
        #[source]
        source: Box<tessera_model::lora::LoraError>,
    },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Store(Box<CheckpointError>),
    #[error(transparent)]
    Metrics(Box<MetricsError>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stopped at step {step}: {reason}")]
    Aborted { step: u64, reason: String },
    /// The guards gave up on a diverging run (see [`crate::guard`]).
    #[error("diverged at step {step}: {detail}")]
    Diverged { step: u64, detail: String },
    /// The watchdog saw no progress (a hung data source, collective or device).
    #[error(
        "stalled: no step finished for {stalled_for_s:.0} s (guards.watchdog.timeout_s {timeout_s:.0}); last step {last_step}"
    )]
    Stalled {
        last_step: String,
        stalled_for_s: f64,
        timeout_s: f64,
    },
    #[error(transparent)]
    Lock(#[from] crate::run_lock::LockError),
    /// A collective or the rendezvous failed (a lost, hung or mismatched rank).
    #[error(transparent)]
    Dist(tessera_dist::DistError),
    #[error(
        "{key}: token id {token} is outside the model's vocabulary ({vocab} ids); the data was \
         tokenized with a larger vocabulary than `model.vocab_size`"
    )]
    TokenOutOfRange {
        key: String,
        token: u32,
        vocab: usize,
    },
}

/// Fails on the first input id the model has no embedding for (which would otherwise be an
/// out-of-bounds panic, or a silent wrong lookup, deep inside a backend).
fn check_vocab(examples: &[Example], vocab: usize, key: &str) -> Result<(), TrainError> {
    let too_big = examples
        .iter()
        .flat_map(|e| e.input_ids.iter())
        .find(|&&t| t as usize >= vocab);
    match too_big {
        Some(&token) => Err(TrainError::TokenOutOfRange {
            key: key.to_string(),
            token,
            vocab,
        }),
        None => Ok(()),
    }
}

// The sources are boxed to keep `Result<_, TrainError>` small on the hot path.
impl From<crate::finetune::FinetuneError> for TrainError {
    fn from(e: crate::finetune::FinetuneError) -> Self {
        TrainError::Finetune(Box::new(e))
    }
}
impl From<CheckpointError> for TrainError {
    fn from(e: CheckpointError) -> Self {
        TrainError::Store(Box::new(e))
    }
}
impl From<MetricsError> for TrainError {
    fn from(e: MetricsError) -> Self {
        TrainError::Metrics(Box::new(e))
    }
}
/// What kind of failure an error is, for whoever decides whether to retry the run (the
/// `tessera` binary maps these to exit codes, and launchers restart on the transient ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The config or the data is wrong: running again changes nothing.
    BadInput,
    /// The guards stopped a diverging run: running again would diverge again.
    Diverged,
    /// Something outside the run failed and may not fail next time: a stall, a remote that did
    /// not answer, a lost peer.
    Transient,
    /// Anything else (a full disk, a corrupt file…).
    Other,
}

impl TrainError {
    /// The kind of failure (see [`Failure`]).
    pub fn failure(&self) -> Failure {
        match self {
            TrainError::Config { .. }
            | TrainError::TokenOutOfRange { .. }
            | TrainError::Finetune(_)
            | TrainError::Adapter { .. }
            | TrainError::Lock(_) => Failure::BadInput,
            TrainError::Diverged { .. } | TrainError::Aborted { .. } => Failure::Diverged,
            TrainError::Stalled { .. } => Failure::Transient,
            TrainError::Dist(e) => match e {
                tessera_dist::DistError::Mismatch { .. }
                | tessera_dist::DistError::Env(_)
                | tessera_dist::DistError::RankOutOfRange { .. }
                | tessera_dist::DistError::DuplicateRank { .. } => Failure::BadInput,
                _ => Failure::Transient,
            },
            TrainError::Data { source, .. } => match **source {
                StreamError::Remote { .. } => Failure::Transient,
                StreamError::Config { .. } | StreamError::Location { .. } => Failure::BadInput,
                _ => Failure::Other,
            },
            TrainError::Store(e) if matches!(**e, CheckpointError::Remote(_)) => Failure::Transient,
            _ => Failure::Other,
        }
    }

    /// A data error for the loader named `key`.
    pub fn data(key: impl Into<String>, source: StreamError) -> Self {
        TrainError::Data {
            key: key.into(),
            source: Box::new(source),
        }
    }
}

/// Settings that come from the command line rather than the YAML.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// The YAML file (its stem names the run when the config does not).
    pub config_path: Option<PathBuf>,
    /// The run folder (default `runs/<run_name>`).
    pub run_dir: Option<PathBuf>,
    /// "cpu (flex)", "cuda:0"…, for the report.
    pub device_label: String,
    /// Peak FLOP/s of the devices, for MFU (none: MFU is not reported).
    pub peak_flops: Option<f64>,
    /// Append the global sample ids each step trained on to `rank{r}.jsonl` in this folder
    /// (packed text data): tests use it to check that every sample is seen exactly once across
    /// resumes and world sizes.
    pub sample_log: Option<PathBuf>,
    /// This process's rank among the run's processes (composer's environment, read by the
    /// binary); `None` is a single process.
    pub ranks: Option<tessera_dist::RankEnv>,
    /// Bytes of memory the device has for training, for `device_train_microbatch_size: auto`
    /// (the binary reads it from the OS or the driver).
    pub device_memory: Option<u64>,
    /// Called (on the watchdog's thread) when the watchdog declares a stall, besides the loop
    /// returning [`TrainError::Stalled`] at its next check. A program whose main thread may be
    /// stuck for good (a hung GPU kernel) can end itself here after a grace period; the library
    /// never does.
    pub on_stall: Option<StallHook>,
}

/// See [`TrainOptions::on_stall`].
#[derive(Clone)]
pub struct StallHook(pub std::sync::Arc<dyn Fn(crate::guard::StallReport) + Send + Sync>);

impl std::fmt::Debug for StallHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StallHook")
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub tokens: u64,
    /// The train loss of the first and the last logged step.
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// The last evaluation of each eval set.
    pub eval: Vec<(String, f64)>,
    pub final_checkpoint: Option<PathBuf>,
    pub report: PathBuf,
}

/// Extra evaluation the caller runs at `eval_interval` on the inference model (ICL tasks, for
/// instance), given the step and the run's `eval/` folder; it returns named scalars to log.
pub type EvalHook<'a, B> = &'a mut dyn FnMut(
    &Mpt<<B as AutodiffBackend>::InnerBackend>,
    u64,
    &std::path::Path,
) -> Vec<(String, f64)>;

/// Trains until `max_duration`, resuming first if the config says so.
///
/// However the run ends, once it has started it leaves a complete `report.md` that says how
/// it ended; an error is returned after the report is written.
pub fn train<B: AutodiffBackend>(
    loaded: &crate::config::LoadedConfig,
    opts: &TrainOptions,
    hook: Option<EvalHook<'_, B>>,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    // Armed before setup: a data source or device that hangs while the run starts is a stall
    // too. It only marks the stall; the loop below turns it into an error.
    let watchdog = loaded.config.guards.watchdog.map(|cfg| {
        let hook = opts.on_stall.clone();
        Watchdog::spawn(Duration::from_secs_f64(cfg.timeout_s), move |r| {
            // A thread blocked on a silent remote returns now, and the loop stops the run.
            tessera_data::remote::cancel_waits();
            if let Some(h) = hook {
                (h.0)(r)
            }
        })
    });
    let check_stall = |w: &Option<Watchdog>| match w.as_ref().and_then(|w| w.handle().stalled()) {
        Some(r) => Err(stall_error(&r)),
        None => Ok(()),
    };
    let mut run = Run::<B>::start(loaded, opts, device)?;
    check_stall(&watchdog)?;
    let mut timing = Timing::default();
    timing.add(Phase::Setup, started);
    let elapsed_before = run.state.elapsed_s;
    let mut hook = hook;
    let elapsed = || elapsed_before + started.elapsed().as_secs_f64();

    let outcome = (|| -> Result<(), TrainError> {
        if run.config.eval_first && run.state.step == 0 {
            let t = Instant::now();
            evaluate(&mut run, &mut hook, device)?;
            timing.add(Phase::Eval, t);
        }
        while run.state.step < run.max_steps {
            if let Some(w) = &watchdog {
                w.handle().heartbeat(run.state.step);
            }
            let t = Instant::now();
            let examples = run.train.next_batch()?;
            check_stall(&watchdog)?;
            if let (Some(path), Some(ids)) = (&opts.sample_log, run.train.last_sample_ids()) {
                let comm = &run.sharded.comm;
                log_samples(
                    path,
                    run.state.step + 1,
                    comm.rank(),
                    comm.world_size(),
                    ids,
                )?;
            }
            check_vocab(&examples, run.model_config.vocab_size, "train_loader")?;
            timing.add(Phase::Data, t);
            let step_started = Instant::now();
            let micro = microbatches(examples.clone(), run.microbatch);
            // Microbatch i of rank r is microbatch r·k + i of the whole step (its dropout seed).
            let first_micro = run.sharded.comm.rank() * micro.len();
            let lr = lr_at(run.state.step, &run.schedule);
            let dropout_seed = mix(mix(run.state.seed, DROPOUT), run.state.step);
            run.sharded.reset_comm_time();
            let grads = run
                .sharded
                .forward_backward(&micro, first_micro, dropout_seed, device)
                .map_err(TrainError::Dist)?;
            check_stall(&watchdog)?;

            let step = run.state.step + 1;
            let (loss, tokens) = (grads.loss, grads.tokens);
            let mut grad_norm = f64::NAN;
            let judgement = judge(&mut run, step, loss, tokens)?;
            let normal = matches!(judgement, Judgement::Apply)
                && run.spike.as_ref().is_none_or(|s| s.consecutive == 0);
            match judgement {
                Judgement::Apply => {
                    let clip = run
                        .config
                        .gradient_clipping
                        .as_ref()
                        .map(|c| c.clipping_threshold);
                    let applied = run
                        .sharded
                        .apply(grads, lr, clip)
                        .map_err(TrainError::Dist)?;
                    grad_norm = applied.grad_norm;
                    if !applied.applied
                        && let Some(ck) = nan_step(&mut run, step, loss, grad_norm, tokens)?
                    {
                        rollback(&mut run, step, ck, device)?;
                        continue;
                    }
                }
                Judgement::Skip => {}
                Judgement::Rollback(ck) => {
                    rollback(&mut run, step, ck, device)?;
                    continue;
                }
            }
            timing.step(step_started.elapsed(), tokens);
            run.state.step = step;
            run.state.samples += (examples.len() * run.sharded.comm.world_size()) as u64;
            run.state.tokens += tokens;
            if run.state.rollbacks_in_a_row > 0 {
                // The budget is whole again once the run has trained a whole spike window of
                // normal steps past the step that triggered the last rollback.
                let healthy = &mut run.state.healthy_past_trigger;
                *healthy = if normal && step > run.state.rollback_trigger_step {
                    *healthy + 1
                } else {
                    0
                };
                let window = run.spike.as_ref().map_or(10, |s| s.config.window as u32);
                if *healthy >= window {
                    run.state.rollbacks_in_a_row = 0;
                    *healthy = 0;
                }
            }
            let comm_s = run.sharded.comm_seconds();
            run.log
                .step(step, run.state.tokens, loss, lr, grad_norm, comm_s)?;

            if run.eval_every.is_some_and(|n| step % n == 0) || step == run.max_steps {
                let t = Instant::now();
                evaluate(&mut run, &mut hook, device)?;
                timing.add(Phase::Eval, t);
            }
            if run.save_every.is_some_and(|n| step % n == 0) || step == run.max_steps {
                let t = Instant::now();
                save(&mut run, elapsed())?;
                timing.add(Phase::Checkpoint, t);
            }
        }
        Ok(())
    })();
    if let Some(w) = watchdog {
        w.stop();
    }
    if let Err(e) = &outcome {
        let kind = match e {
            TrainError::Diverged { .. } => IncidentKind::Diverged,
            TrainError::Stalled { .. } => IncidentKind::Stall,
            TrainError::Dist(_) => IncidentKind::RankFailure,
            _ => IncidentKind::Abort,
        };
        let step = match e {
            TrainError::Diverged { step, .. } => *step,
            _ => run.state.step,
        };
        let mut incident = Incident::now(step, kind, e.to_string());
        if let TrainError::Dist(d) = e {
            incident.rank = d.failed_rank().map(|r| r as u64);
        }
        // Best effort: the run is already failing, and the original error is what to report.
        let _ = run.log.incident(incident);
    }
    let t = Instant::now();
    let saved = run.checkpoints.wait();
    timing.add(Phase::Checkpoint, t);
    let dir = run.dir.root().to_path_buf();
    let stop_reason = outcome.as_ref().err().map(ToString::to_string);
    let summary = finish(run, elapsed(), opts, stop_reason);
    outcome?;
    saved?;
    let summary = summary?;
    timing.total_s = started.elapsed().as_secs_f64();
    timing.write(&dir)?;
    Ok(summary)
}

/// Purposes of derived random streams.
const DROPOUT: u64 = 0xd20;

/// How long rank 0 waits for the other ranks' parts of a checkpoint before it gives up on the
/// save (the write of one shard of a very large model to slow storage fits in it).
const COMMIT_WAIT: Duration = Duration::from_secs(1800);

/// This rank's batch as `k`-sequence microbatches, taken with a stride: microbatch `i` holds
/// sequences `i, i + n/k, i + 2n/k, …`. streaming deals a node's samples to its ranks the same
/// way, so one process's microbatch `r` of a global batch is what rank `r` of a run with as many
/// ranks as microbatches gets, and the two runs add the same gradients in the same order.
pub fn microbatches(examples: Vec<Example>, k_size: usize) -> Vec<Vec<Example>> {
    let n = examples.len();
    let count = n.div_ceil(k_size.max(1)).max(1);
    let mut out: Vec<Vec<Example>> = (0..count).map(|_| Vec::new()).collect();
    for (j, e) in examples.into_iter().enumerate() {
        out[j % count].push(e);
    }
    out.retain(|m| !m.is_empty());
    out
}

enum Judgement {
    Apply,
    Skip,
    /// Restore this checkpoint (from before the trouble began) and go on reading new data.
    Rollback(crate::checkpoint::Resumable),
}

/// Consults the NaN guard and the spike detector about a step's loss, before its update.
fn judge<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    loss: f64,
    tokens: u64,
) -> Result<Judgement, TrainError> {
    if !loss.is_finite() {
        return Ok(match nan_step(run, step, loss, f64::NAN, tokens)? {
            Some(ck) => Judgement::Rollback(ck),
            None => Judgement::Skip,
        });
    }
    let Some(spike) = run.spike.as_mut() else {
        return Ok(Judgement::Apply);
    };
    let factor = spike.config.factor;
    match spike.observe(loss) {
        SpikeVerdict::Normal | SpikeVerdict::Outlier { .. } => Ok(Judgement::Apply),
        SpikeVerdict::Escalate { losses, mean } => {
            let what = format!(
                "{} losses in a row above {factor:.1}× the recent mean {mean:.4}: {}",
                losses.len(),
                format_losses(&losses)
            );
            let ck = escalate(run, step, losses.len() as u64, what)?;
            Ok(Judgement::Rollback(ck))
        }
        SpikeVerdict::Triggered {
            action,
            loss,
            mean,
            consecutive,
        } => {
            let what = format!(
                "loss {loss:.4} is above {factor:.1}× the recent mean {mean:.4} ({consecutive} in a row)"
            );
            match action {
                SpikeAction::Log => {
                    run.log.note(step, IncidentKind::LossSpike, what)?;
                    Ok(Judgement::Apply)
                }
                SpikeAction::Skip => {
                    skipped(
                        run,
                        step,
                        tokens,
                        IncidentKind::LossSpike,
                        format!("{what}; batch skipped"),
                    )?;
                    Ok(Judgement::Skip)
                }
                SpikeAction::Rollback => {
                    let ck = escalate(run, step, consecutive.into(), what)?;
                    Ok(Judgement::Rollback(ck))
                }
            }
        }
    }
}

/// Records a step whose update was not applied: one step and its tokens lost.
fn skipped<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    tokens: u64,
    kind: IncidentKind,
    detail: String,
) -> Result<(), TrainError> {
    let mut incident = Incident::now(step, kind, detail);
    incident.lost_steps = 1;
    incident.lost_tokens = tokens;
    run.log.incident(incident)
}

/// A non-finite loss or gradient: the update was skipped; after too many in a row the run
/// escalates. Returns the checkpoint to roll back to, if it must.
fn nan_step<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    loss: f64,
    norm: f64,
    tokens: u64,
) -> Result<Option<crate::checkpoint::Resumable>, TrainError> {
    match run.nan.check(loss, norm) {
        NanVerdict::Ok => Ok(None),
        NanVerdict::Skip { consecutive, total } => {
            skipped(
                run,
                step,
                tokens,
                IncidentKind::SkippedStep,
                format!(
                    "loss {loss}, grad norm {norm}: update skipped ({consecutive} in a row, {total} in the run)"
                ),
            )?;
            Ok(None)
        }
        NanVerdict::Escalate { consecutive } => escalate(
            run,
            step,
            consecutive.into(),
            format!("{consecutive} non-finite steps in a row (last loss {loss}, grad norm {norm})"),
        )
        .map(Some),
    }
}

/// The run is diverging (the last `streak` steps were bad): returns the newest checkpoint from
/// before the streak began, while the rollback budget allows, else stops the run with
/// [`TrainError::Diverged`].
fn escalate<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    streak: u64,
    what: String,
) -> Result<crate::checkpoint::Resumable, TrainError> {
    let budget = run.config.guards.max_rollbacks;
    let used = run.state.rollbacks_in_a_row;
    let began = step.saturating_sub(streak.saturating_sub(1));
    run.checkpoints.wait()?;
    let (before, _) = run.checkpoints.store().newest_verified_before(began)?;
    match before {
        Some(ck) if used < budget => {
            run.log.note(
                step,
                IncidentKind::LossSpike,
                format!(
                    "{what}; rolling back to ba{} from before step {began} (rollback {} of {budget} in a row)",
                    ck.step,
                    used + 1
                ),
            )?;
            run.state.rollbacks_in_a_row = used + 1;
            run.state.rollback_trigger_step = run.state.rollback_trigger_step.max(step);
            Ok(ck)
        }
        found => {
            let why = match found {
                Some(_) => {
                    format!("after {used} rollbacks in a row (guards.max_rollbacks: {budget})")
                }
                None => format!("with no checkpoint from before step {began} to roll back to"),
            };
            Err(TrainError::Diverged {
                step,
                detail: format!("{what}; stopping {why}"),
            })
        }
    }
}

/// Up to the last 8 of `losses`, for messages.
fn format_losses(losses: &[f64]) -> String {
    let tail = &losses[losses.len().saturating_sub(8)..];
    let shown: Vec<String> = tail.iter().map(|l| format!("{l:.4}")).collect();
    if tail.len() < losses.len() {
        format!("…, {}", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Restores the newest checkpoint's model and optimizer but keeps reading data from here, so
/// the batches that caused the trouble are skipped (as PaLM's recovery does). The guards'
/// rollback budget carries over.
fn rollback<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    ck: crate::checkpoint::Resumable,
    device: &B::Device,
) -> Result<(), TrainError> {
    let layout = run.sharded.layout.clone();
    let rank = run.sharded.shard_rank();
    let r = restore::<B>(&ck.dir, &layout, rank, run.sharded.optim, device)?;
    let mut incident = Incident::now(
        step,
        IncidentKind::Rollback,
        format!("rolled back to {}", ck.dir.display()),
    );
    incident.lost_steps = step.saturating_sub(r.train.step);
    incident.lost_tokens = run.state.tokens.saturating_sub(r.train.tokens);
    run.log.incident(incident)?;
    run.sharded.set_state(r.state).map_err(TrainError::Dist)?;
    // The guards judge from the checkpoint's window again (from before the trouble), and keep
    // counting rollbacks.
    run.spike = r.train.spike.clone();
    run.nan = r.train.nan_guard.clone();
    run.state = crate::trainer::state::TrainState {
        data: run.train.state(),
        rollbacks_in_a_row: run.state.rollbacks_in_a_row,
        rollback_trigger_step: run.state.rollback_trigger_step,
        healthy_past_trigger: 0,
        ..r.train
    };
    run.log.pause_throughput();
    Ok(())
}

/// One line of the sample log: `{"step", "rank", "world", "ids"}`.
fn log_samples(
    dir: &std::path::Path,
    step: u64,
    rank: usize,
    world: usize,
    ids: &[i64],
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let line = serde_json::json!({"step": step, "rank": rank, "world": world, "ids": ids});
    crate::metrics::JsonlWriter::open(dir.join(format!("rank{rank}.jsonl")))?.append(&line)?;
    Ok(())
}

fn stall_error(r: &crate::guard::StallReport) -> TrainError {
    TrainError::Stalled {
        last_step: r
            .last_step
            .map_or("none (stalled during setup)".into(), |s| s.to_string()),
        stalled_for_s: r.stalled_for.as_secs_f64(),
        timeout_s: r.timeout.as_secs_f64(),
    }
}

/// Eval loss and perplexity on every eval set, then the caller's hook.
fn evaluate<B: AutodiffBackend>(
    run: &mut Run<B>,
    hook: &mut Option<EvalHook<'_, B>>,
    device: &B::Device,
) -> Result<(), TrainError> {
    // Under FULL_SHARD every rank gathers the whole model for evaluation.
    let inner = run.sharded.full_model().map_err(TrainError::Dist)?.valid();
    let inner_device = device.clone();
    let step = run.state.step;
    for i in 0..run.evals.len() {
        let (label, data) = &mut run.evals[i];
        data.rewind()?;
        // Each rank evaluates its partition of the eval set; the sums are added over ranks.
        let mut totals = [0.0f64, 0.0];
        let mut batches = 0usize;
        while data.remaining_in_epoch() > 0 && run.eval_batches.is_none_or(|m| batches < m) {
            let examples = data.next_eval_batch()?;
            check_vocab(&examples, run.model_config.vocab_size, label)?;
            let (s, k) = eval_loss(&inner, &examples, &inner_device);
            totals[0] += s;
            totals[1] += k as f64;
            batches += 1;
        }
        run.sharded
            .comm
            .all_reduce(&mut totals)
            .map_err(TrainError::Dist)?;
        let label = label.clone();
        if totals[1] > 0.0 {
            run.log
                .eval(step, run.state.tokens, &label, totals[0] / totals[1])?;
        }
    }
    if let Some(h) = hook {
        // Extra evaluations (ICL) run on rank 0; the others wait for it.
        if run.lead() {
            let extra = h(&inner, step, &run.dir.eval());
            run.log.scalars(step, &extra)?;
        }
        run.sharded.comm.barrier().map_err(TrainError::Dist)?;
    }
    run.log.pause_throughput();
    Ok(())
}

/// Copies the state to the host and hands it to the checkpoint thread.
fn save<B: AutodiffBackend>(run: &mut Run<B>, elapsed_s: f64) -> Result<(), TrainError> {
    let state = run.checkpoint_state(elapsed_s);
    let last = state.step >= run.max_steps;
    let snapshot = RankSnapshot::take(
        &run.sharded,
        &run.model_config,
        &state,
        run.consolidate_every_save || last,
        run.adapter_config.as_ref(),
    )?;
    let attempt = run.attempt.clone();
    let wait = COMMIT_WAIT;
    run.checkpoints.spawn(state.step, move |store| {
        snapshot.write(store, &attempt, wait)
    })?;
    Ok(())
}

/// Writes the final plot and report.
fn finish<B: AutodiffBackend>(
    run: Run<B>,
    wall_s: f64,
    opts: &TrainOptions,
    stop_reason: Option<String>,
) -> Result<TrainSummary, TrainError> {
    run.log.finish();
    run.log.plot()?;
    let final_checkpoint = run
        .checkpoints
        .store()
        .list()?
        .last()
        .map(|(_, p)| p.clone());
    let facts = RunFacts {
        run_name: run.run_name.clone(),
        model: format!(
            "MPT, {} parameters, d_model {}, {} layers, {} heads, vocab {}",
            run.model_config.num_params(),
            run.model_config.d_model,
            run.model_config.n_layers,
            run.model_config.n_heads,
            run.model_config.vocab_size
        ),
        device: opts.device_label.clone(),
        precision: run.config.precision.to_string(),
        max_steps: run.max_steps,
        wall_s,
        completed: run.state.step >= run.max_steps && stop_reason.is_none(),
        stop_reason,
        final_checkpoint: final_checkpoint.as_ref().map(|p| p.display().to_string()),
    };
    // Rank 0 keeps the run's record; the other ranks only report how far they got.
    let metrics = if run.lead() {
        let metrics = read_jsonl(run.dir.metrics())?;
        let incidents = read_jsonl(run.dir.incidents())?;
        write_report(&run.dir.report(), &facts, &metrics, &incidents)?;
        metrics
    } else {
        Vec::new()
    };
    let curve = run.log.train_curve();
    let mut eval = Vec::new();
    for (label, _) in &run.evals {
        if let Some(crate::metrics::MetricsRecord::Eval(e)) = metrics
            .iter()
            .rev()
            .find(|m| matches!(m, crate::metrics::MetricsRecord::Eval(e) if &e.label == label))
        {
            eval.push((label.clone(), e.loss));
        }
    }
    Ok(TrainSummary {
        run_dir: run.dir.root().to_path_buf(),
        steps: run.state.step,
        tokens: run.state.tokens,
        first_loss: curve.first().map(|c| c.1),
        last_loss: curve.last().map(|c| c.1),
        eval,
        final_checkpoint,
        report: run.dir.report(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_beyond_the_vocabulary_is_an_error_naming_the_loader() {
        let ok = vec![Example::packed(vec![0, 5, 99], None)];
        assert!(check_vocab(&ok, 100, "train_loader").is_ok());
        let bad = vec![ok[0].clone(), Example::packed(vec![3, 100, 7], None)];
        let err = check_vocab(&bad, 100, "eval_loader")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "eval_loader: token id 100 is outside the model's vocabulary (100 ids)"
            ),
            "{err}"
        );
    }
}
