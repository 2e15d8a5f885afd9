//! Learning-rate schedules with composer's formulas (`composer/optim/scheduler.py`), as a pure
//! function of the step: [`lr_at`]`(step, &schedule)`.
//!
//! With `t` the steps completed so far, `t_w` the warmup and `t_max` the schedule length (both in
//! batches, converted from any composer unit by [`SchedulerConfig::resolve`]):
//! ```text
//! warmup (t < t_w):   α(t) = target · t / t_w             target = 1 (cosine) or α_i / α (linear, constant)
//! after:              τ = min(1, (t − t_w) / (t_max − t_w))    (0 when t_max ≤ t_w)
//!   cosine_with_warmup:        α = α_f + (1 − α_f) · ½(1 + cos πτ)
//!   linear_decay_with_warmup:  α = α_i + (α_f − α_i) · τ
//!   constant_with_warmup:      α = α                     (linear with α_i = α_f = α)
//! lr = optimizer.lr · α
//! ```
//! Defaults as composer: `t_max = 1dur` (all of `max_duration`), `alpha_f = 0`, `alpha_i = 1`,
//! `alpha = 1`. composer raises if `t_max` ends before `max_duration`; so does [`SchedulerConfig::resolve`].
//!
//! `scale_warmup` only matters with composer's scale-schedule ratio, which tessera does not
//! have (ratio 1), so it is accepted and has no effect.
//!
//! One deliberate difference: composer's trainer re-evaluates the schedule *before* advancing its
//! batch counter, so in composer the lr used for step `s ≥ 1` is α(s − 1). tessera uses α(s) for
//! step `s`, the formula as documented.

use serde::{Deserialize, Serialize};

use crate::config::duration::{Duration, DurationError, TimeContext};

/// A schedule setting that is missing, out of range, or not taken by the chosen schedule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// A bad value or a parameter the schedule does not take.
    #[error("{key}: {message}")]
    Invalid {
        /// The key inside `scheduler:`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A duration that cannot be turned into batches.
    #[error("{key}: {source}")]
    Duration {
        /// The key inside `scheduler:`.
        key: String,
        /// Why the conversion failed.
        source: DurationError,
    },
}

impl ScheduleError {
    /// The key inside `scheduler:`.
    pub fn key(&self) -> &str {
        match self {
            ScheduleError::Invalid { key, .. } | ScheduleError::Duration { key, .. } => key,
        }
    }
    /// The message without the key.
    pub fn message(&self) -> String {
        match self {
            ScheduleError::Invalid { message, .. } => message.clone(),
            ScheduleError::Duration { source, .. } => source.to_string(),
        }
    }
}

/// `scheduler.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerName {
    /// composer's `CosineAnnealingWithWarmupScheduler`.
    CosineWithWarmup,
    /// composer's `LinearWithWarmupScheduler`.
    LinearDecayWithWarmup,
    /// composer's `ConstantWithWarmupScheduler`.
    ConstantWithWarmup,
}

/// The `scheduler:` block, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Which schedule.
    pub name: SchedulerName,
    /// Linear warmup length (`100ba`, `0.01dur`, `2e7tok`).
    pub t_warmup: Duration,
    /// Length of the whole schedule, warmup included (default `1dur`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_max: Option<Duration>,
    /// Final multiplier (cosine, linear; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_f: Option<f64>,
    /// Multiplier at the end of warmup (linear; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_i: Option<f64>,
    /// Constant multiplier (constant; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// composer's flag for scaling warmup with the scale-schedule ratio (no effect in tessera).
    #[serde(default)]
    pub scale_warmup: bool,
}

/// Which curve follows the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// Half a cosine from 1 down to `alpha_f`.
    Cosine,
    /// A straight line from `alpha_i` to `alpha_f` (constant when they are equal).
    Linear,
}

/// A schedule resolved to batches: everything [`lr_at`] needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// The optimizer's peak lr (`optimizer.lr`).
    pub base_lr: f64,
    /// The post-warmup curve.
    pub curve: Curve,
    /// Warmup length in batches (may be fractional when given in tokens or samples).
    pub t_warmup: f64,
    /// Schedule length in batches.
    pub t_max: f64,
    /// Multiplier reached at the end of warmup.
    pub alpha_i: f64,
    /// Multiplier at `t_max` and after.
    pub alpha_f: f64,
}

