//! `tessera eval CONFIG` as a library call: an llm-foundry-shaped eval YAML over a saved tiny
//! checkpoint, with results written under the run's `eval/`.

mod icl_tiny;

use std::path::Path;

use burn::backend::Flex;
use icl_tiny::{model, tokenizer};
use tessera_eval::run::{EvalConfig, EvalError, run_config};
use tessera_model::hf::{HfDtype, save};

/// A run folder with a checkpoint (`runs/demo/checkpoints/ba5`), a data file and an eval YAML.
fn setup(dir: &Path, extra_yaml: &str) -> std::path::PathBuf {
    let m = model();
    let ckpt = dir.join("runs/demo/checkpoints/ba5");
    save(&m, m.config(), &ckpt, HfDtype::F32).unwrap();
    tokenizer().save(ckpt.join("tokenizer.json")).unwrap();
    let rows: Vec<String> = (0..6)
        .map(|i| serde_json::json!({"query": format!("w{i} w{}", i + 1), "choices": [format!("w{}", i + 2), format!("w{}", i + 9)], "gold": i % 2}).to_string())
        .collect();
    std::fs::write(dir.join("mc.jsonl"), rows.join("\n")).unwrap();
    let yaml = format!(
        "variables:\n  seq: 64\nmax_seq_len: ${{variables.seq}}\ndevice_eval_batch_size: 3\nprecision: amp_bf16\nfsdp_config: {{sharding_strategy: FULL_SHARD}}\n\
         models:\n- model_name: demo\n  load_path: runs/demo/checkpoints/ba5\n  model: {{name: mpt_causal_lm}}\n\
         icl_tasks:\n- label: mc\n  dataset_uri: mc.jsonl\n  num_fewshot: [0, 1]\n  icl_task_type: multiple_choice\n\
         eval_gauntlet:\n  weighting: SAMPLE_SZ\n  categories:\n  - name: cr\n    benchmarks:\n    - {{name: mc, num_fewshot: 1, random_baseline: 0.5}}\n{extra_yaml}"
    );
    let cfg = dir.join("eval.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

#[test]
fn eval_config_runs_and_writes_under_the_runs_eval_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = setup(dir.path(), "");
    let cfg = EvalConfig::from_file(&cfg_path).unwrap();
    assert_eq!(cfg.max_seq_len, 64);
    assert_eq!(
        cfg.models[0].load_path,
        dir.path().join("runs/demo/checkpoints/ba5")
    );
    assert_eq!(
        cfg.default_output_dir(&cfg.models[0]),
        dir.path().join("runs/demo/eval")
    );
    assert!(
        cfg.notes.iter().any(|n| n.contains("fsdp_config")),
        "{:?}",
        cfg.notes
    );

    let mut log = Vec::new();
    let out =
        run_config::<Flex>(&cfg, None, &Default::default(), |m| log.push(m.to_string())).unwrap();
    let report = &out[0].report;
    assert_eq!(report.tasks.len(), 2);
    assert_eq!(report.tasks[0].n_examples, 6);
    let g = report.gauntlet.as_ref().unwrap();
    assert!(
        (g.categories[0].score.unwrap() - (report.tasks[1].accuracy - 0.5) / 0.5).abs() < 1e-12
    );
    let eval_dir = dir.path().join("runs/demo/eval");
    for f in ["results.json", "results.md", "examples.jsonl"] {
        assert!(eval_dir.join(f).is_file(), "{f} missing");
    }
    assert!(log.iter().any(|l| l.contains("results.md")), "{log:?}");
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = |yaml: &str| -> String {
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, yaml).unwrap();
        EvalConfig::from_file(&p).unwrap_err().to_string()
    };
    let models = "models:\n- {model_name: m, load_path: x}\n";
    assert!(bad(&format!("{models}device_eval_batch_size: 2\n")).contains("max_seq_len"));
    let e = bad(&format!(
        "{models}max_seq_len: 8\ndevice_eval_batch_size: 2\neval_batch: 3\n"
    ));
    assert!(e.contains("`eval_batch`"), "{e}");
    let e = bad(&format!(
        "{models}max_seq_len: 8\ndevice_eval_batch_size: 2\neval_loader: {{name: text}}\n"
    ));
    assert!(e.contains("eval_loader"), "{e}");
    let e = bad(
        "models:\n- {model_name: m, load_path: x, peft: 1}\nmax_seq_len: 8\ndevice_eval_batch_size: 2\n",
    );
    assert!(e.contains("`peft`") && e.contains("models[0]"), "{e}");
}

