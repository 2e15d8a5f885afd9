//! The guards between a step's loss and its update: a non-finite step is skipped, a loss spike
//! is logged, skipped or rolled back, and a diverging run returns to a checkpoint from before
//! the trouble (within a budget of rollbacks in a row) or stops with
//! [`TrainError::Diverged`].

use burn::tensor::backend::AutodiffBackend;

use crate::checkpoint::Resumable;
use crate::guard::{NanGuard, NanVerdict, SpikeAction, SpikeDetector, SpikeVerdict};
use crate::metrics::{Incident, IncidentKind};
use crate::parallel::Sharded;
use crate::step::Verdict;

use super::TrainError;
use super::checkpointing::restore;
use super::log::RunLog;
use super::saving::Saver;
use super::state::TrainState;

/// What the guards do instead of an update.
pub(crate) enum Hold {
    /// Drop the batch and go on.
    Skip,
    /// Restore this checkpoint (from before the trouble began) and go on reading new data.
    Rollback(Resumable),
}

/// The guards' state; it is saved in every checkpoint (see [`TrainState`]).
pub(crate) struct Guards {
    pub nan: NanGuard,
    pub spike: Option<SpikeDetector>,
    /// Rollbacks in a row allowed before the run stops.
    pub max_rollbacks: u32,
    pub rollbacks_in_a_row: u32,
    pub rollback_trigger_step: u64,
    pub healthy_past_trigger: u32,
}

impl Guards {
    /// The guards as a checkpoint (or a fresh state) left them.
    pub fn from_state(state: &TrainState, max_rollbacks: u32) -> Self {
        Self {
            nan: state.nan_guard.clone(),
            spike: state.spike.clone(),
            max_rollbacks,
            rollbacks_in_a_row: state.rollbacks_in_a_row,
            rollback_trigger_step: state.rollback_trigger_step,
            healthy_past_trigger: state.healthy_past_trigger,
        }
    }

    /// Copies the guards' state into a checkpoint's.
    pub fn write_into(&self, state: &mut TrainState) {
        state.nan_guard = self.nan.clone();
        state.spike = self.spike.clone();
        state.rollbacks_in_a_row = self.rollbacks_in_a_row;
        state.rollback_trigger_step = self.rollback_trigger_step;
        state.healthy_past_trigger = self.healthy_past_trigger;
    }

