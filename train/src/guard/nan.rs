//! The NaN/Inf guard: a step whose loss or gradient norm is not finite is skipped (no optimizer
//! update, the batch is consumed) and counted; too many in a row means the run is broken, not
//! unlucky, and it stops.
//!
//! The state is serde so a checkpoint carries the counters and a resumed run decides exactly as
//! the uninterrupted one would.

use serde::{Deserialize, Serialize};

/// `guards.nan`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NanConfig {
    /// Consecutive non-finite steps before the run escalates (rolls back, or stops as diverged);
    /// 0 never escalates.
    #[serde(default = "twenty")]
    pub max_consecutive: u32,
}

fn twenty() -> u32 {
    20
}

impl Default for NanConfig {
    fn default() -> Self {
        NanConfig {
            max_consecutive: twenty(),
        }
    }
}

/// What to do with the current step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NanVerdict {
    /// Finite: apply the update.
    Ok,
    /// Not finite: skip the update.
    Skip {
        /// Non-finite steps in a row, this one included.
        consecutive: u32,
        /// Steps skipped in the whole run.
        total: u64,
    },
    /// Not finite `max_consecutive` times in a row: the run is diverging (the loop rolls back
    /// or stops).
    Escalate {
        /// Non-finite steps in a row.
        consecutive: u32,
    },
}

/// Counts non-finite steps.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NanGuard {
    /// The limit.
    pub config: NanConfig,
    /// Non-finite steps in a row so far.
    pub consecutive: u32,
    /// Steps skipped in the run so far.
    pub total_skipped: u64,
}

impl NanGuard {
    /// A fresh guard.
    pub fn new(config: NanConfig) -> Self {
        NanGuard {
            config,
            consecutive: 0,
            total_skipped: 0,
        }
    }

    /// Judges one step from its loss and pre-clip gradient norm.
    pub fn check(&mut self, loss: f64, grad_norm: f64) -> NanVerdict {
        if loss.is_finite() && grad_norm.is_finite() {
            self.consecutive = 0;
            return NanVerdict::Ok;
        }
        self.consecutive += 1;
        self.total_skipped += 1;
        if self.config.max_consecutive > 0 && self.consecutive >= self.config.max_consecutive {
            let consecutive = self.consecutive;
            self.consecutive = 0;
            return NanVerdict::Escalate { consecutive };
        }
        NanVerdict::Skip {
            consecutive: self.consecutive,
            total: self.total_skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_steps_pass_and_reset_the_streak() {
        let mut g = NanGuard::new(NanConfig { max_consecutive: 3 });
        assert_eq!(g.check(2.0, 1.0), NanVerdict::Ok);
        assert_eq!(
            g.check(f64::NAN, 1.0),
            NanVerdict::Skip {
                consecutive: 1,
                total: 1
            }
        );
        assert_eq!(
            g.check(2.0, f64::INFINITY),
            NanVerdict::Skip {
                consecutive: 2,
                total: 2
            }
        );
        assert_eq!(g.check(2.0, 1.0), NanVerdict::Ok);
        assert_eq!(g.consecutive, 0);
        assert_eq!(g.total_skipped, 2);
    }

    #[test]
    fn too_many_in_a_row_aborts() {
        let mut g = NanGuard::new(NanConfig { max_consecutive: 2 });
        assert!(matches!(
            g.check(f64::NEG_INFINITY, 0.0),
            NanVerdict::Skip { .. }
        ));
        assert_eq!(
            g.check(f64::NAN, f64::NAN),
            NanVerdict::Escalate { consecutive: 2 }
        );
    }

    #[test]
    fn zero_limit_never_aborts() {
        let mut g = NanGuard::new(NanConfig { max_consecutive: 0 });
        for _ in 0..100 {
            assert!(matches!(g.check(f64::NAN, 0.0), NanVerdict::Skip { .. }));
        }
    }

    #[test]
    fn state_survives_a_serde_round_trip() {
        let mut g = NanGuard::new(NanConfig::default());
        g.check(f64::NAN, 0.0);
        let back: NanGuard = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back, g);
    }
}
