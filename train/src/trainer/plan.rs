//! When the loop does what: how many steps, each step's learning rate, dropout seed and
//! microbatching, and after which steps it evaluates and saves.

use crate::schedule::{LrSchedule, lr_at};
use crate::step::{StepSettings, dropout_seed};

/// The step schedule of a run, fixed before its first step.
#[derive(Debug, Clone)]
pub(crate) struct StepPlan {
    /// Stop after this many steps.
    pub max_steps: u64,
    /// Sequences per forward/backward.
    pub microbatch: usize,
    /// Clip the global gradient norm to this.
    pub clip_norm: Option<f64>,
    /// The optimizer's learning rate: the peak the schedule scales, or the constant rate.
    pub lr: f64,
    /// The learning-rate schedule in steps (`None`: `lr` throughout).
    pub schedule: Option<LrSchedule>,
    /// The run seed (dropout masks derive from it and the step).
    pub seed: u64,
    /// Evaluate every this many steps (and after the last).
    pub eval_every: Option<u64>,
    /// Evaluate before the first step too.
    pub eval_first: bool,
    /// At most this many batches of each eval set per evaluation.
    pub eval_batches: Option<usize>,
    /// Save every this many steps (and after the last).
    pub save_every: Option<u64>,
}

impl StepPlan {
    /// The settings of the step that follows `done` steps.
    pub fn settings(&self, done: u64) -> StepSettings {
        StepSettings {
            lr: self.schedule.as_ref().map_or(self.lr, |s| lr_at(done, s)),
            clip_norm: self.clip_norm,
            dropout_seed: dropout_seed(self.seed, done),
        }
    }

    /// Whether to evaluate after `step` (`last`: the run stops after it).
    pub fn evaluates_after(&self, step: u64, last: bool) -> bool {
        last || self.eval_every.is_some_and(|n| step.is_multiple_of(n))
    }

    /// Whether to save after `step` (`last`: the run stops after it).
    pub fn saves_after(&self, step: u64, last: bool) -> bool {
        last || self.save_every.is_some_and(|n| step.is_multiple_of(n))
    }
}
