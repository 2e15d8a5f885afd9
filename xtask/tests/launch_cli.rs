//! `cargo xtask launch` with shell scripts as ranks: the process handling (environment, output,
//! stopping, restarting, hang detection, signals) without a training run, so each test takes a
//! second or a few. `tests/launch_restart.rs` runs real `tessera train` ranks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn xtask() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("xtask-launch-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo xtask launch ARGS -- sh -c SCRIPT` in `dir`, with the run folder `dir/run`.
fn launch(dir: &Path, args: &[&str], script: &str) -> Output {
    xtask()
        .current_dir(dir)
        .arg("launch")
        .args(args)
        .args([
            "--run-dir",
            "run",
            "--grace-s",
            "2",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("starting xtask")
}

/// A launcher that a failing test must not leave running: killed (and its ranks with it, by
/// their death signal) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn incidents(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("run/incidents.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an incidents.jsonl line"))
        .collect()
}

fn kinds(incidents: &[serde_json::Value]) -> Vec<String> {
    incidents
        .iter()
        .map(|i| i["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The live processes with `marker` in their command line (arguments joined by spaces).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn every_rank_gets_composers_environment_and_a_prefixed_output() {
    let tmp = TempDir::new("env");
    let out = launch(
        &tmp.0,
        &["--nproc", "3", "--master-port", "29577"],
        "echo \"env $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $NODE_RANK $MASTER_ADDR $MASTER_PORT\"; echo oops >&2",
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for r in 0..3 {
        let line = format!("[rank {r}] env {r} 3 {r} 3 0 127.0.0.1 29577");
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} not in:\n{stdout}"
        );
        assert!(
            stderr.lines().any(|l| l == format!("[rank {r}] oops")),
            "{stderr}"
        );
    }
    assert!(incidents(&tmp.0).is_empty());
}

#[test]
fn a_config_error_stops_every_rank_and_is_never_retried() {
    let tmp = TempDir::new("config");
    let started = Instant::now();
    // Rank 1 fails with code 2 at once; rank 0 would sleep for a minute.
    let out = launch(
        &tmp.0,
        &["--nproc", "2", "--max-restarts", "5"],
        "if [ $RANK = 1 ]; then exit 2; fi; exec sleep 60",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "rank 0 was not stopped"
    );
    let inc = incidents(&tmp.0);
    assert_eq!(kinds(&inc), ["rank_failure"]);
    assert_eq!(inc[0]["rank"], 1);
    assert_eq!(inc[0]["exit_code"], 2);
    assert_eq!(inc[0]["cause"], "config_error");
    assert_eq!(inc[0]["will_restart"], false);
}

#[test]
fn retryable_failures_restart_the_whole_job_until_the_budget_is_spent() {
    let tmp = TempDir::new("retry");
    // Each attempt leaves a file per rank; rank 0 dies of SIGKILL in the first two attempts and
    // then both finish.
    let script = r#"
        n=$(ls run-marks 2>/dev/null | grep -c "^r$RANK-" || true)
        mkdir -p run-marks && touch run-marks/r$RANK-$n
        if [ $RANK = 0 ] && [ $n -lt 2 ]; then kill -9 $$; fi
        if [ $RANK = 1 ] && [ $n -lt 2 ]; then exec sleep 60; fi
        exit 0
    "#;
    let out = launch(&tmp.0, &["--nproc", "2", "--max-restarts", "2"], script);
    assert!(out.status.success(), "{out:?}");
    let rank0_starts = std::fs::read_dir(tmp.0.join("run-marks"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("r0-")
        })
        .count();
    assert_eq!(rank0_starts, 3, "3 attempts");
    let inc = incidents(&tmp.0);
    assert_eq!(
        kinds(&inc),
        ["rank_failure", "restart", "rank_failure", "restart"]
    );
    assert_eq!(inc[0]["signal"], 9);
    assert_eq!(inc[0]["cause"], "signal");
    assert_eq!(inc[3]["attempt"], 2);

    // The same job with one restart fewer gives up, with the rank's code as a shell reports it.
    let tmp = TempDir::new("retry-out");
    let out = launch(&tmp.0, &["--nproc", "2", "--max-restarts", "1"], script);
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let inc = incidents(&tmp.0);
    assert_eq!(inc.last().unwrap()["will_restart"], false);
}

#[test]
fn a_stopped_rank_is_a_hang_and_the_job_restarts() {
    let tmp = TempDir::new("hang");
    // A fake trainer: rank 0 logs a step every 50 ms. In the first attempt rank 1 stops itself
    // (SIGSTOP) and rank 0's steps stop with it, as a collective would make them.
    let script = r#"
        mkdir -p run
        if [ -e stopped-once ]; then
          if [ $RANK = 0 ]; then for s in 1 2 3 4 5; do echo "{\"kind\":\"train\",\"step\":$s}" >> run/metrics.jsonl; sleep 0.05; done; fi
          exit 0
        fi
        if [ $RANK = 1 ]; then sleep 0.5; touch stopped-once; kill -STOP $$; exit 0; fi
        for s in $(seq 1 10); do echo "{\"kind\":\"train\",\"step\":$s}" >> run/metrics.jsonl; sleep 0.05; done
        while [ ! -e stopped-once ]; do sleep 0.05; done
        exec sleep 60
    "#;
    let started = Instant::now();
    let out = launch(
        &tmp.0,
        &["--nproc", "2", "--hang-floor-s", "2", "--max-restarts", "1"],
        script,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let inc = incidents(&tmp.0);
    assert_eq!(kinds(&inc), ["hang", "restart", "recovered"], "{inc:?}");
    assert_eq!(inc[0]["rank"], 1, "the stopped rank is named");
    assert_eq!(inc[0]["step"], 10);
    assert!(inc[2]["recovery_s"].as_f64().unwrap() > 0.0);
    assert!(processes_with("stopped-once").is_empty());
}

#[test]
fn sigterm_to_the_launcher_stops_every_rank_and_leaves_nothing_behind() {
    let tmp = TempDir::new("sigterm");
    let marker = format!("sleep 3{}", std::process::id() % 1000);
    // Each rank starts a child of its own (a grandchild of the launcher), then waits.
    let script = format!("{marker} & {marker}; wait");
    let mut launcher = Running(
        xtask()
            .current_dir(&tmp.0)
            .args([
                "launch",
                "--nproc",
                "2",
                "--run-dir",
                "run",
                "--grace-s",
                "2",
            ])
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    // The launcher, two `sh` ranks and at least one `sleep` each.
    while processes_with(&marker).len() < 5 {
        assert!(Instant::now() < deadline, "the ranks never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe {
        libc::kill(launcher.0.id() as i32, libc::SIGTERM);
    }
    let status = launcher.0.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(processes_with(&marker).is_empty(), "processes left behind");
    assert_eq!(kinds(&incidents(&tmp.0)), ["launcher_stopped"]);
}

#[test]
fn sigkill_to_the_launcher_takes_its_ranks_with_it() {
    let tmp = TempDir::new("sigkill");
    let marker = format!("sleep 4{}", std::process::id() % 1000);
    let mut launcher = Running(
        xtask()
            .current_dir(&tmp.0)
            .args(["launch", "--nproc", "2", "--run-dir", "run"])
            .args(["--", "sh", "-c", &format!("exec {marker}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    // The launcher and both ranks.
    while processes_with(&marker).len() < 3 {
        assert!(Instant::now() < deadline, "the ranks never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    launcher.0.kill().unwrap();
    launcher.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "ranks outlived a SIGKILLed launcher"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missing_tessera_binary_is_a_clear_error() {
    let tmp = TempDir::new("nobin");
    let out = xtask()
        .current_dir(&tmp.0)
        .env("TESSERA_BIN", tmp.0.join("nope"))
        .args(["launch", "--nproc", "1", "--", "tessera", "train", "x.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TESSERA_BIN") && stderr.contains("nope"),
        "{stderr}"
    );
}
