//! Whole pre-flight runs on tiny configs in temp folders: a healthy run passes every check, and
//! each kind of broken run fails (or warns) where it should, with later checks skipped.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use tessera_data::mds::{MdsWriter, WriterOptions};

use super::run::ORDER;
use super::*;
use crate::config::load_str;
use crate::finetune::tests::{sample_rows, tokenizer_json, write_rows};

type B = Autodiff<Flex>;

/// A packed token dataset of `samples` rows of 16 ids below `vocab`.
fn write_mds(dir: &Path, samples: u32, vocab: u32) {
    let mut w = MdsWriter::create(
        dir,
        &[("tokens", "ndarray:int32")],
        WriterOptions::default(),
    )
    .unwrap();
    for s in 0..samples {
        let row: Vec<u32> = (0..16).map(|i| (s * 7 + i * 3) % vocab).collect();
        w.write_tokens(&row).unwrap();
    }
    w.finish().unwrap();
}

/// A tokenizer file, a 64-sample dataset of ids below 64, and a config for a 2-layer MPT.
fn setup(dir: &Path) -> String {
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(&[])).unwrap();
    write_mds(&dir.join("mds"), 64, 64);
    format!(
        r#"
run_name: pf
max_seq_len: 16
model: {{name: mpt_causal_lm, d_model: 32, n_heads: 2, n_layers: 2, vocab_size: 64, max_seq_len: 32}}
tokenizer: {{name: {d}/tokenizer.json}}
train_loader: {{name: text, dataset: {{local: {d}/mds, shuffle: true, max_seq_len: 16}}}}
eval_loader: {{name: text, dataset: {{local: {d}/mds, max_seq_len: 16}}}}
optimizer: {{name: decoupled_adamw, lr: 1.0e-3}}
scheduler: {{name: constant_with_warmup, t_warmup: 0ba}}
max_duration: 20ba
global_train_batch_size: 4
device_train_microbatch_size: 2
precision: fp32
save_folder: {d}/ck/{{run_name}}
save_interval: 5ba
save_num_checkpoints_to_keep: 2
autoresume: true
"#,
        d = dir.display()
    )
}

fn run(yaml: &str, sets: &[&str], opts: &PreflightOptions) -> PreflightReport {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let loaded = load_str(yaml, "test.yaml", &sets).unwrap();
    run_preflight::<B>(&loaded, opts, &Default::default())
}

#[test]
fn a_healthy_run_passes_every_check_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(dir.path());
    let r = run(&yaml, &[], &PreflightOptions::default());
    for c in &r.checks {
        assert_eq!(c.status, Status::Pass, "{}: {}", c.name, c.detail);
    }
    assert_eq!(r.checks.iter().map(|c| c.name).collect::<Vec<_>>(), ORDER);
    let f = &r.facts;
    assert_eq!(
        (
            f.sequences_per_epoch,
            f.steps_per_epoch,
            f.max_steps,
            f.epochs
        ),
        (Some(64), Some(16), Some(20), Some(1.25))
    );
    assert_eq!(
        (f.save_every_steps, f.checkpoints_on_disk),
        (Some(5), Some(3))
    );
    // An untrained model is close to uniform over 64 tokens.
    let loss = f.first_loss.unwrap();
    assert!((loss - 64f64.ln()).abs() < 1.0, "first loss {loss}");
    assert!(f.step_time_s.unwrap() > 0.0 && f.failure.is_some());
    assert!(
        !dir.path().join("ck").exists(),
        "the write probe must clean up after itself"
    );
    assert!(
        r.render()
            .ends_with("ready: 11 passed, 0 warnings, 0 failed, 0 skipped\n"),
        "{}",
        r.render()
    );
}

#[test]
fn a_tokenizer_larger_than_the_model_and_out_of_range_data_fail() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(dir.path());
    let r = run(
        &yaml,
        &["model.vocab_size=40"],
        &PreflightOptions::default(),
    );
    assert_eq!(r.status(TOKENIZER), Some(Status::Fail));
    assert_eq!(r.status(TRAIN_DATA), Some(Status::Fail));
    assert!(
        r.checks[4].detail.contains("outside model.vocab_size 40"),
        "{}",
        r.checks[4].detail
    );
    assert_eq!(r.status(FORWARD_BACKWARD), Some(Status::Skip));
    assert!(!r.passed());
}

