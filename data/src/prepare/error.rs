//! The one error type of `prepare`: every variant names the file, line, field or setting at fault.

use std::path::PathBuf;

use crate::tokenizer::TokenizerError;

/// Errors from `prepare::run` and `prepare::merge`.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("prepare config: {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("--input {spec}: {why}")]
    NoInputs { spec: String, why: String },
    #[error("{path}: unsupported input (expected {expected})")]
    UnsupportedInput {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}:{line}: {reason} (bad lines are fatal with --strict)")]
    BadLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{path}:{line}: cannot tokenize: {message}")]
    Encode {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(
        "{path}: tokenizer has no end-of-sequence token (<|endoftext|>, </s> or <eos>); pass eos_id"
    )]
    NoEos { path: PathBuf },
    #[error("{field} = {id} is outside the tokenizer's vocabulary of {vocab} ids")]
    TokenId {
        field: &'static str,
        id: u32,
        vocab: usize,
    },
    #[error("{path}: {message}")]
    OutDir { path: PathBuf, message: String },
    #[error("{path}: invalid prepare report: {message}")]
    Report { path: PathBuf, message: String },
    #[error("merge {path}: {message}")]
    Merge { path: PathBuf, message: String },
    #[error("{path}: writing shards: {message}")]
    Mds { path: PathBuf, message: String },
    #[error("cannot start {workers} worker threads: {message}")]
    Workers { workers: usize, message: String },
}

impl PrepareError {
    /// An `Io` error for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
