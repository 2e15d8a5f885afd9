//! `tessera train` beyond pretraining: instruction tuning on prompt/response JSONL, ICL tasks at
//! `eval_interval`, and `tessera preflight` before a launch.

mod common;

use std::path::Path;

use common::{TempDir, run_ok, tessera, train_tokenizer, write_token_dataset};

/// A tiny corpus, a tokenizer trained on it, and prompt/response rows.
fn setup(dir: &Path) {
    let mut docs = String::new();
    let mut rows = String::new();
    for i in 0..60 {
        let a = i % 7;
        let b = (i * 3) % 5;
        let prompt = format!("What is {a} plus {b}?");
        let response = format!("The answer is {}.", a + b);
        docs.push_str(&serde_json::json!({"text": format!("{prompt} {response}")}).to_string());
        docs.push('\n');
        rows.push_str(&serde_json::json!({"prompt": prompt, "response": response}).to_string());
        rows.push('\n');
    }
    std::fs::write(dir.join("docs.jsonl"), docs).unwrap();
    std::fs::write(dir.join("rows.jsonl"), rows).unwrap();
    train_tokenizer(dir, "docs.jsonl", 300);
    let lm: String = (0..12)
        .map(|i| format!("{}\n", serde_json::json!({"context": format!("What is {} plus 1? The answer is", i % 7), "continuation": format!("{}.", i % 7 + 1)})))
        .collect();
    std::fs::write(dir.join("lm.jsonl"), lm).unwrap();
}

fn finetune_yaml(packing: &str) -> String {
    format!(
        r#"
run_name: sft
max_seq_len: 32
model:
  name: mpt_causal_lm
  d_model: 32
  n_heads: 2
  n_layers: 2
  max_seq_len: 32
  vocab_size: 384
  learned_pos_emb: false
  attn_config:
    attn_uses_sequence_id: true
tokenizer:
  name: tokenizer.json
train_loader:
  name: finetuning
  dataset:
    hf_name: rows.jsonl
    shuffle: true
    max_seq_len: 32
    packing_ratio: {packing}
eval_loader:
  name: finetuning
  dataset:
    hf_name: rows.jsonl
    max_seq_len: 32
icl_tasks:
  - label: lm
    dataset_uri: lm.jsonl
    num_fewshot: [0]
    icl_task_type: language_modeling
optimizer:
  name: decoupled_adamw
  lr: 3.0e-3
scheduler:
  name: constant_with_warmup
  t_warmup: 1ba
max_duration: 12ba
eval_interval: 6ba
global_train_batch_size: 4
device_train_microbatch_size: 2
precision: fp32
save_interval: 6ba
autoresume: true
"#
    )
}

#[test]
fn instruction_tuning_runs_with_icl_evals_at_the_eval_interval() {
    let tmp = TempDir::new("sft");
    setup(tmp.path());
    for packing in ["1.0", "auto"] {
        let run = format!("run-{}", packing.replace('.', "_"));
        std::fs::write(tmp.path().join("sft.yaml"), finetune_yaml(packing)).unwrap();
        let out = run_ok(tessera().current_dir(tmp.path()).args([
            "train",
            "sft.yaml",
            "--run-dir",
            &run,
        ]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("trained 12 steps"), "{stdout}");

        let metrics = std::fs::read_to_string(tmp.path().join(&run).join("metrics.jsonl")).unwrap();
        let losses: Vec<f64> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "train")
            .map(|v| v["loss"].as_f64().unwrap())
            .collect();
        assert_eq!(losses.len(), 12);
        assert!(
            losses[11] < losses[0],
            "the response loss should fall: {losses:?}"
        );
        assert!(metrics.contains("\"kind\":\"eval\""), "{metrics}");

        // The ICL task ran at steps 6 and 12 and wrote llm-foundry-style results.
        for step in [6, 12] {
            let results = tmp
                .path()
                .join(&run)
                .join(format!("eval/ba{step}/results.json"));
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
            let acc = v["tasks"][0]["accuracy"].as_f64().expect("an accuracy");
            assert!((0.0..=1.0).contains(&acc));
            assert_eq!(v["step"], step);
        }
    }
}

