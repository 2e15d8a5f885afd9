//! `manifest.json`: the sha256 and size of every file in a checkpoint, written last.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::CheckpointError;

/// The manifest's file name inside a checkpoint folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The file's sha256, in hex.
    pub sha256: String,
    /// The file's size, in bytes.
    pub bytes: u64,
}

/// Every file of a checkpoint (except the manifest itself), by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, for readers of older checkpoints.
    pub version: u32,
    /// Each file's entry, by its path relative to the checkpoint folder.
    pub files: BTreeMap<String, ManifestEntry>,
}

impl Manifest {
    /// A manifest for in-memory file contents.
    pub fn of(files: &[(String, Vec<u8>)]) -> Self {
        let files = files
            .iter()
            .map(|(name, bytes)| {
                let entry = ManifestEntry {
                    sha256: hex(&Sha256::digest(bytes)),
                    bytes: bytes.len() as u64,
                };
                (name.clone(), entry)
            })
            .collect();
        Self { version: 1, files }
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, CheckpointError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&path).map_err(CheckpointError::io(&path))?;
        serde_json::from_slice(&text).map_err(|source| CheckpointError::Json { path, source })
    }

    /// Checks that every listed file exists in `dir` with the recorded size and sha256.
    pub fn verify(&self, dir: &Path) -> Result<(), CheckpointError> {
        if self.files.is_empty() {
            return Err(CheckpointError::Invalid {
                path: dir.join(MANIFEST_FILE),
                what: "lists no files".into(),
            });
        }
        for (name, entry) in &self.files {
            if name.contains('/') || name.contains("..") {
                return Err(CheckpointError::Invalid {
                    path: dir.join(MANIFEST_FILE),
                    what: format!("file name {name:?} is not a plain name"),
                });
            }
            let path = dir.join(name);
            let found = std::fs::metadata(&path)
                .map_err(CheckpointError::io(&path))?
                .len();
            if found != entry.bytes {
                return Err(CheckpointError::Size {
                    path: dir.to_path_buf(),
                    file: name.clone(),
                    expected: entry.bytes,
                    found,
                });
            }
            let digest = sha256_file(&path)?;
            if digest != entry.sha256 {
                return Err(CheckpointError::Checksum {
                    path: dir.to_path_buf(),
                    file: name.clone(),
                    expected: entry.sha256.clone(),
                    found: digest,
                });
            }
        }
        Ok(())
    }
}

/// The hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    let mut f = std::fs::File::open(path).map_err(CheckpointError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(CheckpointError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_detects_a_flipped_bit_and_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            ("a.bin".to_string(), vec![1u8, 2, 3, 4]),
            ("b.json".to_string(), b"{}".to_vec()),
        ];
        for (n, b) in &files {
            std::fs::write(dir.path().join(n), b).unwrap();
        }
        let m = Manifest::of(&files);
        m.verify(dir.path()).unwrap();

        std::fs::write(dir.path().join("a.bin"), [1u8, 2, 3, 5]).unwrap();
        let err = m.verify(dir.path()).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Checksum { ref file, .. } if file == "a.bin"),
            "{err}"
        );

        std::fs::write(dir.path().join("a.bin"), [1u8, 2, 3]).unwrap();
        let err = m.verify(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                CheckpointError::Size {
                    expected: 4,
                    found: 3,
                    ..
                }
            ),
            "{err}"
        );

        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        std::fs::write(dir.path().join("a.bin"), [1u8, 2, 3, 4]).unwrap();
        let err = m.verify(dir.path()).unwrap_err();
        assert!(err.to_string().contains("b.json"), "{err}");
    }

    #[test]
    fn manifest_rejects_path_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::of(&[("x".to_string(), vec![0])]);
        let e = m.files.remove("x").unwrap();
        m.files.insert("../x".into(), e);
        assert!(m.verify(dir.path()).is_err());
    }
}
