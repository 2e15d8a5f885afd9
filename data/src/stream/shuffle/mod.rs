//! Deterministic epoch shuffles, one algorithm per file, each a port of mosaicml-streaming's
//! `streaming/base/shuffle/<algo>.py` that reproduces its output exactly (same NumPy draws).
//!
//! Every algorithm is a pure function
//! `(shard_sizes, num_canonical_nodes, seed, epoch, block_size) -> Vec<i64>` returning a
//! permutation of `0..sum(shard_sizes)`: position `k` of the epoch reads sample `ids[k]`.
//! All but `naive` first fix an assignment of (pieces of) shards to canonical nodes for the
//! whole run (seeded by `seed` alone), then reshuffle within each canonical node every epoch
//! (seeded by `seed + epoch`). That keeps each node's shard working set small and makes the
//! order independent of the physical world size.

mod naive;
mod py1br;
mod py1e;
mod py1s;
mod py2s;

pub use naive::naive;
pub use py1br::py1br;
pub use py1e::py1e;
pub use py1s::py1s;
pub use py2s::py2s;

use serde::{Deserialize, Serialize};

use super::error::Result;

/// Which shuffle to use; serde names are streaming's `shuffle_algo` strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShuffleAlgo {
    /// All-to-all permutation; best mixing, but every node touches every shard.
    #[serde(rename = "naive")]
    Naive,
    /// Shards to canonical nodes, then shuffle shard order and samples within each shard.
    #[serde(rename = "py1s")]
    Py1s,
    /// Like py1s, then shuffle within randomly sized, staggered blocks of each node.
    #[serde(rename = "py1br")]
    Py1br,
    /// streaming's default: shard samples spread over a window around the shard's position.
    #[default]
    #[serde(rename = "py1e")]
    Py1e,
    /// Like py1s, but shard samples are also shuffled once per run before splitting.
    #[serde(rename = "py2s")]
    Py2s,
}

impl ShuffleAlgo {
    /// Every algorithm, for tests and CLI listings.
    pub const ALL: [ShuffleAlgo; 5] = [
        ShuffleAlgo::Naive,
        ShuffleAlgo::Py1s,
        ShuffleAlgo::Py1br,
        ShuffleAlgo::Py1e,
        ShuffleAlgo::Py2s,
    ];

    /// streaming's name for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            ShuffleAlgo::Naive => "naive",
            ShuffleAlgo::Py1s => "py1s",
            ShuffleAlgo::Py1br => "py1br",
            ShuffleAlgo::Py1e => "py1e",
            ShuffleAlgo::Py2s => "py2s",
        }
    }

    /// Parse streaming's name (`"py1e"`, …).
    pub fn from_name(name: &str) -> Option<ShuffleAlgo> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The global order of one epoch (see the module docs).
    pub fn shuffle(
        self,
        shard_sizes: &[u64],
        num_canonical_nodes: u64,
        seed: u64,
        epoch: u64,
        block_size: u64,
    ) -> Result<Vec<i64>> {
        let f = match self {
            ShuffleAlgo::Naive => naive,
            ShuffleAlgo::Py1s => py1s,
            ShuffleAlgo::Py1br => py1br,
            ShuffleAlgo::Py1e => py1e,
            ShuffleAlgo::Py2s => py2s,
        };
        f(shard_sizes, num_canonical_nodes, seed, epoch, block_size)
    }

    /// The default number of canonical nodes when none is configured: streaming uses 64 per
    /// physical node for the shard-granular py1s/py2s, and one per physical node otherwise.
    pub fn default_num_canonical_nodes(self, num_physical_nodes: u64) -> u64 {
        match self {
            ShuffleAlgo::Py1s | ShuffleAlgo::Py2s => 64 * num_physical_nodes,
            _ => num_physical_nodes,
        }
    }
}

/// streaming's default `shuffle_block_size`: `max(4_000_000 // num_canonical_nodes, 1 << 18)`.
pub fn default_block_size(num_canonical_nodes: u64) -> u64 {
    (4_000_000 / num_canonical_nodes.max(1)).max(1 << 18)
}

/// A half-open range of global sample ids, `begin..end`.
pub(crate) type Span = (i64, i64);

/// Each shard's span of global sample ids, in shard order.
pub(crate) fn shard_spans(shard_sizes: &[u64]) -> (Vec<Span>, u64) {
    let mut spans = Vec::with_capacity(shard_sizes.len());
    let mut total = 0u64;
    for &size in shard_sizes {
        spans.push((total as i64, (total + size) as i64));
        total += size;
    }
    (spans, total)
}

