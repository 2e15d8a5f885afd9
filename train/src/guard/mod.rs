//! Guards that keep a long run alive and honest, as small reusable state machines the loop
//! consults each step (they never import the loop, and the loop decides what "skip" or
//! "rollback" means for its data and checkpoints):
//! - [`nan`]: a non-finite loss or gradient norm skips the step and is counted;
//! - [`spike`]: a loss far above its recent mean triggers log, skip or rollback;
//! - [`watchdog`]: no progress for T seconds marks the run stalled (the loop then stops it).
//!
//! When the NaN guard or the spike detector says the run is diverging (too many bad steps in a
//! row), the loop escalates: it rolls back to the newest checkpoint while `max_rollbacks` allows
//! (rollbacks count until the run gets past the step where the last one was triggered), and
//! then stops the run with a "diverged" error naming the step and the losses.
//!
//! Their settings live under a tessera-only `guards:` key of the training YAML.

pub mod nan;
pub mod spike;
pub mod watchdog;

use serde::{Deserialize, Serialize};

pub use nan::{NanConfig, NanGuard, NanVerdict};
pub use spike::{SpikeAction, SpikeConfig, SpikeDetector, SpikeVerdict};
pub use watchdog::{StallReport, WATCHDOG_EXIT_CODE, Watchdog, WatchdogConfig, WatchdogHandle};

/// `guards:` (tessera's own key; llm-foundry has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardsConfig {
    /// NaN/Inf handling.
    #[serde(default)]
    pub nan: NanConfig,
    /// Loss-spike detection; `null` turns it off.
    #[serde(default = "some_default")]
    pub spike: Option<SpikeConfig>,
    /// Stall watchdog; `null` turns it off.
    #[serde(default = "some_default")]
    pub watchdog: Option<WatchdogConfig>,
    /// Rollbacks in a row (without getting past the step that triggered the last one) before a
    /// diverging run is stopped.
    #[serde(default = "default_max_rollbacks")]
    pub max_rollbacks: u32,
}

fn default_max_rollbacks() -> u32 {
    3
}

fn some_default<T: Default>() -> Option<T> {
    Some(T::default())
}

impl Default for GuardsConfig {
    fn default() -> Self {
        GuardsConfig {
            nan: NanConfig::default(),
            spike: some_default(),
            watchdog: some_default(),
            max_rollbacks: default_max_rollbacks(),
        }
    }
}

impl GuardsConfig {
    /// `(key, message)` for the first bad field, key relative to `guards`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(s) = &self.spike {
            s.validate().map_err(|(k, m)| (format!("spike.{k}"), m))?;
        }
        if let Some(w) = &self.watchdog {
            w.validate()
                .map_err(|(k, m)| (format!("watchdog.{k}"), m))?;
        }
        Ok(())
    }
}
