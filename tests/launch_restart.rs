//! `cargo xtask launch` survives random SIGKILLs of random ranks and a stalled rank (SIGSTOP):
//! it restarts the job each time, the job resumes from its `latest` checkpoint, and the finished
//! run is bit for bit the run that never failed (the same numbers at every step, the same final
//! `model.safetensors`). The multi-process form of `resume_after_kill.rs`.

mod cluster;
mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cluster::{Rng, cargo_xtask, incidents, last_logged_step, numbers, reliability, tiny_config};
use common::{TempDir, sha256_file, write_token_dataset};

const STEPS: u64 = 160;
const KILLS: usize = 5;

/// `cargo xtask launch --nproc N -- tessera train train.yaml --run-dir run` in `dir`.
fn launch(dir: &Path, nproc: usize, tag: &str) -> Child {
    cargo_xtask()
        .args(["launch", "--nproc", &nproc.to_string()])
        // A stopped rank is noticed after 5 s of silence (this job steps in ~0.1 s); a restart
        // may take a few seconds to log its first step.
        .args([
            "--max-restarts",
            "12",
            "--hang-floor-s",
            "5",
            "--grace-s",
            "5",
        ])
        .args(["--start-timeout-s", "120", "--"])
        .args(["tessera", "train"])
        .arg(dir.join("train.yaml"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        // Each test launches its own job: tell them apart by a variable the ranks inherit.
        .env("TESSERA_TEST_JOB", tag)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cargo xtask launch")
}

fn setup(root: &Path, name: &str, data: &Path) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("train.yaml"),
        tiny_config(data, &dir.join("ck"), STEPS),
    )
    .unwrap();
    dir
}

fn wait_ok(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the job has logged `steps` more steps than now; false if it ended first.
fn wait_for_progress(child: &mut Child, run: &Path, steps: u64, deadline: Instant) -> bool {
    let target = last_logged_step(run) + steps;
    while last_logged_step(run) < target {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "the job made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn kills_and_a_stall_leave_the_result_bit_identical(nproc: usize) {
    let tmp = TempDir::new(&format!("launch-restart-{nproc}"));
    let data = tmp.path().join("data");
    write_token_dataset(&data, 400, 48, 128, 3);
    let tag = |run: &str| format!("{}-{run}", tmp.path().display());

    // The job that never fails.
    let a = setup(tmp.path(), "a", &data);
    let started = Instant::now();
    wait_ok(launch(&a, nproc, &tag("a")), "the uninterrupted job");
    let full = started.elapsed();

    // The job whose ranks are killed (random rank, random moment) and then one stopped.
    let b = setup(tmp.path(), "b", &data);
    let run = b.join("run");
    let mut job = cluster::Running(Some(launch(&b, nproc, &tag("b"))));
    let mut rng = Rng::from_env(0x1a0c4);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut kills = 0;
    let mut stopped = false;
    while !stopped {
        if !wait_for_progress(job.child(), &run, 3 + rng.below(15), deadline) {
            break;
        }
        std::thread::sleep(Duration::from_millis(rng.below(25)));
        let ranks = cluster::tessera_ranks("TESSERA_TEST_JOB", &tag("b"));
        let Some(&(pid, rank)) = ranks.get(rng.below(ranks.len().max(1) as u64) as usize) else {
            continue; // between attempts
        };
        if kills < KILLS {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            kills += 1;
            eprintln!(
                "SIGKILL rank {rank} (pid {pid}) at step {}",
                last_logged_step(&run)
            );
        } else {
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            stopped = true;
            eprintln!(
                "SIGSTOP rank {rank} (pid {pid}) at step {}",
                last_logged_step(&run)
            );
        }
        // Let the launcher notice and restart before the next blow.
        let seen = kills + usize::from(stopped);
        while cluster::incidents(&run)
            .iter()
            .filter(|i| i["kind"] == "restart")
            .count()
            < seen
        {
            assert!(
                job.child().try_wait().unwrap().is_none(),
                "the launcher ended instead of restarting"
            );
            assert!(Instant::now() < deadline, "no restart after a failure");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_ok(job.take(), "the killed job");
    assert_eq!(kills, KILLS, "the job finished before every kill landed");
    assert!(stopped, "the job finished before the SIGSTOP");
    assert!(
        cluster::tessera_ranks("TESSERA_TEST_JOB", &tag("b")).is_empty(),
        "ranks left behind"
    );

    // Every failure is on record, with the trainer's resume after each restart.
    let inc = incidents(&run);
    let count = |kind: &str| inc.iter().filter(|i| i["kind"] == kind).count();
    let killed = inc
        .iter()
        .filter(|i| i["kind"] == "rank_failure" && i["signal"] == 9)
        .count();
    assert_eq!(killed, KILLS, "{inc:#?}");
    assert_eq!(count("hang"), 1, "{inc:#?}");
    assert_eq!(count("restart"), KILLS + 1);
    assert!(count("resume") >= KILLS, "{inc:#?}");
    for failure in inc.iter().filter(|i| i["source"] == "launcher") {
        if failure["kind"] == "rank_failure" || failure["kind"] == "hang" {
            cluster::assert_losses_add_up(failure);
        }
    }

    // Bit for bit the job that never failed.
    let na = numbers(&a.join("run"));
    let nb = numbers(&run);
    assert_eq!(na.keys().filter(|k| k.0 == "train").count() as u64, STEPS);
    assert_eq!(na, nb, "the numbers differ after the restarts");
    let final_weights = |d: &Path| sha256_file(&d.join(format!("ck/ba{STEPS}/model.safetensors")));
    assert_eq!(final_weights(&a), final_weights(&b), "final weights differ");
    eprintln!(
        "nproc {nproc}: uninterrupted job {full:.1?}; {}",
        reliability(&inc)
    );
}

#[test]
fn launch_survives_rank_kills_and_a_stall_bit_identically() {
    kills_and_a_stall_leave_the_result_bit_identical(1);
}

#[test]
fn multi_rank_launch_survives_rank_kills_and_a_stall_bit_identically() {
    kills_and_a_stall_leave_the_result_bit_identical(2);
}
