//! A real Slurm cluster (Debian's slurm-wlm, started on this machine by
//! `xtask/scripts/slurm-up.sh`, which `.ci/run` calls): a CPU training job submitted through
//! `cargo xtask slurm submit` loses a task to SIGKILL mid-run, then has a task stopped (SIGSTOP,
//! a hang), requeues itself each time, resumes from `latest` and finishes with the same weights
//! as a run that never failed; and data preparation as a job array plus a dependent merge job.

mod cluster;
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Rng, cargo_xtask, incidents, last_logged_step, numbers, reliability, tiny_config};
use common::{TempDir, run_ok, sha256_file, tessera, write_token_dataset};

const STEPS: u64 = 120;

/// Where the cluster's jobs may write: the test's temp folder, seen by slurmd as it is (one
/// node, this machine).
fn job_name(tag: &str) -> String {
    format!("tessera-e2e-{tag}-{}", std::process::id())
}

fn killed_task_requeues_and_matches_an_uninterrupted_run(tasks: usize) {
    let tmp = TempDir::new(&format!("slurm-{tasks}"));
    let data = tmp.path().join("data");
    write_token_dataset(&data, 400, 48, 128, 3);
    let setup = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("train.yaml"),
            tiny_config(&data, &dir.join("ck"), STEPS),
        )
        .unwrap();
        dir
    };

    // The run that never fails: one process, or `tasks` local ranks.
    let a = setup("a");
    let started = Instant::now();
    if tasks == 1 {
        run_ok(
            tessera()
                .current_dir(&a)
                .args(["train", "train.yaml", "--run-dir", "run"]),
        );
    } else {
        let out = cargo_xtask()
            .args([
                "launch",
                "--nproc",
                &tasks.to_string(),
                "--",
                "tessera",
                "train",
            ])
            .arg(a.join("train.yaml"))
            .arg("--run-dir")
            .arg(a.join("run"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let uninterrupted = started.elapsed();

    // The Slurm job, one task of which is killed mid-run.
    let b = setup("b");
    let run = b.join("run");
    let name = job_name(&format!("train{tasks}"));
    let started = Instant::now();
    let _cancel = cluster::CancelSlurmJobs(vec![name.clone()]);
    let submit = cargo_xtask()
        .current_dir(&b)
        .args([
            "slurm",
            "submit",
            "train.yaml",
            "--nodes",
            "1",
            "--gpus-per-node",
            "0",
        ])
        .args([
            "--ntasks-per-node",
            &tasks.to_string(),
            "--cpus-per-task",
            "1",
        ])
        .args(["--max-restarts", "3", "--hang-floor-s", "5"])
        .args(["--run-dir", "run", "--job-name", &name])
        .args(["--timeout-s", "900"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cargo xtask slurm submit");
    let mut submit = cluster::Running(Some(submit));
    let mut rng = Rng::from_env(0x51u64);
    let kill_at = 10 + rng.below(30);
    let deadline = Instant::now() + Duration::from_secs(600);
    while last_logged_step(&run) < kill_at {
        assert!(
            submit.child().try_wait().unwrap().is_none(),
            "the job ended before the kill"
        );
        assert!(
            Instant::now() < deadline,
            "the job never reached step {kill_at}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ranks = cluster::tessera_ranks("SLURM_JOB_NAME", &name);
    assert_eq!(ranks.len(), tasks, "{ranks:?}");
    let (pid, rank) = ranks[rng.below(tasks as u64) as usize];
    unsafe { libc::kill(pid, libc::SIGKILL) };
    eprintln!(
        "SIGKILL task {rank} (pid {pid}) at step {}",
        last_logged_step(&run)
    );

    // Once the requeued job has trained a few steps past its checkpoint, stop a task: the
    // script's watcher must see the silence (5 s floor here), kill the step and requeue again.
    let restarted =
        |inc: &[serde_json::Value]| inc.iter().filter(|i| i["kind"] == "restart").count();
    while restarted(&incidents(&run)) < 1
        || cluster::tessera_ranks("SLURM_JOB_NAME", &name).len() < tasks
    {
        assert!(
            submit.child().try_wait().unwrap().is_none(),
            "the job ended after the kill"
        );
        assert!(Instant::now() < deadline, "the job was not requeued");
        std::thread::sleep(Duration::from_millis(50));
    }
    let resumed_at = last_logged_step(&run);
    while last_logged_step(&run) < resumed_at + 3 + rng.below(10) {
        assert!(
            submit.child().try_wait().unwrap().is_none(),
            "the job ended before the stop"
        );
        assert!(
            Instant::now() < deadline,
            "the requeued job made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ranks = cluster::tessera_ranks("SLURM_JOB_NAME", &name);
    let (stop_pid, stop_rank) = ranks[rng.below(ranks.len() as u64) as usize];
    unsafe { libc::kill(stop_pid, libc::SIGSTOP) };
    eprintln!(
        "SIGSTOP task {stop_rank} (pid {stop_pid}) at step {}",
        last_logged_step(&run)
    );
    let out = submit.take().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "submit failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("ended COMPLETED"), "{stdout}");
    assert!(stdout.contains("requeueing job"), "{stdout}");
    let wall = started.elapsed();

    // The failure, the requeue and the trainer's resume are on record.
    let inc = incidents(&run);
    let failure = inc
        .iter()
        .find(|i| i["source"] == "slurm" && i["kind"] == "rank_failure")
        .unwrap_or_else(|| panic!("no failure recorded: {inc:#?}"));
    assert_eq!(failure["signal"], 9, "{failure}");
    assert_eq!(failure["rank"], rank, "{failure}");
    assert_eq!(failure["will_restart"], true);
    cluster::assert_losses_add_up(failure);
    let hang = inc
        .iter()
        .find(|i| i["source"] == "slurm" && i["kind"] == "hang")
        .unwrap_or_else(|| panic!("no hang recorded: {inc:#?}"));
    assert_eq!(hang["will_restart"], true, "{hang}");
    cluster::assert_losses_add_up(hang);
    let restarts: Vec<usize> = (0..inc.len())
        .filter(|&i| inc[i]["source"] == "slurm" && inc[i]["kind"] == "restart")
        .collect();
    assert_eq!(restarts.len(), 2, "{inc:#?}");
    for (n, &at) in restarts.iter().enumerate() {
        assert_eq!(inc[at]["attempt"], n as u64 + 1);
        assert!(
            inc[at..].iter().any(|i| i["kind"] == "resume"),
            "requeue {} did not resume from a checkpoint: {inc:#?}",
            n + 1
        );
    }

    // Bit for bit the run that never failed.
    assert_eq!(numbers(&a.join("run")), numbers(&run));
    let weights = |d: &Path| sha256_file(&d.join(format!("ck/ba{STEPS}/model.safetensors")));
    assert_eq!(weights(&a), weights(&b), "final weights differ");
    assert!(cluster::tessera_ranks("SLURM_JOB_NAME", &name).is_empty());
    eprintln!(
        "{tasks} task(s): uninterrupted {uninterrupted:.1?}; Slurm job with a kill and a stop {wall:.1?}; {}",
        reliability(&inc)
    );
}

#[test]
#[ignore = "needs a local Slurm cluster (xtask/scripts/slurm-up.sh)"]
fn slurm_job_requeues_after_a_killed_task_and_finishes_bit_identically() {
    killed_task_requeues_and_matches_an_uninterrupted_run(1);
}

#[test]
#[ignore = "needs a local Slurm cluster (xtask/scripts/slurm-up.sh)"]
fn multi_rank_slurm_job_requeues_after_a_killed_task_and_finishes_bit_identically() {
    killed_task_requeues_and_matches_an_uninterrupted_run(2);
}

#[test]
#[ignore = "needs a local Slurm cluster (xtask/scripts/slurm-up.sh)"]
fn slurm_prepare_runs_slices_as_an_array_then_merges_them() {
    let tmp = TempDir::new("slurm-prepare");
    let dir = tmp.path();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/corpus/slice.jsonl.zst");
    run_ok(
        tessera()
            .current_dir(dir)
            .args(["data", "train-tokenizer", "--input"])
            .arg(&corpus)
            .args(["--out", "tok.json", "--vocab-size", "300"]),
    );
    let prepare_args = |out: &str| -> Vec<String> {
        vec![
            "--input".into(),
            corpus.display().to_string(),
            "--tokenizer".into(),
            "tok.json".into(),
            "--seq-len".into(),
            "64".into(),
            "--out".into(),
            out.into(),
        ]
    };
    // The same input in one process, for the totals.
    run_ok(
        tessera()
            .current_dir(dir)
            .args(["data", "prepare"])
            .args(prepare_args("whole")),
    );

    // `slurm prepare` names its jobs <name>-slices and <name>-merge.
    let _cancel = cluster::CancelSlurmJobs(
        ["slices", "merge"]
            .map(|j| format!("{}-{j}", job_name("prepare")))
            .to_vec(),
    );
    let out = cargo_xtask()
        .current_dir(dir)
        .args(["slurm", "prepare", "--slices", "2", "--cpus-per-task", "1"])
        .args([
            "--job-name",
            &job_name("prepare"),
            "--timeout-s",
            "300",
            "--",
        ])
        .args(prepare_args("sliced"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ended COMPLETED").count(), 2, "{stdout}");
    let report = |d: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(d).join("prepare.json")).unwrap()).unwrap()
    };
    let (whole, sliced) = (report("whole"), report("sliced"));
    assert_eq!(sliced["merged_slices"], 2, "{sliced}");
    for key in ["docs_in", "docs_read"] {
        assert_eq!(whole[key], sliced[key], "{key}: every document once");
    }
    // The merged dataset reads as one (streaming's merged index).
    let inspect = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["data", "inspect", "--json"])
        .arg(dir.join("sliced/train"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
}
