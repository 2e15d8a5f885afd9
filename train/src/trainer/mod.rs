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
use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::guard::{NanVerdict, SpikeAction, SpikeVerdict, WATCHDOG_EXIT_CODE, Watchdog};
use crate::metrics::{Incident, IncidentKind, MetricsError, RunFacts, read_jsonl, write_report};
use crate::schedule::lr_at;
use crate::step::{apply_update, eval_loss, forward_backward, mix};

use checkpointing::{HostSnapshot, restore};
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
impl TrainError {
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
pub fn train<B: AutodiffBackend>(
    loaded: &crate::config::LoadedConfig,
    opts: &TrainOptions,
    hook: Option<EvalHook<'_, B>>,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let mut hook = hook;
    let mut run = Run::<B>::start(loaded, opts, device)?;
    let mut timing = Timing::default();
    timing.add(Phase::Setup, started);
    let elapsed_before = run.state.elapsed_s;
    let watchdog = spawn_watchdog(&run);

    if run.config.eval_first && run.state.step == 0 {
        let t = Instant::now();
        evaluate(&mut run, &mut hook, device)?;
        timing.add(Phase::Eval, t);
    }
    while run.state.step < run.max_steps {
        watchdog
            .as_ref()
            .inspect(|w| w.handle().heartbeat(run.state.step));
        let t = Instant::now();
        let examples = run.train.next_batch()?;
        check_vocab(&examples, run.model_config.vocab_size, "train_loader")?;
        timing.add(Phase::Data, t);
        let step_started = Instant::now();
        let micro: Vec<Vec<Example>> = examples
            .chunks(run.microbatch)
            .map(<[Example]>::to_vec)
            .collect();
        let lr = lr_at(run.state.step, &run.schedule);
        let dropout_seed = mix(mix(run.state.seed, DROPOUT), run.state.step);
        let grads = forward_backward(&run.model, &micro, dropout_seed, device);

        let step = run.state.step + 1;
        let (loss, tokens) = grads.as_ref().map_or((f64::NAN, 0), |g| (g.loss, g.tokens));
        let mut grad_norm = f64::NAN;
        match judge(&mut run, step, loss)? {
            Judgement::Apply => {
                if let Some(g) = grads {
                    let model = run.model.clone();
                    let (model, norm, applied) = apply_update(
                        model,
                        &mut run.optim,
                        g,
                        lr,
                        run.config
                            .gradient_clipping
                            .as_ref()
                            .map(|c| c.clipping_threshold),
                    );
                    run.model = model;
                    grad_norm = norm;
                    if !applied {
                        nan_step(&mut run, step, loss, norm)?;
                    }
                }
            }
            Judgement::Skip => {}
            Judgement::Rollback => {
                rollback(&mut run, step, device)?;
                continue;
            }
        }
        timing.step(step_started.elapsed(), tokens as u64);
        run.state.step = step;
        run.state.samples += examples.len() as u64;
        run.state.tokens += tokens as u64;
        run.log.step(step, run.state.tokens, loss, lr, grad_norm)?;

        if run.eval_every.is_some_and(|n| step % n == 0) || step == run.max_steps {
            let t = Instant::now();
            evaluate(&mut run, &mut hook, device)?;
            timing.add(Phase::Eval, t);
        }
        if run.save_every.is_some_and(|n| step % n == 0) || step == run.max_steps {
            let t = Instant::now();
            save(&mut run, elapsed_before + started.elapsed().as_secs_f64())?;
            timing.add(Phase::Checkpoint, t);
        }
    }
    if let Some(w) = watchdog {
        w.stop();
    }
    let t = Instant::now();
    run.checkpoints.wait()?;
    timing.add(Phase::Checkpoint, t);
    let dir = run.dir.root().to_path_buf();
    let summary = finish(run, elapsed_before + started.elapsed().as_secs_f64(), opts)?;
    timing.total_s = started.elapsed().as_secs_f64();
    timing.write(&dir)?;
    Ok(summary)
}

/// Purposes of derived random streams.
const DROPOUT: u64 = 0xd20;

enum Judgement {
    Apply,
    Skip,
    Rollback,
}

/// Consults the NaN guard and the spike detector about a step's loss, before its update.
fn judge<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    loss: f64,
) -> Result<Judgement, TrainError> {
    if !loss.is_finite() {
        nan_step(run, step, loss, f64::NAN)?;
        return Ok(Judgement::Skip);
    }
    let Some(spike) = run.spike.as_mut() else {
        return Ok(Judgement::Apply);
    };
    match spike.observe(loss) {
        SpikeVerdict::Normal | SpikeVerdict::Outlier { .. } => Ok(Judgement::Apply),
        SpikeVerdict::Triggered {
            action,
            loss,
            mean,
            consecutive,
        } => {
            let what = format!(
                "loss {loss:.4} is above {:.1}× the recent mean {mean:.4} ({consecutive} in a row)",
                spike.config.factor
            );
            match action {
                SpikeAction::Log => {
                    run.log.note(step, IncidentKind::LossSpike, what)?;
                    Ok(Judgement::Apply)
                }
                SpikeAction::Skip => {
                    run.log.note(
                        step,
                        IncidentKind::LossSpike,
                        format!("{what}; batch skipped"),
                    )?;
                    Ok(Judgement::Skip)
                }
                SpikeAction::Rollback => {
                    run.log.note(
                        step,
                        IncidentKind::LossSpike,
                        format!("{what}; rolling back"),
                    )?;
                    Ok(Judgement::Rollback)
                }
            }
        }
    }
}

