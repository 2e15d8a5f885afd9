//! `tessera train` with a LoRA adapter (`model.peft_config`): the base is frozen, the held-out
//! loss falls, every checkpoint is a PEFT adapter folder, a resumed run ends with the same
//! adapter bit for bit, and `tessera convert --merge-lora` turns the result into a model that
//! `tessera generate` runs.

mod common;

use std::path::Path;

use common::{TempDir, run_ok, tessera, train_tokenizer};

/// A tokenizer and prompt/response rows: 48 to train on, 16 held out.
fn setup(dir: &Path) {
    let mut docs = String::new();
    let (mut train, mut held) = (String::new(), String::new());
    for i in 0..64 {
        let (a, b) = (i % 9, (i * 5) % 7);
        let prompt = format!("What is {a} plus {b}?");
        let response = format!("The answer is {}.", a + b);
        docs.push_str(&serde_json::json!({"text": format!("{prompt} {response}")}).to_string());
        docs.push('\n');
        let row = serde_json::json!({"prompt": prompt, "response": response}).to_string();
        let out = if i % 4 == 3 { &mut held } else { &mut train };
        out.push_str(&row);
        out.push('\n');
    }
    std::fs::write(dir.join("docs.jsonl"), docs).unwrap();
    std::fs::write(dir.join("train.jsonl"), train).unwrap();
    std::fs::write(dir.join("held.jsonl"), held).unwrap();
    train_tokenizer(dir, "docs.jsonl", 300);
}

/// `model` is the YAML of the model block (indented by two spaces).
fn yaml(model: &str, steps: u32, lr: &str) -> String {
    format!(
        r#"
run_name: lora
seed: 3
max_seq_len: 32
model:
{model}
tokenizer:
  name: tokenizer.json
train_loader:
  name: finetuning
  dataset:
    hf_name: train.jsonl
    shuffle: true
    max_seq_len: 32
eval_loader:
  name: finetuning
  dataset:
    hf_name: held.jsonl
    max_seq_len: 32
optimizer:
  name: decoupled_adamw
  lr: {lr}
scheduler:
  name: constant_with_warmup
  t_warmup: 1ba
max_duration: {steps}ba
eval_interval: 6ba
eval_first: true
global_train_batch_size: 8
device_train_microbatch_size: 4
precision: fp32
save_interval: 6ba
autoresume: true
"#
    )
}

const BASE: &str = "  name: mpt_causal_lm
  d_model: 32
  n_heads: 2
  n_layers: 2
  max_seq_len: 32
  vocab_size: 384
  learned_pos_emb: false
  attn_config:
    alibi: true";

const ADAPTER: &str = "  pretrained: base/checkpoints/ba6
  peft_config:
    peft_type: LORA
    task_type: CAUSAL_LM
    r: 4
    lora_alpha: 8
    lora_dropout: 0.0
    target_modules: [Wqkv, out_proj, up_proj, down_proj]";

fn metrics(run: &Path, kind: &str, field: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == kind)
        .map(|v| v[field].as_f64().unwrap())
        .collect()
}