impl SchedulerConfig {
    /// Checks values and that each given parameter belongs to the named schedule.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let takes: &[&str] = match self.name {
            SchedulerName::CosineWithWarmup => &["alpha_f"],
            SchedulerName::LinearDecayWithWarmup => &["alpha_i", "alpha_f"],
            SchedulerName::ConstantWithWarmup => &["alpha"],
        };
        for (key, v) in [
            ("alpha_f", self.alpha_f),
            ("alpha_i", self.alpha_i),
            ("alpha", self.alpha),
        ] {
            let Some(v) = v else { continue };
            if !takes.contains(&key) {
                let name = serde_json::to_value(self.name)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                return Err(ScheduleError::Invalid {
                    key: key.into(),
                    message: format!(
                        "{name} does not take `{key}` (it takes t_warmup, t_max, {})",
                        takes.join(", ")
                    ),
                });
            }
            if !(v.is_finite() && v >= 0.0) {
                return Err(ScheduleError::Invalid {
                    key: key.into(),
                    message: format!("{v} must be a multiplier ≥ 0"),
                });
            }
        }
        Ok(())
    }

    /// Converts the durations to batches and applies the defaults. `ctx.max_duration` must be set:
    /// `dur` fractions and the default `t_max` are relative to it.
    pub fn resolve(&self, base_lr: f64, ctx: &TimeContext) -> Result<LrSchedule, ScheduleError> {
        self.validate()?;
        let batches = |key: &str, d: Duration| {
            d.in_batches(ctx).map_err(|source| ScheduleError::Duration {
                key: key.into(),
                source,
            })
        };
        let t_warmup = batches("t_warmup", self.t_warmup)?;
        let t_max = batches("t_max", self.t_max.unwrap_or(Duration::Fraction(1.0)))?;
        if let Some(max) = ctx.max_duration {
            let max_batches = max
                .in_batches(ctx)
                .map_err(|source| ScheduleError::Duration {
                    key: "t_max".into(),
                    source,
                })?;
            if t_max + 1e-9 < max_batches {
                return Err(ScheduleError::Invalid {
                    key: "t_max".into(),
                    message: format!(
                        "ends at batch {t_max} but max_duration ({max}) runs to batch {max_batches}; the schedule would be undefined after it"
                    ),
                });
            }
        }
        let (curve, alpha_i, alpha_f) = match self.name {
            SchedulerName::CosineWithWarmup => (Curve::Cosine, 1.0, self.alpha_f.unwrap_or(0.0)),
            SchedulerName::LinearDecayWithWarmup => (
                Curve::Linear,
                self.alpha_i.unwrap_or(1.0),
                self.alpha_f.unwrap_or(0.0),
            ),
            SchedulerName::ConstantWithWarmup => {
                let a = self.alpha.unwrap_or(1.0);
                (Curve::Linear, a, a)
            }
        };
        Ok(LrSchedule {
            base_lr,
            curve,
            t_warmup,
            t_max,
            alpha_i,
            alpha_f,
        })
    }
}

/// The multiplier α at `step` (optimizer steps completed before this one).
pub fn lr_factor(step: u64, s: &LrSchedule) -> f64 {
    let t = step as f64;
    if t < s.t_warmup {
        return s.alpha_i * (t / s.t_warmup).min(1.0);
    }
    let tau = if s.t_max > s.t_warmup {
        ((t - s.t_warmup) / (s.t_max - s.t_warmup)).min(1.0)
    } else {
        0.0
    };
    match s.curve {
        Curve::Cosine => {
            s.alpha_f
                + (1.0 - s.alpha_f) * (1.0 + (std::f64::consts::PI * tau.clamp(0.0, 1.0)).cos())
                    / 2.0
        }
        Curve::Linear => s.alpha_i + tau * (s.alpha_f - s.alpha_i),
    }
}

