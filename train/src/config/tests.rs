//! End-to-end config loading: YAML text in, typed config or a key-naming error out.

use super::*;
use crate::optim::OptimizerName;
use crate::schedule::SchedulerName;

/// llm-foundry's `mpt-small-cpu.yaml`, trimmed to the parts that matter, in its own style.
const SMALL: &str = r#"
variables:
  data_local: ./my-copy-c4
  data_remote:  # If blank, files must be present in data_local
  max_seq_len: 128
  global_seed: 17
  run_name: mpt_causal_lm_cpu

max_seq_len: ${variables.max_seq_len}
run_name: ${variables.run_name}

model:
  name: mpt_causal_lm
  init_device: cpu
  d_model: 16
  n_heads: 4
  n_layers: 4
  expansion_ratio: 5
  max_seq_len: ${variables.max_seq_len}
  vocab_size: 50368
  attn_config:
    attn_impl: torch
  loss_fn: torch_crossentropy

tokenizer:
  name: EleutherAI/gpt-neox-20b
  kwargs:
    model_max_length: ${variables.max_seq_len}

train_loader:
  name: text
  dataset:
    local: ${variables.data_local}
    remote: ${variables.data_remote}
    split: train
    shuffle: true
    max_seq_len: ${variables.max_seq_len}
    shuffle_seed: ${variables.global_seed}
  drop_last: true
  num_workers: 2

eval_loader:
  name: text
  dataset:
    local: ${variables.data_local}
    remote: ${variables.data_remote}
    split: val
    shuffle: false
    max_seq_len: ${variables.max_seq_len}
    shuffle_seed: ${variables.global_seed}
  drop_last: false
  num_workers: 2

scheduler:
  name: cosine_with_warmup
  t_warmup: 100ba
  alpha_f: 0.1

optimizer:
  name: decoupled_adamw
  lr: 6.0e-4
  betas:
  - 0.9
  - 0.95
  eps: 1.0e-08
  weight_decay: 0.0

algorithms:
  gradient_clipping:
    clipping_type: norm
    clipping_threshold: 1.0

max_duration: 10ba
eval_interval: 5ba
eval_first: false
eval_subset_num_batches: 5
global_train_batch_size: 256
autoresume: false
seed: ${variables.global_seed}
device_eval_batch_size: 16
device_train_microbatch_size: 16
precision: fp32

fsdp_config:
  sharding_strategy: FULL_SHARD

progress_bar: false
log_to_console: true
console_log_interval: 1ba

callbacks:
  speed_monitor:
    window_size: 10
  lr_monitor: {}

save_overwrite: true
save_num_checkpoints_to_keep: 1
"#;

fn load(text: &str, sets: &[&str]) -> Result<LoadedConfig, ConfigError> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_str(text, "test.yaml", &sets)
}

fn err(text: &str, sets: &[&str]) -> String {
    load(text, sets).expect_err("must fail").to_string()
}

