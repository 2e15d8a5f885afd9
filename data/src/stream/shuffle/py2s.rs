//! `py2s`: shuffle intra-shard in two places (streaming's `shuffle/py2s.py`).
//!
//! Like `py1s`, but each shard's samples are also shuffled once per run *before* shards are
//! split at canonical node boundaries, so a split shard contributes random samples to each
//! side. About half as fast as `py1s`, and ever so slightly more random.

use super::super::error::Result;
use super::super::numpy_rng::NumpyRng;

/// The py2s order of one epoch; `block_size` is ignored (the unit is the shard).
pub fn py2s(
    shard_sizes: &[u64],
    num_canonical_nodes: u64,
    seed: u64,
    epoch: u64,
    _block_size: u64,
) -> Result<Vec<i64>> {
    // Every shard's sample ids live in one buffer; a "shard" is a window into it, which a
    // split at a node boundary divides into two windows (streaming's numpy views).
    let total: u64 = shard_sizes.iter().sum();
    let mut samples: Vec<i64> = (0..total as i64).collect();
    let mut windows: Vec<(usize, usize)> = Vec::with_capacity(shard_sizes.len());
    let mut offset = 0usize;
    for &size in shard_sizes {
        windows.push((offset, offset + size as usize));
        offset += size as usize;
    }

    // The run-fixed scattering: shard order, then samples within each shard.
    let mut fixed_rng = NumpyRng::new(seed);
    fixed_rng.shuffle(&mut windows);
    for &(b, e) in &windows {
        fixed_rng.shuffle(&mut samples[b..e]);
    }

    // Partition the shard sequence over canonical nodes (streaming's `_partition`).
    let num_parts = num_canonical_nodes.max(1);
    let mut parts: Vec<Vec<(usize, usize)>> = Vec::with_capacity(num_parts as usize);
    let mut index = 0usize;
    let mut so_far = 0u64;
    for part in 0..num_parts {
        let part_end = (total as u128 * (part as u128 + 1) / num_parts as u128) as u64;
        let mut members = Vec::new();
        while index < windows.len() {
            let (b, e) = windows[index];
            let n = (e - b) as u64;
            if part_end < so_far + n {
                if so_far < part_end {
                    let split = (part_end - so_far) as usize;
                    members.push((b, b + split));
                    windows[index] = (b + split, e);
                    so_far += split as u64;
                }
                break;
            }
            members.push((b, e));
            index += 1;
            so_far += n;
        }
        parts.push(members);
    }

    // This epoch's shuffle within each canonical node.
    let mut epoch_rng = NumpyRng::new(seed.wrapping_add(epoch));
    for members in &mut parts {
        epoch_rng.shuffle(members);
        for &(b, e) in members.iter() {
            epoch_rng.shuffle(&mut samples[b..e]);
        }
    }

    let mut ids = Vec::with_capacity(total as usize);
    for members in &parts {
        for &(b, e) in members {
            ids.extend_from_slice(&samples[b..e]);
        }
    }
    Ok(ids)
}
