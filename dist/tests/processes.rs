//! Ranks as separate processes: this test binary starts copies of itself, each reading its
//! rank from the environment (composer's variables, or Slurm's) exactly as `tessera train`
//! would, then meeting on 127.0.0.1.
//!
//! `harness = false`: `main` is the parent unless `TESSERA_DIST_CHILD` names a child role.
//! Every child is killed if the parent fails, and each wait is bounded.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_dist::{Communicator, EnvSource, RankEnv, RendezvousConfig};

const ROLE: &str = "TESSERA_DIST_CHILD";

fn main() {
    match std::env::var(ROLE).ok().as_deref() {
        Some("sum") => child_sum(),
        Some("exit_mid_collective") => child_exit_mid_collective(),
        Some(other) => panic!("unknown child role {other}"),
        None => {
            let started = Instant::now();
            composer_processes_meet_and_reduce();
            slurm_processes_meet_and_reduce();
            a_process_exiting_mid_collective_is_named_by_the_others();
            println!("processes: 3 scenarios passed in {:?}", started.elapsed());
        }
    }
}

/// A child: reads its rank from the process environment, all-reduces a known vector, gathers
/// every rank's environment source, and prints one line for the parent.
fn child_sum() {
    let env = RankEnv::from_process_env().expect("rank environment");
    let mut comm = Communicator::connect(&env, &config()).expect("connect");
    let mut buf: Vec<f32> = (0..100_000)
        .map(|i| (i % 100) as f32 * (env.rank + 1) as f32)
        .collect();
    comm.all_reduce(&mut buf).expect("all_reduce");
    let sources = comm
        .all_gather_bytes(format!("{:?}", env.source).as_bytes())
        .expect("all_gather_bytes");
    let checksum: f64 = buf.iter().map(|v| *v as f64).sum();
    println!(
        "rank={} world={} local={}/{} checksum={checksum} sources={}",
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        sources
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    );
}

/// A child that all-reduces 16 MB buffers in a loop; the last rank exits the process from
/// another thread while a collective is in flight. The others report whom they blame.
fn child_exit_mid_collective() {
    let env = RankEnv::from_process_env().expect("rank environment");
    let mut comm = Communicator::connect(&env, &config()).expect("connect");
    comm.set_timeout(Duration::from_secs(20));
    comm.barrier().expect("barrier");
    if env.rank == env.world_size - 1 {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            std::process::exit(17);
        });
    }
    let mut buf = vec![1.0f32; 4 << 20];
    let mut rounds = 0u32;
    let start = Instant::now();
    loop {
        if let Err(err) = comm.all_reduce(&mut buf) {
            // Time from the failure's start: the exit happens ~300 ms in.
            println!(
                "rank={} rounds={rounds} failed_rank={:?} elapsed_ms={} error={err}",
                env.rank,
                err.failed_rank(),
                start.elapsed().as_millis()
            );
            return;
        }
        rounds += 1;
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no failure after 60 s"
        );
    }
}

fn config() -> RendezvousConfig {
    RendezvousConfig {
        timeout: Duration::from_secs(30),
        ..RendezvousConfig::new("processes-test")
    }
}

/// A port that was free a moment ago (children bind it themselves, so the parent cannot hold it).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().unwrap().port()
}

