//! A run killed with SIGKILL at random points, several times, and resumed each time by
//! `autoresume`, must be bit for bit the run that never died: the same loss, learning rate and
//! gradient norm at every step, the same evaluations, and a final `model.safetensors` with the
//! same sha256.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TempDir, run_ok, sha256_file, tessera, write_token_dataset};

const STEPS: u64 = 120;

fn config(data: &Path, save_folder: &Path) -> String {
    format!(
        r#"
run_name: resume-test
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
max_duration: {STEPS}ba
eval_interval: 40ba
global_train_batch_size: 8
device_train_microbatch_size: 4
precision: fp32
save_interval: 5ba
save_num_checkpoints_to_keep: 2
autoresume: true
save_folder: {save}
"#,
        data = data.display(),
        save = save_folder.display()
    )
}

/// `metrics.jsonl` as step → the numbers that must reproduce exactly (throughput and wall time
/// may differ).
fn numbers(run_dir: &Path) -> BTreeMap<(String, u64, String), [String; 3]> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a metrics line");
        let kind = v["kind"].as_str().unwrap_or("?").to_string();
        let step = v["step"].as_u64().expect("step");
        let label = v["label"].as_str().unwrap_or("").to_string();
        let key = (kind, step, label);
        // Bit-exact: compare the printed floats (serde_json prints the shortest exact form).
        let vals = [
            v["loss"].to_string(),
            v["lr"].to_string(),
            v["grad_norm"].to_string(),
        ];
        assert!(
            out.insert(key.clone(), vals).is_none(),
            "{key:?} logged twice in {}",
            run_dir.display()
        );
    }
    out
}

/// The highest step in `metrics.jsonl` so far (0 if none).
fn last_logged_step(run_dir: &Path) -> u64 {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn resumed_run_after_sigkills_matches_an_uninterrupted_run_bit_for_bit() {
    let tmp = TempDir::new("resume");
    let data = tmp.path().join("data");
    write_token_dataset(&data, 400, 48, 128, 3);

    // The run that never dies.
    let a = tmp.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(a.join("train.yaml"), config(&data, &a.join("ck"))).unwrap();
    let started = Instant::now();
    run_ok(
        tessera()
            .current_dir(&a)
            .args(["train", "train.yaml", "--run-dir", "run"]),
    );
    let full = started.elapsed();

    // The run that is killed at random points until it finishes by itself.
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("train.yaml"), config(&data, &b.join("ck"))).unwrap();
    let mut rng = 0x5eed_u64
        ^ std::env::var("TESSERA_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
    let mut next = move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut kills = 0;
    let mut finished = false;
    for attempt in 0..40 {
        let mut child = tessera()
            .current_dir(&b)
            .args(["train", "train.yaml", "--run-dir", "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting tessera");
        if kills >= 4 {
            let status = child.wait().unwrap();
            assert!(status.success(), "the final resume failed: {status}");
            finished = true;
            break;
        }
        // Kill at a random point: once the run has logged a random number of further steps,
        // plus a random few milliseconds (so kills land inside steps, evals and saves alike).
        let logged = last_logged_step(&b.join("run"));
        let target = logged + 3 + next(20);
        let extra = Duration::from_millis(next(25));
        let mut exited = None;
        while last_logged_step(&b.join("run")) < target {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if exited.is_none() {
            std::thread::sleep(extra);
            exited = child.try_wait().unwrap();
        }
        match exited {
            Some(status) => {
                assert!(status.success(), "attempt {attempt} failed: {status}");
                finished = true;
                break;
            }
            None => {
                child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    assert!(finished, "the killed run never finished");
    assert!(
        kills >= 3,
        "only {kills} kills landed before the run finished"
    );
    let incidents = std::fs::read_to_string(b.join("run/incidents.jsonl")).unwrap_or_default();
    let resumes = incidents
        .lines()
        .filter(|l| l.contains("\"resume\""))
        .count();
    assert!(resumes >= 1, "no resume was recorded:\n{incidents}");

    // Same numbers at every step, same evaluations.
    let na = numbers(&a.join("run"));
    let nb = numbers(&b.join("run"));
    assert_eq!(na.keys().filter(|k| k.0 == "train").count() as u64, STEPS);
    for (key, va) in &na {
        let vb = nb
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} missing from the resumed run"));
        assert_eq!(va, vb, "{key:?} differs after resume");
    }
    assert_eq!(na.len(), nb.len());

    // Same final weights, byte for byte.
    let final_a = a.join(format!("ck/ba{STEPS}/model.safetensors"));
    let final_b = b.join(format!("ck/ba{STEPS}/model.safetensors"));
    assert_eq!(
        sha256_file(&final_a),
        sha256_file(&final_b),
        "final weights differ"
    );
    eprintln!("{kills} kills, {resumes} resumes; uninterrupted run took {full:?}");
}