/// The learning rate for optimizer step `step` (0-based).
pub fn lr_at(step: u64, s: &LrSchedule) -> f64 {
    s.base_lr * lr_factor(step, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(max: Duration) -> TimeContext {
        TimeContext {
            tokens_per_batch: 384,
            samples_per_batch: 3,
            batches_per_epoch: Some(50),
            max_duration: Some(max),
        }
    }

    fn cfg(name: SchedulerName, t_warmup: &str) -> SchedulerConfig {
        SchedulerConfig {
            name,
            t_warmup: Duration::parse(t_warmup).unwrap(),
            t_max: None,
            alpha_f: None,
            alpha_i: None,
            alpha: None,
            scale_warmup: false,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn cosine_with_warmup_hand_values() {
        // mpt-125m: t_warmup 100ba, alpha_f 0.1, max 4800ba, lr 6e-4.
        let c = SchedulerConfig {
            alpha_f: Some(0.1),
            ..cfg(SchedulerName::CosineWithWarmup, "100ba")
        };
        let s = c.resolve(6e-4, &ctx(Duration::Batches(4800))).unwrap();
        assert_eq!(lr_at(0, &s), 0.0);
        assert!(close(lr_at(50, &s), 3e-4));
        assert!(close(lr_at(100, &s), 6e-4));
        // Halfway through the decay: τ = (2450 − 100)/4700 = ½ → α = 0.1 + 0.9·½ = 0.55.
        assert!(close(lr_at(2450, &s), 0.55 * 6e-4));
        // τ = ¼: α = 0.1 + 0.9·(1 + cos π/4)/2.
        let q = 100 + 4700 / 4;
        assert!(close(
            lr_factor(q, &s),
            0.1 + 0.9 * (1.0 + (std::f64::consts::FRAC_PI_4).cos()) / 2.0
        ));
        assert!(close(lr_at(4800, &s), 0.1 * 6e-4));
        assert!(close(lr_at(9000, &s), 0.1 * 6e-4));
    }

    #[test]
    fn linear_decay_with_warmup_hand_values() {
        let c = SchedulerConfig {
            alpha_i: Some(1.0),
            alpha_f: Some(0.0),
            t_max: Some(Duration::Batches(110)),
            ..cfg(SchedulerName::LinearDecayWithWarmup, "10ba")
        };
        let s = c.resolve(1.0, &ctx(Duration::Batches(110))).unwrap();
        assert!(close(lr_at(5, &s), 0.5));
        assert!(close(lr_at(10, &s), 1.0));
        assert!(close(lr_at(60, &s), 0.5));
        assert!(close(lr_at(110, &s), 0.0));
        // Warmup climbs to alpha_i, not to 1.
        let c = SchedulerConfig {
            alpha_i: Some(0.5),
            ..c
        };
        let s = c.resolve(1.0, &ctx(Duration::Batches(110))).unwrap();
        assert!(close(lr_at(5, &s), 0.25));
        assert!(close(lr_at(60, &s), 0.25));
    }

    #[test]
    fn constant_with_warmup_hand_values() {
        let c = SchedulerConfig {
            alpha: Some(0.5),
            ..cfg(SchedulerName::ConstantWithWarmup, "4ba")
        };
        let s = c.resolve(2.0, &ctx(Duration::Batches(100))).unwrap();
        assert!(close(lr_at(2, &s), 0.5));
        assert!(close(lr_at(4, &s), 1.0));
        assert!(close(lr_at(99, &s), 1.0));
    }

    #[test]
    fn zero_warmup_starts_at_peak() {
        let s = cfg(SchedulerName::CosineWithWarmup, "0ba")
            .resolve(1.0, &ctx(Duration::Batches(10)))
            .unwrap();
        assert!(close(lr_at(0, &s), 1.0));
        assert!(close(lr_at(5, &s), 0.5));
    }

    #[test]
    fn token_and_fraction_warmups_convert_to_batches() {
        // 1000 tokens of warmup with 384-token batches: step 1 has seen 384 tokens → α = 0.384.
        let s = cfg(SchedulerName::ConstantWithWarmup, "1000tok")
            .resolve(1.0, &ctx(Duration::Batches(100)))
            .unwrap();
        assert!(close(lr_at(1, &s), 0.384));
        assert!(close(lr_at(3, &s), 1.0));
        // 0.1dur of 2 epochs × 50 batches = 10 batches.
        let s = cfg(SchedulerName::CosineWithWarmup, "0.1dur")
            .resolve(1.0, &ctx(Duration::Epochs(2)))
            .unwrap();
        assert_eq!(s.t_warmup, 10.0);
        assert_eq!(s.t_max, 100.0);
    }

    #[test]
    fn t_max_shorter_than_training_is_refused() {
        let c = SchedulerConfig {
            t_max: Some(Duration::Batches(50)),
            ..cfg(SchedulerName::CosineWithWarmup, "5ba")
        };
        let e = c.resolve(1.0, &ctx(Duration::Batches(100))).unwrap_err();
        assert_eq!(e.key(), "t_max");
    }

    #[test]
    fn parameters_of_another_schedule_are_refused() {
        let c = SchedulerConfig {
            alpha_f: Some(0.1),
            ..cfg(SchedulerName::ConstantWithWarmup, "5ba")
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.key(), "alpha_f");
        assert!(
            e.message().contains("constant_with_warmup does not take"),
            "{e}"
        );
    }

    #[test]
    fn epoch_warmup_without_epoch_length_is_an_error() {
        let c = TimeContext {
            batches_per_epoch: None,
            ..ctx(Duration::Batches(100))
        };
        let e = cfg(SchedulerName::CosineWithWarmup, "1ep")
            .resolve(1.0, &c)
            .unwrap_err();
        assert_eq!(e.key(), "t_warmup");
    }
}
