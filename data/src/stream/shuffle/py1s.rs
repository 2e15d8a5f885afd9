//! `py1s`: shuffle intra-shard in one place (streaming's `shuffle/py1s.py`).
//!
//! The shard order is shuffled once per run and cut into canonical nodes; each epoch shuffles
//! the order of shard pieces within each node, then the samples within each piece. Roughly
//! twice as fast as `py2s`; where a shard is split at a node boundary the split is by sample
//! index, not random (streaming found this does not matter to convergence).

use super::super::error::Result;
use super::super::numpy_rng::NumpyRng;
use super::{divide_spans, shard_spans};

/// The py1s order of one epoch; `block_size` is ignored (the unit is the shard).
pub fn py1s(
    shard_sizes: &[u64],
    num_canonical_nodes: u64,
    seed: u64,
    epoch: u64,
    _block_size: u64,
) -> Result<Vec<i64>> {
    let (mut spans, num_samples) = shard_spans(shard_sizes);
    NumpyRng::new(seed).shuffle(&mut spans);
    let (mut spans, supers) = divide_spans(spans, num_samples, num_canonical_nodes.max(1));

    let mut epoch_rng = NumpyRng::new(seed.wrapping_add(epoch));
    for &(b, e) in &supers {
        epoch_rng.shuffle(&mut spans[b..e]);
    }
    let mut ids = Vec::with_capacity(num_samples as usize);
    for &(b, e) in &spans {
        let start = ids.len();
        ids.extend(b..e);
        epoch_rng.shuffle(&mut ids[start..]);
    }
    Ok(ids)
}
