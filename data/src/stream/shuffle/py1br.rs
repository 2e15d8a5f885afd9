//! `py1br`: shuffle within randomly sized, staggered blocks (streaming's `shuffle/py1br.py`).
//!
//! As `py1s` up to the per-node shard order; then each node's samples are cut into
//! consecutive blocks of random size in `[0.75·b, 1.25·b)`, the first one shortened by a
//! per-node random stagger (so nodes do not all cross block boundaries at once), and samples
//! are shuffled within each block. Better mixing than `py1s`, at the cost of needing every
//! shard of the current block at once.

use super::super::error::{Result, StreamError};
use super::super::numpy_rng::NumpyRng;
use super::{block_bounds, divide_spans, shard_spans};

/// The py1br order of one epoch.
///
/// # Errors
/// A `block_size` below 2, for which streaming's draws are undefined.
pub fn py1br(
    shard_sizes: &[u64],
    num_canonical_nodes: u64,
    seed: u64,
    epoch: u64,
    block_size: u64,
) -> Result<Vec<i64>> {
    let ncn = num_canonical_nodes.max(1);
    let (mut spans, num_samples) = shard_spans(shard_sizes);
    NumpyRng::new(seed).shuffle(&mut spans);
    let (mut spans, supers) = divide_spans(spans, num_samples, ncn);

    let mut epoch_rng = NumpyRng::new(seed.wrapping_add(epoch));
    for &(b, e) in &supers {
        epoch_rng.shuffle(&mut spans[b..e]);
    }

    let err = || StreamError::BlockSize {
        algo: "py1br",
        block_size,
    };
    let (low, high) = block_bounds(block_size);
    let stagger = epoch_rng.integers_n(0, low, ncn as usize).ok_or_else(err)?;

    let mut ids: Vec<i64> = Vec::with_capacity(num_samples as usize);
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    for (node, &(sb, se)) in supers.iter().enumerate() {
        let node_start = ids.len();
        for &(b, e) in &spans[sb..se] {
            ids.extend(b..e);
        }
        let node_stop = ids.len();

        blocks.clear();
        let mut blocks_end = node_start as i64;
        let node_stagger = stagger[node];
        while blocks_end < node_stop as i64 {
            let rand_block = epoch_rng.integers(low, high).ok_or_else(err)?;
            let start = (blocks_end - node_stagger).max(node_start as i64);
            let stop = (blocks_end + rand_block - node_stagger).min(node_stop as i64);
            blocks.push((start as usize, stop as usize));
            blocks_end += stop - start;
        }
        for &(b, e) in &blocks {
            epoch_rng.shuffle(&mut ids[b..e]);
        }
    }
    Ok(ids)
}
