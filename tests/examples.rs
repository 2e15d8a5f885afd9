//! The programs in `examples/` run, on a tiny model this test trains first: generate from it,
//! fine-tune it (all weights, and with LoRA), evaluate an ICL task on it, and write and stream
//! MDS shards. `cargo test` builds the examples; this runs the built binaries.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempDir, run_ok, tessera, train_tokenizer};

fn example(name: &str) -> Command {
    // tests run from target/<profile>/deps; cargo puts examples in target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let path: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run this through `cargo test`, which builds the examples",
        path.display()
    );
    Command::new(path)
}

/// A tokenizer, prompt/response rows, a one-task ICL suite and a 4-step base model.
fn setup(dir: &Path) {
    let (mut docs, mut rows, mut lm) = (String::new(), String::new(), String::new());
    for i in 0..40 {
        let (a, b) = (i % 7, (i * 3) % 5);
        let prompt = format!("What is {a} plus {b}?");
        let response = format!("The answer is {}.", a + b);
        docs.push_str(&serde_json::json!({"text": format!("{prompt} {response}")}).to_string());
        docs.push('\n');
        rows.push_str(&serde_json::json!({"prompt": prompt, "response": response}).to_string());
        rows.push('\n');
        if i < 6 {
            lm.push_str(&serde_json::json!({"context": format!("What is {a} plus {b}? The answer is"), "continuation": format!(" {}.", a + b)}).to_string());
            lm.push('\n');
        }
    }
    std::fs::write(dir.join("docs.jsonl"), docs).unwrap();
    std::fs::write(dir.join("rows.jsonl"), rows).unwrap();
    std::fs::write(dir.join("lm.jsonl"), lm).unwrap();
    std::fs::write(
        dir.join("tasks.yaml"),
        "icl_tasks:\n  - label: sums\n    dataset_uri: lm.jsonl\n    num_fewshot: [0]\n    icl_task_type: language_modeling\n",
    )
    .unwrap();
    train_tokenizer(dir, "docs.jsonl", 300);
    let yaml = r#"
run_name: base
max_seq_len: 64
model: {name: mpt_causal_lm, d_model: 32, n_heads: 2, n_layers: 2, max_seq_len: 64, vocab_size: 384, attn_config: {alibi: true}}
tokenizer: {name: tokenizer.json}
train_loader: {name: finetuning, dataset: {hf_name: rows.jsonl, shuffle: true}}
optimizer: {name: decoupled_adamw, lr: 3.0e-3}
scheduler: {name: constant_with_warmup, t_warmup: 0ba}
max_duration: 4ba
global_train_batch_size: 4
device_train_microbatch_size: 4
precision: fp32
save_interval: 4ba
"#;
    std::fs::write(dir.join("base.yaml"), yaml).unwrap();
    run_ok(
        tessera()
            .current_dir(dir)
            .args(["train", "base.yaml", "--run-dir", "base"]),
    );
}

#[test]
fn every_example_runs() {
    let tmp = TempDir::new("examples");
    let dir = tmp.path();
    setup(dir);
    let model = "base/checkpoints/ba4";

    let out = run_ok(example("generate").current_dir(dir).args([
        model,
        "tokenizer.json",
        "What is 2 plus 3?",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("What is 2 plus 3?"));

    for (out_dir, extra) in [("full", None), ("lora", Some("--lora"))] {
        let mut cmd = example("finetune");
        cmd.current_dir(dir)
            .args([model, "rows.jsonl", "tokenizer.json", out_dir]);
        cmd.args(extra);
        let out = String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned();
        let losses: Vec<f64> = out
            .lines()
            .filter_map(|l| l.split("loss ").nth(1))
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(losses.len(), 20, "{out}");
        assert!(losses[19] < losses[0], "{out_dir}: {losses:?}");
        let saved = dir.join(out_dir).join("ba20");
        let file = if extra.is_some() {
            "adapter_model.safetensors"
        } else {
            "model.safetensors"
        };
        assert!(
            saved.join(file).is_file(),
            "{} has no {file}",
            saved.display()
        );
    }

    let out = run_ok(
        example("icl")
            .current_dir(dir)
            .args([model, "tokenizer.json", "tasks.yaml"]),
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("sums") && out.contains("on 6 examples"),
        "{out}"
    );

    let out = run_ok(example("mds").current_dir(dir).arg("shards"));
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(dir.join("shards/index.json").is_file());
    // Two ranks see half of the 100 samples each.
    assert_eq!(out.matches(": 50 samples").count(), 2, "{out}");
}
