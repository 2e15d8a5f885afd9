//! `Communicator::split`: groups of ranks (the shard and replica groups of `HYBRID_SHARD`) on the
//! job's connections, used in turn with the job's communicator.

mod common;

use std::time::{Duration, Instant};

use common::{assert_blames, with_ranks};
use tessera_dist::DistError;

/// Rank `r`'s value at `i`: distinct per rank and element, exact in f32 sums.
fn value(r: usize, i: usize) -> f32 {
    (r * 100 + i) as f32
}

#[test]
fn groups_of_a_2x2_job_reduce_among_themselves_interleaved_with_the_whole_job() {
    // Nodes {0, 1} and {2, 3}; replicas {0, 2} and {1, 3}.
    let results = with_ranks(4, |mut world| {
        let r = world.rank();
        let mut node = world.split(r / 2).unwrap();
        let mut replica = world.split(r % 2).unwrap();
        assert_eq!((node.rank(), node.world_size()), (r % 2, 2));
        assert_eq!((replica.rank(), replica.world_size()), (r / 2, 2));

        let len = 6;
        let mine: Vec<f32> = (0..len).map(|i| value(r, i)).collect();
        // Within the node: the shard of the node's sum.
        let mut shard = vec![0.0f32; len / 2];
        node.reduce_scatter(&mine, &mut shard).unwrap();
        // The whole job, between two group collectives on the same connections.
        let mut count = [r as u64 + 1];
        world.all_reduce(&mut count).unwrap();
        // Across nodes: the sum of that shard over the replicas.
        replica.all_reduce(&mut shard).unwrap();
        // Within the node again: the whole sum.
        let mut full = vec![0.0f32; len];
        node.all_gather(&shard, &mut full).unwrap();
        let mut ranks_seen = vec![0u64; 2];
        replica.all_gather(&[r as u64], &mut ranks_seen).unwrap();
        world.barrier().unwrap();
        (count[0], full, ranks_seen)
    });
    let want: Vec<f32> = (0..6).map(|i| (0..4).map(|r| value(r, i)).sum()).collect();
    for (r, (count, full, ranks_seen)) in results.into_iter().enumerate() {
        assert_eq!(count, 1 + 2 + 3 + 4, "rank {r}");
        assert_eq!(full, want, "rank {r}");
        assert_eq!(
            ranks_seen,
            vec![(r % 2) as u64, (r % 2 + 2) as u64],
            "rank {r}"
        );
    }
}

#[test]
fn uneven_colors_and_a_group_of_one_work() {
    let results = with_ranks(3, |mut world| {
        let r = world.rank();
        // {0, 2} and {1}.
        let mut group = world.split(r % 2).unwrap();
        let mut x = [r as u64 + 10];
        group.all_reduce(&mut x).unwrap();
        (group.world_size(), group.backend_name(), x[0])
    });
    assert_eq!(results[0], (2, "tcp", 10 + 12));
    assert_eq!(results[1], (1, "single", 11));
    assert_eq!(results[2], (2, "tcp", 10 + 12));
}

#[test]
fn a_group_peer_that_leaves_is_named_by_its_rank_in_the_job() {
    let timeout = Duration::from_secs(20);
    let results = with_ranks(4, |mut world| {
        world.set_timeout(timeout);
        let r = world.rank();
        let mut node = world.split(r / 2).unwrap();
        if r == 3 {
            drop(node);
            drop(world); // closes every connection, as an exiting process does
            return None;
        }
        let start = Instant::now();
        let mut buf = vec![1.0f32; 10_000];
        let err = node.all_reduce(&mut buf).err();
        let then = world.barrier().unwrap_err();
        Some((err, start.elapsed(), then))
    });
    // Rank 2 shares a node with rank 3, which is rank 1 of that group: the error names 3.
    let (err, elapsed, then) = results[2].as_ref().expect("rank 2 reports");
    let err = err.as_ref().expect("rank 2's group lost rank 3");
    assert_blames(err, 3);
    assert!(elapsed < &(timeout / 4), "took {elapsed:?}: {err}");
    assert!(then.failed_rank().is_some(), "{then}");
    // Ranks 0 and 1 finish their node's reduce, then the job's barrier names the missing rank.
    for r in [0, 1] {
        let (err, _, then) = results[r].as_ref().expect("ranks 0-1 report");
        assert!(err.is_none(), "rank {r}: {err:?}");
        assert!(then.failed_rank().is_some(), "rank {r}: {then}");
    }
}

#[test]
fn a_rank_in_a_group_collective_while_its_peer_is_in_the_jobs_is_out_of_step() {
    let results = with_ranks(2, |mut world| {
        let mut group = world.split(0).unwrap(); // both ranks, separate numbering
        let mut x = [1.0f32; 4];
        if world.rank() == 0 {
            group.all_reduce(&mut x).unwrap_err()
        } else {
            world.all_reduce(&mut x).unwrap_err()
        }
    });
    for (r, err) in results.iter().enumerate() {
        assert!(
            matches!(
                err,
                DistError::Desync { .. } | DistError::PeerAborted { .. }
            ),
            "rank {r}: {err}"
        );
    }
}
