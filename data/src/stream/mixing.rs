//! Mixing several streams: how many samples each stream (and each of its shards) contributes
//! to an epoch, ported from streaming's `Stream.apply_weights`, `sampling.get_sampling` and
//! `StreamingDataset.resample_streams` (same rules, same NumPy draws).
//!
//! - `proportion` (relative): stream `i` gets `epoch_size · pᵢ / Σp` samples, the rounding
//!   shortfall handed one each to randomly chosen streams; `epoch_size` defaults to the total
//!   number of underlying samples.
//! - `repeat` (absolute): `int(repeat · samples)`.
//! - `choose` (absolute): exactly that many.
//! - none: every sample once (or, with an `epoch_size`, in proportion to stream sizes).
//!
//! Relative and absolute weights cannot be mixed. A stream drawn `k + f` times its size takes
//! every sample `k` times plus a fraction `f`, picked shard-balanced (in granules of
//! `sampling_granularity` samples) and, with `sampling_method = balanced` and shuffling, anew
//! every epoch.

use serde::{Deserialize, Serialize};

use super::error::{Result, StreamError};
use super::numpy_rng::NumpyRng;

/// How one stream is weighted in the mix (at most one of streaming's three knobs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weight {
    /// Every sample once per epoch.
    #[default]
    Unweighted,
    /// Relative share of the epoch.
    Proportion(f64),
    /// Multiplier on the stream's own size.
    Repeat(f64),
    /// Exact number of samples per epoch.
    Choose(u64),
}

/// streaming's `sampling_method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingMethod {
    /// Partial repeats are re-drawn every epoch (when shuffling).
    #[default]
    Balanced,
    /// The same partial repeats every epoch.
    Fixed,
}

/// streaming's `Stream.apply_weights`: samples each stream contributes per epoch.
///
/// # Errors
/// Negative or non-finite weights, relative and absolute weights together, or an
/// `epoch_size` given with absolute weights.
pub fn choose_per_stream(
    weights: &[Weight],
    samples_per_stream: &[u64],
    epoch_size: Option<u64>,
    seed: u64,
) -> Result<Vec<u64>> {
    let bad = |i: usize, what: String| StreamError::Config {
        field: format!("streams[{i}]"),
        found: what,
        expected:
            "one non-negative, finite proportion/repeat/choose, the same kind for every stream"
                .into(),
    };
    let relative = matches!(weights.first(), Some(Weight::Proportion(_)));
    for (i, w) in weights.iter().enumerate() {
        match *w {
            Weight::Proportion(p) if !(p.is_finite() && p >= 0.0) => {
                return Err(bad(i, format!("proportion {p}")));
            }
            Weight::Repeat(r) if !(r.is_finite() && r >= 0.0) => {
                return Err(bad(i, format!("repeat {r}")));
            }
            Weight::Proportion(_) if !relative => {
                return Err(bad(i, "a proportion among absolute weights".into()));
            }
            Weight::Unweighted | Weight::Repeat(_) | Weight::Choose(_) if relative => {
                return Err(bad(i, "an absolute weight among proportions".into()));
            }
            _ => {}
        }
    }
    let unspecified = weights.iter().all(|w| *w == Weight::Unweighted);
    let epoch_size = epoch_size.filter(|&e| e > 0);
    let total: u64 = samples_per_stream.iter().sum();

    let proportional = |props: Vec<f64>, choose_per_epoch: u64| -> Result<Vec<u64>> {
        let sum: f64 = props.iter().sum();
        let mut choose: Vec<u64> = props
            .iter()
            .map(|p| (choose_per_epoch as f64 * (p / sum)) as u64)
            .collect();
        let shortfall = choose_per_epoch.saturating_sub(choose.iter().sum());
        let picks = NumpyRng::new(seed)
            .choice_without_replacement(weights.len() as u64, shortfall)
            .ok_or_else(|| StreamError::Config {
                field: "streams".into(),
                found: format!("proportions {props:?}"),
                expected: "proportions with a positive sum".into(),
            })?;
        for i in picks {
            choose[i as usize] += 1;
        }
        Ok(choose)
    };

    if relative {
        let props = weights
            .iter()
            .map(|w| {
                if let Weight::Proportion(p) = w {
                    *p
                } else {
                    0.0
                }
            })
            .collect();
        if weights.iter().all(|w| *w == Weight::Proportion(0.0)) {
            return Err(bad(0, "proportions that are all zero".into()));
        }
        proportional(props, epoch_size.unwrap_or(total))
    } else if unspecified && epoch_size.is_some() {
        let props = samples_per_stream.iter().map(|&s| s as f64).collect();
        proportional(props, epoch_size.unwrap_or(total))
    } else {
        if let Some(e) = epoch_size {
            return Err(StreamError::Config {
                field: "epoch_size".into(),
                found: e.to_string(),
                expected: "no epoch_size with repeat/choose weights (it only scales proportions)"
                    .into(),
            });
        }
        Ok(weights
            .iter()
            .zip(samples_per_stream)
            .map(|(w, &n)| match *w {
                Weight::Repeat(r) => (r * n as f64) as u64,
                Weight::Choose(c) => c,
                _ => n,
            })
            .collect())
    }
}

