//! `naive`: one all-to-all permutation per epoch (streaming's `shuffle/naive.py`).
//!
//! The most random order possible, so the reference point for shuffle quality; but every node
//! then needs every shard, all at the start of the epoch. Use it for small single-node data.

use super::super::error::Result;
use super::super::numpy_rng::NumpyRng;

/// `default_rng(seed + epoch).permutation(sum(shard_sizes))`; `num_canonical_nodes` and
/// `block_size` are ignored, as in streaming.
pub fn naive(
    shard_sizes: &[u64],
    _num_canonical_nodes: u64,
    seed: u64,
    epoch: u64,
    _block_size: u64,
) -> Result<Vec<i64>> {
    let n: u64 = shard_sizes.iter().sum();
    Ok(NumpyRng::new(seed.wrapping_add(epoch)).permutation(n as usize))
}