#[test]
fn too_little_data_fails_and_the_step_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(dir.path());
    let r = run(
        &yaml,
        &["global_train_batch_size=128"],
        &PreflightOptions::default(),
    );
    assert_eq!(r.status(TRAIN_DATA), Some(Status::Fail));
    assert_eq!(r.status(SAVE_FOLDER), Some(Status::Skip));
    assert_eq!(r.status(FORWARD_BACKWARD), Some(Status::Skip));
    assert_eq!(r.status(CHECKPOINT_INTERVAL), Some(Status::Skip));
    // Many epochs of a small dataset warn instead.
    let r = run(&yaml, &["max_duration=100ba"], &PreflightOptions::default());
    assert_eq!(
        r.status(TRAIN_DATA),
        Some(Status::Warn),
        "{:?}",
        r.checks[4]
    );
}

#[test]
fn memory_beyond_the_device_fails_and_slow_steps_warn_about_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(dir.path());
    let opts = PreflightOptions {
        device_memory: Some(64 << 10),
        step_time_s: Some(1000.0),
        run_step: false,
        ..Default::default()
    };
    let r = run(&yaml, &[], &opts);
    assert_eq!(r.status(MEMORY), Some(Status::Fail));
    assert_eq!(r.status(FORWARD_BACKWARD), Some(Status::Skip));
    // 5 steps of 1000 s between checkpoints is 1h 23m.
    assert_eq!(r.status(CHECKPOINT_INTERVAL), Some(Status::Warn));
    let r = run(
        &yaml,
        &["autoresume=false"],
        &PreflightOptions {
            run_step: false,
            ..Default::default()
        },
    );
    assert_eq!(r.status(AUTORESUME), Some(Status::Warn));
    assert_eq!(r.status(CHECKPOINT_INTERVAL), Some(Status::Skip));
}

#[test]
fn a_finetuning_run_is_checked_through_its_own_loader() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(dir.path());
    let rows = write_rows(dir.path(), &sample_rows(40, 3));
    let sets = [
        "train_loader.name=finetuning".to_string(),
        format!(
            "train_loader.dataset={{hf_name: {}, packing_ratio: 2, max_seq_len: 16}}",
            rows.display()
        ),
    ];
    let mut sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let r = run(&yaml, &sets, &PreflightOptions::default());
    assert_eq!(
        r.status(TRAIN_DATA),
        Some(Status::Warn),
        "{:?}",
        r.checks[4]
    );
    assert!(
        r.checks[4].detail.contains("attn_uses_sequence_id"),
        "{}",
        r.checks[4].detail
    );
    sets.push("model.attn_config={attn_uses_sequence_id: true}");
    let r = run(&yaml, &sets, &PreflightOptions::default());
    assert_eq!(
        r.status(TRAIN_DATA),
        Some(Status::Pass),
        "{:?}",
        r.checks[4]
    );
    assert_eq!(
        r.status(FORWARD_BACKWARD),
        Some(Status::Pass),
        "{:?}",
        r.checks[7]
    );
    // 40 examples, 8 per packing window: 5 windows of 4 sequences.
    assert_eq!(r.facts.sequences_per_epoch, Some(20));
}

#[test]
fn a_config_that_does_not_load_is_the_only_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        setup(dir.path()).replace("max_duration: 20ba", "max_duration: 20xx"),
    )
    .unwrap();
    let r = preflight_file::<B>(
        &path,
        &[],
        &PreflightOptions::default(),
        &Default::default(),
    );
    assert_eq!(r.checks[0].status, Status::Fail);
    assert!(
        r.checks[0].detail.contains("max_duration"),
        "{}",
        r.checks[0].detail
    );
    assert!(r.checks[1..].iter().all(|c| c.status == Status::Skip));
    assert_eq!(r.checks.len(), ORDER.len());
}

#[test]
fn a_launch_this_build_cannot_run_fails_parallelism_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = setup(dir.path());
    let opts = PreflightOptions {
        world_size: 4,
        nodes: 2,
        run_step: false,
        ..PreflightOptions::default()
    };
    let r = run(&yaml, &["fsdp_config={cpu_offload: true}"], &opts);
    assert_eq!(r.status(CONFIG), Some(Status::Pass));
    assert_eq!(r.status(PARALLELISM), Some(Status::Fail), "{}", r.render());
    assert!(r.checks[1].detail.contains("fsdp_config.cpu_offload"));
    assert!(r.checks[2..].iter().all(|c| c.status == Status::Skip));
    // The memory check follows fsdp_config: FULL_SHARD on 4 ranks predicts less than NO_SHARD.
    let opts = PreflightOptions {
        world_size: 4,
        ..opts
    };
    let memory = |strategy: &str| {
        let set = format!("fsdp_config={{sharding_strategy: {strategy}}}");
        run(&yaml, &[set.as_str()], &opts)
            .facts
            .memory_estimate_bytes
            .unwrap()
    };
    assert!(memory("FULL_SHARD") < memory("NO_SHARD"));
}
