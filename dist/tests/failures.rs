//! A rank that leaves or stalls: every other rank's collective fails within the timeout with an
//! error naming it, and the communicator stays failed. (A process that exits in the middle of a
//! collective is in `processes.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::{assert_blames, with_ranks};
use tessera_dist::{DistError, Op};

#[test]
fn a_rank_that_leaves_is_named_by_every_other_rank_at_once() {
    let timeout = Duration::from_secs(20);
    let results = with_ranks(4, |mut comm| {
        comm.set_timeout(timeout);
        if comm.rank() == 3 {
            drop(comm); // closes every connection, as an exiting process does
            return None;
        }
        let start = Instant::now();
        let mut buf = vec![1.0f32; 100_000];
        let err = comm.all_reduce(&mut buf).unwrap_err();
        let elapsed = start.elapsed();
        let poisoned = comm.barrier().unwrap_err();
        Some((err, elapsed, poisoned))
    });
    for (rank, result) in results.into_iter().enumerate().take(3) {
        let (err, elapsed, poisoned) = result.expect("ranks 0-2 report");
        assert_blames(&err, 3);
        assert!(
            elapsed < timeout / 4,
            "rank {rank} took {elapsed:?} to notice: {err}"
        );
        assert!(err.to_string().contains("all_reduce"), "{err}");
        assert!(
            matches!(
                poisoned,
                DistError::Poisoned {
                    culprit: Some(3),
                    ..
                }
            ),
            "{poisoned}"
        );
    }
}

#[test]
fn a_stalled_rank_is_named_within_the_timeout() {
    let timeout = Duration::from_millis(1500);
    let results = with_ranks(3, |mut comm| {
        comm.set_timeout(timeout);
        let start = Instant::now();
        if comm.rank() == 2 {
            // Stalls well past everyone's deadline, then finds its peers gone.
            std::thread::sleep(timeout * 2);
        }
        let mut buf = vec![1.0f64; 50_000];
        let result = comm.all_reduce(&mut buf);
        (result, start.elapsed())
    });
    for (rank, (result, elapsed)) in results.iter().enumerate().take(2) {
        let err = result.as_ref().unwrap_err();
        assert_blames(err, 2);
        assert!(
            matches!(
                err,
                DistError::Timeout {
                    op: Op::AllReduce,
                    peer: 2,
                    ..
                }
            ),
            "rank {rank}: {err}"
        );
        assert!(
            *elapsed >= timeout && *elapsed < timeout + Duration::from_secs(2),
            "rank {rank} failed after {elapsed:?} (timeout {timeout:?})"
        );
    }
    // The late rank fails too, at once: its peers gave up and closed. (Whom it blames depends on
    // whether their abort notice or their closed socket reaches it first.)
    let (late, elapsed) = &results[2];
    assert!(
        late.is_err(),
        "the stalled rank's all_reduce succeeded alone"
    );
    assert!(
        *elapsed < timeout * 2 + Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[test]
fn a_rank_stalling_mid_phase_with_a_large_buffer_is_named() {
    // Rank 1 joins the all_reduce only after the others' deadline, with 16 MB in flight the
    // other way: senders blocked on full socket buffers must not keep anyone past the timeout.
    let timeout = Duration::from_millis(1500);
    let results = with_ranks(2, |mut comm| {
        comm.set_timeout(timeout);
        let mut buf = vec![1.0f32; 4 << 20];
        if comm.rank() == 1 {
            std::thread::sleep(timeout * 2);
            return None;
        }
        let start = Instant::now();
        let err = comm.all_reduce(&mut buf).unwrap_err();
        Some((err, start.elapsed()))
    });
    let (err, elapsed) = results[0].as_ref().expect("rank 0 reports");
    assert_blames(err, 1);
    assert!(
        *elapsed < timeout + Duration::from_secs(2),
        "took {elapsed:?}: {err}"
    );
}
