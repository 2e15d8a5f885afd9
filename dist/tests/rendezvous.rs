//! The rendezvous with ranks as threads on 127.0.0.1: agreement, late rank 0, and every way it
//! refuses to start, each within its timeout and naming the rank at fault.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{env, master_listener};
use tessera_dist::rendezvous::{Rendezvous, rendezvous, rendezvous_on};
use tessera_dist::{DistError, RendezvousConfig};

fn config(timeout_ms: u64) -> RendezvousConfig {
    RendezvousConfig {
        timeout: Duration::from_millis(timeout_ms),
        blob: b"nccl-unique-id".to_vec(),
        ..RendezvousConfig::new("hash-a")
    }
}

/// Runs the rendezvous for the ranks in `ranks` of a `world`-rank run, each with its config;
/// rank 0 (if listed) starts after `rank0_delay`. Returns each listed rank's outcome and time.
fn meet(
    world: usize,
    ranks: &[usize],
    cfg_of: impl Fn(usize) -> RendezvousConfig + Sync,
    rank0_delay: Duration,
) -> Vec<(Result<Rendezvous, DistError>, Duration)> {
    let (listener, port) = master_listener();
    let mut listener = Some(listener);
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .iter()
            .map(|&rank| {
                let listener: Option<TcpListener> = if rank == 0 { listener.take() } else { None };
                let cfg = cfg_of(rank);
                s.spawn(move || {
                    let start = Instant::now();
                    let result = match listener {
                        Some(l) => {
                            std::thread::sleep(rank0_delay);
                            rendezvous_on(&env(0, world, port), &cfg, l)
                        }
                        None => rendezvous(&env(rank, world, port), &cfg),
                    };
                    (result, start.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn four_ranks_agree_on_the_peer_table_session_and_blob() {
    let results = meet(4, &[0, 1, 2, 3], |_| config(10_000), Duration::ZERO);
    let rdvs: Vec<Rendezvous> = results.into_iter().map(|(r, _)| r.unwrap()).collect();
    for (rank, rdv) in rdvs.iter().enumerate() {
        assert_eq!((rdv.rank, rdv.world_size), (rank, 4));
        assert_eq!(rdv.peers, rdvs[0].peers);
        assert_eq!(rdv.session, rdvs[0].session);
        assert_eq!(rdv.blob, b"nccl-unique-id");
        assert_eq!(rdv.peers[rank], rdv.data_listener.local_addr().unwrap());
    }
}

#[test]
fn rank_0_may_start_after_the_others() {
    let results = meet(
        3,
        &[0, 1, 2],
        |_| config(10_000),
        Duration::from_millis(800),
    );
    for (rank, (result, elapsed)) in results.iter().enumerate() {
        assert!(result.is_ok(), "rank {rank}: {:?}", result.as_ref().err());
        if rank > 0 {
            assert!(
                *elapsed >= Duration::from_millis(700),
                "rank {rank} met too early"
            );
        }
    }
}

#[test]
fn a_different_config_hash_is_refused_naming_the_rank_and_both_values() {
    let results = meet(
        4,
        &[0, 1, 2, 3],
        |rank| RendezvousConfig {
            config_hash: if rank == 2 {
                "hash-b".into()
            } else {
                "hash-a".into()
            },
            ..config(10_000)
        },
        Duration::ZERO,
    );
    let rank0 = results[0].0.as_ref().unwrap_err();
    assert!(
        matches!(
            rank0,
            DistError::Mismatch {
                rank: 2,
                field: "config hash",
                ..
            }
        ),
        "{rank0}"
    );
    let message = rank0.to_string();
    assert!(
        message.contains("\"hash-b\"") && message.contains("\"hash-a\""),
        "{message}"
    );
    // Rank 2 is told why at once. (Ranks 1 and 3 are too if they arrived before rank 2; if not,
    // they wait for rank 0 until their own timeout.)
    let (rank2, elapsed) = &results[2];
    let rank2 = rank2.as_ref().unwrap_err();
    assert_eq!(rank2.failed_rank(), Some(2), "{rank2}");
    assert!(rank2.to_string().contains("config hash"), "{rank2}");
    assert!(*elapsed < Duration::from_secs(5));
}

#[test]
fn a_different_version_or_world_size_is_refused() {
    let results = meet(
        2,
        &[0, 1],
        |rank| RendezvousConfig {
            version: if rank == 1 {
                "9.9.9".into()
            } else {
                "0.1.0".into()
            },
            ..config(10_000)
        },
        Duration::ZERO,
    );
    let err = results[0].0.as_ref().unwrap_err();
    assert!(
        matches!(
            err,
            DistError::Mismatch {
                rank: 1,
                field: "tessera version",
                ..
            }
        ),
        "{err}"
    );

    // Rank 1 believes the world has 3 ranks.
    let (listener, port) = master_listener();
    let results = std::thread::scope(|s| {
        let zero = s.spawn(|| rendezvous_on(&env(0, 2, port), &config(10_000), listener));
        let one = s.spawn(|| rendezvous(&env(1, 3, port), &config(10_000)));
        (zero.join().unwrap(), one.join().unwrap())
    });
    let err = results.0.unwrap_err();
    assert!(
        matches!(
            err,
            DistError::Mismatch {
                rank: 1,
                field: "WORLD_SIZE",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        results.1.unwrap_err(),
        DistError::Rejected {
            culprit: Some(1),
            ..
        }
    ));
}

#[test]
fn a_duplicated_rank_is_refused() {
    let results = meet(3, &[0, 1, 1], |_| config(10_000), Duration::ZERO);
    let err = results[0].0.as_ref().unwrap_err();
    assert!(
        matches!(err, DistError::DuplicateRank { rank: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_missing_rank_is_named_by_rank_0_within_its_timeout() {
    // Rank 3 never starts. Rank 0 gives up after 1 s; the others wait longer, so they hear
    // rank 0's verdict rather than timing out themselves.
    let results = meet(
        4,
        &[0, 1, 2],
        |rank| config(if rank == 0 { 1000 } else { 10_000 }),
        Duration::ZERO,
    );
    let (rank0, elapsed) = &results[0];
    let rank0 = rank0.as_ref().unwrap_err();
    assert!(
        matches!(rank0, DistError::RanksMissing { missing, .. } if missing == &[3]),
        "{rank0}"
    );
    assert!(
        rank0.to_string().contains("rank(s) [3] of 4 did not join"),
        "{rank0}"
    );
    assert!(
        *elapsed >= Duration::from_secs(1) && *elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    for (rank, (result, elapsed)) in results.iter().enumerate().skip(1) {
        let err = result.as_ref().unwrap_err();
        assert!(
            matches!(
                err,
                DistError::Rejected {
                    culprit: Some(3),
                    ..
                }
            ),
            "rank {rank}: {err}"
        );
        assert!(
            *elapsed < Duration::from_secs(3),
            "rank {rank}: {elapsed:?}"
        );
    }
}

#[test]
fn without_rank_0_the_others_time_out_naming_its_address() {
    let (listener, port) = master_listener();
    drop(listener); // nothing listens there now
    let start = Instant::now();
    let err = rendezvous(&env(1, 2, port), &config(800)).unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, DistError::MasterUnreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.failed_rank(), Some(0));
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[test]
fn a_rank_that_meets_but_never_joins_the_mesh_is_named() {
    // Rank 2 passes the rendezvous, then never connects its data links (as if it died there).
    let (listener, port) = master_listener();
    let cfg = || RendezvousConfig {
        timeout: Duration::from_millis(1500),
        ..RendezvousConfig::new("hash-a")
    };
    let results = std::thread::scope(|s| {
        let zero = s.spawn(|| {
            let start = Instant::now();
            let err = tessera_dist::Communicator::connect_on(&env(0, 3, port), &cfg(), listener)
                .err()
                .expect("rank 0 cannot finish the mesh");
            (err, start.elapsed())
        });
        let one = s.spawn(|| {
            tessera_dist::Communicator::connect(&env(1, 3, port), &cfg())
                .err()
                .expect("rank 1 cannot finish the mesh")
        });
        let two = s.spawn(|| {
            let rdv = rendezvous(&env(2, 3, port), &cfg()).expect("rank 2 meets");
            std::thread::sleep(Duration::from_millis(2500));
            drop(rdv);
        });
        two.join().unwrap();
        (zero.join().unwrap(), one.join().unwrap())
    });
    let ((zero, elapsed), one) = results;
    for err in [&zero, &one] {
        assert!(
            matches!(err, DistError::MeshIncomplete { missing, .. } if missing == &[2]),
            "{err}"
        );
    }
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[test]
fn a_stranger_on_the_master_port_does_not_stop_the_run() {
    use std::io::Write;
    let (listener, port) = master_listener();
    let results = std::thread::scope(|s| {
        let zero = s.spawn(|| rendezvous_on(&env(0, 2, port), &config(10_000), listener));
        // Not a tessera rank: garbage, then silence.
        let mut stranger = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stranger.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let one = s.spawn(|| rendezvous(&env(1, 2, port), &config(10_000)));
        (zero.join().unwrap(), one.join().unwrap())
    });
    assert!(results.0.is_ok(), "{:?}", results.0.err());
    assert!(results.1.is_ok(), "{:?}", results.1.err());
}
