//! `tessera quickstart` on a fresh folder: tokenizer, shards, training with evals, a sample and
//! a report, with nothing downloaded. The test runs a smaller model for fewer steps than the
//! default so that it takes seconds; the pipeline is the same.

mod common;

use common::{TempDir, run_ok, tessera};

/// `tessera quickstart` into `dir` with a 2-layer, d_model 64 model for 16 steps.
fn small_quickstart(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = tessera();
    cmd.arg("quickstart").arg("--run-dir").arg(dir).args([
        "--steps",
        "16",
        "--d-model",
        "64",
        "--n-layers",
        "2",
        "--vocab-size",
        "512",
    ]);
    cmd
}

#[test]
fn quickstart_runs_the_whole_pipeline_and_the_loss_falls() {
    let tmp = TempDir::new("quickstart");
    let dir = tmp.path().join("qs");
    let out = run_ok(&mut small_quickstart(&dir));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for stage in ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "report:"] {
        assert!(stdout.contains(stage), "missing {stage}:\n{stdout}");
    }
    for file in [
        "tokenizer.json",
        "data/train/index.json",
        "data/val/index.json",
        "data/prepare.json",
        "quickstart.yaml",
        "run/report.md",
        "run/loss.png",
    ] {
        assert!(dir.join(file).exists(), "{file} missing");
    }

    // The loss falls: train loss over the run, and the eval loss from the first eval to the last.
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<f64> = rows
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let eval: Vec<f64> = rows
        .iter()
        .filter(|r| r["kind"] == "eval")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(train.len(), 16);
    assert!(eval.len() >= 2, "{metrics}");
    assert!(
        train.last().unwrap() < &(train[0] - 0.5),
        "train loss {train:?}"
    );
    assert!(eval.last().unwrap() < &eval[0], "eval loss {eval:?}");

    // The final checkpoint is an HF folder `tessera generate` loads as it is.
    let ckpt = dir.join("run/checkpoints/ba16");
    let gen_out = run_ok(
        tessera()
            .arg("generate")
            .arg("--model")
            .arg(&ckpt)
            .arg("--tokenizer")
            .arg(dir.join("tokenizer.json"))
            .args(["--prompt", "def ", "--max-new-tokens", "8", "--json"]),
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&gen_out.stdout).trim()).unwrap();
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 8);
    assert!(v["text"].is_string());

    // Running it again resumes the finished run instead of redoing it.
    let again = run_ok(&mut small_quickstart(&dir));
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("reusing"), "{again}");
}

#[test]
fn quickstart_lora_fine_tunes_the_model_and_the_held_out_loss_falls() {
    let tmp = TempDir::new("quickstart-lora");
    let dir = tmp.path().join("qs");
    let out = run_ok(small_quickstart(&dir).args(["--lora", "--lora-steps", "40"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[6/6] LoRA"), "{stdout}");
    let metrics = std::fs::read_to_string(dir.join("lora/run/metrics.jsonl")).unwrap();
    let eval: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "eval")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    // eval_first, then every 10 steps.
    assert_eq!(eval.len(), 5, "{metrics}");
    assert!(
        eval[4] < eval[0] * 0.8,
        "the held-out loss should fall by a fifth at least: {eval:?}"
    );
    let adapter = dir.join("lora/run/checkpoints/ba40");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
    ] {
        assert!(adapter.join(file).is_file(), "{file} missing");
    }
    assert!(
        stdout.contains(&format!("--adapter repl={}", adapter.display())),
        "the serve command names the adapter:\n{stdout}"
    );
}
