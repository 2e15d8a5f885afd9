//! Apportioning an epoch over (physical nodes, ranks per node, workers, batches), as
//! mosaicml-streaming's `partition/{orig,relaxed}.py` do, so that the global sample order is
//! *elastically deterministic*: the same for every world size the canonical nodes allow, and
//! resumable from one integer (`sample_in_epoch`).
//!
//! Padding follows streaming exactly, because a rank must yield as many samples as every other
//! rank (each contributes the same number to a global batch):
//! - if the epoch size `N` is not a multiple of `num_canonical_nodes`, each short canonical
//!   node repeats its last sample once;
//! - if a node's share is not a multiple of `ranks_per_node`, it repeats a few of its own
//!   samples (a window just before its last `ranks_per_node` samples);
//! - when there are fewer canonical than physical nodes, canonical rows are padded to a
//!   multiple of the ratio with repeats from their own tail.
//!
//! So the union of the ranks' samples is always the whole epoch, and it has no duplicates
//! exactly when no padding is needed (`N` a multiple of both `num_canonical_nodes` and, per
//! node, of `ranks_per_node`); otherwise a handful of samples (fewer than
//! `num_canonical_nodes + world_size`) appear twice.

mod orig;
mod rank;
mod relaxed;

pub use orig::orig;
pub use rank::rank_sequence;
pub use relaxed::relaxed;

use serde::{Deserialize, Serialize};

use super::error::{Result, StreamError};

/// streaming's `partition_algo`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PartitionAlgo {
    /// Canonical and physical node counts must divide one another.
    #[serde(rename = "orig")]
    Orig,
    /// Like `orig`, but a resumption on an incompatible node count re-cuts the initial
    /// partition instead of failing (streaming's default).
    #[default]
    #[serde(rename = "relaxed")]
    Relaxed,
}

/// Who this process is: streaming's `World` without DataLoader workers (tessera prefetches
/// with threads, and a rank's order does not depend on the worker count anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// Global rank, `node * ranks_per_node + rank_of_node`.
    pub rank: u64,
    /// Total number of ranks.
    pub world_size: u64,
    /// Ranks on each physical node (the local world size).
    pub ranks_per_node: u64,
}

impl World {
    /// One process on one node.
    pub const SINGLE: World = World {
        rank: 0,
        world_size: 1,
        ranks_per_node: 1,
    };

    /// Validate and build; `world_size` must be a multiple of `ranks_per_node`.
    pub fn new(rank: u64, world_size: u64, ranks_per_node: u64) -> Result<World> {
        if world_size == 0 || ranks_per_node == 0 || !world_size.is_multiple_of(ranks_per_node) {
            return Err(StreamError::Config {
                field: "world_size".into(),
                found: format!("{world_size} (ranks_per_node {ranks_per_node})"),
                expected: "a positive multiple of a positive ranks_per_node".into(),
            });
        }
        if rank >= world_size {
            return Err(StreamError::Config {
                field: "rank".into(),
                found: rank.to_string(),
                expected: format!("< world_size {world_size}"),
            });
        }
        Ok(World {
            rank,
            world_size,
            ranks_per_node,
        })
    }

    /// Number of physical nodes.
    pub fn num_nodes(&self) -> u64 {
        self.world_size / self.ranks_per_node
    }

    /// This rank's physical node.
    pub fn node(&self) -> u64 {
        self.rank / self.ranks_per_node
    }

    /// This rank's index within its node.
    pub fn rank_of_node(&self) -> u64 {
        self.rank % self.ranks_per_node
    }
}

/// Inputs of streaming's `get_partitions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionParams {
    /// Epoch size (after mixing).
    pub num_samples: u64,
    /// Canonical nodes (the unit the shuffle is laid out in).
    pub num_canonical_nodes: u64,
    /// Physical nodes.
    pub num_nodes: u64,
    /// Ranks per physical node.
    pub ranks_per_node: u64,
    /// Data loader workers per rank.
    pub workers_per_rank: u64,
    /// Per-device batch size.
    pub batch_size: u64,
    /// Global samples already consumed this epoch (rounded down to a multiple of `num_nodes`).
    pub drop_first: u64,
    /// Physical nodes of the run that started the epoch sequence (for `relaxed`).
    pub initial_physical_nodes: Option<u64>,
}

