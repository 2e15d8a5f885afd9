//! The checkpoint folder: atomic writes, the `latest` pointer, pruning and autoresume.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{CheckpointError, MANIFEST_FILE, Manifest};

/// The training state file inside a checkpoint (its schema belongs to the trainer).
pub const STATE_FILE: &str = "state.json";
const LATEST_FILE: &str = "latest";

/// Everything one checkpoint holds, already on the host: file name → bytes. The trainer fills it
/// (`model.safetensors`, `optim.safetensors`, `state.json`); the manifest is added here.
#[derive(Debug, Clone)]
pub struct Payload {
    pub step: u64,
    pub files: Vec<(String, Vec<u8>)>,
}

/// A checkpoint that failed verification: where it is, and why.
pub type Rejected<Where> = (Where, CheckpointError);

/// A checkpoint that verified and can be resumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumable {
    pub step: u64,
    pub dir: PathBuf,
}

/// A folder of `ba{step}` checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
    /// Keep at most this many checkpoints (oldest pruned first); `None` keeps all.
    keep: Option<usize>,
}

impl CheckpointStore {
    pub fn new(root: impl Into<PathBuf>, keep: Option<usize>) -> Self {
        Self {
            root: root.into(),
            keep,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder name of the checkpoint at `step`.
    pub fn name(step: u64) -> String {
        format!("ba{step}")
    }

    /// Writes `payload` atomically as `ba{step}/`, swaps `latest`, then prunes. Returns the folder.
    pub fn write(&self, payload: &Payload) -> Result<PathBuf, CheckpointError> {
        std::fs::create_dir_all(&self.root).map_err(CheckpointError::io(&self.root))?;
        let name = Self::name(payload.step);
        let tmp = self
            .root
            .join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(CheckpointError::io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(CheckpointError::io(&tmp))?;
        for (file, bytes) in &payload.files {
            if file == MANIFEST_FILE || file.contains('/') {
                return Err(CheckpointError::Invalid {
                    path: tmp.join(file),
                    what: "not a valid payload file name".into(),
                });
            }
            write_synced(&tmp.join(file), bytes)?;
        }
        let manifest =
            serde_json::to_vec_pretty(&Manifest::of(&payload.files)).map_err(|source| {
                CheckpointError::Json {
                    path: tmp.join(MANIFEST_FILE),
                    source,
                }
            })?;
        write_synced(&tmp.join(MANIFEST_FILE), &manifest)?;
        sync_dir(&tmp)?;

        let dest = self.root.join(&name);
        if dest.exists() {
            // A checkpoint of the same step exists (typically a corrupt one a resume skipped):
            // move it aside first so the rename below stays atomic.
            let trash = self
                .root
                .join(format!(".trash-{name}-{}", std::process::id()));
            std::fs::rename(&dest, &trash).map_err(CheckpointError::io(&dest))?;
            std::fs::remove_dir_all(&trash).map_err(CheckpointError::io(&trash))?;
        }
        std::fs::rename(&tmp, &dest).map_err(CheckpointError::io(&dest))?;
        sync_dir(&self.root)?;

        let latest_tmp = self
            .root
            .join(format!(".{LATEST_FILE}.tmp{}", std::process::id()));
        write_synced(&latest_tmp, format!("{name}\n").as_bytes())?;
        std::fs::rename(&latest_tmp, self.root.join(LATEST_FILE))
            .map_err(CheckpointError::io(&self.root))?;
        sync_dir(&self.root)?;

        self.prune()?;
        Ok(dest)
    }

    /// All `ba{step}` folders, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CheckpointError::Io {
                    path: self.root.clone(),
                    source: e,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(CheckpointError::io(&self.root))?;
            let name = entry.file_name();
            let Some(step) = name
                .to_str()
                .and_then(|n| n.strip_prefix("ba"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if entry.path().is_dir() {
                out.push((step, entry.path()));
            }
        }
        out.sort_by_key(|(s, _)| *s);
        Ok(out)
    }

    /// The step `latest` points at, if the pointer exists and is well formed.
    pub fn latest_pointer(&self) -> Option<String> {
        std::fs::read_to_string(self.root.join(LATEST_FILE))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The newest checkpoint whose manifest verifies, plus every newer one that did not (with
    /// why), newest first. Autoresume resumes from the first and logs the others as incidents.
    pub fn newest_verified(
        &self,
    ) -> Result<(Option<Resumable>, Vec<Rejected<PathBuf>>), CheckpointError> {
        let mut corrupt = Vec::new();
        for (step, dir) in self.list()?.into_iter().rev() {
            match Manifest::read(&dir).and_then(|m| m.verify(&dir)) {
                Ok(()) => return Ok((Some(Resumable { step, dir }), corrupt)),
                Err(e) => corrupt.push((dir, e)),
            }
        }
        Ok((None, corrupt))
    }

    /// Removes the oldest checkpoints beyond `keep`, and stale temporary folders of crashed writes.
    pub fn prune(&self) -> Result<(), CheckpointError> {
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let stale = (name.starts_with(".tmp-ba") || name.starts_with(".trash-ba"))
                    && !name.ends_with(&format!("-{}", std::process::id()));
                if stale {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let Some(keep) = self.keep else { return Ok(()) };
        let all = self.list()?;
        let excess = all.len().saturating_sub(keep.max(1));
        for (_, dir) in all.into_iter().take(excess) {
            std::fs::remove_dir_all(&dir).map_err(CheckpointError::io(&dir))?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` and fsyncs the file.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = std::fs::File::create(path).map_err(CheckpointError::io(path))?;
    f.write_all(bytes).map_err(CheckpointError::io(path))?;
    f.sync_all().map_err(CheckpointError::io(path))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CheckpointError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(step: u64, fill: u8) -> Payload {
        Payload {
            step,
            files: vec![
                ("model.safetensors".into(), vec![fill; 64]),
                (
                    STATE_FILE.into(),
                    format!("{{\"step\":{step}}}").into_bytes(),
                ),
            ],
        }
    }

    #[test]
    fn write_is_verified_and_latest_points_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("ck"), None);
        let p = store.write(&payload(10, 1)).unwrap();
        assert_eq!(p, dir.path().join("ck/ba10"));
        assert_eq!(store.latest_pointer().as_deref(), Some("ba10"));
        let (res, corrupt) = store.newest_verified().unwrap();
        assert_eq!(res.unwrap().step, 10);
        assert!(corrupt.is_empty());
        // No temporary folders are left behind.
        let names: Vec<_> = std::fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn corrupt_newest_checkpoint_is_named_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), None);
        store.write(&payload(10, 1)).unwrap();
        let newest = store.write(&payload(20, 2)).unwrap();
        std::fs::write(newest.join("model.safetensors"), vec![9u8; 64]).unwrap();
        let (res, corrupt) = store.newest_verified().unwrap();
        assert_eq!(res.unwrap().step, 10);
        assert_eq!(corrupt.len(), 1);
        assert_eq!(corrupt[0].0, newest);
        assert!(corrupt[0].1.to_string().contains("model.safetensors"));
    }

    #[test]
    fn a_crashed_write_is_invisible_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), None);
        store.write(&payload(10, 1)).unwrap();
        // What a kill in the middle of writing ba20 leaves: a temp folder without a manifest.
        let stale = dir.path().join(".tmp-ba20-999999");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("model.safetensors"), b"partial").unwrap();
        assert_eq!(store.newest_verified().unwrap().0.unwrap().step, 10);
        store.write(&payload(30, 3)).unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn keep_prunes_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), Some(2));
        for s in [5, 10, 15, 20] {
            store.write(&payload(s, s as u8)).unwrap();
        }
        let steps: Vec<u64> = store.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![15, 20]);
    }

    #[test]
    fn rewriting_a_step_replaces_the_old_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), None);
        store.write(&payload(10, 1)).unwrap();
        store.write(&payload(10, 7)).unwrap();
        let bytes = std::fs::read(dir.path().join("ba10/model.safetensors")).unwrap();
        assert_eq!(bytes, vec![7u8; 64]);
        store.newest_verified().unwrap().0.unwrap();
    }

    #[test]
    fn missing_folder_lists_nothing() {
        let store = CheckpointStore::new("/nonexistent/tessera/ck", None);
        assert!(store.list().unwrap().is_empty());
        assert!(store.newest_verified().unwrap().0.is_none());
    }
}
