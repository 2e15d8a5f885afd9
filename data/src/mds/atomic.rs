//! Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.
//!
//! A reader (or a crashed run's successor) therefore sees either the old file or the complete
//! new one, never a prefix; that is what lets `index.json` mark a dataset as complete.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::error::{MdsError, Result};

/// The prefix of temp files, so an interrupted run's leftovers are recognisable.
pub const TEMP_PREFIX: &str = ".tessera-tmp-";

/// Writes `bytes` to `dir/name` atomically.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let final_path = dir.join(name);
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        name.replace('/', "_")
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| MdsError::io(&tmp, "creating", e))?;
        f.write_all(bytes)
            .map_err(|e| MdsError::io(&tmp, "writing", e))?;
        f.sync_all().map_err(|e| MdsError::io(&tmp, "syncing", e))?;
        drop(f);
        fs::rename(&tmp, &final_path)
            .map_err(|e| MdsError::io(&final_path, "renaming into place", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// fsyncs a folder so that renames into it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    // Opening a directory for sync works on Unix; elsewhere this is best-effort.
    match fs::File::open(dir) {
        Ok(d) => {
            #[cfg(unix)]
            d.sync_all()
                .map_err(|e| MdsError::io(dir, "syncing folder", e))?;
            #[cfg(not(unix))]
            drop(d);
            Ok(())
        }
        Err(e) => Err(MdsError::io(dir, "opening folder to sync", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "a.json", b"one").unwrap();
        write_atomic(dir.path(), "a.json", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }
}