/// Children that are killed if the parent panics.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts one child per environment and returns each one's exit code and stdout, waiting at
/// most `limit` for all of them.
fn run_children(
    role: &str,
    envs: Vec<HashMap<&str, String>>,
    limit: Duration,
) -> Vec<(Option<i32>, String)> {
    let exe = std::env::current_exe().expect("current test executable");
    let mut children = Children(Vec::new());
    for vars in &envs {
        let mut cmd = Command::new(&exe);
        cmd.env(ROLE, role)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // A clean slate: no launcher variables from the machine running the tests.
        for (key, _) in std::env::vars() {
            if key.starts_with("SLURM_")
                || [
                    "RANK",
                    "WORLD_SIZE",
                    "LOCAL_RANK",
                    "LOCAL_WORLD_SIZE",
                    "NODE_RANK",
                    "MASTER_ADDR",
                    "MASTER_PORT",
                ]
                .contains(&key.as_str())
            {
                cmd.env_remove(key);
            }
        }
        cmd.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
        children.0.push(cmd.spawn().expect("spawn a child rank"));
    }
    let deadline = Instant::now() + limit;
    let mut codes = vec![None; children.0.len()];
    let mut done = vec![false; children.0.len()];
    while done.iter().any(|d| !d) {
        assert!(
            Instant::now() < deadline,
            "children still running after {limit:?}"
        );
        for (i, child) in children.0.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(status) = child.try_wait().expect("wait") {
                codes[i] = status.code();
                done[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut outputs = Vec::new();
    for child in &mut children.0 {
        let mut out = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        outputs.push(out);
    }
    codes.into_iter().zip(outputs).collect()
}

fn composer_env(
    rank: usize,
    world: usize,
    per_node: usize,
    port: u16,
) -> HashMap<&'static str, String> {
    HashMap::from([
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_RANK", (rank % per_node).to_string()),
        ("LOCAL_WORLD_SIZE", per_node.to_string()),
        ("NODE_RANK", (rank / per_node).to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
    ])
}

fn expected_checksum(world: usize) -> f64 {
    let per_rank: f64 = (0..100_000).map(|i| (i % 100) as f64).sum();
    per_rank * (1..=world).sum::<usize>() as f64
}

fn composer_processes_meet_and_reduce() {
    // Four processes as two "nodes" of two.
    let port = free_port();
    let envs = (0..4).map(|r| composer_env(r, 4, 2, port)).collect();
    let results = run_children("sum", envs, Duration::from_secs(60));
    for (rank, (code, out)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank} failed:\n{out}");
        let expected = format!(
            "rank={rank} world=4 local={}/2 checksum={} sources=Composer,Composer,Composer,Composer",
            rank % 2,
            expected_checksum(4)
        );
        assert_eq!(out.trim(), expected);
    }
}

fn slurm_processes_meet_and_reduce() {
    // srun's variables for 3 tasks on nodes "127.0.0.[1]" and "localhost" (2 + 1 tasks);
    // MASTER_ADDR comes from the node list, MASTER_PORT is exported by the batch script.
    let port = free_port();
    let envs = (0..3)
        .map(|r| {
            HashMap::from([
                ("SLURM_PROCID", r.to_string()),
                ("SLURM_NTASKS", "3".to_string()),
                ("SLURM_LOCALID", (r % 2).to_string()),
                ("SLURM_NODEID", (r / 2).to_string()),
                ("SLURM_TASKS_PER_NODE", "2,1".to_string()),
                ("SLURM_JOB_NODELIST", "127.0.0.[1],localhost".to_string()),
                ("SLURM_JOB_ID", "4242".to_string()),
                ("MASTER_PORT", port.to_string()),
            ])
        })
        .collect();
    let results = run_children("sum", envs, Duration::from_secs(60));
    for (rank, (code, out)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank} failed:\n{out}");
        let local = if rank < 2 {
            format!("{}/2", rank)
        } else {
            "0/1".into()
        };
        let expected = format!(
            "rank={rank} world=3 local={local} checksum={} sources=Slurm,Slurm,Slurm",
            expected_checksum(3)
        );
        assert_eq!(out.trim(), expected);
    }
    // The same parse in-process, as a cross-check that the children saw Slurm's layout.
    let vars: HashMap<String, String> = [
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "3"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NODEID", "0"),
        ("SLURM_TASKS_PER_NODE", "2,1"),
        ("SLURM_JOB_NODELIST", "127.0.0.[1],localhost"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = RankEnv::from_vars(&vars).unwrap();
    assert_eq!(
        (env.master_addr.as_str(), env.source),
        ("127.0.0.1", EnvSource::Slurm)
    );
}

fn a_process_exiting_mid_collective_is_named_by_the_others() {
    let port = free_port();
    let envs = (0..3).map(|r| composer_env(r, 3, 3, port)).collect();
    let results = run_children("exit_mid_collective", envs, Duration::from_secs(90));
    assert_eq!(
        results[2].0,
        Some(17),
        "the exiting rank should exit with 17:\n{}",
        results[2].1
    );
    for (rank, (code, out)) in results.iter().enumerate().take(2) {
        assert_eq!(*code, Some(0), "rank {rank} failed:\n{out}");
        assert!(
            out.contains("failed_rank=Some(2)"),
            "rank {rank} blames someone else:\n{out}"
        );
        let elapsed_ms: u64 = out
            .split("elapsed_ms=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("elapsed_ms in the output");
        // The exit is ~300 ms in; noticing it must take far less than the 20 s timeout.
        assert!(
            elapsed_ms < 10_000,
            "rank {rank} took {elapsed_ms} ms:\n{out}"
        );
        print!("  survivor {out}");
    }
}
