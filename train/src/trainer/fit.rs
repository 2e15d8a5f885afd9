//! The training loop, the one behind both [`super::Trainer::fit`] (batches from the caller)
//! and [`super::Trainer::run`] (a YAML run). Per step: data → forward/backward → guards →
//! update → log → callbacks → eval → checkpoint. Each stage is handed the parts it uses.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use tessera_model::MptConfig;

use crate::batch::Example;
use crate::guard::{StallReport, Watchdog, WatchdogConfig};
use crate::metrics::{Incident, IncidentKind};
use crate::parallel::Sharded;
use crate::step::{StepOutcome, train_step};

use super::data::Loader;
use super::evaluation::{EvalSet, ModelEval, evaluate};
use super::log::RunLog;
use super::plan::StepPlan;
use super::recovery::{Guards, Hold};
use super::saving::Saver;
use super::state::TrainState;
use super::timing::{Phase, Timing};
use super::{
    CheckpointInfo, Control, EvalInfo, StallHook, StepInfo, TrainError, check_vocab, microbatches,
};

/// Where a step's batch comes from.
pub(crate) enum Batches<'a> {
    /// The YAML run's `train_loader`: endless (epoch after epoch), and its position is part of
    /// every checkpoint.
    Loader(Box<Loader>),
    /// The caller's batches, one per step; the run ends when they do.
    Caller(Box<dyn Iterator<Item = Result<Vec<Example>, TrainError>> + 'a>),
}

impl Batches<'_> {
    /// The next step's batch for this rank; `None` when the caller's batches ran out.
    fn next(&mut self) -> Option<Result<Vec<Example>, TrainError>> {
        match self {
            Batches::Loader(l) => Some(l.next_batch()),
            Batches::Caller(it) => it.next(),
        }
    }
}

/// A callback and what it sees.
pub(crate) type Hook<'a, T> = Box<dyn FnMut(&T) -> Control + 'a>;

/// The caller's callbacks.
pub(crate) struct Hooks<'a, B: AutodiffBackend> {
    pub on_step: Vec<Hook<'a, StepInfo>>,
    pub on_eval: Vec<Hook<'a, EvalInfo>>,
    pub on_checkpoint: Vec<Hook<'a, CheckpointInfo>>,
    /// Evaluation of the model beyond the loss (ICL tasks), at every evaluation.
    pub model_eval: Option<ModelEval<'a, B>>,
}

impl<B: AutodiffBackend> Default for Hooks<'_, B> {
    fn default() -> Self {
        Self {
            on_step: Vec::new(),
            on_eval: Vec::new(),
            on_checkpoint: Vec::new(),
            model_eval: None,
        }
    }
}

/// Runs every hook; true if any asked to stop.
fn call<T>(hooks: &mut [Hook<'_, T>], info: &T) -> bool {
    let mut stop = false;
    for h in hooks.iter_mut() {
        stop |= h(info) == Control::Stop;
    }
    stop
}

/// Everything the loop works with, each part built once (by [`super::setup`] for a YAML run,
/// by [`super::Trainer::fit`] otherwise).
pub(crate) struct Parts<'a, B: AutodiffBackend> {
    pub sharded: Sharded<B>,
    pub model_config: MptConfig,
    pub plan: StepPlan,
    pub batches: Batches<'a>,
    pub evals: Vec<EvalSet>,
    pub guards: Guards,
    pub saver: Saver,
    /// Steps, samples and tokens so far, the data position, the seed: what a checkpoint saves.
    pub state: TrainState,
    pub log: RunLog,
    pub hooks: Hooks<'a, B>,
    /// Armed for a YAML run with `guards.watchdog` (before its setup, so that a hang while
    /// starting counts too).
    pub watchdog: Option<Watchdog>,
    /// Append each step's global sample ids to `rank{r}.jsonl` in this folder.
    pub sample_log: Option<PathBuf>,
}