#[test]
fn preflight_passes_a_sound_config_and_fails_a_broken_one() {
    let tmp = TempDir::new("preflight");
    setup(tmp.path());
    write_token_dataset(&tmp.path().join("data"), 64, 32, 300, 9);
    let good = r#"
run_name: pf
max_seq_len: 32
model: {name: mpt_causal_lm, d_model: 32, n_heads: 2, n_layers: 2, max_seq_len: 32, vocab_size: 384}
tokenizer: {name: tokenizer.json}
train_loader: {name: text, dataset: {local: data, shuffle: true, max_seq_len: 32}}
optimizer: {name: decoupled_adamw, lr: 1.0e-3}
scheduler: {name: cosine_with_warmup, t_warmup: 1ba}
max_duration: 10ba
global_train_batch_size: 8
device_train_microbatch_size: 8
precision: fp32
save_interval: 5ba
autoresume: true
"#;
    std::fs::write(tmp.path().join("good.yaml"), good).unwrap();
    let out = run_ok(
        tessera()
            .current_dir(tmp.path())
            .args(["preflight", "good.yaml", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true, "{v}");

    // The tokenizer's 300 tokens do not fit a 256-token model: fail, exit code 1, named check.
    let out = tessera()
        .current_dir(tmp.path())
        .args([
            "preflight",
            "good.yaml",
            "--json",
            "--set",
            "model.vocab_size=256",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], false);
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"tokenizer"), "{v}");
}

#[test]
fn checkpoints_upload_to_a_remote_folder_and_a_new_machine_resumes_from_it() {
    let tmp = TempDir::new("remote-ck");
    write_token_dataset(&tmp.path().join("data"), 64, 32, 128, 5);
    let bucket = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let yaml = |steps: u32| {
        format!(
            r#"
run_name: remote
max_seq_len: 32
model: {{name: mpt_causal_lm, d_model: 32, n_heads: 2, n_layers: 2, max_seq_len: 32, vocab_size: 128}}
tokenizer: {{name: unused}}
train_loader: {{name: text, dataset: {{local: data, shuffle: true, max_seq_len: 32}}}}
optimizer: {{name: decoupled_lionw, lr: 1.0e-4}}
scheduler: {{name: constant_with_warmup, t_warmup: 0ba}}
max_duration: {steps}ba
global_train_batch_size: 4
device_train_microbatch_size: 4
precision: fp32
save_interval: 3ba
autoresume: true
save_folder: file://{bucket}/run1
"#,
            bucket = bucket.display()
        )
    };
    std::fs::write(tmp.path().join("a.yaml"), yaml(3)).unwrap();
    run_ok(
        tessera()
            .current_dir(tmp.path())
            .args(["train", "a.yaml", "--run-dir", "local1"]),
    );
    assert!(bucket.join("run1/ba3/manifest.json").exists());
    assert_eq!(
        std::fs::read_to_string(bucket.join("run1/latest")).unwrap(),
        "ba3\n"
    );

    // "Another machine": an empty run folder, a longer max_duration, the same remote.
    std::fs::write(tmp.path().join("b.yaml"), yaml(6)).unwrap();
    let out =
        run_ok(
            tessera()
                .current_dir(tmp.path())
                .args(["train", "b.yaml", "--run-dir", "local2"]),
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("trained 6 steps"), "{stdout}");
    let incidents = std::fs::read_to_string(tmp.path().join("local2/incidents.jsonl")).unwrap();
    assert!(
        incidents.contains("\"resume\"") && incidents.contains("ba3"),
        "{incidents}"
    );
    let metrics = std::fs::read_to_string(tmp.path().join("local2/metrics.jsonl")).unwrap();
    let first_step = metrics
        .lines()
        .next()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].clone());
    assert_eq!(
        first_step,
        Some(serde_json::json!(4)),
        "steps 1-3 came from the remote checkpoint:\n{metrics}"
    );
    assert!(bucket.join("run1/ba6/model.safetensors").exists());
}

