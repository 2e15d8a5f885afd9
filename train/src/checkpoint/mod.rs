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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: checksum mismatch for {file}: expected sha256 {expected}, found {found}")]
    Checksum {
        path: PathBuf,
        file: String,
        expected: String,
        found: String,
    },
    #[error("{path}: {file} has {found} bytes, the manifest says {expected}")]
    Size {
        path: PathBuf,
        file: String,
        expected: u64,
        found: u64,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("checkpoint writer thread failed: {0}")]
    Writer(String),
    #[error("remote checkpoint folder: {0}")]
    Remote(String),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