/// How the loop ended, with the parts the caller finishes the run with.
pub(crate) struct Ended<B: AutodiffBackend> {
    /// `Err` when the run failed (the incident is already logged).
    pub outcome: Result<(), TrainError>,
    pub sharded: Sharded<B>,
    pub state: TrainState,
    pub log: RunLog,
    pub saver: Saver,
    pub evals: Vec<EvalSet>,
    pub timing: Timing,
    pub last: Option<StepOutcome>,
    pub eval_infos: Vec<EvalInfo>,
    pub checkpoints: Vec<PathBuf>,
    pub stopped_by_callback: bool,
}

/// Trains until `plan.max_steps`, the end of the caller's batches, or a callback's stop; then
/// waits for the last checkpoint. `started`: when this launch of the run began (its setup
/// counts towards the run's time).
pub(crate) fn run_loop<B: AutodiffBackend>(
    parts: Parts<'_, B>,
    started: Instant,
    mut timing: Timing,
    device: &B::Device,
) -> Ended<B> {
    let Parts {
        mut sharded,
        model_config,
        plan,
        mut batches,
        mut evals,
        mut guards,
        mut saver,
        mut state,
        mut log,
        mut hooks,
        watchdog,
        sample_log,
    } = parts;
    let elapsed_before = state.elapsed_s;
    let mut last = None;
    let mut eval_infos = Vec::new();
    let mut checkpoints = Vec::new();
    let mut stop = false;
    let check_stall = || check_stall(watchdog.as_ref());

    let mut outcome = (|| -> Result<(), TrainError> {
        if plan.eval_first && state.step == 0 {
            let t = Instant::now();
            let infos = evaluate(
                &mut sharded,
                &mut evals,
                plan.eval_batches,
                hooks.model_eval.as_mut(),
                0,
                0,
                &mut log,
                device,
            )?;
            stop |= infos.iter().any(|i| call(&mut hooks.on_eval, i));
            eval_infos.extend(infos);
            timing.add(Phase::Eval, t);
        }
        while state.step < plan.max_steps && !stop {
            if let Some(w) = &watchdog {
                w.handle().heartbeat(state.step);
            }
            // Data.
            let t = Instant::now();
            let Some(examples) = batches.next() else {
                break;
            };
            let examples = examples?;
            check_stall()?;
            let step = state.step + 1;
            if examples.is_empty() {
                return Err(TrainError::Config {
                    key: "batches".into(),
                    message: format!(
                        "batch {step} is empty: every step needs at least one sequence"
                    ),
                });
            }
            check_vocab(&examples, model_config.vocab_size, "train_loader")?;
            if let Batches::Loader(loader) = &batches {
                state.data = loader.state();
                if let (Some(dir), Some(ids)) = (&sample_log, loader.last_sample_ids()) {
                    let comm = &sharded.comm;
                    log_samples(dir, step, comm.rank(), comm.world_size(), ids)?;
                }
            }
            timing.add(Phase::Data, t);

            // Forward, backward, the guards' verdict, the update.
            let step_started = Instant::now();
            let sequences = examples.len();
            let micro = microbatches(examples, plan.microbatch);
            let settings = plan.settings(state.step);
            let mut normal = false;
            let (out, held) =
                train_step(&mut sharded, &micro, settings, device, |loss, tokens| {
                    let verdict = guards.judge(step, loss, tokens, &mut log, &mut saver)?;
                    normal = matches!(verdict, crate::step::Verdict::Apply) && !guards.in_spike();
                    Ok::<_, TrainError>(verdict)
                })?;
            check_stall()?;
            // An update the optimizer refused (a non-finite gradient) is the NaN guard's too.
            let held = match held {
                None if !out.applied => guards
                    .non_finite(
                        step,
                        out.loss,
                        out.grad_norm,
                        out.tokens,
                        &mut log,
                        &mut saver,
                    )?
                    .map(Hold::Rollback),
                held => held,
            };
            if let Some(Hold::Rollback(ck)) = held {
                guards.roll_back(step, ck, &mut sharded, &mut state, &mut log, device)?;
                continue;
            }
            timing.step(step_started.elapsed(), out.tokens);
            state.step = step;
            state.samples += (sequences * sharded.comm.world_size()) as u64;
            state.tokens += out.tokens;
            guards.step_done(step, normal);
            last = Some(out);

            // Log and callbacks.
            log.step(
                step,
                state.tokens,
                out.loss,
                settings.lr,
                out.grad_norm,
                out.comm_s,
            )?;
            let info = StepInfo {
                step,
                lr: settings.lr,
                outcome: out,
            };
            stop |= call(&mut hooks.on_step, &info);

            // Eval and checkpoint.
            let ending = stop || step == plan.max_steps;
            if plan.evaluates_after(step, ending) {
                let t = Instant::now();
                let infos = evaluate(
                    &mut sharded,
                    &mut evals,
                    plan.eval_batches,
                    hooks.model_eval.as_mut(),
                    step,
                    state.tokens,
                    &mut log,
                    device,
                )?;
                stop |= infos.iter().any(|i| call(&mut hooks.on_eval, i));
                eval_infos.extend(infos);
                timing.add(Phase::Eval, t);
            }
            let ending = stop || step == plan.max_steps;
            if plan.saves_after(step, ending) {
                let t = Instant::now();
                state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                guards.write_into(&mut state);
                if let Some(path) = saver.save(&mut sharded, &model_config, &state, ending)? {
                    checkpoints.push(path.clone());
                    stop |= call(&mut hooks.on_checkpoint, &CheckpointInfo { step, path });
                }
                timing.add(Phase::Checkpoint, t);
            }
        }
        Ok(())
    })();
    if let Some(w) = watchdog {
        w.stop();
    }
    if let Err(e) = &outcome {
        log_failure(&mut log, e, state.step);
    }
    let t = Instant::now();
    let saved = saver.wait();
    timing.add(Phase::Checkpoint, t);
    if outcome.is_ok() {
        outcome = saved;
    }
    state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
    guards.write_into(&mut state);
    Ended {
        outcome,
        sharded,
        state,
        log,
        saver,
        evals,
        timing,
        last,
        eval_infos,
        checkpoints,
        stopped_by_callback: stop,
    }
}

