//! `py1e`: streaming's default shuffle (`shuffle/py1e.py`).
//!
//! Shards are assigned to canonical nodes once per run (as in `py1s`). Each epoch, within a
//! node, shard pieces are put in a random order and their samples shuffled; then every sample
//! is moved by a uniform random shift so that a piece's samples spread over a window of about
//! `shuffle_block_size` positions centred on where the piece sits. Samples from neighbouring
//! shards interleave, while at any moment a node only needs the shards whose windows overlap
//! the current position: good mixing with a bounded, evenly spread download footprint.

use rayon::slice::ParallelSliceMut;

use super::super::error::{Result, StreamError};
use super::super::numpy_rng::NumpyRng;
use super::{block_bounds, divide_spans, shard_spans};

/// The py1e order of one epoch.
///
/// # Errors
/// A canonical node with no samples (fewer samples than canonical nodes), or a
/// `block_size` so small that `[int(0.75·b), int(1.25·b))` is empty.
pub fn py1e(
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

    let (low, high) = block_bounds(block_size);
    let mut ids = Vec::with_capacity(num_samples as usize);
    // Scratch reused across nodes: the node's samples and their (position, index) keys.
    let mut node_samples: Vec<i64> = Vec::new();
    let mut keyed: Vec<(f64, u32)> = Vec::new();
    let mut shifts: Vec<f64> = Vec::new();
    for (node, &(sb, se)) in supers.iter().enumerate() {
        let node_spans = &spans[sb..se];
        let n: i64 = node_spans.iter().map(|&(b, e)| e - b).sum();
        if n == 0 {
            return Err(StreamError::EmptyCanonicalNode {
                node: node as u64,
                num_canonical_nodes: ncn,
                num_samples,
            });
        }
        node_samples.clear();
        for &(b, e) in node_spans {
            let start = node_samples.len();
            node_samples.extend(b..e);
            epoch_rng.shuffle(&mut node_samples[start..]);
        }

        keyed.clear();
        keyed.extend((0..n).map(|i| (i as f64, i as u32)));
        let mut offset = 0i64;
        for &(b, e) in node_spans {
            let span = e - b;
            let rand_block = epoch_rng
                .integers(low, high)
                .ok_or(StreamError::BlockSize {
                    algo: "py1e",
                    block_size,
                })?;
            // Half the slack between the block and the piece, on each side; a piece larger
            // than its block is not spread at all (streaming warns about it).
            let cutoff = ((rand_block - span) as f64 / 2.0).max(0.0);
            let lower = (-cutoff).max(-(offset as f64));
            let upper = cutoff.min((n - offset - span) as f64);
            shifts.resize(span as usize, 0.0);
            epoch_rng.uniform_into(lower, upper, &mut shifts);
            for (k, s) in keyed[offset as usize..(offset + span) as usize]
                .iter_mut()
                .zip(&shifts)
            {
                k.0 += s;
            }
            offset += span;
        }
        // NumPy's argsort; positions are distinct in practice, and the index breaks ties.
        let by_position = |a: &(f64, u32), b: &(f64, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        // The comparator is a total order, so the parallel sort gives the same result.
        if keyed.len() > 1 << 16 {
            keyed.par_sort_unstable_by(by_position);
        } else {
            keyed.sort_unstable_by(by_position);
        }
        ids.extend(keyed.iter().map(|&(_, i)| node_samples[i as usize]));
    }
    Ok(ids)
}
