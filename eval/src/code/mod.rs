#![doc = include_str!("README.md")]

mod bench;
mod cli;
mod error;
mod evaluate;
pub mod humaneval;
mod pass_at_k;
mod problems;
mod results;
pub mod sandbox;

pub use bench::{BenchOptions, CodeEvalBench, ReferenceTiming, bench_code_eval};
pub use cli::{EvalCodeArgs, EvalCodeSummary, eval_code};
pub use error::CodeError;
pub use evaluate::{
    EvalOptions, Evaluation, SampleResult, evaluate_samples, evaluate_samples_in, parse_ks,
};
pub use pass_at_k::{mean_pass_at_k, pass_at_k};
pub use problems::{Problem, Problems, Sample, read_samples};
pub use results::{py_json_string, result_line, results_path, write_results};
pub use sandbox::{
    AllowCodeExecution, CODE_EXECUTION_REFUSED, Isolation, IsolationReport, Layer, Outcome,
    Sandbox, SandboxConfig, SandboxError, Status,
};
