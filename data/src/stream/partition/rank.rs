//! One rank's share of an epoch, computed in closed form.
//!
//! Equal, sample for sample, to reading the rank's row of streaming's `orig` partition tensor
//! in DataLoader order (batch, then worker, then slot) with the `-1` padding dropped; but it
//! costs O(samples of this rank) instead of building the whole epoch's tensor in every
//! process. The equality is a property test in `partition/mod.rs`.
//!
//! The layout behind it: canonical node `c` owns the contiguous sample range
//! `[c·N/C, (c+1)·N/C)`; the epoch's *global order* visits them round-robin (position `k` is
//! sample `k / C` of canonical node `k % C`); physical node `p` takes positions `p, p + P, …`
//! and its rank `l` every `R`-th of those. So after `t` steps of a global batch `B = P·R·b`
//! exactly the positions `[0, t·B)` have been consumed, whatever `P` and `R` are: that is what
//! makes the order elastic and a resume point a single integer.

use super::super::error::{Result, StreamError};
use super::PartitionParams;

/// The shape of the canonical matrix (see `orig::canonical_matrix`).
struct Canonical {
    num_samples: i64,
    ncn: i64,
    spcn: i64,
    width: i64,
    padding: i64,
    /// First padding source column, and whether one source column is broadcast.
    pad_src: i64,
    pad_broadcast: bool,
    regular: bool,
}

impl Canonical {
    fn new(num_samples: u64, ncn: u64, num_nodes: u64) -> Result<Self> {
        let (n, c) = (num_samples as i64, ncn as i64);
        let spcn = (n + c - 1) / c;
        let (ratio, padding) = if c < num_nodes as i64 {
            let ratio = num_nodes as i64 / c;
            let overflow = spcn % ratio;
            (ratio, if overflow != 0 { ratio - overflow } else { 0 })
        } else {
            (0, 0)
        };
        let width = spcn + padding;
        let regular = n > c || (n == c && c >= num_nodes as i64);
        let src_start = (width - 2 * padding - ratio + 1).max(0);
        let src_len = ((width - padding - ratio + 1).max(0) - src_start).max(0);
        if regular && padding > 0 && src_len != padding && src_len != 1 {
            return Err(StreamError::Partition {
                num_samples,
                reason: format!(
                    "{ncn} canonical nodes over {num_nodes} physical nodes leave {spcn} samples \
                     per canonical node, too few to pad to a multiple of {ratio}"
                ),
            });
        }
        Ok(Canonical {
            num_samples: n,
            ncn: c,
            spcn,
            width,
            padding,
            pad_src: src_start,
            pad_broadcast: src_len == 1 && padding != 1,
            regular,
        })
    }

    fn len(&self) -> i64 {
        self.ncn * self.width
    }

    /// Element `[row, col]` of the canonical matrix.
    fn at(&self, row: i64, col: i64) -> i64 {
        if !self.regular {
            return (row * self.width + col) % self.num_samples.max(1);
        }
        if col >= self.spcn {
            let k = col - (self.width - self.padding);
            let src = if self.pad_broadcast {
                self.pad_src
            } else {
                self.pad_src + k
            };
            return self.at(row, src);
        }
        let start = row * self.num_samples / self.ncn;
        let stop = (row + 1) * self.num_samples / self.ncn;
        let mut v = start + col;
        if col == self.spcn - 1 && stop - start < self.spcn {
            v -= 1;
        }
        v
    }

    /// Position `k` of the epoch's global order (before any drop).
    fn global(&self, k: i64) -> i64 {
        self.at(k % self.ncn, k / self.ncn)
    }
}

/// The rank's sample slots (ids into the un-shuffled epoch), in the order the rank consumes
/// them, padding included but streaming's `-1` batch filler excluded.
pub fn rank_sequence(p: &PartitionParams, node: u64, rank_of_node: u64) -> Result<Vec<i64>> {
    p.check()?;
    p.check_divisible()?;
    let num_nodes = p.num_nodes as i64;
    let drop_first = (p.drop_first - p.drop_first % p.num_nodes) as i64;
    let canon = Canonical::new(p.num_samples, p.num_canonical_nodes, p.num_nodes)?;
    let total = canon.len();
    if drop_first >= total {
        return Ok(Vec::new());
    }
    let remaining = total - drop_first;
    if remaining % num_nodes != 0 {
        return Err(StreamError::Partition {
            num_samples: p.num_samples,
            reason: format!(
                "{remaining} samples after dropping {drop_first} do not split over {num_nodes} nodes"
            ),
        });
    }
    let per_node = remaining / num_nodes;
    let r = p.ranks_per_node as i64;
    let overflow = per_node % r;
    let underflow = if overflow != 0 { r - overflow } else { 0 };
    let node = node as i64;
    let node_sample = |i: i64| -> i64 {
        // Node padding repeats a window just before the node's last R samples, or (when the
        // node has too few samples) cycles through them.
        let i = if i < per_node {
            i
        } else if r + underflow - 1 <= per_node {
            per_node - r - underflow + 1 + (i - per_node)
        } else {
            (i - per_node) % per_node
        };
        canon.global(drop_first + i * num_nodes + node)
    };
    let per_rank = (per_node + underflow) / r;
    let l = rank_of_node as i64;
    Ok((0..per_rank).map(|j| node_sample(j * r + l)).collect())
}
