//! Composer time strings: `100ba`, `2ep`, `4096sp`, `1e9tok`, `0.1dur`.
//!
//! composer (`composer/core/time.py`, `Time.from_timestring`) parses the number as a float first, so
//! scientific notation works for every unit, and then insists that every unit except `dur` holds
//! an integer. A bare YAML integer means epochs, as composer's `Time.from_input(i, EPOCH)` does for
//! `max_duration`, `eval_interval` and `save_interval`. tessera converts everything to optimizer
//! steps (batches) once the batch shape is known, with [`TimeContext`].

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The hint every "not a duration" error ends with.
pub const DURATION_HINT: &str = "expected e.g. 100ba, 2ep, 1e9tok";

/// A span of training time in one of composer's units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Duration {
    /// `ep`: passes over the training data.
    Epochs(u64),
    /// `ba`: optimizer steps (one global batch each).
    Batches(u64),
    /// `sp`: training samples (sequences).
    Samples(u64),
    /// `tok`: training tokens.
    Tokens(u64),
    /// `dur`: a fraction of `max_duration`.
    Fraction(f64),
}

/// Why a duration could not be parsed or converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// The text is not `<number><unit>`.
    #[error("{found:?} is not a duration ({DURATION_HINT})")]
    Syntax {
        /// The text as written.
        found: String,
    },
    /// `1.5ba`: only `dur` takes a fraction.
    #[error("{found:?} is not a whole number of {unit} (only `dur` takes fractions)")]
    NotWhole {
        /// The text as written.
        found: String,
        /// The unit's suffix.
        unit: &'static str,
    },
    /// Converting epochs needs the number of batches in an epoch.
    #[error("{found} is in epochs, but the number of batches per epoch is not known")]
    UnknownEpochLength {
        /// The duration being converted.
        found: String,
    },
    /// `dur` is relative to `max_duration`, which cannot itself be relative.
    #[error("{found} is a fraction of max_duration, which is not available here")]
    NoMaxDuration {
        /// The duration being converted.
        found: String,
    },
    /// A batch of zero tokens or samples cannot measure anything.
    #[error("cannot convert {found} to batches: a batch holds 0 {what}")]
    EmptyBatch {
        /// The duration being converted.
        found: String,
        /// `tokens` or `samples`.
        what: &'static str,
    },
}

/// What is needed to turn any duration into optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeContext {
    /// Tokens in one global batch (`global_train_batch_size × max_seq_len` for packed data).
    pub tokens_per_batch: u64,
    /// Samples in one global batch (`global_train_batch_size`).
    pub samples_per_batch: u64,
    /// Batches in one epoch, if the dataset size is known.
    pub batches_per_epoch: Option<u64>,
    /// `max_duration`, used to resolve `dur` fractions. Must not itself be a fraction.
    pub max_duration: Option<Duration>,
}

