//! The one error type of the MDS module.
//!
//! Every variant that comes from a file names that file (`path`), and where it can, the field or
//! sample and what was found versus expected, so a bad dataset is diagnosed from the message alone.

use std::path::PathBuf;

/// `Result` with [`MdsError`].
pub type Result<T, E = MdsError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or merging MDS datasets.
#[derive(Debug, thiserror::Error)]
pub enum MdsError {
    /// An I/O operation on `path` failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// What was being done ("reading", "renaming to index.json", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `index.json` is not valid JSON, or does not have the MDS v2 layout.
    #[error("{path}: {field}: found {found}, expected {expected}")]
    InvalidIndex {
        /// The file or folder at fault.
        path: PathBuf,
        /// JSON path of the offending field, e.g. `shards[3].column_sizes`.
        field: String,
        /// What was found instead.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// A column uses `pkl`, which runs arbitrary code when decoded; tessera never decodes it.
    #[error(
        "{path}: column `{column}` uses the unsafe encoding `{encoding}` (Python pickle); \
         tessera refuses it: re-write the column with `json`, `bytes` or `ndarray`"
    )]
    UnsafeEncoding {
        /// The file or folder at fault.
        path: PathBuf,
        /// The column concerned.
        column: String,
        /// The encoding as given.
        encoding: String,
    },

    /// A column's encoding string is not one mosaicml-streaming defines.
    #[error("{origin}: column `{column}`: unknown encoding `{encoding}` ({reason})")]
    UnknownEncoding {
        /// The index file, or `writer` for writer columns.
        origin: String,
        /// The column concerned.
        column: String,
        /// The encoding as given.
        encoding: String,
        /// Why it failed.
        reason: String,
    },

    /// A compression name (from an index or an option) is not one streaming defines.
    #[error("{origin}: unknown compression `{name}` (expected {expected})")]
    UnknownCompression {
        /// Where the value came from: a file, or a description of the caller.
        origin: String,
        /// The name as given.
        name: String,
        /// What was expected.
        expected: &'static str,
    },

    /// A hash name (from an index or an option) is not one tessera implements.
    #[error("{origin}: unknown hash `{name}` (expected one of {expected})")]
    UnknownHash {
        /// Where the value came from: a file, or a description of the caller.
        origin: String,
        /// The name as given.
        name: String,
        /// What was expected.
        expected: String,
    },

    /// A shard file does not have the size the index records.
    #[error("{path}: {what} is {found} bytes, the index says {expected}")]
    ShardSize {
        /// The file or folder at fault.
        path: PathBuf,
        /// What was being read, written or checked.
        what: &'static str,
        /// What was found instead.
        found: u64,
        /// What was expected.
        expected: u64,
    },

    /// A shard (or its compressed file) does not hash to the value the index records.
    #[error("{path}: {algo} of the {what} is {found}, the index says {expected}")]
    HashMismatch {
        /// The file or folder at fault.
        path: PathBuf,
        /// The hash algorithm.
        algo: String,
        /// `file` or `decompressed data`.
        what: &'static str,
        /// What was found instead.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// A shard's header or offset table is inconsistent (truncated, bit-flipped or not MDS).
    #[error("{path}: corrupt shard: {reason}")]
    CorruptShard {
        /// The file or folder at fault.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },

    /// A sample's bytes do not decode with its column encodings.
    #[error("{path}: sample {sample}{}: {reason}", column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
    CorruptSample {
        /// The file or folder at fault.
        path: PathBuf,
        /// The sample concerned.
        sample: usize,
        /// The column concerned.
        column: Option<String>,
        /// Why it failed.
        reason: String,
    },

    /// Decompressing a shard failed.
    #[error("{path}: {algo} decompression failed: {reason}")]
    Decompress {
        /// The file or folder at fault.
        path: PathBuf,
        /// The hash algorithm.
        algo: String,
        /// Why it failed.
        reason: String,
    },

    /// A sample index past the end of a shard or dataset.
    #[error("{origin}: sample {index} is out of range (there are {len} samples)")]
    SampleOutOfRange {
        /// Where the value came from: a file, or a description of the caller.
        origin: PathBuf,
        /// The position concerned.
        index: u64,
        /// The length found.
        len: u64,
    },

    /// A column that a sample, token spec or query needs is absent.
    #[error("{origin}: no column `{column}` (columns: {available})")]
    MissingColumn {
        /// Where the value came from: a file, or a description of the caller.
        origin: String,
        /// The column concerned.
        column: String,
        /// The columns there are.
        available: String,
    },

    /// A sample given to the writer has a column the writer was not created with.
    #[error(
        "writer: sample has column `{column}`, which is not one of the writer's columns ({available})"
    )]
    UnknownColumn {
        /// The column concerned.
        column: String,
        /// The columns there are.
        available: String,
    },

    /// A value cannot be encoded with its column's encoding.
    #[error("writer: column `{column}` ({encoding}): {reason}")]
    Encode {
        /// The column concerned.
        column: String,
        /// The encoding as given.
        encoding: String,
        /// Why it failed.
        reason: String,
    },

    /// The token column cannot be read as token ids.
    #[error("{path}: sample {sample}, column `{column}`: {reason}")]
    Tokens {
        /// The file or folder at fault.
        path: PathBuf,
        /// The sample concerned.
        sample: usize,
        /// The column concerned.
        column: String,
        /// Why it failed.
        reason: String,
    },

    /// A writer option is invalid.
    #[error("writer option `{option}`: found {found}, expected {expected}")]
    InvalidOption {
        /// The option at fault.
        option: &'static str,
        /// What was found instead.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// The writer's output folder already holds files and `overwrite` is off.
    #[error("{path}: folder is not empty (holds {example}); pass overwrite to replace the dataset")]
    DirNotEmpty {
        /// The file or folder at fault.
        path: PathBuf,
        /// One entry found in it.
        example: String,
    },

    /// A shard would not fit the format's u32 offsets.
    #[error(
        "{path}: shard would be {bytes} bytes, over the MDS limit of 4 GiB (u32 offsets); lower size_limit"
    )]
    ShardTooLarge {
        /// The file or folder at fault.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
    },

    /// Merging sub-dataset indexes failed.
    #[error("merge into {out}: {path}: {reason}")]
    Merge {
        /// The merged dataset folder.
        out: PathBuf,
        /// The file or folder at fault.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },

    /// A `--range` style sample range could not be parsed.
    #[error("sample range `{found}`: expected A..B, A.., ..B or a single index")]
    InvalidRange {
        /// What was found instead.
        found: String,
    },
}

impl MdsError {
    /// Shorthand for an [`MdsError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        MdsError::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// Shorthand for an [`MdsError::CorruptShard`].
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        MdsError::CorruptShard {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
