//! The wgpu backend for real. Mesa's lavapipe (Debian's `mesa-vulkan-drivers`, a Vulkan driver
//! that runs on the CPU) gives wgpu an adapter where no GPU exists, so burn's wgpu kernels run
//! here as they would on a graphics card. `.ci/run` installs lavapipe and builds this binary
//! with `--features wgpu`; a plain `cargo test` leaves these tests out.

mod common;

use std::path::Path;

use common::{TempDir, run_ok, tessera, write_token_dataset};

/// Parity with transformers' `MptForCausalLM` (the shared `mpt/` fixtures: logits, loss, every
/// gradient, greedy generation) on the wgpu device, within `parity`'s GPU tolerances.
#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn parity_with_transformers_holds_on_wgpu() {
    let fixtures = tessera_testkit::shared_fixtures();
    let out = run_ok(
        tessera()
            .args(["--device", "wgpu", "parity", "--json", "--fixtures"])
            .arg(&fixtures),
    );
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(!reports.is_empty(), "parity checked no checkpoint");
    for r in &reports {
        assert_eq!(r["device"], "wgpu", "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["greedy_generation_equal"], true, "{r}");
    }
}

fn config(data: &Path) -> String {
    format!(
        r#"
run_name: wgpu
seed: 11
max_seq_len: 32
model:
  name: mpt_causal_lm
  d_model: 32
  n_heads: 2
  n_layers: 2
  expansion_ratio: 2
  max_seq_len: 32
  vocab_size: 64
tokenizer:
  name: unused-by-training
train_loader:
  name: text
  dataset:
    local: {data}
    shuffle: true
    max_seq_len: 32
optimizer:
  name: decoupled_adamw
  lr: 1.0e-2
  betas: [0.9, 0.95]
  weight_decay: 0.0
scheduler:
  name: constant_with_warmup
  t_warmup: 0ba
max_duration: 8ba
eval_interval: 1000ba
global_train_batch_size: 4
device_train_microbatch_size: 2
precision: fp32
save_interval: 8ba
progress_bar: false
"#,
        data = data.display()
    )
}

/// The training losses of a finished run, by step.
fn train_losses(run_dir: &Path) -> Vec<(u64, f64)> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a metrics line"))
        .filter(|v| v["kind"] == "train")
        .map(|v| {
            let step = v["step"].as_u64().expect("step");
            let loss = v["loss"].as_f64().expect("a finite loss");
            (step, loss)
        })
        .collect()
}

/// A short `tessera train` on the wgpu device (loader, AdamW with clipping, gradient
/// accumulation, a checkpoint) follows the same run on the CPU: the weights are drawn on the
/// host and the data order is seeded, so only float rounding separates the two curves.
#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn a_short_training_run_on_wgpu_follows_the_cpu_run() {
    let dir = TempDir::new("wgpu-train");
    let data = dir.path().join("data");
    write_token_dataset(&data, 48, 32, 64, 5);
    let yaml = dir.path().join("wgpu.yaml");
    std::fs::write(&yaml, config(&data)).unwrap();
    let run = |device: &str| {
        let run_dir = dir.path().join(device);
        run_ok(
            tessera()
                .args(["--device", device, "train"])
                .arg(&yaml)
                .arg("--run-dir")
                .arg(&run_dir),
        );
        run_dir
    };
    let (cpu, wgpu) = (run("cpu"), run("wgpu"));
    let (cpu_losses, wgpu_losses) = (train_losses(&cpu), train_losses(&wgpu));
    assert_eq!(wgpu_losses.len(), 8, "{wgpu_losses:?}");
    assert_eq!(
        cpu_losses.iter().map(|l| l.0).collect::<Vec<_>>(),
        wgpu_losses.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    for ((step, c), (_, w)) in cpu_losses.iter().zip(&wgpu_losses) {
        assert!((c - w).abs() < 2e-2, "step {step}: cpu loss {c}, wgpu {w}");
    }
    let (first, last) = (wgpu_losses[0].1, wgpu_losses[7].1);
    assert!(
        last < first - 0.1,
        "the wgpu run did not learn: {wgpu_losses:?}"
    );
    let checkpoints = std::fs::read_dir(wgpu.join("checkpoints"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(checkpoints > 0, "no checkpoint in {}", wgpu.display());
}