impl Duration {
    /// Parses a composer time string such as `100ba` or `1e9tok` (case-insensitive unit).
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let s = text.trim();
        let syntax = || DurationError::Syntax {
            found: text.to_string(),
        };
        // Longest suffixes first so `tok` is not read as something ending in `k`.
        const UNITS: [&str; 5] = ["tok", "dur", "ep", "ba", "sp"];
        let lower = s.to_ascii_lowercase();
        let unit = UNITS
            .iter()
            .find(|u| lower.ends_with(**u))
            .ok_or_else(syntax)?;
        let number = s[..s.len() - unit.len()].trim().replace('_', "");
        if number.is_empty() || number.starts_with('+') {
            return Err(syntax());
        }
        let value: f64 = number.parse().map_err(|_| syntax())?;
        if !value.is_finite() || value < 0.0 {
            return Err(syntax());
        }
        if *unit == "dur" {
            return Ok(Duration::Fraction(value));
        }
        // u64::MAX is not exactly representable; anything that large is a typo anyway.
        if value.fract() != 0.0 || value >= 1.8e19 {
            return Err(DurationError::NotWhole {
                found: text.to_string(),
                unit,
            });
        }
        let n = value as u64;
        Ok(match *unit {
            "ep" => Duration::Epochs(n),
            "ba" => Duration::Batches(n),
            "sp" => Duration::Samples(n),
            _ => Duration::Tokens(n),
        })
    }

    /// This duration in batches (optimizer steps), possibly fractional: warmup of 1000 tokens with
    /// 384-token batches ends 2.6 batches in, exactly where composer's token clock would end it.
    pub fn in_batches(&self, ctx: &TimeContext) -> Result<f64, DurationError> {
        let found = || self.to_string();
        match *self {
            Duration::Batches(n) => Ok(n as f64),
            Duration::Epochs(n) => match ctx.batches_per_epoch {
                Some(per) => Ok((n as f64) * per as f64),
                None => Err(DurationError::UnknownEpochLength { found: found() }),
            },
            Duration::Samples(n) => {
                if ctx.samples_per_batch == 0 {
                    return Err(DurationError::EmptyBatch {
                        found: found(),
                        what: "samples",
                    });
                }
                Ok(n as f64 / ctx.samples_per_batch as f64)
            }
            Duration::Tokens(n) => {
                if ctx.tokens_per_batch == 0 {
                    return Err(DurationError::EmptyBatch {
                        found: found(),
                        what: "tokens",
                    });
                }
                Ok(n as f64 / ctx.tokens_per_batch as f64)
            }
            Duration::Fraction(f) => {
                // composer `_convert_time`: int(f × max_duration.value) in max_duration's unit
                // (epochs are first turned into batches), then compared on that unit's clock.
                let max = match ctx.max_duration {
                    Some(Duration::Fraction(_)) | None => {
                        return Err(DurationError::NoMaxDuration { found: found() });
                    }
                    Some(m) => m,
                };
                let scaled = match max {
                    Duration::Epochs(_) => {
                        Duration::Batches((f * max.in_batches(ctx)?).floor() as u64)
                    }
                    Duration::Batches(n) => Duration::Batches((f * n as f64).floor() as u64),
                    Duration::Samples(n) => Duration::Samples((f * n as f64).floor() as u64),
                    Duration::Tokens(n) => Duration::Tokens((f * n as f64).floor() as u64),
                    Duration::Fraction(_) => unreachable!("rejected above"),
                };
                scaled.in_batches(ctx)
            }
        }
    }

    /// The number of whole optimizer steps needed to cover this duration: composer stops at the
    /// first batch boundary at or past it, so partial batches round up.
    pub fn whole_batches(&self, ctx: &TimeContext) -> Result<u64, DurationError> {
        // Guard the float rounding of e.g. 3 × (1/3): within 1e-9 of an integer counts as it.
        let b = self.in_batches(ctx)?;
        let nearest = b.round();
        Ok(if (b - nearest).abs() < 1e-9 {
            nearest as u64
        } else {
            b.ceil() as u64
        })
    }

    /// The unit suffix (`ba`, `ep`, …).
    pub fn unit(&self) -> &'static str {
        match self {
            Duration::Epochs(_) => "ep",
            Duration::Batches(_) => "ba",
            Duration::Samples(_) => "sp",
            Duration::Tokens(_) => "tok",
            Duration::Fraction(_) => "dur",
        }
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Duration::Epochs(n)
            | Duration::Batches(n)
            | Duration::Samples(n)
            | Duration::Tokens(n) => {
                write!(f, "{n}{}", self.unit())
            }
            Duration::Fraction(x) => write!(f, "{x}dur"),
        }
    }
}

