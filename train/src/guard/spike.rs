//! Loss-spike detection: a loss above `factor ×` the mean of the last `window` normal losses is
//! an outlier; `patience` outliers in a row trigger the configured action.
//!
//! - `log`: record an incident and carry on;
//! - `skip`: drop this batch's update (the batch is consumed, as PaLM did when skipping data);
//! - `rollback`: restore the last checkpoint and skip past the offending data (PaLM §5.1 restarted
//!   ~100 steps before a spike and skipped 200–500 batches).
//!
//! Outliers never enter the window, so a spike cannot raise the mean it is judged against.
//! Detection starts once the window is full, so the steep early descent is never a spike. The
//! whole state is serde, so checkpoints carry it and a resumed run judges identically.
//!
//! A run that has diverged produces nothing but outliers, and since outliers never move the
//! window, `skip` alone would skip every batch forever. So outliers in a row are counted, and
//! after `escalate_after` of them the detector says [`SpikeVerdict::Escalate`] whatever the
//! action: the trainer then rolls back if a checkpoint and its rollback budget allow, and
//! otherwise stops the run as diverged.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// What a triggered spike does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpikeAction {
    /// Record it only.
    Log,
    /// Skip the optimizer update for this batch.
    Skip,
    /// Roll back to the last checkpoint and skip the data that caused it.
    Rollback,
}

/// `guards.spike`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeConfig {
    /// Losses in the rolling mean.
    #[serde(default = "default_window")]
    pub window: usize,
    /// A loss above `factor × mean` is an outlier (> 1).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Consecutive outliers needed to act.
    #[serde(default = "one")]
    pub patience: u32,
    /// What to do then.
    #[serde(default = "default_action")]
    pub action: SpikeAction,
    /// Outliers in a row after which the run is treated as diverging (see the module docs).
    #[serde(default = "default_escalate_after")]
    pub escalate_after: u32,
}

fn default_window() -> usize {
    50
}
fn default_factor() -> f64 {
    1.5
}
fn one() -> u32 {
    1
}
fn default_action() -> SpikeAction {
    SpikeAction::Log
}
fn default_escalate_after() -> u32 {
    10
}

impl Default for SpikeConfig {
    fn default() -> Self {
        SpikeConfig {
            window: default_window(),
            factor: default_factor(),
            patience: one(),
            action: default_action(),
            escalate_after: default_escalate_after(),
        }
    }
}

impl SpikeConfig {
    /// `(key, message)` for the first bad field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.window == 0 {
            return Err(("window".into(), "must hold at least 1 loss".into()));
        }
        if !(self.factor.is_finite() && self.factor > 1.0) {
            return Err((
                "factor".into(),
                format!("{} must be a number > 1", self.factor),
            ));
        }
        if self.patience == 0 {
            return Err(("patience".into(), "must be at least 1".into()));
        }
        if self.escalate_after < self.patience {
            return Err((
                "escalate_after".into(),
                format!(
                    "{} must be at least patience ({})",
                    self.escalate_after, self.patience
                ),
            ));
        }
        Ok(())
    }
}

/// The detector's judgement of one loss.
#[derive(Debug, Clone, PartialEq)]
pub enum SpikeVerdict {
    /// Not a spike (or still filling the window, or not finite: the NaN guard owns those).
    Normal,
    /// An outlier, but fewer than `patience` in a row.
    Outlier {
        /// The loss.
        loss: f64,
        /// The window mean it was compared with.
        mean: f64,
        /// Outliers in a row, this one included.
        consecutive: u32,
    },
    /// `patience` outliers in a row (or more): act.
    Triggered {
        /// The configured action.
        action: SpikeAction,
        /// The loss.
        loss: f64,
        /// The window mean it was compared with.
        mean: f64,
        /// Outliers in a row, this one included.
        consecutive: u32,
    },
    /// `escalate_after` outliers in a row: the run is diverging; roll back or stop.
    Escalate {
        /// The outlying losses of the streak, oldest first.
        losses: Vec<f64>,
        /// The window mean they were compared with.
        mean: f64,
    },
}

/// Rolling-window spike detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpikeDetector {
    /// Settings.
    pub config: SpikeConfig,
    /// The last `window` normal losses, oldest first.
    pub recent: VecDeque<f64>,
    /// Outliers in a row so far.
    pub consecutive: u32,
    /// The losses of the current streak of outliers (at most `escalate_after`).
    #[serde(default)]
    pub streak: Vec<f64>,
}

impl SpikeDetector {
    /// An empty detector.
    pub fn new(config: SpikeConfig) -> Self {
        SpikeDetector {
            config,
            recent: VecDeque::with_capacity(config.window),
            consecutive: 0,
            streak: Vec::new(),
        }
    }

    /// The mean of the window, once it is full.
    pub fn mean(&self) -> Option<f64> {
        (self.recent.len() >= self.config.window && !self.recent.is_empty())
            .then(|| self.recent.iter().sum::<f64>() / self.recent.len() as f64)
    }

