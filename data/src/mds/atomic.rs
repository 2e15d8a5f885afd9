//! Atomic file writes for datasets (through `tessera_fs`): a reader, or a crashed run's
//! successor, sees either the old file or the complete new one, never a prefix; that is what
//! lets `index.json` mark a dataset as complete.

use std::path::Path;

use super::error::{MdsError, Result};

pub use tessera_fs::is_temporary;

/// Writes `bytes` to `dir/name` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    tessera_fs::atomic_write(&path, bytes).map_err(|e| MdsError::io(&path, "writing", e))
}

/// fsyncs a folder so that renames and removals in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    tessera_fs::sync_dir(dir).map_err(|e| MdsError::io(dir, "syncing folder", e))
}