impl std::str::FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a duration ({DURATION_HINT})")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                Duration::parse(s).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
                Ok(Duration::Epochs(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
                u64::try_from(n)
                    .map(Duration::Epochs)
                    .map_err(|_| E::custom(format!("{n} is not a duration ({DURATION_HINT})")))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "{x} is not a duration ({DURATION_HINT})"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TimeContext {
        TimeContext {
            tokens_per_batch: 256 * 2048,
            samples_per_batch: 256,
            batches_per_epoch: Some(1000),
            max_duration: Some(Duration::Batches(4800)),
        }
    }

    #[test]
    fn parses_every_unit_and_scientific_notation() {
        assert_eq!(Duration::parse("100ba"), Ok(Duration::Batches(100)));
        assert_eq!(Duration::parse("2ep"), Ok(Duration::Epochs(2)));
        assert_eq!(Duration::parse("4096sp"), Ok(Duration::Samples(4096)));
        assert_eq!(
            Duration::parse("1e9tok"),
            Ok(Duration::Tokens(1_000_000_000))
        );
        assert_eq!(Duration::parse("3e4TOK"), Ok(Duration::Tokens(30_000)));
        assert_eq!(Duration::parse("0.5dur"), Ok(Duration::Fraction(0.5)));
        assert_eq!(Duration::parse("1_000ba"), Ok(Duration::Batches(1000)));
    }

    #[test]
    fn rejects_garbage_with_the_hint() {
        for bad in [
            "10xx", "ba", "", "-3ba", "1.5.0ba", "nanba", "infep", "+5ba",
        ] {
            let err = Duration::parse(bad).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("is not a duration") && msg.contains("100ba"),
                "{bad}: {msg}"
            );
        }
        let err = Duration::parse("10xx").unwrap_err().to_string();
        assert_eq!(
            err,
            "\"10xx\" is not a duration (expected e.g. 100ba, 2ep, 1e9tok)"
        );
    }

    #[test]
    fn fractional_counts_are_rejected_except_dur() {
        assert!(matches!(
            Duration::parse("1.5ba"),
            Err(DurationError::NotWhole { unit: "ba", .. })
        ));
        assert!(matches!(
            Duration::parse("2.5e0tok"),
            Err(DurationError::NotWhole { .. })
        ));
        assert_eq!(Duration::parse("1.5e3tok"), Ok(Duration::Tokens(1500)));
    }

    #[test]
    fn converts_each_unit_to_batches() {
        let c = ctx();
        assert_eq!(Duration::Batches(7).in_batches(&c), Ok(7.0));
        assert_eq!(Duration::Epochs(2).in_batches(&c), Ok(2000.0));
        assert_eq!(Duration::Samples(512).in_batches(&c), Ok(2.0));
        assert_eq!(Duration::Samples(384).in_batches(&c), Ok(1.5));
        assert_eq!(Duration::Tokens(256 * 2048 * 3).in_batches(&c), Ok(3.0));
        // 0.1 of 4800 batches.
        assert_eq!(Duration::Fraction(0.1).in_batches(&c), Ok(480.0));
    }

    #[test]
    fn fraction_follows_max_duration_units() {
        // max 1e6 tokens, 1000-token batches: 0.25dur = 250_000 tok = 250 batches.
        let c = TimeContext {
            tokens_per_batch: 1000,
            samples_per_batch: 4,
            batches_per_epoch: None,
            max_duration: Some(Duration::Tokens(1_000_000)),
        };
        assert_eq!(Duration::Fraction(0.25).in_batches(&c), Ok(250.0));
        // Epoch-based max: 0.5 × (3 epochs × 10 batches) = 15 batches.
        let c = TimeContext {
            batches_per_epoch: Some(10),
            max_duration: Some(Duration::Epochs(3)),
            ..c
        };
        assert_eq!(Duration::Fraction(0.5).in_batches(&c), Ok(15.0));
    }

    #[test]
    fn whole_batches_round_partial_batches_up() {
        let c = TimeContext {
            tokens_per_batch: 1000,
            samples_per_batch: 3,
            batches_per_epoch: None,
            max_duration: None,
        };
        assert_eq!(Duration::Tokens(2500).whole_batches(&c), Ok(3));
        assert_eq!(Duration::Tokens(3000).whole_batches(&c), Ok(3));
        assert_eq!(Duration::Samples(9).whole_batches(&c), Ok(3));
    }

    #[test]
    fn missing_context_is_an_error_not_a_guess() {
        let c = TimeContext {
            tokens_per_batch: 0,
            samples_per_batch: 0,
            batches_per_epoch: None,
            max_duration: None,
        };
        assert!(matches!(
            Duration::Epochs(1).in_batches(&c),
            Err(DurationError::UnknownEpochLength { .. })
        ));
        assert!(matches!(
            Duration::Fraction(0.1).in_batches(&c),
            Err(DurationError::NoMaxDuration { .. })
        ));
        assert!(matches!(
            Duration::Tokens(5).in_batches(&c),
            Err(DurationError::EmptyBatch { .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in ["100ba", "2ep", "7sp", "1000000000tok", "0.25dur"] {
            assert_eq!(Duration::parse(s).unwrap().to_string(), s);
        }
    }
}
