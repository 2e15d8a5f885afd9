//! The one error type of `prepare`: every variant names the file, line, field or setting at fault.

use std::path::PathBuf;

use crate::tokenizer::TokenizerError;

/// Errors from `prepare::run` and `prepare::merge`.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A setting is invalid.
    #[error("prepare config: {field}: {message}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// What went wrong.
        message: String,
    },
    /// An input file, glob or folder yields no file.
    #[error("--input {spec}: {why}")]
    NoInputs {
        /// The specification as given.
        spec: String,
        /// Why nothing matched.
        why: String,
    },
    /// An input's name says no format `prepare` reads.
    #[error("{path}: unsupported input (expected {expected})")]
    UnsupportedInput {
        /// The file or folder at fault.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A Parquet input cannot be read (or the `parquet` feature is off).
    #[error("{path}: parquet: {message}")]
    Parquet {
        /// The file or folder at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A line yields no document, with `strict` on.
    #[error("{path}:{line}: {reason} (bad lines are fatal with --strict)")]
    BadLine {
        /// The file or folder at fault.
        path: PathBuf,
        /// The line in the file.
        line: u64,
        /// Why it failed.
        reason: String,
    },
    /// The tokenizer failed on a document.
    #[error("{path}:{line}: cannot tokenize: {message}")]
    Encode {
        /// The file or folder at fault.
        path: PathBuf,
        /// The line in the file.
        line: u64,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer cannot be loaded.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The tokenizer has no end-of-text token and none was given.
    #[error(
        "{path}: tokenizer has no end-of-sequence token (<|endoftext|>, </s> or <eos>); pass eos_id"
    )]
    NoEos {
        /// The file or folder at fault.
        path: PathBuf,
    },
    /// `eos_id` or `bos_id` lies outside the vocabulary.
    #[error("{field} = {id} is outside the tokenizer's vocabulary of {vocab} ids")]
    TokenId {
        /// The field at fault.
        field: &'static str,
        /// The id concerned.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The output folder holds something a run must not overwrite.
    #[error("{path}: {message}")]
    OutDir {
        /// The file or folder at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A `prepare.json` cannot be read.
    #[error("{path}: invalid prepare report: {message}")]
    Report {
        /// The file or folder at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `merge` cannot join the slices.
    #[error("merge {path}: {message}")]
    Merge {
        /// The file or folder at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing the MDS shards failed.
    #[error("{path}: writing shards: {message}")]
    Mds {
        /// The file or folder at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The worker threads cannot be started.
    #[error("cannot start {workers} worker threads: {message}")]
    Workers {
        /// The worker count asked for.
        workers: usize,
        /// What went wrong.
        message: String,
    },
}

impl PrepareError {
    /// An `Io` error for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