/// streaming's `get_sampling`: how many samples to draw from each shard of one stream.
pub fn choose_per_shard(
    samples_per_shard: &[u64],
    choose: u64,
    granularity: u64,
    seed: u64,
    epoch: u64,
    use_epoch: bool,
) -> Vec<u64> {
    let num_samples: u64 = samples_per_shard.iter().sum();
    if num_samples == 0 {
        return vec![0; samples_per_shard.len()];
    }
    if choose.is_multiple_of(num_samples) {
        return samples_per_shard
            .iter()
            .map(|&s| s * choose / num_samples)
            .collect();
    }
    let granularity = granularity.max(1);
    // Cut each shard into picks of `granularity` samples (the last one shorter).
    let mut pick_shard = Vec::new();
    let mut pick_size = Vec::new();
    for (shard, &s) in samples_per_shard.iter().enumerate() {
        let picks = s.div_ceil(granularity);
        for k in 0..picks {
            pick_shard.push(shard);
            pick_size.push(if k + 1 == picks {
                s - (picks - 1) * granularity
            } else {
                granularity
            });
        }
    }
    let epoch_seed = if use_epoch {
        seed.wrapping_add(epoch)
    } else {
        seed
    };
    let order = NumpyRng::new(epoch_seed).permutation(pick_shard.len());
    let mut out: Vec<u64> = samples_per_shard
        .iter()
        .map(|&s| s * (choose / num_samples))
        .collect();
    let mut left = choose % num_samples;
    for pick in order {
        let take = pick_size[pick as usize].min(left);
        out[pick_shard[pick as usize]] += take;
        left -= take;
        if left == 0 {
            break;
        }
    }
    out
}

/// One epoch's resampled sample space: the "big" ids `0..epoch_size` that partitioning and
/// shuffling work on, mapped back to underlying ("small") sample ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Resampled {
    /// Sizes of the shuffle units: each shard's full repeats, then its partial repeat.
    pub shuffle_units: Vec<u64>,
    /// `small_per_big[big]`, or `None` when it is the identity (every sample exactly once).
    pub small_per_big: Option<Vec<i64>>,
}

impl Resampled {
    /// Number of samples in the epoch.
    pub fn epoch_size(&self) -> u64 {
        self.shuffle_units.iter().sum()
    }

    /// The underlying sample id of a big id.
    #[inline]
    pub fn small(&self, big: i64) -> i64 {
        match &self.small_per_big {
            Some(map) => map[big as usize],
            None => big,
        }
    }
}

/// Per-stream inputs of [`resample`].
#[derive(Clone, Debug)]
pub struct StreamShards<'a> {
    /// Samples in each of the stream's shards.
    pub samples_per_shard: &'a [u64],
    /// Global sample id of the stream's first sample.
    pub sample_offset: u64,
    /// Samples per epoch (from [`choose_per_stream`]).
    pub choose: u64,
}

