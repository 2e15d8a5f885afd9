//! all_reduce throughput of the TCP backend on loopback, ranks as threads of this process.
//!
//! ```text
//! cargo run --release -p tessera-dist --example allreduce_bench -- [MEGABYTES] [RANKS...]
//! ```
//! Defaults: 23 MB of f32 (the quickstart model's gradients) on 2 and 4 ranks. Prints, per
//! world size, the median of 10 timed rounds (after 2 warm-up rounds), the algorithm bandwidth
//! (buffer bytes / time) and the bus bandwidth (algorithm bandwidth × 2(N-1)/N, the bytes each
//! rank actually sends; nccl-tests' convention). Every round's result is checked.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use tessera_dist::{Communicator, EnvSource, RankEnv, RendezvousConfig};

const WARMUP: usize = 2;
const ROUNDS: usize = 10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let megabytes: f64 = args
        .first()
        .map(|a| a.parse().expect("MEGABYTES"))
        .unwrap_or(23.0);
    let worlds: Vec<usize> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|a| a.parse().expect("RANKS"))
            .collect()
    } else {
        vec![2, 4]
    };
    let len = (megabytes * 1e6 / 4.0) as usize;
    println!(
        "all_reduce, TCP on 127.0.0.1, {len} f32 ({:.1} MB), median of {ROUNDS} rounds",
        len as f64 * 4.0 / 1e6
    );
    for world in worlds {
        let times = run(world, len);
        let median = times[times.len() / 2];
        let algbw = len as f64 * 4.0 / median.as_secs_f64() / 1e9;
        let busbw = algbw * 2.0 * (world - 1) as f64 / world as f64;
        println!(
            "ranks {world}: {:.1} ms, algbw {algbw:.2} GB/s, busbw {busbw:.2} GB/s",
            median.as_secs_f64() * 1e3
        );
    }
}

/// Times `ROUNDS` all_reduces on `world` thread ranks; rank 0's times, sorted.
fn run(world: usize, len: usize) -> Vec<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let mut listener = Some(listener);
    let mut times = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let listener = if rank == 0 { listener.take() } else { None };
                s.spawn(move || {
                    let env = RankEnv {
                        rank,
                        world_size: world,
                        local_rank: rank,
                        local_world_size: world,
                        node_rank: 0,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        source: EnvSource::Composer,
                    };
                    let cfg = RendezvousConfig::new("bench");
                    let mut comm = match listener {
                        Some(l) => Communicator::connect_on(&env, &cfg, l),
                        None => Communicator::connect(&env, &cfg),
                    }
                    .expect("connect");
                    let mut buf = vec![0.0f32; len];
                    let mut times = Vec::new();
                    for round in 0..WARMUP + ROUNDS {
                        buf.iter_mut().for_each(|v| *v = (rank + 1) as f32);
                        comm.barrier().expect("barrier");
                        let start = Instant::now();
                        comm.all_reduce(&mut buf).expect("all_reduce");
                        if round >= WARMUP {
                            times.push(start.elapsed());
                        }
                        let expected = (world * (world + 1) / 2) as f32;
                        assert!(buf.iter().all(|v| *v == expected), "wrong sum");
                    }
                    times
                })
            })
            .collect();
        let mut all: Vec<Vec<Duration>> = handles
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect();
        all.swap_remove(0)
    });
    times.sort();
    times
}