    /// Judges step `step`'s loss before its update: the NaN guard, then the spike detector.
    pub fn judge(
        &mut self,
        step: u64,
        loss: f64,
        tokens: u64,
        log: &mut RunLog,
        saver: &mut Saver,
    ) -> Result<Verdict<Hold>, TrainError> {
        if !loss.is_finite() {
            return Ok(Verdict::Hold(
                match self.non_finite(step, loss, f64::NAN, tokens, log, saver)? {
                    Some(ck) => Hold::Rollback(ck),
                    None => Hold::Skip,
                },
            ));
        }
        let Some(spike) = self.spike.as_mut() else {
            return Ok(Verdict::Apply);
        };
        let factor = spike.config.factor;
        match spike.observe(loss) {
            SpikeVerdict::Normal | SpikeVerdict::Outlier { .. } => Ok(Verdict::Apply),
            SpikeVerdict::Escalate { losses, mean } => {
                let what = format!(
                    "{} losses in a row above {factor:.1}× the recent mean {mean:.4}: {}",
                    losses.len(),
                    format_losses(&losses)
                );
                let ck = self.escalate(step, losses.len() as u64, what, log, saver)?;
                Ok(Verdict::Hold(Hold::Rollback(ck)))
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
                        log.note(step, IncidentKind::LossSpike, what)?;
                        Ok(Verdict::Apply)
                    }
                    SpikeAction::Skip => {
                        let detail = format!("{what}; batch skipped");
                        skipped(log, step, tokens, IncidentKind::LossSpike, detail)?;
                        Ok(Verdict::Hold(Hold::Skip))
                    }
                    SpikeAction::Rollback => {
                        let ck = self.escalate(step, consecutive.into(), what, log, saver)?;
                        Ok(Verdict::Hold(Hold::Rollback(ck)))
                    }
                }
            }
        }
    }

    /// Whether the spike detector is inside a streak of outliers.
    pub fn in_spike(&self) -> bool {
        self.spike.as_ref().is_some_and(|s| s.consecutive > 0)
    }

    /// A non-finite loss or gradient: the update was skipped; after too many in a row the run
    /// escalates. Returns the checkpoint to roll back to, if it must.
    pub fn non_finite(
        &mut self,
        step: u64,
        loss: f64,
        norm: f64,
        tokens: u64,
        log: &mut RunLog,
        saver: &mut Saver,
    ) -> Result<Option<Resumable>, TrainError> {
        match self.nan.check(loss, norm) {
            NanVerdict::Ok => Ok(None),
            NanVerdict::Skip { consecutive, total } => {
                let detail = format!(
                    "loss {loss}, grad norm {norm}: update skipped ({consecutive} in a row, {total} in the run)"
                );
                skipped(log, step, tokens, IncidentKind::SkippedStep, detail)?;
                Ok(None)
            }
            NanVerdict::Escalate { consecutive } => {
                let what = format!(
                    "{consecutive} non-finite steps in a row (last loss {loss}, grad norm {norm})"
                );
                self.escalate(step, consecutive.into(), what, log, saver)
                    .map(Some)
            }
        }
    }

    /// Counts a finished step towards making the rollback budget whole again: it is, once the
    /// run has trained a whole spike window of `normal` steps past the step that triggered the
    /// last rollback.
    pub fn step_done(&mut self, step: u64, normal: bool) {
        if self.rollbacks_in_a_row == 0 {
            return;
        }
        self.healthy_past_trigger = if normal && step > self.rollback_trigger_step {
            self.healthy_past_trigger + 1
        } else {
            0
        };
        let window = self.spike.as_ref().map_or(10, |s| s.config.window as u32);
        if self.healthy_past_trigger >= window {
            self.rollbacks_in_a_row = 0;
            self.healthy_past_trigger = 0;
        }
    }

    /// The run is diverging (the last `streak` steps were bad): returns the newest checkpoint
    /// from before the streak began, while the rollback budget allows, else stops the run.
    fn escalate(
        &mut self,
        step: u64,
        streak: u64,
        what: String,
        log: &mut RunLog,
        saver: &mut Saver,
    ) -> Result<Resumable, TrainError> {
        let budget = self.max_rollbacks;
        let used = self.rollbacks_in_a_row;
        let began = step.saturating_sub(streak.saturating_sub(1));
        match saver.newest_before(began)? {
            Some(ck) if used < budget => {
                log.note(
                    step,
                    IncidentKind::LossSpike,
                    format!(
                        "{what}; rolling back to ba{} from before step {began} (rollback {} of {budget} in a row)",
                        ck.step,
                        used + 1
                    ),
                )?;
                self.rollbacks_in_a_row = used + 1;
                self.rollback_trigger_step = self.rollback_trigger_step.max(step);
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

    /// Restores checkpoint `ck`'s model, optimizer state and guard windows but keeps reading
    /// data from here, so the batches that caused the trouble are skipped (as PaLM's recovery
    /// does); `state` becomes the checkpoint's with the data position and the rollback budget
    /// carried over.
    pub fn roll_back<B: AutodiffBackend>(
        &mut self,
        step: u64,
        ck: Resumable,
        sharded: &mut Sharded<B>,
        state: &mut TrainState,
        log: &mut RunLog,
        device: &B::Device,
    ) -> Result<(), TrainError> {
        let layout = sharded.layout.clone();
        let r = restore::<B>(
            &ck.dir,
            &layout,
            sharded.shard_rank(),
            sharded.optim,
            device,
        )?;
        let mut incident = Incident::now(
            step,
            IncidentKind::Rollback,
            format!("rolled back to {}", ck.dir.display()),
        );
        incident.lost_steps = step.saturating_sub(r.train.step);
        incident.lost_tokens = state.tokens.saturating_sub(r.train.tokens);
        log.incident(incident)?;
        sharded.set_state(r.state).map_err(TrainError::Dist)?;
        // The guards judge from the checkpoint's window again (from before the trouble), and
        // keep counting rollbacks.
        self.nan = r.train.nan_guard.clone();
        self.spike = r.train.spike.clone();
        self.healthy_past_trigger = 0;
        *state = TrainState {
            data: state.data,
            ..r.train
        };
        log.pause_throughput();
        Ok(())
    }
}

/// Records a step whose update was not applied: one step and its tokens lost.
fn skipped(
    log: &mut RunLog,
    step: u64,
    tokens: u64,
    kind: IncidentKind,
    detail: String,
) -> Result<(), TrainError> {
    let mut incident = Incident::now(step, kind, detail);
    incident.lost_steps = 1;
    incident.lost_tokens = tokens;
    log.incident(incident)
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
