//! The `tessera` command line, end to end: every command a user types first, and what bad input
//! gets back (one line naming the file or field, exit code 1 — or 2 for a training config that
//! cannot run, which launchers never retry — never a panic).

mod common;

use std::process::Output;

use common::{TempDir, run_ok, tessera};
use tessera_testkit::{read_npy_i64, repo_fixture};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a command that must fail cleanly and returns its stderr.
fn fails(args: &[&str]) -> String {
    fails_with(args, 1)
}

/// Runs a command that must fail cleanly with exit code `code` and returns its stderr.
fn fails_with(args: &[&str], code: i32) -> String {
    let out = tessera().args(args).output().expect("starting tessera");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?} should fail with exit code {code}:\n{err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: the error should be one line:\n{err}"
    );
    err
}

fn ids_arg(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn generate_prints_transformers_greedy_tokens_for_every_fixture() {
    for name in ["tiny_alibi_h4", "h6_ffn3", "clip_scale"] {
        let dir = repo_fixture(format!("mpt/{name}"));
        let (prompt, _) = read_npy_i64(dir.join("prompt_ids.npy"));
        let (expected, _) = read_npy_i64(dir.join("generated_ids.npy"));
        for cache in [true, false] {
            let mut cmd = tessera();
            cmd.arg("generate").arg("--model").arg(&dir).args([
                "--prompt-ids",
                &ids_arg(&prompt),
                "--max-new-tokens",
                "24",
                "--json",
            ]);
            if !cache {
                cmd.arg("--no-cache");
            }
            let out = run_ok(&mut cmd);
            let v: serde_json::Value =
                serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
            let got: Vec<i64> = v["generated_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            assert_eq!(got, expected, "{name} (cache: {cache})");
            let p: Vec<i64> = v["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            assert_eq!(p, prompt);
            assert!(v["text"].is_null(), "no tokenizer, so no text");
        }
    }
}

#[test]
fn inspect_prints_exact_parameter_counts() {
    let out = run_ok(tessera().args(["inspect", "--preset", "mpt-7b", "--json"]));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["n_params"], 6_649_286_656u64);
    let out = run_ok(tessera().args(["inspect", "--preset", "mpt-30b", "--json"]));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["n_params"], 29_957_200_896u64);
    let out = run_ok(
        tessera()
            .arg("inspect")
            .arg("--model")
            .arg(repo_fixture("mpt/tiny_alibi_h4")),
    );
    assert!(stdout(&out).contains("131392"), "{}", stdout(&out));
}

#[test]
fn bad_paths_and_configs_get_one_line_errors() {
    let err = fails(&[
        "generate",
        "--model",
        "/nonexistent/model",
        "--prompt-ids",
        "1,2",
    ]);
    assert!(err.contains("/nonexistent/model"), "{err}");
    let err = fails(&["inspect", "--model", "/nonexistent/model"]);
    assert!(err.contains("/nonexistent/model/config.json"), "{err}");
    let err = fails(&["train", "/nonexistent/train.yaml", "--gpu", "h900"]);
    assert!(
        err.contains("--gpu \"h900\"") && err.contains("h200"),
        "{err}"
    );
    let err = fails(&["parity", "--fixtures", "/nonexistent/fixtures"]);
    assert!(err.contains("/nonexistent/fixtures/mpt"), "{err}");

    let tmp = TempDir::new("cli-bad");
    let bad = tmp.path().join("model");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("config.json"),
        r#"{"d_model": 64, "n_heads": 5, "n_layers": 2, "vocab_size": 32, "max_seq_len": 16}"#,
    )
    .unwrap();
    let err = fails(&["inspect", "--model", bad.to_str().unwrap()]);
    assert!(
        err.contains("n_heads") || err.contains("d_model"),
        "the error should name the field: {err}"
    );

    std::fs::write(bad.join("config.json"), "{ not json").unwrap();
    let err = fails(&[
        "generate",
        "--model",
        bad.to_str().unwrap(),
        "--prompt-ids",
        "1",
    ]);
    assert!(err.contains("config.json"), "{err}");

    let fixture = repo_fixture("mpt/tiny_alibi_h4");
    let err = fails(&[
        "generate",
        "--model",
        fixture.to_str().unwrap(),
        "--prompt-ids",
        "1,99999",
    ]);
    assert!(err.contains("99999"), "{err}");
    // A malformed flag is a usage error: clap's exit code 2, naming the flag and the value.
    let out = tessera()
        .args(["--device", "tpu", "inspect", "--preset", "tiny"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--device") && err.contains("tpu") && !err.contains("panicked"),
        "{err}"
    );
    let err = fails_with(&["train", "/nonexistent/train.yaml"], 2);
    assert!(err.contains("/nonexistent/train.yaml"), "{err}");
}

#[test]
fn device_flag_names_the_missing_feature() {
    if cfg!(feature = "cuda") {
        return;
    }
    let err = fails(&[
        "--device",
        "cuda:0",
        "generate",
        "--model",
        "x",
        "--prompt-ids",
        "1",
    ]);
    assert!(err.contains("cuda") && err.contains("feature"), "{err}");
}

#[test]
fn plan_reproduces_the_seed_example() {
    let out = run_ok(tessera().args([
        "plan", "--params", "30e9", "--tokens", "600e9", "--gpu", "h100", "--gpus", "512", "--mfu",
        "0.4", "--price", "7",
    ]));
    let text = stdout(&out);
    let gpu_days: f64 = text
        .lines()
        .find(|l| l.trim_start().starts_with("GPU-days"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("a GPU-days line");
    // The seed: ~3,000 H100-days, ~$500k, within its stated 10–15%.
    assert!(
        (gpu_days / 3000.0 - 1.0).abs() < 0.15,
        "{gpu_days} GPU-days"
    );
    assert!(text.contains("Chinchilla"), "{text}");
}

#[test]
fn data_inspect_and_dump_read_streamings_shards() {
    let dir = repo_fixture("mds/tokens_ndarray_int32");
    let out = run_ok(tessera().args(["data", "inspect", "--json"]).arg(&dir));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["samples"], 120);
    assert_eq!(v["shards"], 5);
    let out = run_ok(
        tessera()
            .args(["data", "dump", "--range", "3..5"])
            .arg(&dir),
    );
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    // Closed form of the fixture: tokens_i = arange(7i, 7i + L_i), L_i = 5 + (37·i mod 91).
    let t3: Vec<i64> = lines[0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let len3 = 5 + (37 * 3) % 91;
    assert_eq!(t3, (21..21 + len3 as i64).collect::<Vec<_>>());
}

#[test]
fn code_execution_needs_the_explicit_flag() {
    let he = repo_fixture("humaneval");
    let err = fails(&[
        "eval",
        "code",
        "--problems",
        he.join("HumanEval.jsonl.gz").to_str().unwrap(),
        "--samples",
        he.join("samples_canonical.jsonl").to_str().unwrap(),
    ]);
    assert!(err.contains("--allow-code-execution"), "{err}");
}

/// A tiny random MPT (max_seq_len 48) with a word-level tokenizer (`w0`..`w39`), saved in `dir`.
fn tiny_word_model(dir: &std::path::Path) {
    use tessera::model::{MptConfig, hf};
    let mut cfg = MptConfig::preset("tiny").unwrap();
    cfg.vocab_size = 42;
    cfg.max_seq_len = 48;
    let model = cfg.init::<burn::backend::Flex>(&Default::default(), 1);
    hf::save(&model, &cfg, dir, hf::HfDtype::F32).unwrap();
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    vocab.insert("<unk>".into(), 1.into());
    for i in 0..40 {
        vocab.insert(format!("w{i}"), (i + 2).into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

#[test]
fn humaneval_left_truncates_a_prompt_longer_than_the_context_and_goes_on() {
    // Before: `prompt 0 has 61 tokens; the model's max_seq_len is 48` stopped the whole run.
    let tmp = TempDir::new("humaneval-long");
    let model = tmp.path().join("model");
    tiny_word_model(&model);
    let problem = |id: &str, prompt: String| {
        serde_json::json!({
            "task_id": id, "prompt": prompt, "canonical_solution": "",
            "test": "def f():\n    return None\n\ndef check(candidate):\n    assert candidate() is None\n",
            "entry_point": "f"
        })
    };
    let problems = tmp.path().join("problems.jsonl");
    std::fs::write(
        &problems,
        format!(
            "{}\n{}\n",
            problem("T/0", format!("# {}", "w1 ".repeat(60))),
            problem("T/1", "# w1 w2 ".into())
        ),
    )
    .unwrap();
    let out = run_ok(tessera().args([
        "eval",
        "humaneval",
        "--model",
        model.to_str().unwrap(),
        "--problems",
        problems.to_str().unwrap(),
        "--n",
        "1",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
        "--k",
        "1",
        "--allow-code-execution",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    // 61 tokens into 48 with 4 kept for the answer: 44 kept, 17 cut.
    assert!(
        err.contains("T/0: prompt left-truncated by 17 tokens"),
        "{err}"
    );
    assert!(!err.contains("T/1: prompt"), "{err}");
    // Both comment-line prompts pass whatever the model appends: 2 programs, pass@1 = 1.
    let text = stdout(&out);
    assert!(
        text.contains("2 samples over 2 problems: 2 passed"),
        "{text}"
    );
}

#[test]
fn convert_rewrites_a_checkpoint_that_still_generates_the_same() {
    let tmp = TempDir::new("convert");
    let src = repo_fixture("mpt/tiny_alibi_h4");
    let (prompt, _) = read_npy_i64(src.join("prompt_ids.npy"));
    let (expected, _) = read_npy_i64(src.join("generated_ids.npy"));
    for dtype in ["f32", "bf16"] {
        let out = tmp.path().join(dtype);
        run_ok(
            tessera()
                .args(["convert", "--dtype", dtype, "--model"])
                .arg(&src)
                .arg("--out")
                .arg(&out),
        );
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(
            cfg["torch_dtype"],
            if dtype == "f32" {
                "float32"
            } else {
                "bfloat16"
            }
        );
        let generated = run_ok(tessera().arg("generate").arg("--model").arg(&out).args([
            "--prompt-ids",
            &ids_arg(&prompt),
            "--max-new-tokens",
            "24",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(stdout(&generated).trim()).unwrap();
        let got: Vec<i64> = v["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        if dtype == "f32" {
            assert_eq!(got, expected, "an f32 conversion is lossless");
        } else {
            assert_eq!(got.len(), 24);
        }
    }
    let err = fails(&[
        "convert",
        "--model",
        src.to_str().unwrap(),
        "--out",
        src.to_str().unwrap(),
    ]);
    assert!(err.contains("--out"), "{err}");
}

#[test]
fn convert_merges_a_lora_adapter_into_a_folder_generate_loads() {
    use burn::backend::Flex;
    use burn::tensor::{Int, Tensor, TensorData};
    use tessera::model::lora::{self, Adapter, LoraConfig, LoraInit, TargetModule};
    use tessera::model::{MptInput, hf};

    let tmp = TempDir::new("merge-lora");
    let src = repo_fixture("mpt/tiny_alibi_h4");
    let dev = Default::default();
    let (config, base) = hf::load::<Flex>(&src, &dev).unwrap();
    let lora_config = LoraConfig {
        r: 4,
        lora_alpha: 16.0,
        target_modules: TargetModule::ALL.to_vec(),
        init_lora_weights: LoraInit::Random,
        ..Default::default()
    };
    let adapter = Adapter::<Flex>::init(&lora_config, &config, 7, &dev).unwrap();
    let adapter_dir = tmp.path().join("adapter");
    lora::peft::save(&adapter, &adapter_dir, Some(src.to_str().unwrap())).unwrap();
    let out = tmp.path().join("merged");
    let printed = run_ok(
        tessera()
            .args(["convert", "--dtype", "f32", "--model"])
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .arg("--merge-lora")
            .arg(&adapter_dir),
    );
    assert!(
        stdout(&printed).contains("LoRA adapter"),
        "{}",
        stdout(&printed)
    );

    // The merged folder computes what base + adapter compute.
    let (prompt, _) = read_npy_i64(src.join("prompt_ids.npy"));
    let n = prompt.len();
    let ids = || Tensor::<Flex, 2, Int>::from_data(TensorData::new(prompt.clone(), [1, n]), &dev);
    let adapted = base.clone().with_adapter(adapter).unwrap();
    let (_, merged) = hf::load::<Flex>(&out, &dev).unwrap();
    let a: Vec<f32> = adapted
        .forward(MptInput::new(ids()))
        .into_data()
        .to_vec()
        .unwrap();
    let m: Vec<f32> = merged
        .forward(MptInput::new(ids()))
        .into_data()
        .to_vec()
        .unwrap();
    let plain: Vec<f32> = base
        .forward(MptInput::new(ids()))
        .into_data()
        .to_vec()
        .unwrap();
    let diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    // Merged weights round differently (one f32 sum W + s B A): within 1e-5, or 1e-6 of the
    // largest logit (model/tests/lora.rs has the same rule).
    let scale = a.iter().fold(0f32, |s, v| s.max(v.abs()));
    assert!(
        diff(&a, &m) < 1e-5f32.max(1e-6 * scale),
        "adapted vs merged: {}",
        diff(&a, &m)
    );
    assert!(diff(&a, &plain) > 1e-2, "the adapter must change the model");

    // `tessera generate` loads it and decodes greedily what the library decodes from it.
    let generated = run_ok(tessera().arg("generate").arg("--model").arg(&out).args([
        "--prompt-ids",
        &ids_arg(&prompt),
        "--max-new-tokens",
        "12",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(stdout(&generated).trim()).unwrap();
    let got: Vec<u32> = v["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let cfg = tessera::model::GenerationConfig {
        max_new_tokens: 12,
        ..Default::default()
    };
    let prompt_u32: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let want = tessera::model::generate(&merged, &[prompt_u32], &cfg, None, &dev).unwrap();
    assert_eq!(got, want[0].ids);

    let err = fails(&[
        "convert",
        "--model",
        src.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
        "--merge-lora",
        tmp.path().join("missing").to_str().unwrap(),
    ]);
    assert!(err.contains("adapter_config.json"), "{err}");
}

#[test]
fn parity_passes_on_the_cpu_and_names_a_checkpoint_that_disagrees() {
    // Every fixture checkpoint within the model tests' tolerances, as JSON lines.
    let out = run_ok(
        tessera()
            .args(["parity", "--json", "--fixtures"])
            .arg(repo_fixture("")),
    );
    let reports: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(reports.len(), 3, "{reports:?}");
    for r in &reports {
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["logits_max_abs_diff"].as_f64().unwrap() <= 1e-4, "{r}");
        assert!(r["grad_max_rel_diff"].as_f64().unwrap() <= 1e-4, "{r}");
        assert_eq!(r["greedy_generation_equal"], true, "{r}");
    }

    // A reference loss moved by 0.01: the command fails and names that checkpoint.
    let tmp = TempDir::new("parity");
    let dst = tmp.path().join("mpt/tiny_alibi_h4");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(repo_fixture("mpt/tiny_alibi_h4")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dst.join(path.file_name().unwrap())).unwrap();
    }
    let index_path = dst.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["mean_loss"] = serde_json::json!(index["mean_loss"].as_f64().unwrap() + 0.01);
    std::fs::write(&index_path, index.to_string()).unwrap();
    let err = fails(&["parity", "--fixtures", tmp.path().to_str().unwrap()]);
    assert!(
        err.contains("outside tolerance") && err.contains("tiny_alibi_h4"),
        "{err}"
    );
}
