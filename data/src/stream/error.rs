//! The one error type of `tessera_data::stream`.

use std::path::PathBuf;

/// Everything that can go wrong while planning or streaming an epoch. Variants carry the
/// offending value and what was expected, plus the path or URL where one is involved.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A configuration value is out of range or inconsistent with another one.
    #[error("invalid stream config `{field}`: found {found}, expected {expected}")]
    Config {
        /// The field at fault.
        field: String,
        /// What was found instead.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// py1e/py1br draw a block size in `[0.75·b, 1.25·b)`; that range is empty for tiny `b`.
    #[error(
        "shuffle_block_size {block_size} is too small for {algo}: it needs \
         int(0.75·b) < int(1.25·b) (and int(0.75·b) > 0 for py1br)"
    )]
    BlockSize {
        /// The hash algorithm.
        algo: &'static str,
        /// The block size as given.
        block_size: u64,
    },

    /// A canonical node would get no samples (streaming raises the same way in py1e).
    #[error(
        "canonical node {node} of {num_canonical_nodes} gets no samples (the epoch has \
         {num_samples}); reduce num_canonical_nodes"
    )]
    EmptyCanonicalNode {
        /// The canonical node.
        node: u64,
        /// Canonical nodes.
        num_canonical_nodes: u64,
        /// Samples in the epoch.
        num_samples: u64,
    },

    /// Canonical and physical node counts must divide one another (streaming's `orig` rule).
    #[error(
        "num_canonical_nodes {num_canonical_nodes} and physical nodes {num_physical_nodes} \
         must divide one another (otherwise every node downloads every shard)"
    )]
    NodesNotDivisible {
        /// Canonical nodes.
        num_canonical_nodes: u64,
        /// Physical nodes.
        num_physical_nodes: u64,
    },

    /// The epoch is too small to fill the padding streaming's partition needs.
    #[error("cannot partition {num_samples} samples: {reason}")]
    Partition {
        /// Samples in the epoch.
        num_samples: u64,
        /// Why it failed.
        reason: String,
    },

    /// A resume point lies beyond the end of the epoch.
    #[error("resume point sample_in_epoch {sample_in_epoch} is past the epoch size {epoch_size}")]
    ResumePastEpoch {
        /// The resume point.
        sample_in_epoch: u64,
        /// Samples in the epoch.
        epoch_size: u64,
    },

    /// A saved state does not belong to this dataset configuration.
    #[error("resume state `{field}` is {found}, but this dataset has {expected}")]
    StateMismatch {
        /// The field at fault.
        field: &'static str,
        /// What was found instead.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// A stream's index lists no samples.
    #[error("stream {stream} ({location}) contains no samples")]
    EmptyStream {
        /// The stream's position in the config.
        stream: usize,
        /// The location as given.
        location: String,
    },

    /// A stream location could not be understood.
    #[error("stream location {location:?}: {reason}")]
    Location {
        /// The location as given.
        location: String,
        /// Why it failed.
        reason: String,
    },

    /// Local file-system trouble.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Remote store trouble (after the retries were spent).
    #[cfg(feature = "remote")]
    #[error("fetching {url}: {source}")]
    Remote {
        /// The URL concerned.
        url: String,
        /// The underlying error.
        source: object_store::Error,
    },

    /// A downloaded or cached shard does not match the hash in `index.json`.
    #[error("{}: {algo} is {found}, index.json says {expected}", path.display())]
    HashMismatch {
        /// The file or folder at fault.
        path: PathBuf,
        /// The hash algorithm.
        algo: String,
        /// What was found instead.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// A downloaded or cached file has the wrong length.
    #[error("{}: {found} bytes, index.json says {expected}", path.display())]
    SizeMismatch {
        /// The file or folder at fault.
        path: PathBuf,
        /// What was found instead.
        found: u64,
        /// What was expected.
        expected: u64,
    },

    /// The shard could not be parsed or a sample not decoded.
    #[error(transparent)]
    Mds(#[from] crate::mds::MdsError),

    /// A sample's token column could not be turned into token ids.
    #[error("sample {sample} of {}: {reason}", path.display())]
    Tokens {
        /// The file or folder at fault.
        path: PathBuf,
        /// The sample concerned.
        sample: u64,
        /// Why it failed.
        reason: String,
    },

    /// The cache limit cannot hold what one step needs.
    #[error("cache limit {limit} bytes is too low: {reason}")]
    CacheLimit {
        /// The cache limit, in bytes.
        limit: u64,
        /// Why it failed.
        reason: String,
    },

    /// A background download thread failed or vanished.
    #[error("background prefetch failed: {0}")]
    Prefetch(String),
}

/// Shorthand for this module's results.
pub type Result<T, E = StreamError> = std::result::Result<T, E>;

/// Attach a path to an `std::io::Error`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StreamError {
    let path = path.into();
    move |source| StreamError::Io { path, source }
}