/// A non-finite loss or gradient: the update was skipped; stop after too many in a row.
fn nan_step<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    loss: f64,
    norm: f64,
) -> Result<(), TrainError> {
    match run.nan.check(loss, norm) {
        NanVerdict::Ok => Ok(()),
        NanVerdict::Skip { consecutive, total } => run.log.note(
            step,
            IncidentKind::SkippedStep,
            format!("loss {loss}, grad norm {norm}: update skipped ({consecutive} in a row, {total} in the run)"),
        ),
        NanVerdict::Abort { consecutive } => {
            let reason = format!("{consecutive} non-finite steps in a row");
            run.log.note(step, IncidentKind::Abort, reason.clone())?;
            Err(TrainError::Aborted { step, reason })
        }
    }
}

/// Restores the newest checkpoint's model and optimizer but keeps reading data from here, so
/// the batches that caused the spike are skipped (as PaLM's recovery does).
fn rollback<B: AutodiffBackend>(
    run: &mut Run<B>,
    step: u64,
    device: &B::Device,
) -> Result<(), TrainError> {
    run.checkpoints.wait()?;
    let (newest, _) = run.checkpoints.store().newest_verified()?;
    let Some(ck) = newest else {
        run.log.note(
            step,
            IncidentKind::Rollback,
            "no checkpoint to roll back to; the batch is skipped instead",
        )?;
        run.state.step = step;
        return Ok(());
    };
    let r = restore::<B>(
        &ck.dir,
        &run.model_config,
        run.optim_kind,
        run.config.optimizer.init::<B, Mpt<B>>(),
        device,
    )?;
    let mut incident = Incident::now(
        step,
        IncidentKind::Rollback,
        format!("rolled back to {}", ck.dir.display()),
    );
    incident.lost_steps = step.saturating_sub(r.state.step);
    incident.lost_tokens = run.state.tokens.saturating_sub(r.state.tokens);
    run.log.incident(incident)?;
    let compute = run.model.compute_dtype(); // run-time setting, not in the checkpoint
    run.model = r.model.with_compute_dtype(compute);
    run.optim = r.optim;
    run.state = crate::trainer::state::TrainState {
        data: run.train.state(),
        ..r.state
    };
    run.log.pause_throughput();
    Ok(())
}

/// Eval loss and perplexity on every eval set, then the caller's hook.
fn evaluate<B: AutodiffBackend>(
    run: &mut Run<B>,
    hook: &mut Option<EvalHook<'_, B>>,
    device: &B::Device,
) -> Result<(), TrainError> {
    let inner = run.model.valid();
    let inner_device = device.clone();
    let step = run.state.step;
    for i in 0..run.evals.len() {
        let (label, data) = &mut run.evals[i];
        data.rewind()?;
        let (mut sum, mut n, mut batches) = (0.0, 0usize, 0usize);
        while data.remaining_in_epoch() > 0 && run.eval_batches.is_none_or(|m| batches < m) {
            let examples = data.next_eval_batch()?;
            check_vocab(&examples, run.model_config.vocab_size, label)?;
            let (s, k) = eval_loss(&inner, &examples, &inner_device);
            sum += s;
            n += k;
            batches += 1;
        }
        let label = label.clone();
        if n > 0 {
            run.log
                .eval(step, run.state.tokens, &label, sum / n as f64)?;
        }
    }
    if let Some(h) = hook {
        let extra = h(&inner, step, &run.dir.eval());
        run.log.scalars(step, &extra)?;
    }
    run.log.pause_throughput();
    Ok(())
}

/// Copies the state to the host and hands it to the checkpoint thread.
fn save<B: AutodiffBackend>(run: &mut Run<B>, elapsed_s: f64) -> Result<(), TrainError> {
    let state = run.checkpoint_state(elapsed_s);
    let snapshot = HostSnapshot::take(&run.model, &run.optim, &state)?;
    run.checkpoints
        .save_with(state.step, move || snapshot.into_payload())?;
    Ok(())
}

fn spawn_watchdog<B: AutodiffBackend>(run: &Run<B>) -> Option<Watchdog> {
    let cfg = run.config.guards.watchdog?;
    let dump = run.dir.stall_dump();
    let incidents = run.dir.incidents();
    Some(Watchdog::spawn(
        Duration::from_secs_f64(cfg.timeout_s),
        move |report| {
            let detail = format!(
                "no step finished for {:.0} s (timeout {:.0} s); last step {:?}; exiting with code {WATCHDOG_EXIT_CODE} so a launcher restarts the run",
                report.stalled_for.as_secs_f64(),
                report.timeout.as_secs_f64(),
                report.last_step
            );
            eprintln!("{detail}");
            let incident =
                Incident::now(report.last_step.unwrap_or(0), IncidentKind::Stall, detail);
            let _ = std::fs::write(
                &dump,
                serde_json::to_vec_pretty(&incident).unwrap_or_default(),
            );
            if let Ok(mut w) = crate::metrics::JsonlWriter::open(&incidents) {
                let _ = w.append(&incident);
            }
        },
    ))
}

/// Writes the final plot and report.
fn finish<B: AutodiffBackend>(
    run: Run<B>,
    wall_s: f64,
    opts: &TrainOptions,
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
        completed: run.state.step >= run.max_steps,
        final_checkpoint: final_checkpoint.as_ref().map(|p| p.display().to_string()),
    };
    let metrics = read_jsonl(run.dir.metrics())?;
    let incidents = read_jsonl(run.dir.incidents())?;
    write_report(&run.dir.report(), &facts, &metrics, &incidents)?;
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

#[allow(dead_code)]
fn store_of<B: AutodiffBackend>(run: &Run<B>) -> &CheckpointStore {
    run.checkpoints.store()
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