    /// Judges `loss`, updating the window.
    pub fn observe(&mut self, loss: f64) -> SpikeVerdict {
        if !loss.is_finite() {
            return SpikeVerdict::Normal;
        }
        if let Some(mean) = self.mean()
            && loss > self.config.factor * mean
        {
            self.consecutive += 1;
            self.streak.push(loss);
            if self.consecutive >= self.config.escalate_after {
                let losses = std::mem::take(&mut self.streak);
                self.consecutive = 0;
                return SpikeVerdict::Escalate { losses, mean };
            }
            if self.consecutive >= self.config.patience {
                return SpikeVerdict::Triggered {
                    action: self.config.action,
                    loss,
                    mean,
                    consecutive: self.consecutive,
                };
            }
            return SpikeVerdict::Outlier {
                loss,
                mean,
                consecutive: self.consecutive,
            };
        }
        self.consecutive = 0;
        self.streak.clear();
        if self.recent.len() == self.config.window {
            self.recent.pop_front();
        }
        self.recent.push_back(loss);
        SpikeVerdict::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(window: usize, factor: f64, patience: u32, action: SpikeAction) -> SpikeDetector {
        SpikeDetector::new(SpikeConfig {
            window,
            factor,
            patience,
            action,
            escalate_after: 100,
        })
    }

    #[test]
    fn no_judgement_until_the_window_is_full() {
        let mut d = det(3, 2.0, 1, SpikeAction::Skip);
        assert_eq!(d.observe(1.0), SpikeVerdict::Normal);
        assert_eq!(d.observe(1.0), SpikeVerdict::Normal);
        // Only two losses: 100 is not judged, it joins the window.
        assert_eq!(d.observe(100.0), SpikeVerdict::Normal);
        assert_eq!(d.mean(), Some(34.0));
    }

    #[test]
    fn a_loss_above_factor_times_mean_triggers_the_action() {
        let mut d = det(4, 2.0, 1, SpikeAction::Rollback);
        for l in [2.0, 2.0, 2.0, 2.0] {
            assert_eq!(d.observe(l), SpikeVerdict::Normal);
        }
        assert_eq!(d.observe(3.9), SpikeVerdict::Normal); // below 2 × 2.0; now mean (2+2+2+3.9)/4
        let mean = (2.0 + 2.0 + 2.0 + 3.9) / 4.0;
        assert_eq!(
            d.observe(5.0),
            SpikeVerdict::Triggered {
                action: SpikeAction::Rollback,
                loss: 5.0,
                mean,
                consecutive: 1
            }
        );
        // The outlier did not enter the window.
        assert_eq!(d.mean(), Some(mean));
    }

    #[test]
    fn patience_needs_consecutive_outliers() {
        let mut d = det(2, 1.5, 3, SpikeAction::Skip);
        d.observe(1.0);
        d.observe(1.0);
        assert_eq!(
            d.observe(2.0),
            SpikeVerdict::Outlier {
                loss: 2.0,
                mean: 1.0,
                consecutive: 1
            }
        );
        assert_eq!(
            d.observe(2.0),
            SpikeVerdict::Outlier {
                loss: 2.0,
                mean: 1.0,
                consecutive: 2
            }
        );
        // A normal loss breaks the streak.
        assert_eq!(d.observe(1.0), SpikeVerdict::Normal);
        for k in 1..3 {
            assert!(
                matches!(d.observe(9.0), SpikeVerdict::Outlier { consecutive, .. } if consecutive == k)
            );
        }
        assert!(matches!(
            d.observe(9.0),
            SpikeVerdict::Triggered {
                action: SpikeAction::Skip,
                consecutive: 3,
                ..
            }
        ));
        // The streak goes on counting after acting: each further spike says how many.
        assert!(matches!(
            d.observe(9.0),
            SpikeVerdict::Triggered { consecutive: 4, .. }
        ));
    }

    #[test]
    fn a_diverged_run_escalates_instead_of_skipping_forever() {
        let mut d = SpikeDetector::new(SpikeConfig {
            window: 2,
            factor: 1.5,
            patience: 1,
            action: SpikeAction::Skip,
            escalate_after: 4,
        });
        d.observe(1.0);
        d.observe(1.0);
        for k in 1..4 {
            assert!(
                matches!(d.observe(10.0 * k as f64), SpikeVerdict::Triggered { consecutive, .. } if consecutive == k)
            );
        }
        assert_eq!(
            d.observe(40.0),
            SpikeVerdict::Escalate {
                losses: vec![10.0, 20.0, 30.0, 40.0],
                mean: 1.0
            }
        );
        // After escalating, a new streak starts from scratch.
        assert!(matches!(
            d.observe(50.0),
            SpikeVerdict::Triggered { consecutive: 1, .. }
        ));
    }

    #[test]
    fn non_finite_losses_are_left_to_the_nan_guard() {
        let mut d = det(1, 1.5, 1, SpikeAction::Log);
        d.observe(1.0);
        assert_eq!(d.observe(f64::NAN), SpikeVerdict::Normal);
        assert_eq!(d.mean(), Some(1.0));
    }

    #[test]
    fn state_round_trips_for_checkpoints() {
        let mut d = det(3, 2.0, 2, SpikeAction::Log);
        for l in [1.0, 2.0, 3.0, 50.0] {
            d.observe(l);
        }
        let back: SpikeDetector =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.consecutive, 1);
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(SpikeConfig::default().validate().is_ok());
        assert_eq!(
            SpikeConfig {
                factor: 1.0,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .0,
            "factor"
        );
        assert_eq!(
            SpikeConfig {
                window: 0,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .0,
            "window"
        );
        assert_eq!(
            SpikeConfig {
                patience: 0,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .0,
            "patience"
        );
        assert_eq!(
            SpikeConfig {
                patience: 3,
                escalate_after: 2,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .0,
            "escalate_after"
        );
    }
}
