//! `state.json`: everything besides the tensors that a resumed run needs to continue exactly
//! where the checkpointed one stood.

use serde::{Deserialize, Serialize};
use tessera_data::stream::StreamState;

use crate::guard::{NanGuard, SpikeDetector};

/// The training state saved in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Format version of this file.
    pub version: u32,
    /// Optimizer steps done (skipped steps included: they consumed their data).
    pub step: u64,
    /// Training samples consumed.
    pub samples: u64,
    /// Training tokens consumed (padding excluded).
    pub tokens: u64,
    /// Where the training data stream stands.
    pub data: StreamState,
    /// The run seed (init, dropout and data seeds derive from it).
    pub seed: u64,
    /// sha256 of the resolved config's training-relevant part; a resume with a different one
    /// is refused unless forced, since it would not reproduce the run.
    pub config_hash: String,
    /// The NaN guard's counters.
    pub nan_guard: NanGuard,
    /// The loss-spike detector's window, so that detection continues unchanged after a resume.
    pub spike: Option<SpikeDetector>,
    /// Wall-clock seconds spent training before this checkpoint, resumes included.
    pub elapsed_s: f64,
    /// Guard rollbacks since the run last got past the step that triggered one.
    #[serde(default)]
    pub rollbacks_in_a_row: u32,
    /// The step at which the last guard rollback was triggered.
    #[serde(default)]
    pub rollback_trigger_step: u64,
    /// Normal steps in a row since the run got past `rollback_trigger_step`.
    #[serde(default)]
    pub healthy_past_trigger: u32,
}

impl TrainState {
    /// The state before the first step.
    pub fn fresh(
        seed: u64,
        config_hash: String,
        data: StreamState,
        nan_guard: NanGuard,
        spike: Option<SpikeDetector>,
    ) -> Self {
        TrainState {
            version: Self::VERSION,
            step: 0,
            samples: 0,
            tokens: 0,
            data,
            seed,
            config_hash,
            nan_guard,
            spike,
            elapsed_s: 0.0,
            rollbacks_in_a_row: 0,
            rollback_trigger_step: 0,
            healthy_past_trigger: 0,
        }
    }

    /// 2: the weights and optimizer state are in per-rank shard files (`shards.json`); 1 kept
    /// the optimizer in burn's record format.
    pub const VERSION: u32 = 2;
}