/// streaming's `resample_streams` for one epoch.
pub fn resample(
    streams: &[StreamShards<'_>],
    granularity: u64,
    seed: u64,
    epoch: u64,
    method: SamplingMethod,
    shuffle: bool,
) -> Resampled {
    let balanced = method == SamplingMethod::Balanced;
    let mut rng = NumpyRng::new(if balanced {
        seed.wrapping_add(epoch)
    } else {
        seed
    });
    let identity = streams
        .iter()
        .all(|s| s.choose == s.samples_per_shard.iter().sum::<u64>());
    let mut units = Vec::new();
    let mut map: Vec<i64> = Vec::new();
    for stream in streams {
        let per_shard = choose_per_shard(
            stream.samples_per_shard,
            stream.choose,
            granularity,
            seed,
            epoch,
            shuffle && balanced,
        );
        let mut shard_offset = stream.sample_offset as i64;
        for (&size, &choose) in stream.samples_per_shard.iter().zip(&per_shard) {
            // Empty shards contribute nothing (NumPy's `x // 0` is 0 there, too).
            if let Some(full) = choose.checked_div(size) {
                let partial = choose % size;
                units.extend(std::iter::repeat_n(size, full as usize));
                if partial > 0 {
                    units.push(partial);
                }
                if !identity {
                    for _ in 0..full {
                        map.extend(shard_offset..shard_offset + size as i64);
                    }
                    if partial > 0 {
                        let picks = rng.choice_without_replacement(size, partial);
                        // `partial < size`, so the draw always succeeds.
                        let mut picks = picks.unwrap_or_default();
                        picks.sort_unstable();
                        map.extend(picks.into_iter().map(|i| shard_offset + i));
                    }
                }
            }
            shard_offset += size as i64;
        }
    }
    Resampled {
        shuffle_units: units,
        small_per_big: (!identity).then_some(map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from streaming's own `get_sampling`, relative `apply_weights` and
    /// `resample_streams` partial picks, run under NumPy 2.1.3.
    #[test]
    fn sampling_and_weights_match_streaming_under_numpy() {
        // get_sampling(np.array([13, 40, 7, 22]), 50, 1, 17, 3, True)
        assert_eq!(
            choose_per_shard(&[13, 40, 7, 22], 50, 1, 17, 3, true),
            [7, 25, 4, 14]
        );
        // get_sampling(np.array([13, 40, 7, 22]), 131, 4, 17, 3, True)
        assert_eq!(
            choose_per_shard(&[13, 40, 7, 22], 131, 4, 17, 3, true),
            [25, 60, 14, 32]
        );
        // Stream.apply_weights with proportions [.3, .5, .2, .7], epoch_size 1234, seed 17
        let w = [0.3, 0.5, 0.2, 0.7].map(Weight::Proportion);
        assert_eq!(
            choose_per_stream(&w, &[1000, 333, 77, 5], Some(1234), 17).unwrap(),
            [217, 362, 146, 509]
        );
        // resample_streams(epoch=3) for one stream of shards [13, 40, 7, 22] choosing 50
        let shards = [13u64, 40, 7, 22];
        let r = resample(
            &[StreamShards {
                samples_per_shard: &shards,
                sample_offset: 0,
                choose: 50,
            }],
            1,
            17,
            3,
            SamplingMethod::Balanced,
            true,
        );
        let expect: Vec<i64> = vec![
            1, 2, 3, 4, 6, 8, 9, 13, 14, 15, 19, 20, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31, 32,
            33, 39, 40, 42, 43, 44, 47, 51, 52, 54, 57, 58, 59, 60, 61, 62, 64, 66, 67, 70, 71, 72,
            73, 74, 77, 80, 81,
        ];
        assert_eq!(r.small_per_big.unwrap(), expect);
        assert_eq!(r.shuffle_units, [7, 25, 4, 14]);
        // Big shards take NumPy's tail-shuffle path in `choice`: shards [30000, 20000] choose 20000.
        let big = [30000u64, 20000];
        let r = resample(
            &[StreamShards {
                samples_per_shard: &big,
                sample_offset: 0,
                choose: 20000,
            }],
            1,
            5,
            0,
            SamplingMethod::Balanced,
            true,
        );
        let map = r.small_per_big.unwrap();
        assert_eq!(r.shuffle_units, [12022, 7978]);
        assert_eq!(&map[..5], [0, 4, 5, 6, 10]);
        assert_eq!(&map[map.len() - 5..], [49993, 49994, 49995, 49998, 49999]);
        assert_eq!(map.iter().sum::<i64>(), 500242511);
    }

    #[test]
    fn unweighted_streams_take_every_sample_once() {
        let c = choose_per_stream(&[Weight::Unweighted; 2], &[100, 30], None, 9176).unwrap();
        assert_eq!(c, vec![100, 30]);
        let shards = [40u64, 60];
        let r = resample(
            &[StreamShards {
                samples_per_shard: &shards,
                sample_offset: 0,
                choose: 100,
            }],
            1,
            9176,
            0,
            SamplingMethod::Balanced,
            true,
        );
        assert_eq!(r.shuffle_units, vec![40, 60]);
        assert!(r.small_per_big.is_none());
    }

    #[test]
    fn proportions_split_the_epoch_and_hand_out_the_shortfall() {
        let c = choose_per_stream(
            &[Weight::Proportion(1.0), Weight::Proportion(2.0)],
            &[50, 50],
            Some(100),
            3,
        )
        .unwrap();
        // 100/3 = 33.3 and 66.6 truncate to 33 + 66; one stream gets the missing sample.
        assert_eq!(c.iter().sum::<u64>(), 100);
        assert!(c == vec![34, 66] || c == vec![33, 67], "{c:?}");
        assert!(
            choose_per_stream(
                &[Weight::Proportion(1.0), Weight::Repeat(2.0)],
                &[5, 5],
                None,
                0
            )
            .is_err()
        );
        assert!(choose_per_stream(&[Weight::Repeat(-1.0)], &[5], None, 0).is_err());
        assert!(choose_per_stream(&[Weight::Choose(5)], &[5], Some(10), 0).is_err());
    }

    #[test]
    fn repeat_and_choose_up_and_downsample() {
        let c = choose_per_stream(
            &[Weight::Repeat(2.5), Weight::Choose(7)],
            &[10, 20],
            None,
            0,
        )
        .unwrap();
        assert_eq!(c, vec![25, 7]);
        let (a, b) = ([4u64, 6], [20u64]);
        let r = resample(
            &[
                StreamShards {
                    samples_per_shard: &a,
                    sample_offset: 0,
                    choose: 25,
                },
                StreamShards {
                    samples_per_shard: &b,
                    sample_offset: 10,
                    choose: 7,
                },
            ],
            1,
            11,
            0,
            SamplingMethod::Balanced,
            true,
        );
        assert_eq!(r.epoch_size(), 32);
        let map = r.small_per_big.as_ref().unwrap();
        assert_eq!(map.len(), 32);
        // Stream 0: each sample at least twice, none more than three times.
        for s in 0..10 {
            let k = map.iter().filter(|&&m| m == s).count();
            assert!((2..=3).contains(&k), "sample {s} drawn {k} times");
        }
        // Stream 1: 7 distinct samples of its 20.
        let mut picked: Vec<i64> = map.iter().copied().filter(|&m| m >= 10).collect();
        picked.dedup();
        assert_eq!(picked.len(), 7);
        assert!(picked.iter().all(|&m| (10..30).contains(&m)));
    }

    #[test]
    fn balanced_partial_repeats_change_per_epoch_and_fixed_ones_do_not() {
        let shards = [50u64, 50];
        let s = [StreamShards {
            samples_per_shard: &shards,
            sample_offset: 0,
            choose: 30,
        }];
        let e0 = resample(&s, 1, 5, 0, SamplingMethod::Balanced, true);
        let e1 = resample(&s, 1, 5, 1, SamplingMethod::Balanced, true);
        assert_ne!(e0.small_per_big, e1.small_per_big);
        let f0 = resample(&s, 1, 5, 0, SamplingMethod::Fixed, true);
        let f1 = resample(&s, 1, 5, 1, SamplingMethod::Fixed, true);
        assert_eq!(f0.small_per_big, f1.small_per_big);
    }

    #[test]
    fn granularity_takes_whole_granules_from_one_shard() {
        let per_shard = choose_per_shard(&[100, 100, 100], 50, 50, 0, 0, false);
        assert_eq!(per_shard.iter().sum::<u64>(), 50);
        assert!(per_shard.contains(&50), "{per_shard:?}");
    }
}
