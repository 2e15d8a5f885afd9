//! PEFT's own code on tessera's adapters, and tessera on PEFT's: transformers'
//! `MptForCausalLM` with `peft.PeftModel` (driven by `tests/python/peft_roundtrip.py`) must give
//! tessera's logits within 1e-4, adapted and merged, both ways.
//!
//! Ignored by default because they need Python packages; CI runs them with `--include-ignored`
//! after installing torch, transformers and peft into `$TESSERA_PYTHON`'s venv. When run, a
//! missing interpreter or package FAILS the test (it never passes vacuously).

mod common;

use std::path::Path;
use std::process::Command;

use burn::prelude::*;
use common::{B, dir, max_abs_diff, to_vec};
use tessera_model::hf;
use tessera_model::lora::{self, Adapter, LoraConfig, LoraInit, TargetModule, peft};
use tessera_model::{Mpt, MptInput};

const TOLERANCE: f32 = 1e-4;
const ROWS: [[i64; 12]; 2] = [
    [219, 482, 459, 7, 301, 88, 15, 400, 3, 77, 150, 9],
    [5, 6, 7, 8, 9, 10, 11, 12, 500, 400, 300, 200],
];

fn python() -> String {
    std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the round-trip script with `args`, failing the test with its output unless it exits 0.
fn run_script(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/peft_roundtrip.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}` (set TESSERA_PYTHON): {e}", python()));
    assert!(
        out.status.success(),
        "`{} {} {}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        python(),
        script.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ids_arg() -> String {
    ROWS.iter()
        .map(|r| r.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join(";")
}

fn logits(model: &Mpt<B>) -> Vec<f32> {
    let flat: Vec<i64> = ROWS.iter().flatten().copied().collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [2, 12]), &Default::default());
    to_vec(model.forward(MptInput::new(ids)))
}

fn npy(dir: &Path, name: &str) -> Vec<f32> {
    let (values, shape) = tessera_testkit::read_npy_f32(dir.join(name));
    assert_eq!(shape, vec![2, 12, 512], "{name}");
    values
}

#[test]
#[ignore = "needs Python with torch, transformers and peft"]
fn peft_loads_tessera_adapters_with_the_same_logits() {
    let base_dir = dir("tiny_alibi_h4");
    let dev = Default::default();
    let (config, base) = hf::load::<B>(&base_dir, &dev).unwrap();
    let lora_config = LoraConfig {
        r: 4,
        lora_alpha: 16.0,
        lora_dropout: 0.1,
        target_modules: vec![
            TargetModule::Wqkv,
            TargetModule::OutProj,
            TargetModule::UpProj,
            TargetModule::DownProj,
        ],
        use_rslora: false,
        init_lora_weights: LoraInit::Random,
    };
    let adapter = Adapter::<B>::init(&lora_config, &config, 17, &dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (adapter_dir, merged_dir) = (tmp.path().join("adapter"), tmp.path().join("merged"));
    peft::save(&adapter, &adapter_dir, Some(base_dir.to_str().unwrap())).unwrap();
    let merged = lora::merge(base.clone(), &adapter).unwrap();
    hf::save(&merged, &config, &merged_dir, hf::HfDtype::F32).unwrap();
    let ours = logits(&base.clone().with_adapter(adapter).unwrap());
    assert!(
        max_abs_diff(&ours, &logits(&base)) > 1e-2,
        "the adapter must change the logits"
    );

    run_script(&[
        "score",
        base_dir.to_str().unwrap(),
        adapter_dir.to_str().unwrap(),
        merged_dir.to_str().unwrap(),
        &ids_arg(),
        tmp.path().to_str().unwrap(),
    ]);
    let peft_diff = max_abs_diff(&ours, &npy(tmp.path(), "peft_logits.npy"));
    let merged_diff = max_abs_diff(&ours, &npy(tmp.path(), "merged_logits.npy"));
    eprintln!("max |Δlogit|: tessera vs PeftModel {peft_diff}, vs merged folder {merged_diff}");
    assert!(peft_diff < TOLERANCE, "tessera vs PeftModel: {peft_diff}");
    assert!(
        merged_diff < TOLERANCE,
        "tessera vs transformers on the merged folder: {merged_diff}"
    );
}

#[test]
#[ignore = "needs Python with torch, transformers and peft"]
fn tessera_loads_peft_adapters_with_the_same_logits() {
    let base_dir = dir("tiny_alibi_h4");
    let dev = Default::default();
    let (config, base) = hf::load::<B>(&base_dir, &dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("adapter");
    run_script(&[
        "make",
        base_dir.to_str().unwrap(),
        adapter_dir.to_str().unwrap(),
        &ids_arg(),
        tmp.path().to_str().unwrap(),
    ]);
    let adapter = peft::load::<B>(&adapter_dir, &config, &dev).unwrap();
    // What the script asked PEFT for: r 4, alpha 12, rslora, four targets.
    assert_eq!(adapter.config.r, 4);
    assert!(adapter.config.use_rslora);
    assert_eq!(adapter.config.scale(), 6.0);
    assert_eq!(adapter.layers().count(), 4 * config.n_layers);

    let merged = lora::merge(base.clone(), &adapter).unwrap();
    let adapted = logits(&base.clone().with_adapter(adapter).unwrap());
    assert!(
        max_abs_diff(&adapted, &logits(&base)) > 1e-2,
        "the adapter must change the logits"
    );
    let peft_logits = npy(tmp.path(), "peft_logits.npy");
    let diff = max_abs_diff(&adapted, &peft_logits);
    let merged_diff = max_abs_diff(&logits(&merged), &npy(tmp.path(), "merged_logits.npy"));
    eprintln!(
        "max |Δlogit|: tessera vs PeftModel {diff}, merged vs merge_and_unload {merged_diff}"
    );
    assert!(
        diff < TOLERANCE,
        "tessera with PEFT's adapter vs PeftModel: {diff}"
    );
    assert!(
        merged_diff < TOLERANCE,
        "merged: tessera vs merge_and_unload: {merged_diff}"
    );
}
