//! Every collective with 1 to 4 ranks (threads on 127.0.0.1) against a sequential reference,
//! bit for bit: sums must be `((x_0 + x_1) + x_2) + …` in rank order, whatever the timing.

mod common;

use std::time::Duration;

use common::with_ranks;
use half::{bf16, f16};
use tessera_dist::{DistError, Element, Op, shard_range};

/// Test values for one element type: a deterministic series whose sums depend on the order
/// they are added in, and the reference rank-order sum.
trait TestValue: Element + PartialEq + std::fmt::Debug {
    fn at(rank: usize, i: usize) -> Self;
    /// `((x_0 + x_1) + x_2) + …` as the crate docs promise it.
    fn reference_sum(xs: &[Self]) -> Self;
}

/// A value with a wide, order-sensitive spread: magnitudes from 1e-3 to 1e7, both signs.
fn raw(rank: usize, i: usize) -> f64 {
    let h = (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let h = h ^ (h >> 29);
    let mantissa = (h % 10_000) as f64 / 1000.0 + 0.001;
    let exponent = ((h >> 20) % 11) as i32 - 3;
    let sign = if (h >> 40) & 1 == 1 { -1.0 } else { 1.0 };
    sign * mantissa * 10f64.powi(exponent)
}

impl TestValue for f32 {
    fn at(rank: usize, i: usize) -> f32 {
        raw(rank, i) as f32
    }
    fn reference_sum(xs: &[f32]) -> f32 {
        xs[1..].iter().fold(xs[0], |acc, x| acc + x)
    }
}

impl TestValue for f64 {
    fn at(rank: usize, i: usize) -> f64 {
        raw(rank, i)
    }
    fn reference_sum(xs: &[f64]) -> f64 {
        xs[1..].iter().fold(xs[0], |acc, x| acc + x)
    }
}

impl TestValue for u64 {
    fn at(rank: usize, i: usize) -> u64 {
        raw(rank, i).abs() as u64 * 1_000_003 + rank as u64
    }
    fn reference_sum(xs: &[u64]) -> u64 {
        xs.iter().sum()
    }
}

impl TestValue for bf16 {
    fn at(rank: usize, i: usize) -> bf16 {
        bf16::from_f64(raw(rank, i))
    }
    fn reference_sum(xs: &[bf16]) -> bf16 {
        bf16::from_f32(
            xs[1..]
                .iter()
                .fold(xs[0].to_f32(), |acc, x| acc + x.to_f32()),
        )
    }
}

impl TestValue for f16 {
    fn at(rank: usize, i: usize) -> f16 {
        f16::from_f64(raw(rank, i) / 1e4)
    }
    fn reference_sum(xs: &[f16]) -> f16 {
        f16::from_f32(
            xs[1..]
                .iter()
                .fold(xs[0].to_f32(), |acc, x| acc + x.to_f32()),
        )
    }
}

fn series<T: TestValue>(rank: usize, len: usize) -> Vec<T> {
    (0..len).map(|i| T::at(rank, i)).collect()
}

fn bits<T: Element>(xs: &[T]) -> &[u8] {
    bytemuck::cast_slice(xs)
}

/// What one rank saw from each collective.
struct Seen<T> {
    all_reduce: Vec<T>,
    reduce_scatter: Vec<T>,
    all_gather: Vec<T>,
    broadcasts: Vec<Vec<T>>,
    blobs: Vec<Vec<u8>>,
}

/// Runs every collective on `world` ranks with `len`-element buffers and checks each rank's
/// results against the sequential reference.
fn check_every_collective<T: TestValue>(world: usize, len: usize) {
    let shard = len / world + 1;
    let seen: Vec<Seen<T>> = with_ranks(world, |mut comm| {
        let r = comm.rank();
        assert_eq!(
            (comm.world_size(), comm.backend_name() == "single"),
            (world, world == 1)
        );

        let mut all_reduce = series::<T>(r, len);
        comm.all_reduce(&mut all_reduce).unwrap();

        let input = series::<T>(r, world * shard);
        let mut reduce_scatter = vec![T::zeroed(); shard];
        comm.reduce_scatter(&input, &mut reduce_scatter).unwrap();

        let mine = series::<T>(r + 100, shard);
        let mut all_gather = vec![T::zeroed(); world * shard];
        comm.all_gather(&mine, &mut all_gather).unwrap();

        let broadcasts = (0..world)
            .map(|root| {
                let mut buf = series::<T>(r + 200, len);
                comm.broadcast(&mut buf, root).unwrap();
                buf
            })
            .collect();

        comm.barrier().unwrap();
        // Different lengths per rank, including empty.
        let blobs = comm.all_gather_bytes(&vec![r as u8; r * 3]).unwrap();
        Seen {
            all_reduce,
            reduce_scatter,
            all_gather,
            broadcasts,
            blobs,
        }
    });

    let column = |inputs: &[Vec<T>], i: usize| inputs.iter().map(|v| v[i]).collect::<Vec<_>>();
    let inputs: Vec<Vec<T>> = (0..world).map(|r| series(r, len)).collect();
    let summed: Vec<T> = (0..len)
        .map(|i| T::reference_sum(&column(&inputs, i)))
        .collect();
    let rs_inputs: Vec<Vec<T>> = (0..world).map(|r| series(r, world * shard)).collect();
    let gathered: Vec<T> = (0..world)
        .flat_map(|r| series::<T>(r + 100, shard))
        .collect();

    for (r, s) in seen.iter().enumerate() {
        let what = format!("{} × {len} on {world} ranks, rank {r}", T::NAME);
        assert_eq!(bits(&s.all_reduce), bits(&summed), "all_reduce, {what}");
        let expected_shard: Vec<T> = shard_range(world * shard, world, r)
            .map(|i| T::reference_sum(&column(&rs_inputs, i)))
            .collect();
        assert_eq!(
            bits(&s.reduce_scatter),
            bits(&expected_shard),
            "reduce_scatter, {what}"
        );
        assert_eq!(bits(&s.all_gather), bits(&gathered), "all_gather, {what}");
        for (root, got) in s.broadcasts.iter().enumerate() {
            assert_eq!(
                bits(got),
                bits(&series::<T>(root + 200, len)),
                "broadcast from {root}, {what}"
            );
        }
        let blobs: Vec<Vec<u8>> = (0..world).map(|q| vec![q as u8; q * 3]).collect();
        assert_eq!(s.blobs, blobs, "all_gather_bytes, {what}");
    }
}

#[test]
fn f32_collectives_match_the_reference_on_1_to_4_ranks() {
    for world in 1..=4 {
        // 1_100_003 elements: every rank's chunk spans several 1 MiB segments.
        for len in [0, 1, 5, 1000, 1_100_003] {
            check_every_collective::<f32>(world, len);
        }
    }
}

#[test]
fn f64_u64_bf16_f16_collectives_match_the_reference() {
    for world in 1..=4 {
        for len in [3, 1000, 70_001] {
            check_every_collective::<f64>(world, len);
            check_every_collective::<u64>(world, len);
            check_every_collective::<bf16>(world, len);
            check_every_collective::<f16>(world, len);
        }
    }
}

#[test]
fn sums_follow_rank_order_whatever_the_arrival_order() {
    // Element i gives the three ranks a permutation of (1e8, 1, -1e8): in f32 the rank-order
    // sum is 0 when 1 comes before -1e8 is added (1e8 + 1 rounds to 1e8) and 1 otherwise, so any
    // other order shows.
    const PERMS: [[f32; 3]; 6] = [
        [1e8, 1.0, -1e8],
        [1e8, -1e8, 1.0],
        [1.0, 1e8, -1e8],
        [1.0, -1e8, 1e8],
        [-1e8, 1e8, 1.0],
        [-1e8, 1.0, 1e8],
    ];
    let len = 6 * 1000;
    let value = |rank: usize, i: usize| PERMS[i % 6][rank];
    let expected: Vec<f32> = (0..len)
        .map(|i| (value(0, i) + value(1, i)) + value(2, i))
        .collect();
    // The test can fail: the reverse order gives a different answer.
    let reversed: Vec<f32> = (0..len)
        .map(|i| (value(2, i) + value(1, i)) + value(0, i))
        .collect();
    assert_ne!(bits(&expected), bits(&reversed));

    for round in 0..8 {
        let results = with_ranks(3, |mut comm| {
            let r = comm.rank();
            // Arrive in a different order each round.
            std::thread::sleep(Duration::from_millis(((r + round) % 3) as u64 * 15));
            let mut buf: Vec<f32> = (0..len).map(|i| value(r, i)).collect();
            comm.all_reduce(&mut buf).unwrap();
            buf
        });
        for (r, got) in results.iter().enumerate() {
            assert_eq!(bits(got), bits(&expected), "round {round}, rank {r}");
        }
    }
}

#[test]
fn large_buffers_do_not_deadlock() {
    // 8M f32 (32 MB) per rank: far more than any socket buffer, in both directions at once.
    let len = 8 << 20;
    for world in [2, 4] {
        let results = with_ranks(world, |mut comm| {
            let r = comm.rank();
            // Small integers: every order sums exactly, so the expected value is simple.
            let mut buf: Vec<f32> = (0..len).map(|i| ((i % 1000) + r) as f32).collect();
            comm.all_reduce(&mut buf).unwrap();
            let mut root_buf: Vec<f32> = (0..len).map(|i| (i % 7 + r) as f32).collect();
            comm.broadcast(&mut root_buf, world - 1).unwrap();
            (buf, root_buf)
        });
        let offset = (0..world).sum::<usize>();
        for (r, (sum, bcast)) in results.iter().enumerate() {
            for i in [0, 1, 999, len / 2 + 17, len - 1] {
                assert_eq!(
                    sum[i],
                    ((i % 1000) * world + offset) as f32,
                    "rank {r}, element {i}"
                );
                assert_eq!(
                    bcast[i],
                    (i % 7 + world - 1) as f32,
                    "rank {r}, element {i}"
                );
            }
            assert!(
                sum.iter()
                    .enumerate()
                    .all(|(i, v)| *v == ((i % 1000) * world + offset) as f32)
            );
        }
    }
}

#[test]
fn wrong_lengths_are_errors_that_leave_the_communicator_usable() {
    let results = with_ranks(2, |mut comm| {
        let rs = comm
            .reduce_scatter(&[1.0f32; 5], &mut [0.0; 2])
            .unwrap_err();
        let ag = comm.all_gather(&[1.0f32; 2], &mut [0.0; 3]).unwrap_err();
        let root = comm.broadcast(&mut [1.0f32; 2], 2).unwrap_err();
        let mut buf = [comm.rank() as f32 + 1.0];
        comm.all_reduce(&mut buf).unwrap();
        (rs, ag, root, buf[0])
    });
    for (rs, ag, root, sum) in results {
        assert!(
            matches!(
                &rs,
                DistError::Argument {
                    op: Op::ReduceScatter,
                    ..
                }
            ) && rs
                .to_string()
                .contains("input has 5 elements, but output has 2"),
            "{rs}"
        );
        assert!(
            matches!(
                ag,
                DistError::Argument {
                    op: Op::AllGather,
                    ..
                }
            ),
            "{ag}"
        );
        assert!(
            root.to_string()
                .contains("root 2 is not below the world size 2"),
            "{root}"
        );
        assert_eq!(sum, 3.0);
    }
}

#[test]
fn ranks_out_of_step_get_an_error_naming_the_peer_then_a_poisoned_communicator() {
    let results = with_ranks(2, |mut comm| {
        let r = comm.rank();
        // Rank 0 reduces 10 elements, rank 1 reduces 12.
        let mut buf = vec![1.0f32; 10 + 2 * r];
        let first = comm.all_reduce(&mut buf).unwrap_err();
        let then = comm.barrier().unwrap_err();
        (first, then)
    });
    for (r, (first, then)) in results.iter().enumerate() {
        // Who is "out of step" is a matter of view: a rank blames its peer, or hears that the
        // peer blames it first.
        assert!(first.failed_rank().is_some(), "rank {r}: {first}");
        assert!(
            matches!(
                first,
                DistError::Desync { .. } | DistError::PeerAborted { .. }
            ),
            "rank {r}: {first}"
        );
        assert!(
            matches!(then, DistError::Poisoned { .. }),
            "rank {r}: {then}"
        );
    }
    // At least one rank saw the mismatch itself, with both calls in the message.
    let desync = results
        .iter()
        .map(|(first, _)| first.to_string())
        .find(|m| m.contains("out of step"))
        .expect("a Desync error");
    assert!(
        desync.contains("buffer length 10") && desync.contains("buffer length 12"),
        "{desync}"
    );

    // Different operations at the same point.
    let results = with_ranks(3, |mut comm| {
        if comm.rank() == 2 {
            comm.all_gather_bytes(b"x").unwrap_err()
        } else {
            comm.barrier().unwrap_err()
        }
    });
    // Which pair sees the mismatch first depends on arrival order (rank 2 may compare itself
    // with rank 0 and blame it), so each rank only has to name some rank, and one rank must
    // have seen the mismatch itself, naming both calls.
    for (r, err) in results.iter().enumerate() {
        assert!(err.failed_rank().is_some(), "rank {r}: {err}");
    }
    let desync = results
        .iter()
        .find(|err| matches!(err, DistError::Desync { .. }))
        .expect("a Desync error");
    let message = desync.to_string();
    assert!(
        message.contains("all_gather_bytes") && message.contains("barrier"),
        "{message}"
    );
}

#[test]
fn a_communicator_can_move_to_another_thread() {
    // The trainer may own it on a worker thread; this fails to compile if it cannot.
    fn send<T: Send + 'static>(_: T) {}
    send(tessera_dist::Communicator::single());
    let sums = with_ranks(2, |comm| {
        std::thread::spawn(move || {
            let mut comm = comm;
            let mut x = [1u64];
            comm.all_reduce(&mut x).unwrap();
            x[0]
        })
        .join()
        .unwrap()
    });
    assert_eq!(sums, [2, 2]);
}