impl PartitionParams {
    /// Positive sizes, and a resume point inside the (padded) epoch.
    pub(crate) fn check(&self) -> Result<()> {
        for (field, v) in [
            ("num_samples", self.num_samples),
            ("num_canonical_nodes", self.num_canonical_nodes),
            ("num_nodes", self.num_nodes),
            ("ranks_per_node", self.ranks_per_node),
            ("workers_per_rank", self.workers_per_rank),
            ("batch_size", self.batch_size),
        ] {
            if v == 0 {
                return Err(StreamError::Config {
                    field: field.into(),
                    found: "0".into(),
                    expected: "> 0".into(),
                });
            }
        }
        let world = self.num_nodes * self.ranks_per_node;
        let repeated = world - self.num_samples % world;
        if self.num_samples + repeated < self.drop_first {
            return Err(StreamError::ResumePastEpoch {
                sample_in_epoch: self.drop_first,
                epoch_size: self.num_samples,
            });
        }
        Ok(())
    }

    /// `orig`'s rule: canonical and physical node counts divide one another.
    pub(crate) fn check_divisible(&self) -> Result<()> {
        let (c, p) = (self.num_canonical_nodes, self.num_nodes);
        if (c < p && p % c != 0) || (p < c && c % p != 0) {
            return Err(StreamError::NodesNotDivisible {
                num_canonical_nodes: c,
                num_physical_nodes: p,
            });
        }
        Ok(())
    }

    /// Whether `relaxed` must re-cut an initial partition rather than use `orig` directly.
    pub(crate) fn needs_relaxed(&self) -> bool {
        let (c, p) = (self.num_canonical_nodes, self.num_nodes);
        self.initial_physical_nodes.is_some() && !((p <= c && c % p == 0) || (p > c && p % c == 0))
    }
}

/// streaming's 5-d partition tensor, row-major:
/// `(physical nodes, ranks per node, workers per rank, batches per worker, batch size)`.
/// `-1` marks filler slots that are skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The five dimensions above.
    pub shape: [usize; 5],
    /// Sample ids, row-major.
    pub ids: Vec<i64>,
}

impl Partition {
    fn offset(&self, node: usize, rank: usize, worker: usize, batch: usize, slot: usize) -> usize {
        let [_, r, w, b, s] = self.shape;
        (((node * r + rank) * w + worker) * b + batch) * s + slot
    }

    /// Element `[node, rank, worker, batch, slot]`.
    pub fn at(&self, node: usize, rank: usize, worker: usize, batch: usize, slot: usize) -> i64 {
        self.ids[self.offset(node, rank, worker, batch, slot)]
    }

    fn at_mut(
        &mut self,
        node: usize,
        rank: usize,
        worker: usize,
        batch: usize,
        slot: usize,
    ) -> &mut i64 {
        let i = self.offset(node, rank, worker, batch, slot);
        &mut self.ids[i]
    }

    /// A rank's samples in the order a DataLoader yields them (batch 0 of worker 0, batch 0
    /// of worker 1, …), `-1` filler dropped.
    pub fn rank_order(&self, node: usize, rank: usize) -> Vec<i64> {
        let [_, _, w, b, s] = self.shape;
        let mut out = Vec::with_capacity(w * b * s);
        for batch in 0..b {
            for worker in 0..w {
                for slot in 0..s {
                    let id = self.at(node, rank, worker, batch, slot);
                    if id >= 0 {
                        out.push(id);
                    }
                }
            }
        }
        out
    }
}

/// streaming's `get_partitions(algo, …)`: the full tensor (reference and `relaxed` path).
pub fn get_partitions(algo: PartitionAlgo, p: &PartitionParams) -> Result<Partition> {
    p.check()?;
    match algo {
        PartitionAlgo::Orig => orig(p),
        PartitionAlgo::Relaxed => relaxed(p),
    }
}

