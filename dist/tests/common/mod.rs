//! Ranks as threads of one test, meeting on 127.0.0.1.

#![allow(dead_code)] // each test file uses part of this

use std::net::TcpListener;
use std::time::Duration;

use tessera_dist::{Communicator, DistError, EnvSource, RankEnv, RendezvousConfig};

/// A listener on a free port of 127.0.0.1 for rank 0, and its port for the others.
pub fn master_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// The environment of `rank` in a one-node world of `world_size` on 127.0.0.1:`port`.
pub fn env(rank: usize, world_size: usize, port: u16) -> RankEnv {
    RankEnv {
        rank,
        world_size,
        local_rank: rank,
        local_world_size: world_size,
        node_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        source: EnvSource::Composer,
    }
}

pub fn config() -> RendezvousConfig {
    RendezvousConfig {
        timeout: Duration::from_secs(20),
        ..RendezvousConfig::new("test-config")
    }
}

/// Connects `world_size` ranks (threads) and runs `body(comm)` on each; returns the results by
/// rank. Rank 0 gets a listener bound to port 0, so tests never collide on ports.
pub fn with_ranks<R: Send>(world_size: usize, body: impl Fn(Communicator) -> R + Sync) -> Vec<R> {
    let (listener, port) = master_listener();
    let mut listener = Some(listener);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world_size)
            .map(|rank| {
                let listener = if rank == 0 { listener.take() } else { None };
                let body = &body;
                s.spawn(move || {
                    let env = env(rank, world_size, port);
                    let comm = match listener {
                        Some(l) => Communicator::connect_on(&env, &config(), l),
                        None => Communicator::connect(&env, &config()),
                    }
                    .unwrap_or_else(|e| panic!("rank {rank} could not connect: {e}"));
                    body(comm)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank panicked"))
            .collect()
    })
}

/// Asserts `err` blames `rank`, showing the error otherwise.
pub fn assert_blames(err: &DistError, rank: usize) {
    assert_eq!(
        err.failed_rank(),
        Some(rank),
        "error does not blame rank {rank}: {err}"
    );
}