/// `plan --memory --config` reads the run's fsdp_config and batch; `preflight` says how
/// HYBRID_SHARD splits over nodes and refuses a launch this build cannot run (CPU offload, a
/// backend compiled out) with a named ✗ line.
#[test]
fn plan_and_preflight_follow_fsdp_config() {
    let tmp = TempDir::new("plan-fsdp");
    setup(tmp.path());
    write_token_dataset(&tmp.path().join("data"), 64, 32, 300, 9);
    let yaml = |strategy: &str| {
        format!(
            r#"
run_name: pf
max_seq_len: 32
model: {{name: mpt_causal_lm, d_model: 32, n_heads: 2, n_layers: 2, max_seq_len: 32, vocab_size: 384}}
tokenizer: {{name: tokenizer.json}}
train_loader: {{name: text, dataset: {{local: data, shuffle: true, max_seq_len: 32}}}}
optimizer: {{name: decoupled_adamw, lr: 1.0e-3}}
scheduler: {{name: cosine_with_warmup, t_warmup: 1ba}}
max_duration: 10ba
global_train_batch_size: 8
device_train_microbatch_size: 2
precision: fp32
save_interval: 5ba
autoresume: true
fsdp_config: {{sharding_strategy: {strategy}, mixed_precision: FULL}}
"#
        )
    };
    let plan = |strategy: &str| -> serde_json::Value {
        let path = tmp.path().join(format!("{strategy}.yaml"));
        std::fs::write(&path, yaml(strategy)).unwrap();
        let out = run_ok(tessera().current_dir(tmp.path()).args([
            "plan",
            "--memory",
            "--config",
            path.to_str().unwrap(),
            "--devices",
            "4",
            "--json",
        ]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (ddp, fsdp) = (plan("NO_SHARD"), plan("FULL_SHARD"));
    assert_eq!(ddp["sharding"], "NO_SHARD");
    assert_eq!(fsdp["sharding"], "FULL_SHARD");
    // 8 sequences over 4 ranks: one microbatch of 2 each.
    assert_eq!(fsdp["microbatch"], 2);
    assert_eq!(fsdp["microbatches_per_step"], 1);
    // Master weights are sharded 4 ways under FULL_SHARD, whole under NO_SHARD.
    let (m_ddp, m_fsdp) = (
        ddp["master"].as_f64().unwrap(),
        fsdp["master"].as_f64().unwrap(),
    );
    assert_eq!(m_ddp, 4.0 * m_fsdp, "{ddp} {fsdp}");

    let preflight = |yaml_name: &str, extra: &[&str]| -> serde_json::Value {
        let out = tessera()
            .current_dir(tmp.path())
            .args(["preflight", yaml_name, "--json", "--no-step"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // HYBRID_SHARD over 2 nodes passes and says how it splits; CPU offload is refused by key.
    std::fs::write(tmp.path().join("hybrid.yaml"), yaml("HYBRID_SHARD")).unwrap();
    let out = run_ok(tessera().current_dir(tmp.path()).args([
        "preflight",
        "hybrid.yaml",
        "--json",
        "--no-step",
        "--devices",
        "4",
        "--nodes",
        "2",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checks"][1]["name"], "parallelism", "{v}");
    assert_eq!(v["checks"][1]["status"], "pass", "{v}");
    assert!(
        v["checks"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("sharded over each node's 2 ranks, replicated over 2 nodes"),
        "{v}"
    );
    let offload = yaml("FULL_SHARD").replace(
        "mixed_precision: FULL",
        "mixed_precision: FULL, cpu_offload: true",
    );
    std::fs::write(tmp.path().join("offload.yaml"), offload).unwrap();
    let v = preflight("offload.yaml", &["--devices", "4", "--nodes", "2"]);
    assert_eq!(v["checks"][1]["status"], "fail", "{v}");
    assert!(
        v["checks"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("fsdp_config.cpu_offload"),
        "{v}"
    );
    // A backend this build lacks is one failed line, not a crash.
    if !cfg!(feature = "cuda") {
        let v = preflight("NO_SHARD.yaml", &["--device", "cuda"]);
        assert_eq!(v["checks"][1]["status"], "fail", "{v}");
        assert!(
            v["checks"][1]["detail"]
                .as_str()
                .unwrap()
                .contains("without the `cuda` feature"),
            "{v}"
        );
    }
}