#[test]
fn code_eval_refuses_to_run_code_without_the_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("problems.jsonl");
    std::fs::write(
        &problems,
        "{\"task_id\": \"T/0\", \"prompt\": \"w1 w2\", \"canonical_solution\": \"\", \"test\": \"\", \"entry_point\": \"f\"}\n",
    )
    .unwrap();
    let cfg_path = setup(
        dir.path(),
        "code_eval:\n  problems: problems.jsonl\n  n: 1\n  max_new_tokens: 4\n",
    );
    let cfg = EvalConfig::from_file(&cfg_path).unwrap();
    let err = run_config::<Flex>(
        &cfg,
        Some(&dir.path().join("out")),
        &Default::default(),
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, EvalError::Code(_)), "{err}");
    assert!(err.to_string().contains("--allow-code-execution"), "{err}");
    assert!(
        !dir.path().join("out/results.json").exists(),
        "nothing is reported for a refused run"
    );
}

#[test]
fn code_eval_generates_runs_in_the_sandbox_and_reports_pass_at_k() {
    let dir = tempfile::tempdir().unwrap();
    // The prompt is a comment line, so whatever words the model appends stay inside it and the
    // test passes: pass@1 must come out as 1.0 through generation, sandbox and report.
    let problem = serde_json::json!({
        "task_id": "T/0", "prompt": "# w1 w2 ", "canonical_solution": "",
        "test": "def f():\n    return None\n\ndef check(candidate):\n    assert candidate() is None\n",
        "entry_point": "f"
    });
    std::fs::write(dir.path().join("problems.jsonl"), format!("{problem}\n")).unwrap();
    let cfg_path = setup(
        dir.path(),
        "code_eval:\n  problems: problems.jsonl\n  n: 2\n  k: [1, 2]\n  max_new_tokens: 4\n  allow_code_execution: true\n",
    );
    let cfg = EvalConfig::from_file(&cfg_path).unwrap();
    let out = dir.path().join("out");
    let outcome = run_config::<Flex>(&cfg, Some(&out), &Default::default(), |_| {}).unwrap();
    let code = outcome[0].report.code.as_ref().expect("code eval ran");
    assert_eq!(code["pass_at_k"]["pass@1"], 1.0, "{code}");
    assert_eq!(code["programs"], 2);
    let results =
        std::fs::read_to_string(out.join("humaneval_samples.jsonl_results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 2);
    assert!(results.contains("\"passed\": true"), "{results}");
    assert!(
        std::fs::read_to_string(out.join("results.md"))
            .unwrap()
            .contains("Code evaluation")
    );
}

#[test]
fn code_eval_left_truncates_a_prompt_longer_than_the_context_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // T/0's prompt is 121 tokens, longer than the model's max_seq_len of 96 (this stopped the
    // whole evaluation before); T/1's fits. Both are comment lines, so both programs pass.
    let long = format!("# {}", "w1 ".repeat(120));
    let problem = |id: &str, prompt: &str| {
        serde_json::json!({
            "task_id": id, "prompt": prompt, "canonical_solution": "",
            "test": "def f():\n    return None\n\ndef check(candidate):\n    assert candidate() is None\n",
            "entry_point": "f"
        })
    };
    std::fs::write(
        dir.path().join("problems.jsonl"),
        format!(
            "{}\n{}\n",
            problem("T/0", &long),
            problem("T/1", "# w1 w2 ")
        ),
    )
    .unwrap();
    let cfg_path = setup(
        dir.path(),
        "code_eval:\n  problems: problems.jsonl\n  n: 1\n  k: [1]\n  max_new_tokens: 4\n  allow_code_execution: true\n",
    );
    let cfg = EvalConfig::from_file(&cfg_path).unwrap();
    let out = dir.path().join("out");
    let outcome = run_config::<Flex>(&cfg, Some(&out), &Default::default(), |_| {}).unwrap();
    let code = outcome[0].report.code.as_ref().expect("code eval ran");
    assert_eq!(code["programs"], 2, "{code}");
    assert_eq!(code["pass_at_k"]["pass@1"], 1.0, "{code}");
    // 121 tokens into 96 with 4 kept for the answer: 92 kept, 29 cut.
    assert_eq!(
        code["truncated_prompts"],
        serde_json::json!([{"task_id": "T/0", "tokens_cut": 29}]),
        "{code}"
    );
}