#[test]
fn llm_foundry_style_yaml_loads_with_interpolation() {
    let l = load(SMALL, &[]).unwrap();
    let c = &l.config;
    assert_eq!(c.max_seq_len, 128);
    assert_eq!(c.run_name.as_deref(), Some("mpt_causal_lm_cpu"));
    assert_eq!(c.seed, 17);
    assert_eq!(c.train_loader.dataset.shuffle_seed, 17);
    assert_eq!(c.train_loader.dataset.remote, None);
    assert_eq!(
        c.train_loader.dataset.local.as_deref(),
        Some("./my-copy-c4")
    );
    assert_eq!(c.eval_loader.len(), 1);
    assert_eq!(c.eval_loader[0].dataset.split.as_deref(), Some("val"));
    assert_eq!(c.max_duration, Duration::Batches(10));
    assert_eq!(c.eval_interval, Duration::Batches(5));
    assert_eq!(c.precision, Precision::Fp32);
    assert_eq!(c.device_train_microbatch_size, MicroBatchSize::Fixed(16));
    assert_eq!(c.optimizer.name, OptimizerName::DecoupledAdamw);
    assert_eq!(c.optimizer.betas, Some([0.9, 0.95]));
    assert_eq!(c.optimizer.lr, Some(6e-4));
    assert_eq!(c.scheduler.name, SchedulerName::CosineWithWarmup);
    assert_eq!(
        c.gradient_clipping.as_ref().map(|g| g.clipping_threshold),
        Some(1.0)
    );
    assert_eq!(c.save_num_checkpoints_to_keep, 1);
    assert_eq!(
        c.tokenizer.kwargs["model_max_length"],
        serde_json::json!(128)
    );
    match &c.model.base {
        ModelSource::Mpt(m) => {
            assert_eq!(m["d_model"], serde_json::json!(16));
            assert_eq!(m["max_seq_len"], serde_json::json!(128));
            assert!(!m.contains_key("init_device"), "ignored keys are stripped");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ignored_keys_are_listed_once_in_one_warning() {
    let l = load(SMALL, &[]).unwrap();
    assert_eq!(
        l.ignored_keys,
        vec![
            "callbacks",
            "eval_loader.num_workers",
            "model.init_device",
            "model.loss_fn",
            "train_loader.num_workers"
        ]
    );
    let w = l.ignored_warning().unwrap();
    assert_eq!(w.matches("callbacks").count(), 1);
    // fsdp_config is a real key now.
    let f = l.config.fsdp_config.unwrap();
    assert_eq!(
        f.sharding_strategy,
        crate::parallel::ShardingStrategy::FullShard
    );
}

#[test]
fn unknown_keys_name_the_full_path_and_the_nearest_key() {
    let e = load(&SMALL.replace("  lr: 6.0e-4", "  lrr: 6.0e-4"), &[]).unwrap_err();
    match &e {
        ConfigError::UnknownKey { key, suggestion } => {
            assert_eq!(key, "optimizer.lrr");
            assert_eq!(suggestion.as_deref(), Some("optimizer.lr"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        e.to_string(),
        "unknown key `optimizer.lrr` (did you mean `optimizer.lr`?)"
    );
    let e = err(&SMALL.replace("    shuffle: true", "    shufle: true"), &[]);
    assert_eq!(
        e,
        "unknown key `train_loader.dataset.shufle` (did you mean `train_loader.dataset.shuffle`?)"
    );
    let e = err(
        &SMALL.replace("max_duration: 10ba", "max_duraton: 10ba"),
        &[],
    );
    assert!(
        e.starts_with("unknown key `max_duraton` (did you mean `max_duration`?)"),
        "{e}"
    );
    let e = err(&format!("{SMALL}\ntotally_new_thing: 3\n"), &[]);
    assert!(
        e.contains("unknown key `totally_new_thing`") && e.contains("variables:"),
        "{e}"
    );
}

#[test]
fn bad_durations_name_the_key() {
    let e = err(SMALL, &["max_duration=10xx"]);
    assert_eq!(
        e,
        "max_duration: \"10xx\" is not a duration (expected e.g. 100ba, 2ep, 1e9tok)"
    );
    let e = err(SMALL, &["scheduler.t_warmup=1.5ba"]);
    assert!(e.starts_with("scheduler.t_warmup:"), "{e}");
    let e = err(SMALL, &["max_duration=0.5dur"]);
    assert!(e.starts_with("max_duration:"), "{e}");
}

#[test]
fn set_overrides_any_key_before_interpolation() {
    let l = load(
        SMALL,
        &[
            "variables.max_seq_len=64",
            "optimizer.lr=1e-3",
            "max_duration=2e6tok",
            "precision=amp_bf16",
        ],
    )
    .unwrap();
    let c = l.config;
    assert_eq!(c.max_seq_len, 64);
    assert_eq!(c.train_loader.dataset.max_seq_len, Some(64));
    assert_eq!(c.optimizer.lr, Some(1e-3));
    assert_eq!(c.max_duration, Duration::Tokens(2_000_000));
    assert_eq!(c.precision, Precision::AmpBf16);
    // A --set typo is an unknown key like any other.
    let e = err(SMALL, &["optimizer.weight_decy=0.1"]);
    assert!(e.contains("did you mean `optimizer.weight_decay`"), "{e}");
}

#[test]
fn enum_values_suggest_the_nearest_name() {
    let e = err(SMALL, &["precision=amp_bf61"]);
    assert!(
        e.starts_with("precision: \"amp_bf61\" is not one of"),
        "{e}"
    );
    assert!(e.contains("did you mean `amp_bf16`"), "{e}");
    let e = err(SMALL, &["optimizer.name=decoupled_lion"]);
    assert!(
        e.starts_with("optimizer.name:") && e.contains("decoupled_lionw"),
        "{e}"
    );
}

/// A minimal config in the pre-`variables:` style: variables are top-level keys.
const OLD_STYLE: &str = r#"
data_local: ./c4
seed_var: 3
max_seq_len: 64
max_duration: 5ba
global_train_batch_size: 4
seed: ${seed_var}
model: {name: mpt_causal_lm, d_model: 16, n_heads: 4, n_layers: 2, max_seq_len: "${max_seq_len}", vocab_size: 64}
tokenizer: {name: tok.json}
train_loader: {name: text, dataset: {local: "${data_local}", max_seq_len: "${max_seq_len}"}}
optimizer: {name: decoupled_lionw, lr: 1.0e-4}
scheduler: {name: constant_with_warmup, t_warmup: 0ba}
"#;

#[test]
fn older_top_level_variables_are_accepted_when_referenced() {
    let l = load(OLD_STYLE, &[]).unwrap();
    assert_eq!(l.config.seed, 3);
    assert_eq!(l.config.train_loader.dataset.local.as_deref(), Some("./c4"));
    assert!(l.ignored_keys.is_empty());
    // llm-foundry's defaults fill the rest.
    assert_eq!(l.config.precision, Precision::AmpBf16);
    assert_eq!(l.config.eval_interval, Duration::Epochs(1));
    assert_eq!(l.config.save_interval, Duration::Batches(1000));
    assert_eq!(l.config.device_train_microbatch_size, MicroBatchSize::Auto);
    // An unreferenced stray key is still an error.
    let e = err(&format!("{OLD_STYLE}stray: 1\n"), &[]);
    assert!(e.contains("unknown key `stray`"), "{e}");
}

#[test]
fn missing_required_keys_are_named() {
    let e = load(&SMALL.replace("max_duration: 10ba\n", ""), &[]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Missing { key } if key == "max_duration"),
        "{e}"
    );
    let e = err(&SMALL.replace("  t_warmup: 100ba\n", ""), &[]);
    assert_eq!(e, "scheduler.t_warmup: required key is missing");
}

#[test]
fn range_and_combination_checks_name_the_key() {
    for (set, key) in [
        (
            "device_train_microbatch_size=512",
            "device_train_microbatch_size:",
        ),
        (
            "device_train_microbatch_size=0",
            "device_train_microbatch_size:",
        ),
        ("global_train_batch_size=0", "global_train_batch_size:"),
        ("optimizer.betas=[0.9, 1.2]", "optimizer.betas[1]:"),
        (
            "algorithms.gradient_clipping.clipping_type=value",
            "gradient_clipping.clipping_type:",
        ),
        ("scheduler.alpha=0.5", "scheduler.alpha:"),
        (
            "train_loader.dataset.max_seq_len=64",
            "train_loader.dataset.max_seq_len:",
        ),
        (
            "accumulate_train_batch_on_tokens=false",
            "accumulate_train_batch_on_tokens:",
        ),
        ("guards.spike.factor=0.5", "guards.spike.factor:"),
        ("model.name=gpt_causal_lm", "model.name:"),
    ] {
        let e = err(SMALL, &[set]);
        assert!(e.starts_with(key), "--set {set}: {e}");
    }
}

#[test]
fn microbatch_auto_and_eval_batch_defaults() {
    let l = load(SMALL, &["device_train_microbatch_size=auto"]).unwrap();
    assert_eq!(l.config.device_train_microbatch_size, MicroBatchSize::Auto);
    assert_eq!(l.config.eval_batch_size(), 16);
    let text = SMALL.replace("device_eval_batch_size: 16\n", "");
    assert_eq!(
        load(&text, &["device_train_microbatch_size=auto"])
            .unwrap()
            .config
            .eval_batch_size(),
        1
    );
    assert_eq!(load(&text, &[]).unwrap().config.eval_batch_size(), 16);
}

#[test]
fn pretrained_model_and_eval_loader_lists() {
    let text = OLD_STYLE.replace(
        "model: {name: mpt_causal_lm, d_model: 16, n_heads: 4, n_layers: 2, max_seq_len: \"${max_seq_len}\", vocab_size: 64}",
        "model: {pretrained: ./hf/mpt-7b}",
    );
    let l = load(&text, &[]).unwrap();
    assert!(
        matches!(&l.config.model.base, ModelSource::Pretrained { path, load_weights: true, .. } if path == "./hf/mpt-7b")
    );
    let two = format!(
        "{text}eval_loader:\n- {{label: c4, name: text, dataset: {{local: ./c4, split: val}}}}\n- {{label: code, name: text, dataset: {{local: ./code}}}}\n"
    );
    let l = load(&two, &[]).unwrap_or_else(|e| panic!("{e}\n{two}"));
    assert_eq!(l.config.eval_loader.len(), 2);
    assert_eq!(l.config.eval_loader[1].label.as_deref(), Some("code"));
    let unlabelled = format!(
        "{text}eval_loader:\n- {{name: text, dataset: {{local: a}}}}\n- {{name: text, dataset: {{local: b}}}}\n"
    );
    assert!(err(&unlabelled, &[]).starts_with("eval_loader:"));
}

#[test]
fn gradient_clipping_in_two_places_is_refused() {
    let text =
        format!("{SMALL}\ngradient_clipping:\n  clipping_type: norm\n  clipping_threshold: 2.0\n");
    assert!(err(&text, &[]).starts_with("algorithms.gradient_clipping:"));
    let text = SMALL.replace("algorithms:\n  gradient_clipping:", "gradient_clipping_unused:\n  x:")
        .replace("gradient_clipping_unused:\n  x:\n    clipping_type: norm\n    clipping_threshold: 1.0\n", "gradient_clipping:\n  clipping_type: norm\n  clipping_threshold: 2.0\n");
    let l = load(&text, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        l.config.gradient_clipping.map(|g| g.clipping_threshold),
        Some(2.0)
    );
}

#[test]
fn resolved_config_round_trips_through_yaml() {
    let c = load(SMALL, &[]).unwrap().config;
    let yaml = c.to_yaml().unwrap();
    let back = load_str(&yaml, "resolved.yaml", &[]).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back.config, c);
    assert!(back.ignored_keys.is_empty());
}

#[test]
fn schedule_and_length_resolve_from_the_config() {
    let c = load(SMALL, &["max_duration=1e6tok", "scheduler.t_warmup=0.1dur"])
        .unwrap()
        .config;
    // 256 × 128 = 32768 tokens per batch; 1e6 tokens → 30.52 → 31 batches.
    assert_eq!(c.max_batches(None).unwrap(), 31);
    let s = c
        .scheduler
        .resolve(c.optimizer.lr(), &c.time_context(None))
        .unwrap();
    // 0.1dur = 100_000 tokens = 3.0518 batches.
    assert!((s.t_warmup - 100_000.0 / 32768.0).abs() < 1e-9);
}

#[test]
fn yaml_syntax_errors_keep_line_numbers() {
    let e = err("max_duration: 10ba\nmodel: [\n", &[]);
    assert!(
        e.starts_with("test.yaml: invalid YAML") && e.contains("line"),
        "{e}"
    );
}

fn fixture(rel: &str) -> std::path::PathBuf {
    tessera_testkit::shared_fixture(format!("llmfoundry_yamls/{rel}"))
}

#[test]
#[ignore = "needs shared fixtures"]
fn loads_llm_foundry_mpt_125m_yaml() {
    let l = load_file(&fixture("pretrain/mpt-125m.yaml"), &[]).unwrap();
    let c = l.config;
    assert_eq!(c.max_seq_len, 2048);
    assert_eq!(c.max_duration, Duration::Batches(4800));
    assert_eq!(c.precision, Precision::AmpBf16);
    assert_eq!(c.global_train_batch_size, 256);
    assert_eq!(c.run_name, None);
    let f = c.fsdp_config.expect("fsdp_config");
    assert_eq!(
        f.sharding_strategy,
        crate::parallel::ShardingStrategy::FullShard
    );
    assert_eq!(f.mixed_precision, crate::config::FsdpPrecision::Pure);
    assert!(!f.activation_checkpointing);
    assert_eq!(
        f.inert_keys(),
        vec!["activation_checkpointing_reentrant", "limit_all_gathers"]
    );
    assert!(matches!(c.model.base, ModelSource::Mpt(ref m) if m["d_model"] == 768));
}

#[test]
#[ignore = "needs shared fixtures"]
fn loads_llm_foundry_mpt_small_cpu_yaml_with_a_tokenizer_override() {
    let l = load_file(
        &fixture("pretrain/mpt-small-cpu.yaml"),
        &["tokenizer.name=./tokenizer.json".into()],
    )
    .unwrap();
    assert_eq!(l.config.tokenizer.name, "./tokenizer.json");
    assert_eq!(l.config.max_duration, Duration::Batches(10));
    assert!(l.config.save_overwrite);
}

#[test]
#[ignore = "needs shared fixtures"]
fn loads_llm_foundry_finetune_yaml() {
    let l = load_file(
        &fixture("finetune/gpt2-arc-easy-cpu-streaming-dataset.yaml"),
        &[],
    )
    .unwrap();
    let c = l.config;
    assert_eq!(c.train_loader.name, LoaderKind::Finetuning);
    assert!(
        c.train_loader
            .dataset
            .streams
            .as_ref()
            .is_some_and(|s| s.contains_key("my_data"))
    );
    assert_eq!(c.max_duration, Duration::Epochs(1));
    assert_eq!(c.eval_interval, Duration::Epochs(1));
    assert!(
        matches!(c.model.base, ModelSource::Pretrained { ref path, load_weights: true, .. } if path == "gpt2")
    );
}
