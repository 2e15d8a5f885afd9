//! Checkpoints: atomic, checksummed directories, a `latest` pointer, pruning, crash recovery
//! and autoresume.
//!
//! Layout under the save folder (see ARCHITECTURE.md, "Checkpoints are directories"):
//!
//! ```text
//! checkpoints/
//!   ba100/  model.safetensors  config.json  optim.burn  state.json  manifest.json
//!   ba200/  …
//!   latest  -> a small file holding "ba200"
//! ```
//!
//! A save is staged in a hidden folder, every file fsynced, `manifest.json` (sha256 and size of
//! every other file) written last, then the folder is renamed into place (an older folder of the
//! same step is moved aside first and deleted after) and `latest` is swapped by an atomic write.
//! A crash at any point leaves the previous state or the new one, never a half-written
//! checkpoint under a real name, and never loses a published one ([`store`] says how, and
//! `train/tests/checkpoint_crash.rs` kills a writer inside each window to prove it). Loading
//! verifies the manifest and falls back to the previous checkpoint when one is corrupt.

mod async_writer;
mod manifest;
mod remote;
pub mod sharded;
pub mod store;

pub use async_writer::AsyncCheckpointer;
pub use manifest::{MANIFEST_FILE, Manifest, ManifestEntry};
pub use remote::RemoteCheckpoints;
pub use store::{
    CheckpointStore, Failpoint, Payload, Recovered, Rejected, Resumable, STATE_FILE, SaveWindow,
    Staging,
};

use std::path::PathBuf;

/// Errors from writing, verifying or loading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or folder could not be read, written, renamed or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file (manifest, shard metadata…) could not be encoded or decoded.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A file's sha256 does not match its manifest entry.
    #[error("{path}: checksum mismatch for {file}: expected sha256 {expected}, found {found}")]
    Checksum {
        /// The checkpoint folder.
        path: PathBuf,
        /// The file, relative to the folder.
        file: String,
        /// The sha256 the manifest records (hex).
        expected: String,
        /// The sha256 of the file on disk (hex).
        found: String,
    },
    /// A file's size does not match its manifest entry.
    #[error("{path}: {file} has {found} bytes, the manifest says {expected}")]
    Size {
        /// The checkpoint folder.
        path: PathBuf,
        /// The file, relative to the folder.
        file: String,
        /// The size the manifest records, in bytes.
        expected: u64,
        /// The size on disk, in bytes.
        found: u64,
    },
    /// A checkpoint (or a file or name in it) is malformed.
    #[error("{path}: {what}")]
    Invalid {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The background writer thread could not be started or panicked.
    #[error("checkpoint writer thread failed: {0}")]
    Writer(String),
    /// The remote checkpoint folder could not be listed, read or written.
    #[error("remote checkpoint folder: {0}")]
    Remote(String),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