/// This rank's samples for the epoch, in consumption order (ids before shuffling): the closed
/// form where `orig` applies, else the rank's row of the `relaxed` tensor.
pub fn rank_samples(algo: PartitionAlgo, p: &PartitionParams, world: &World) -> Result<Vec<i64>> {
    if algo == PartitionAlgo::Relaxed && p.needs_relaxed() {
        p.check()?;
        let part = relaxed(p)?;
        return Ok(part.rank_order(world.node() as usize, world.rank_of_node() as usize));
    }
    rank_sequence(p, world.node(), world.rank_of_node())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(n: u64, c: u64, nodes: u64, r: u64, w: u64, b: u64, d: u64) -> PartitionParams {
        PartitionParams {
            num_samples: n,
            num_canonical_nodes: c,
            num_nodes: nodes,
            ranks_per_node: r,
            workers_per_rank: w,
            batch_size: b,
            drop_first: d,
            initial_physical_nodes: None,
        }
    }

    /// The global order as the ranks consume it: position `(j·R + l)·P + p` is rank
    /// `(p, l)`'s `j`-th sample.
    fn consumed_order(p: &PartitionParams) -> Vec<i64> {
        let (nodes, r) = (p.num_nodes as usize, p.ranks_per_node as usize);
        let seqs: Vec<Vec<i64>> = (0..nodes * r)
            .map(|g| rank_sequence(p, (g / r) as u64, (g % r) as u64).unwrap())
            .collect();
        let per_rank = seqs[0].len();
        assert!(
            seqs.iter().all(|s| s.len() == per_rank),
            "ranks must yield equally many samples"
        );
        let mut out = vec![-1; per_rank * nodes * r];
        for (g, seq) in seqs.iter().enumerate() {
            let (node, l) = (g / r, g % r);
            for (j, &id) in seq.iter().enumerate() {
                out[(j * r + l) * nodes + node] = id;
            }
        }
        out
    }

    #[test]
    fn single_rank_sees_the_epoch_in_order() {
        let seq = rank_sequence(&params(120, 1, 1, 1, 1, 4, 0), 0, 0).unwrap();
        assert_eq!(seq, (0..120).collect::<Vec<_>>());
    }

    #[test]
    fn short_canonical_rows_repeat_their_last_sample() {
        // 10 samples over 3 canonical nodes: rows [0..3), [3..6), [6..10) -> 4 wide.
        let seq = rank_sequence(&params(10, 3, 1, 1, 1, 1, 0), 0, 0).unwrap();
        assert_eq!(seq, vec![0, 3, 6, 1, 4, 7, 2, 5, 8, 2, 5, 9]);
    }

    #[test]
    fn incompatible_node_counts_are_rejected_by_orig() {
        let p = params(100, 3, 2, 1, 1, 1, 0);
        assert!(matches!(
            rank_sequence(&p, 0, 0),
            Err(StreamError::NodesNotDivisible { .. })
        ));
        assert!(matches!(
            get_partitions(PartitionAlgo::Orig, &p),
            Err(StreamError::NodesNotDivisible { .. })
        ));
    }

    #[test]
    fn resume_past_the_epoch_is_an_error() {
        let p = params(100, 1, 1, 2, 1, 4, 500);
        assert!(matches!(
            rank_sequence(&p, 0, 0),
            Err(StreamError::ResumePastEpoch { .. })
        ));
    }

    #[test]
    fn relaxed_recut_keeps_the_global_order_for_a_new_node_count() {
        // Started on 2 nodes (ncn 2); resumed on 3 nodes with the same global batch of 12.
        let mut first = params(240, 2, 2, 2, 1, 3, 24);
        let mut resumed = params(240, 2, 3, 2, 1, 2, 24);
        resumed.initial_physical_nodes = Some(2);
        first.initial_physical_nodes = Some(2);
        let a = get_partitions(PartitionAlgo::Relaxed, &first).unwrap();
        let b = get_partitions(PartitionAlgo::Relaxed, &resumed).unwrap();
        // Step t's global batch is the same set of samples in both layouts.
        let global_batches = |part: &Partition| -> Vec<Vec<i64>> {
            let [n, r, w, nb, s] = part.shape;
            let mut out = Vec::new();
            for batch in 0..nb {
                for worker in 0..w {
                    let mut g: Vec<i64> = Vec::new();
                    for node in 0..n {
                        for rank in 0..r {
                            for slot in 0..s {
                                g.push(part.at(node, rank, worker, batch, slot));
                            }
                        }
                    }
                    g.sort_unstable();
                    out.push(g);
                }
            }
            out
        };
        assert_eq!(global_batches(&a), global_batches(&b));
        assert_eq!(
            rank_samples(
                PartitionAlgo::Relaxed,
                &resumed,
                &World::new(4, 6, 2).unwrap()
            )
            .unwrap(),
            b.rank_order(2, 0)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// The closed form equals the literal port of streaming's tensor, rank by rank.
        #[test]
        fn closed_form_matches_the_reference_tensor(
            n in 1u64..400, c_exp in 0u32..4, ratio in 0u32..3, c_bigger in any::<bool>(),
            r in 1u64..5, w in 1u64..4, b in 1u64..6, d_frac in 0u64..100,
        ) {
            let c = 1u64 << c_exp;
            let nodes = if c_bigger { (c >> ratio).max(1) } else { c << ratio };
            let d = (n * d_frac / 100) / (nodes * r * b) * (nodes * r * b);
            let p = params(n, c, nodes, r, w, b, d);
            match get_partitions(PartitionAlgo::Orig, &p) {
                Ok(full) => {
                    for node in 0..nodes {
                        for l in 0..r {
                            let fast = rank_sequence(&p, node, l).unwrap();
                            prop_assert_eq!(fast, full.rank_order(node as usize, l as usize));
                        }
                    }
                }
                Err(_) => prop_assert!(rank_sequence(&p, 0, 0).is_err()),
            }
        }

        /// The union of the ranks is the whole epoch; repeats only come from padding.
        #[test]
        fn ranks_cover_the_epoch_exactly_once_up_to_padding(
            n in 1u64..500, c in 1u64..9, r in 1u64..5, nodes_div in 0usize..4,
        ) {
            let divisors: Vec<u64> = (1..=c).filter(|x| c % x == 0).collect();
            let nodes = divisors[nodes_div % divisors.len()];
            prop_assume!(n >= c);
            let p = params(n, c, nodes, r, 1, 1, 0);
            let order = consumed_order(&p);
            let mut counts = vec![0u32; n as usize];
            for &id in &order {
                counts[id as usize] += 1;
            }
            prop_assert!(counts.iter().all(|&k| k >= 1), "a sample is missing");
            let repeats = order.len() as u64 - n;
            prop_assert!(repeats < c + nodes * r);
            if n.is_multiple_of(c) && (n / nodes).is_multiple_of(r) {
                prop_assert_eq!(repeats, 0);
            }
        }

        /// Elastic determinism: every compatible world consumes the same global order, and a
        /// resume point continues it exactly.
        #[test]
        fn global_order_is_the_same_for_every_compatible_world(
            n in 16u64..400, c_exp in 0u32..4, r in 1u64..4, steps in 0u64..5,
        ) {
            let c = 1u64 << c_exp;
            let reference = consumed_order(&params(n, c, 1, 1, 1, 1, 0));
            let real = (n.div_ceil(c) * c) as usize;
            for nodes in (0..=c_exp).map(|e| 1u64 << e) {
                let p = params(n, c, nodes, r, 1, 2, 0);
                let order = consumed_order(&p);
                prop_assert_eq!(&order[..real.min(order.len())], &reference[..real.min(order.len())]);
                // Resume after `steps` global batches of nodes * r * 2 samples.
                let d = steps * nodes * r * 2;
                if d < real as u64 {
                    let resumed = consumed_order(&params(n, c, nodes, r, 1, 2, d));
                    let tail = &order[d as usize..];
                    let m = tail.len().min(resumed.len()).min(real - d as usize);
                    prop_assert_eq!(&resumed[..m], &tail[..m]);
                }
            }
        }
    }
}
