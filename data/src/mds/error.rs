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
        path: PathBuf,
        /// What was being done ("reading", "renaming to index.json", ...).
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// `index.json` is not valid JSON, or does not have the MDS v2 layout.
    #[error("{path}: {field}: found {found}, expected {expected}")]
    InvalidIndex {
        path: PathBuf,
        /// JSON path of the offending field, e.g. `shards[3].column_sizes`.
        field: String,
        found: String,
        expected: String,
    },

    /// A column uses `pkl`, which runs arbitrary code when decoded; tessera never decodes it.
    #[error(
        "{path}: column `{column}` uses the unsafe encoding `{encoding}` (Python pickle); \
         tessera refuses it: re-write the column with `json`, `bytes` or `ndarray`"
    )]
    UnsafeEncoding {
        path: PathBuf,
        column: String,
        encoding: String,
    },

    /// A column's encoding string is not one mosaicml-streaming defines.
    #[error("{origin}: column `{column}`: unknown encoding `{encoding}` ({reason})")]
    UnknownEncoding {
        /// The index file, or `writer` for writer columns.
        origin: String,
        column: String,
        encoding: String,
        reason: String,
    },

    /// A compression name (from an index or an option) is not one streaming defines.
    #[error("{origin}: unknown compression `{name}` (expected {expected})")]
    UnknownCompression {
        origin: String,
        name: String,
        expected: &'static str,
    },

    /// A hash name (from an index or an option) is not one tessera implements.
    #[error("{origin}: unknown hash `{name}` (expected one of {expected})")]
    UnknownHash {
        origin: String,
        name: String,
        expected: String,
    },

    /// A shard file does not have the size the index records.
    #[error("{path}: {what} is {found} bytes, the index says {expected}")]
    ShardSize {
        path: PathBuf,
        what: &'static str,
        found: u64,
        expected: u64,
    },

    /// A shard (or its compressed file) does not hash to the value the index records.
    #[error("{path}: {algo} of the {what} is {found}, the index says {expected}")]
    HashMismatch {
        path: PathBuf,
        algo: String,
        /// `file` or `decompressed data`.
        what: &'static str,
        found: String,
        expected: String,
    },

    /// A shard's header or offset table is inconsistent (truncated, bit-flipped or not MDS).
    #[error("{path}: corrupt shard: {reason}")]
    CorruptShard { path: PathBuf, reason: String },

    /// A sample's bytes do not decode with its column encodings.
    #[error("{path}: sample {sample}{}: {reason}", column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
    CorruptSample {
        path: PathBuf,
        sample: usize,
        column: Option<String>,
        reason: String,
    },

    /// Decompressing a shard failed.
    #[error("{path}: {algo} decompression failed: {reason}")]
    Decompress {
        path: PathBuf,
        algo: String,
        reason: String,
    },

    /// A sample index past the end of a shard or dataset.
    #[error("{origin}: sample {index} is out of range (there are {len} samples)")]
    SampleOutOfRange {
        origin: PathBuf,
        index: u64,
        len: u64,
    },

    /// A column that a sample, token spec or query needs is absent.
    #[error("{origin}: no column `{column}` (columns: {available})")]
    MissingColumn {
        origin: String,
        column: String,
        available: String,
    },

    /// A sample given to the writer has a column the writer was not created with.
    #[error(
        "writer: sample has column `{column}`, which is not one of the writer's columns ({available})"
    )]
    UnknownColumn { column: String, available: String },

    /// A value cannot be encoded with its column's encoding.
    #[error("writer: column `{column}` ({encoding}): {reason}")]
    Encode {
        column: String,
        encoding: String,
        reason: String,
    },

    /// The token column cannot be read as token ids.
    #[error("{path}: sample {sample}, column `{column}`: {reason}")]
    Tokens {
        path: PathBuf,
        sample: usize,
        column: String,
        reason: String,
    },

    /// A writer option is invalid.
    #[error("writer option `{option}`: found {found}, expected {expected}")]
    InvalidOption {
        option: &'static str,
        found: String,
        expected: String,
    },

    /// The writer's output folder already holds files and `overwrite` is off.
    #[error("{path}: folder is not empty (holds {example}); pass overwrite to replace the dataset")]
    DirNotEmpty { path: PathBuf, example: String },

    /// A shard would not fit the format's u32 offsets.
    #[error(
        "{path}: shard would be {bytes} bytes, over the MDS limit of 4 GiB (u32 offsets); lower size_limit"
    )]
    ShardTooLarge { path: PathBuf, bytes: u64 },

    /// Merging sub-dataset indexes failed.
    #[error("merge into {out}: {path}: {reason}")]
    Merge {
        out: PathBuf,
        path: PathBuf,
        reason: String,
    },

    /// A `--range` style sample range could not be parsed.
    #[error("sample range `{found}`: expected A..B, A.., ..B or a single index")]
    InvalidRange { found: String },
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
