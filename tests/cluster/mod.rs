//! Helpers for the cluster tests (`launch_restart.rs`, `slurm_e2e.rs`): the tiny training job,
//! `cargo xtask`, finding rank processes, and the numbers a resumed run must reproduce.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The tiny training job of `resume_after_kill.rs` (2 layers, d_model 64, seq 48), saving every
/// 5 steps with autoresume, run for `steps` steps. Everything it writes goes under `save_folder`
/// and the `--run-dir` its command names.
pub fn tiny_config(data: &Path, save_folder: &Path, steps: u64) -> String {
    format!(
        r#"
run_name: cluster-test
seed: 1234
max_seq_len: 48
model:
  name: mpt_causal_lm
  d_model: 64
  n_heads: 4
  n_layers: 2
  expansion_ratio: 4
  max_seq_len: 48
  vocab_size: 128
  resid_pdrop: 0.1
  emb_pdrop: 0.1
  attn_config:
    attn_pdrop: 0.1
tokenizer:
  name: unused-by-training
train_loader:
  name: text
  dataset:
    local: {data}
    shuffle: true
    shuffle_seed: 7
    max_seq_len: 48
eval_loader:
  name: text
  dataset:
    local: {data}
    max_seq_len: 48
eval_subset_num_batches: 2
optimizer:
  name: decoupled_adamw
  lr: 3.0e-3
  betas: [0.9, 0.95]
  eps: 1.0e-8
  weight_decay: 1.0e-4
scheduler:
  name: cosine_with_warmup
  t_warmup: 10ba
  alpha_f: 0.1
gradient_clipping:
  clipping_type: norm
  clipping_threshold: 1.0
max_duration: {steps}ba
eval_interval: 40ba
global_train_batch_size: 8
device_train_microbatch_size: 4
precision: fp32
save_interval: {SAVE_INTERVAL}ba
save_num_checkpoints_to_keep: 2
autoresume: true
save_folder: {save}
"#,
        data = data.display(),
        save = save_folder.display()
    )
}

/// Steps between checkpoints in [`tiny_config`]: the most a failure can lose.
pub const SAVE_INTERVAL: u64 = 5;

/// `cargo xtask` as the repo's alias spells it (`cargo run --quiet --package xtask --`), with
/// the manifest named so that it works from any folder, and this test's target dir. Ranks it
/// starts use `TESSERA_BIN`, the binary cargo built for these tests.
pub fn cargo_xtask() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut cmd = Command::new(cargo);
    cmd.args(["run", "--quiet", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(["--package", "xtask", "--"])
        .env("TESSERA_BIN", env!("CARGO_BIN_EXE_tessera"));
    cmd
}

/// A small deterministic generator (`TESSERA_KILL_SEED` varies it).
pub struct Rng(u64);

impl Rng {
    pub fn from_env(salt: u64) -> Self {
        Rng(salt
            ^ std::env::var("TESSERA_KILL_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0))
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Live (not zombie) processes named `tessera` whose environment has `key=value`: `(pid, RANK)`.
pub fn tessera_ranks(key: &str, value: &str) -> Vec<(i32, usize)> {
    let want = format!("{key}={value}");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if !stat.contains("(tessera) ") || stat.contains(") Z ") {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if !vars.contains(&want) {
            continue;
        }
        let rank = vars
            .iter()
            .find_map(|v| v.strip_prefix("RANK=")?.parse().ok())
            .unwrap_or(0);
        out.push((pid, rank));
    }
    out.sort_by_key(|(_, r)| *r);
    out
}

/// The highest step in `metrics.jsonl` so far (0 if none).
pub fn last_logged_step(run_dir: &Path) -> u64 {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// `metrics.jsonl` as (kind, step, label) → the printed loss, lr and grad norm, which a resumed
/// run must reproduce exactly.
pub fn numbers(run_dir: &Path) -> BTreeMap<(String, u64, String), [String; 3]> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a metrics line");
        let key = (
            v["kind"].as_str().unwrap_or("?").to_string(),
            v["step"].as_u64().expect("step"),
            v["label"].as_str().unwrap_or("").to_string(),
        );
        let vals = [
            v["loss"].to_string(),
            v["lr"].to_string(),
            v["grad_norm"].to_string(),
        ];
        assert!(
            out.insert(key.clone(), vals).is_none(),
            "{key:?} logged twice"
        );
    }
    out
}

/// The run's `incidents.jsonl`, parsed.
pub fn incidents(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("incidents.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an incidents line"))
        .collect()
}

/// A failure line's losses are the steps from its checkpoint to the step reached (how many
/// depends on the trainer's asynchronous saves, so the tests check the accounting, not a bound).
pub fn assert_losses_add_up(failure: &serde_json::Value) {
    let reached = failure["step"].as_u64().expect("step");
    let checkpoint = failure["checkpoint_step"].as_u64().unwrap_or(0);
    assert_eq!(checkpoint % SAVE_INTERVAL, 0, "{failure}");
    assert_eq!(
        failure["lost_steps"].as_u64(),
        Some(reached - checkpoint),
        "{failure}"
    );
}

/// Summary statistics of the launcher's incidents: the reliability figures the tests print.
pub fn reliability(incidents: &[serde_json::Value]) -> String {
    let failures: Vec<&serde_json::Value> = incidents
        .iter()
        .filter(|i| i["source"] == "launcher" || i["source"] == "slurm")
        .filter(|i| i["kind"] == "rank_failure" || i["kind"] == "hang")
        .collect();
    let lost: Vec<u64> = failures
        .iter()
        .filter_map(|i| i["lost_steps"].as_u64())
        .collect();
    let recovery: Vec<f64> = incidents
        .iter()
        .filter(|i| i["kind"] == "recovered")
        .filter_map(|i| i["recovery_s"].as_f64())
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    format!(
        "{} failures survived; steps lost per failure {:?} (mean {:.1}, checkpoint every {} steps); \
         failure → next step {:?} s (mean {:.1} s)",
        failures.len(),
        lost,
        mean(&lost.iter().map(|&l| l as f64).collect::<Vec<_>>()),
        SAVE_INTERVAL,
        recovery
            .iter()
            .map(|r| (r * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        mean(&recovery)
    )
}

/// A launcher (or `slurm submit`) process that a failing test must not leave running: dropped
/// while it still runs, it gets SIGTERM (the launcher then stops its ranks), then SIGKILL.
pub struct Running(pub Option<Child>);

impl Running {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the process was taken")
    }
    /// Hands the process over (to wait for its output).
    pub fn take(&mut self) -> Child {
        self.0.take().expect("the process was taken")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(child) = self.0.as_mut() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Cancels the Slurm jobs with these names when dropped (after a failed test; a finished job is
/// gone already).
pub struct CancelSlurmJobs(pub Vec<String>);

impl Drop for CancelSlurmJobs {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("scancel")
                .arg(format!("--name={name}"))
                .status();
        }
    }
}
