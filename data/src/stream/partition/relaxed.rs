//! streaming's `partition/relaxed.py`: resuming on a physical node count that does not divide
//! (or is not divided by) the canonical node count.
//!
//! The epoch is first partitioned for the *initial* node count (and the per-device batch size
//! that keeps the global batch), then that partition's traversal order is re-cut for the new
//! world. The global batch size must stay the same across the resumption.

use super::super::error::{Result, StreamError};
use super::{Partition, PartitionParams, orig};

/// streaming's `get_partitions_relaxed`.
pub fn relaxed(p: &PartitionParams) -> Result<Partition> {
    let Some(initial) = p.initial_physical_nodes else {
        return orig(p);
    };
    if !p.needs_relaxed() {
        return orig(p);
    }
    let PartitionParams {
        num_nodes,
        ranks_per_node,
        workers_per_rank,
        batch_size,
        ..
    } = *p;
    let global_batch = num_nodes * ranks_per_node * batch_size;
    let initial_devices = initial * ranks_per_node;
    if initial_devices == 0 || global_batch % initial_devices != 0 {
        return Err(StreamError::Config {
            field: "batch_size".into(),
            found: format!("global batch {global_batch}"),
            expected: format!(
                "a multiple of the initial {initial_devices} devices (the global batch must not \
                 change when resuming on a different node count)"
            ),
        });
    }
    let initial_part = orig(&PartitionParams {
        num_nodes: initial,
        batch_size: global_batch / initial_devices,
        ..*p
    })?;

    // Traversal order of the initial partition: (batches, workers, nodes, ranks, slot).
    let [n0, r0, w0, b0, s0] = initial_part.shape;
    let mut traversal = Vec::with_capacity(initial_part.ids.len());
    for batch in 0..b0 {
        for worker in 0..w0 {
            for node in 0..n0 {
                for rank in 0..r0 {
                    for slot in 0..s0 {
                        traversal.push(initial_part.at(node, rank, worker, batch, slot));
                    }
                }
            }
        }
    }

    // Re-cut as (-1, workers, nodes, ranks, batch_size), transposed to the partition layout.
    let (w, n, r, b) = (
        workers_per_rank as usize,
        num_nodes as usize,
        ranks_per_node as usize,
        batch_size as usize,
    );
    let unit = w * n * r * b;
    if traversal.len() % unit != 0 {
        return Err(StreamError::Partition {
            num_samples: p.num_samples,
            reason: format!(
                "{} partition slots do not re-cut into units of {unit}",
                traversal.len()
            ),
        });
    }
    let batches = traversal.len() / unit;
    let mut out = Partition {
        shape: [n, r, w, batches, b],
        ids: vec![-1; traversal.len()],
    };
    for (k, &id) in traversal.iter().enumerate() {
        let slot = k % b;
        let rank = (k / b) % r;
        let node = (k / (b * r)) % n;
        let worker = (k / (b * r * n)) % w;
        let batch = k / unit;
        *out.at_mut(node, rank, worker, batch, slot) = id;
    }
    Ok(out)
}