/// streaming's `divide_spans`: cut the (already ordered) spans into `num_parts` consecutive
/// groups of `num_samples * (p + 1) / num_parts` cumulative samples, splitting a span where it
/// crosses a boundary. Returns the new spans and, per part, its `begin..end` range of span
/// indices ("super spans").
pub(crate) fn divide_spans(
    mut spans: Vec<Span>,
    num_samples: u64,
    num_parts: u64,
) -> (Vec<Span>, Vec<(usize, usize)>) {
    let mut out = Vec::with_capacity(spans.len() + num_parts as usize);
    let mut supers = Vec::with_capacity(num_parts as usize);
    let mut span_index = 0;
    let mut so_far = 0i64;
    let mut begin_part = 0;
    for part in 0..num_parts {
        let part_end = (num_samples as u128 * (part as u128 + 1) / num_parts as u128) as i64;
        while span_index < spans.len() {
            let (b, e) = spans[span_index];
            let n = e - b;
            if part_end < so_far + n {
                if so_far < part_end {
                    let split = part_end - so_far;
                    out.push((b, b + split));
                    spans[span_index] = (b + split, e);
                    so_far += split;
                }
                break;
            }
            out.push((b, e));
            span_index += 1;
            so_far += n;
        }
        supers.push((begin_part, out.len()));
        begin_part = out.len();
    }
    (out, supers)
}

/// `int(0.75 * block_size)` and `int(1.25 * block_size)`, as Python computes them.
pub(crate) fn block_bounds(block_size: u64) -> (i64, i64) {
    (
        (0.75 * block_size as f64) as i64,
        (1.25 * block_size as f64) as i64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_permutation(ids: &[i64], n: u64) {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n as i64).collect::<Vec<_>>());
    }

    /// streaming's `tests/test_shuffle.py` property: a permutation, and (for the node-aware
    /// algorithms) each canonical node sees the same set of samples every epoch.
    #[test]
    fn every_algorithm_is_a_permutation_with_stable_canonical_node_sets() {
        let shard_sizes: Vec<u64> = (0..37).map(|i| 1 + (i * 7919 % 23)).collect();
        let n: u64 = shard_sizes.iter().sum();
        for algo in ShuffleAlgo::ALL {
            for ncn in [1u64, 2, 3, 8] {
                let mut node_sets: Option<Vec<Vec<i64>>> = None;
                for epoch in 0..3 {
                    let ids = algo.shuffle(&shard_sizes, ncn, 1234, epoch, 20).unwrap();
                    check_permutation(&ids, n);
                    if algo == ShuffleAlgo::Naive {
                        continue;
                    }
                    let sets: Vec<Vec<i64>> = (0..ncn)
                        .map(|p| {
                            let b = (n * p / ncn) as usize;
                            let e = (n * (p + 1) / ncn) as usize;
                            let mut s = ids[b..e].to_vec();
                            s.sort_unstable();
                            s
                        })
                        .collect();
                    match &node_sets {
                        None => node_sets = Some(sets),
                        Some(first) => assert_eq!(first, &sets, "{algo:?} ncn {ncn} epoch {epoch}"),
                    }
                }
            }
        }
    }

    #[test]
    fn epochs_and_seeds_change_the_order() {
        let sizes = [50u64, 50, 50, 50];
        for algo in ShuffleAlgo::ALL {
            let a = algo.shuffle(&sizes, 2, 7, 0, 40).unwrap();
            let b = algo.shuffle(&sizes, 2, 7, 1, 40).unwrap();
            let c = algo.shuffle(&sizes, 2, 8, 0, 40).unwrap();
            assert_ne!(a, b, "{algo:?}");
            assert_ne!(a, c, "{algo:?}");
            assert_eq!(
                a,
                algo.shuffle(&sizes, 2, 7, 0, 40).unwrap(),
                "{algo:?} is not pure"
            );
        }
    }

    #[test]
    fn divide_spans_cuts_at_node_boundaries() {
        let (spans, n) = shard_spans(&[5, 5, 5]);
        let (out, supers) = divide_spans(spans, n, 2);
        // 15 samples over 2 parts: part 0 ends at 7, so shard 1 is split 2 + 3.
        assert_eq!(out, vec![(0, 5), (5, 7), (7, 10), (10, 15)]);
        assert_eq!(supers, vec![(0, 2), (2, 4)]);
    }

    #[test]
    fn names_round_trip_through_serde() {
        for algo in ShuffleAlgo::ALL {
            let json = serde_json::to_string(&algo).unwrap();
            assert_eq!(json, format!("\"{}\"", algo.name()));
            assert_eq!(serde_json::from_str::<ShuffleAlgo>(&json).unwrap(), algo);
            assert_eq!(ShuffleAlgo::from_name(algo.name()), Some(algo));
        }
        assert!(serde_json::from_str::<ShuffleAlgo>("\"py1x\"").is_err());
        assert_eq!(default_block_size(1), 4_000_000);
        assert_eq!(default_block_size(64), 1 << 18);
    }
}