/// Records why the run failed in its incidents (best effort: the run is already failing, and
/// the original error is what to report).
fn log_failure(log: &mut RunLog, e: &TrainError, at_step: u64) {
    let kind = match e {
        TrainError::Diverged { .. } => IncidentKind::Diverged,
        TrainError::Stalled { .. } => IncidentKind::Stall,
        TrainError::Dist(_) => IncidentKind::RankFailure,
        _ => IncidentKind::Abort,
    };
    let step = match e {
        TrainError::Diverged { step, .. } => *step,
        _ => at_step,
    };
    let mut incident = Incident::now(step, kind, e.to_string());
    if let TrainError::Dist(d) = e {
        incident.rank = d.failed_rank().map(|r| r as u64);
    }
    let _ = log.incident(incident);
}

/// Starts the stall watchdog `cfg` asks for. On a stall it makes a thread blocked on a silent
/// remote return (the loop then stops the run at its next check) and calls `hook`.
pub(crate) fn arm_watchdog(
    cfg: Option<WatchdogConfig>,
    hook: Option<StallHook>,
) -> Option<Watchdog> {
    cfg.map(|cfg| {
        Watchdog::spawn(Duration::from_secs_f64(cfg.timeout_s), move |r| {
            tessera_data::remote::cancel_waits();
            if let Some(h) = hook {
                (h.0)(r)
            }
        })
    })
}

/// [`TrainError::Stalled`] once the watchdog has declared a stall.
pub(crate) fn check_stall(watchdog: Option<&Watchdog>) -> Result<(), TrainError> {
    match watchdog.and_then(|w| w.handle().stalled()) {
        Some(r) => Err(stall_error(&r)),
        None => Ok(()),
    }
}

/// The error for a stall the watchdog saw.
fn stall_error(r: &StallReport) -> TrainError {
    TrainError::Stalled {
        last_step: r
            .last_step
            .map_or("none (stalled during setup)".into(), |s| s.to_string()),
        stalled_for_s: r.stalled_for.as_secs_f64(),
        timeout_s: r.timeout.as_secs_f64(),
    }
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