fn train(dir: &Path, yaml_text: &str, run: &str) -> String {
    std::fs::write(dir.join(format!("{run}.yaml")), yaml_text).unwrap();
    let out = run_ok(tessera().current_dir(dir).args([
        "train",
        &format!("{run}.yaml"),
        "--run-dir",
        run,
    ]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lora_fine_tunes_a_frozen_base_resumes_bit_for_bit_and_merges() {
    let tmp = TempDir::new("lora-train");
    let dir = tmp.path();
    setup(dir);
    // The base: a short full fine-tune, whose last checkpoint is a transformers folder.
    train(dir, &yaml(BASE, 6, "3.0e-3"), "base");
    let base_weights = std::fs::read(dir.join("base/checkpoints/ba6/model.safetensors")).unwrap();

    // The adapter on it, in one go.
    let stdout = train(dir, &yaml(ADAPTER, 12, "1.0e-2"), "full");
    assert!(stdout.contains("trained 12 steps"), "{stdout}");
    let eval = metrics(&dir.join("full"), "eval", "loss");
    assert_eq!(eval.len(), 3, "eval_first, then at 6 and 12: {eval:?}");
    assert!(
        eval[2] < eval[0] - 0.05,
        "the held-out loss should fall: {eval:?}"
    );

    // Every checkpoint is a PEFT adapter folder (with the base's config.json), not a model.
    let ck = dir.join("full/checkpoints/ba12");
    assert!(!ck.join("model.safetensors").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["base_model_name_or_path"], "base/checkpoints/ba6");
    let weights = std::fs::read(ck.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    // 2 blocks × 4 layers × (A, B), PEFT's names.
    assert_eq!(names.len(), 16, "{names:?}");
    assert!(
        names
            .contains(&"base_model.model.transformer.blocks.1.attn.Wqkv.lora_A.weight".to_string())
    );
    // The state holds the adapter only: its shard is a small fraction of the base's size.
    let shard_bytes = std::fs::metadata(ck.join("rank00000-of-00001.safetensors"))
        .expect("the checkpoint holds rank 0's shard")
        .len();
    assert!(
        shard_bytes < base_weights.len() as u64,
        "the checkpoint should not hold the frozen base ({shard_bytes} bytes)"
    );
    // The base on disk was only read.
    assert_eq!(
        std::fs::read(dir.join("base/checkpoints/ba6/model.safetensors")).unwrap(),
        base_weights
    );

    // Stopped at 6 and resumed: the same losses and the same adapter, bit for bit.
    train(dir, &yaml(ADAPTER, 6, "1.0e-2"), "split");
    let stdout = train(dir, &yaml(ADAPTER, 12, "1.0e-2"), "split");
    assert!(stdout.contains("resumed"), "{stdout}");
    assert_eq!(
        metrics(&dir.join("split"), "train", "loss"),
        metrics(&dir.join("full"), "train", "loss")
    );
    assert_eq!(
        std::fs::read(dir.join("split/checkpoints/ba12/adapter_model.safetensors")).unwrap(),
        weights
    );

    // Merged into the base, it is a plain model that generate runs.
    run_ok(tessera().current_dir(dir).args([
        "convert",
        "--model",
        "base/checkpoints/ba6",
        "--merge-lora",
        "full/checkpoints/ba12",
        "--out",
        "merged",
        "--dtype",
        "f32",
    ]));
    let out = run_ok(tessera().current_dir(dir).args([
        "generate",
        "--model",
        "merged",
        "--tokenizer",
        "tokenizer.json",
        "--prompt",
        "What is 2 plus 3?",
        "--max-new-tokens",
        "4",
    ]));
    assert!(!out.stdout.is_empty());
}

#[test]
fn under_amp_bf16_the_frozen_base_is_held_in_bf16_and_the_adapter_still_learns() {
    let tmp = TempDir::new("lora-bf16");
    let dir = tmp.path();
    setup(dir);
    train(dir, &yaml(BASE, 6, "3.0e-3"), "base");
    let text = yaml(ADAPTER, 12, "1.0e-2").replace("precision: fp32", "precision: amp_bf16");
    let stdout = train(dir, &text, "bf16");
    let log = std::fs::read_to_string(dir.join("bf16/log.txt")).unwrap_or_default();
    assert!(
        stdout.contains("frozen base is held in bf16")
            || log.contains("frozen base is held in bf16"),
        "{stdout}"
    );
    let eval = metrics(&dir.join("bf16"), "eval", "loss");
    assert!(eval.iter().all(|l| l.is_finite()), "{eval:?}");
    assert!(
        eval[2] < eval[0] - 0.05,
        "the held-out loss should fall: {eval:?}"
    );
    // The adapter it saves is f32, PEFT-named, as under fp32.
    let weights =
        std::fs::read(dir.join("bf16/checkpoints/ba12/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    assert!(
        st.tensors()
            .iter()
            .all(|(_, v)| v.dtype() == safetensors::Dtype::F32)
    );
}
