//! A literal port of streaming's `partition/orig.py`: the full 5-d partition tensor
//! `(physical nodes, ranks per node, workers per rank, batches per worker, batch size)`,
//! built with the same array steps (and the same padding) as the NumPy original.
//!
//! The loader itself never materialises this tensor (see `rank.rs` for the per-rank closed
//! form); it exists as the executable reference the closed form is tested against, and for
//! `relaxed` re-partitioning, which reshapes it.

use super::super::error::{Result, StreamError};
use super::{Partition, PartitionParams};

/// The canonical sample matrix `(num_canonical_nodes, padded samples per canonical node)`,
/// row-major, exactly as `get_partitions_orig` builds it before flattening.
pub(crate) fn canonical_matrix(
    num_samples: u64,
    ncn: u64,
    num_nodes: u64,
) -> Result<(Vec<i64>, usize)> {
    let n = num_samples as i64;
    let c = ncn as i64;
    let spcn = (n + c - 1) / c;
    let (node_ratio, padding) = if c < num_nodes as i64 {
        let ratio = num_nodes as i64 / c;
        let overflow = spcn % ratio;
        (ratio, if overflow != 0 { ratio - overflow } else { 0 })
    } else {
        (0, 0)
    };
    let width = spcn + padding;
    let mut ids = vec![0i64; (c * width) as usize];
    if n > c || (n == c && c >= num_nodes as i64) {
        for row in 0..c {
            let row_start = row * n / c;
            let row_stop = (row + 1) * n / c;
            let r = &mut ids[(row * width) as usize..((row + 1) * width) as usize];
            for (j, v) in r.iter_mut().enumerate() {
                *v = row_start + j as i64;
            }
            // Short rows repeat their last sample to reach the common length.
            if row_stop - row_start < spcn {
                r[(spcn - 1) as usize] -= 1;
            }
            if padding > 0 {
                // `ids[:, -padding:] = ids[:, -padding - ratio + 1 - padding : -padding - ratio + 1]`
                // with Python's clamping of negative slice bounds, and NumPy broadcasting a
                // length-1 source.
                let src_start = (width - 2 * padding - node_ratio + 1).max(0);
                let src_stop = (width - padding - node_ratio + 1).max(0);
                let src_len = (src_stop - src_start).max(0);
                if src_len != padding && src_len != 1 {
                    return Err(StreamError::Partition {
                        num_samples,
                        reason: format!(
                            "{ncn} canonical nodes over {num_nodes} physical nodes leave \
                             {spcn} samples per canonical node, too few to pad to a multiple \
                             of {node_ratio}"
                        ),
                    });
                }
                for k in 0..padding {
                    let src = if src_len == 1 {
                        src_start
                    } else {
                        src_start + k
                    };
                    r[(width - padding + k) as usize] = r[src as usize];
                }
            }
        }
    } else {
        // Fewer samples than canonical nodes: tile the samples (many repeats).
        for (k, v) in ids.iter_mut().enumerate() {
            *v = k as i64 % n.max(1);
        }
    }
    Ok((ids, width as usize))
}

/// streaming's `get_partitions_orig`.
pub fn orig(p: &PartitionParams) -> Result<Partition> {
    let PartitionParams {
        num_samples,
        num_canonical_nodes: ncn,
        num_nodes,
        ranks_per_node,
        workers_per_rank,
        batch_size,
        ..
    } = *p;
    p.check_divisible()?;
    let drop_first = p.drop_first - p.drop_first % num_nodes;
    let (canon, width) = canonical_matrix(num_samples, ncn, num_nodes)?;

    // Flatten column-major (ids.transpose().flatten()), drop what was seen.
    let total = canon.len();
    let flat: Vec<i64> = (drop_first as usize..total)
        .map(|k| canon[(k % ncn as usize) * width + k / ncn as usize])
        .collect();
    if !flat.len().is_multiple_of(num_nodes as usize) {
        return Err(StreamError::Partition {
            num_samples,
            reason: format!(
                "{} samples after dropping {drop_first} do not split over {num_nodes} nodes",
                flat.len()
            ),
        });
    }
    // (-1, nodes).T: node p takes every nodes-th sample.
    let per_node = flat.len() / num_nodes as usize;
    let mut nodes: Vec<Vec<i64>> = (0..num_nodes as usize)
        .map(|node| {
            (0..per_node)
                .map(|i| flat[i * num_nodes as usize + node])
                .collect()
        })
        .collect();

    // Pad each node's samples to a multiple of ranks_per_node.
    let r = ranks_per_node as usize;
    let overflow = per_node % r;
    if overflow != 0 {
        let underflow = r - overflow;
        for row in nodes.iter_mut() {
            let last: Vec<i64> = if r + underflow - 1 <= per_node {
                row[per_node + 1 - r - underflow..per_node + 1 - r].to_vec()
            } else {
                let mut v = Vec::with_capacity(underflow);
                for _ in 0..underflow / per_node {
                    v.extend_from_slice(row);
                }
                v.extend_from_slice(&row[..underflow % per_node]);
                v
            };
            row.extend(last);
        }
    }
    let per_node = nodes.first().map_or(0, Vec::len);
    let per_rank = per_node / r;

    // (nodes, per_rank, ranks): rank l takes node samples l, l + R, ...; pad with -1 to
    // whole batches for every worker.
    let unit = (workers_per_rank * batch_size) as usize;
    let rounded = per_rank.div_ceil(unit) * unit;
    let batches = rounded / unit;
    let (w, b) = (workers_per_rank as usize, batch_size as usize);
    let mut out = Partition {
        shape: [num_nodes as usize, r, w, batches, b],
        ids: vec![-1; num_nodes as usize * r * rounded],
    };
    for (node, row) in nodes.iter().enumerate() {
        for rank in 0..r {
            for j in 0..per_rank {
                // Rank-local index j -> (batch, worker, slot) of (-1, workers, batch_size).
                let (bw, slot) = (j / b, j % b);
                let (batch, worker) = (bw / w, bw % w);
                *out.at_mut(node, rank, worker, batch, slot) = row[j * r + rank];
            }
        }
    }
    Ok(out)
}
