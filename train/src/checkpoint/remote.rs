//! Checkpoint upload to an object store (`save_folder: s3://bucket/run/checkpoints`), and the
//! download autoresume does when the remote holds a newer checkpoint than this machine.
//!
//! Each checkpoint is written locally first (atomically, see [`super::CheckpointStore`]), then
//! uploaded file by file with `manifest.json` last and the `latest` pointer after it: a reader
//! that finds a manifest finds every file it names. Downloads are verified against the manifest
//! before they are renamed into the local folder.

use std::path::{Path, PathBuf};

use tessera_data::remote::{RemoteDir, RemoteError, RemoteOptions};

use super::{CheckpointError, CheckpointStore, MANIFEST_FILE, Manifest, Rejected};

/// A checkpoint downloaded and verified: its step and local folder.
pub type Downloaded = (u64, PathBuf);

/// Upload retries for transient store errors.
const RETRIES: u32 = 3;
/// The longest one file's upload or download may take: a checkpoint file is one request, and
/// a 7B model's weights are tens of gigabytes.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A remote checkpoint folder.
#[derive(Debug)]
pub struct RemoteCheckpoints {
    dir: RemoteDir,
}

impl RemoteCheckpoints {
    /// Opens `url` (s3://, gs://, az://, http(s)://, file://).
    pub fn open(url: &str) -> Result<Self, CheckpointError> {
        Ok(Self {
            dir: RemoteDir::open_with(
                url,
                RemoteOptions {
                    timeout: TIMEOUT,
                    retries: RETRIES,
                },
            )
            .map_err(remote_err)?,
        })
    }

    /// The folder's URL.
    pub fn url(&self) -> &str {
        self.dir.url()
    }

    /// Uploads the local checkpoint `dir` (named `ba{step}`), manifest last, then `latest`.
    pub fn upload(&self, dir: &Path) -> Result<(), CheckpointError> {
        let name =
            dir.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| CheckpointError::Invalid {
                    path: dir.to_path_buf(),
                    what: "not a checkpoint folder".into(),
                })?;
        let manifest = Manifest::read(dir)?;
        for file in manifest.files.keys() {
            let bytes =
                std::fs::read(dir.join(file)).map_err(CheckpointError::io(dir.join(file)))?;
            self.dir
                .put(&format!("{name}/{file}"), bytes, RETRIES)
                .map_err(remote_err)?;
        }
        let bytes = std::fs::read(dir.join(MANIFEST_FILE))
            .map_err(CheckpointError::io(dir.join(MANIFEST_FILE)))?;
        self.dir
            .put(&format!("{name}/{MANIFEST_FILE}"), bytes, RETRIES)
            .map_err(remote_err)?;
        self.dir
            .put("latest", format!("{name}\n").into_bytes(), RETRIES)
            .map_err(remote_err)
    }

    /// Steps of the remote checkpoints (folders named `ba{step}`), oldest first.
    pub fn steps(&self) -> Result<Vec<u64>, CheckpointError> {
        let mut steps: Vec<u64> = self
            .dir
            .list_dirs("")
            .map_err(remote_err)?
            .iter()
            .filter_map(|n| n.strip_prefix("ba").and_then(|s| s.parse().ok()))
            .collect();
        steps.sort_unstable();
        Ok(steps)
    }

    /// Downloads the newest remote checkpoint newer than `newer_than` whose files match its
    /// manifest into `local`, and returns its step and folder. Remote checkpoints that fail
    /// verification are returned in the second list, newest first.
    pub fn download_newest(
        &self,
        local: &CheckpointStore,
        newer_than: Option<u64>,
    ) -> Result<(Option<Downloaded>, Vec<Rejected<String>>), CheckpointError> {
        let mut bad = Vec::new();
        for step in self.steps()?.into_iter().rev() {
            if newer_than.is_some_and(|n| step <= n) {
                break;
            }
            match self.download(local, step) {
                Ok(dir) => return Ok((Some((step, dir)), bad)),
                Err(e) => bad.push((self.dir.url_of(&CheckpointStore::name(step)), e)),
            }
        }
        Ok((None, bad))
    }

    fn download(&self, local: &CheckpointStore, step: u64) -> Result<PathBuf, CheckpointError> {
        let name = CheckpointStore::name(step);
        let manifest_bytes = self
            .dir
            .fetch(&format!("{name}/{MANIFEST_FILE}"), RETRIES)
            .map_err(remote_err)?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| CheckpointError::Json {
                path: PathBuf::from(self.dir.url_of(&format!("{name}/{MANIFEST_FILE}"))),
                source,
            })?;
        let mut files = Vec::new();
        for file in manifest.files.keys() {
            let bytes = self
                .dir
                .fetch(&format!("{name}/{file}"), RETRIES)
                .map_err(remote_err)?;
            files.push((file.clone(), bytes));
        }
        // Written through the store's atomic path, then checked against the remote manifest.
        let dir = local.write(&super::Payload { step, files })?;
        let downloaded = Manifest::read(&dir)?;
        if downloaded.files != manifest.files {
            std::fs::remove_dir_all(&dir).map_err(CheckpointError::io(&dir))?;
            return Err(CheckpointError::Invalid {
                path: PathBuf::from(self.dir.url_of(&name)),
                what: "files do not match their manifest".into(),
            });
        }
        Ok(dir)
    }
}

fn remote_err(e: RemoteError) -> CheckpointError {
    CheckpointError::Remote(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Payload, STATE_FILE};

    fn payload(step: u64) -> Payload {
        Payload {
            step,
            files: vec![
                ("model.safetensors".into(), vec![step as u8; 32]),
                (STATE_FILE.into(), b"{}".to_vec()),
            ],
        }
    }

    #[test]
    fn uploaded_checkpoints_come_back_verified_on_another_machine() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}/bucket/ck", tmp.path().display());
        std::fs::create_dir_all(tmp.path().join("bucket/ck")).unwrap();
        let remote = RemoteCheckpoints::open(&url).unwrap();
        let here = CheckpointStore::new(tmp.path().join("here"), None);
        for s in [5, 10] {
            let dir = here.write(&payload(s)).unwrap();
            remote.upload(&dir).unwrap();
        }
        assert_eq!(remote.steps().unwrap(), vec![5, 10]);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("bucket/ck/latest")).unwrap(),
            "ba10\n"
        );

        // A fresh machine: nothing local, the newest remote checkpoint arrives verified.
        let there = CheckpointStore::new(tmp.path().join("there"), None);
        let (got, bad) = remote.download_newest(&there, None).unwrap();
        assert!(bad.is_empty());
        assert_eq!(got.unwrap().0, 10);
        assert_eq!(there.newest_verified().unwrap().0.unwrap().step, 10);
        // Nothing newer than what is local: nothing to download.
        assert!(
            remote
                .download_newest(&there, Some(10))
                .unwrap()
                .0
                .is_none()
        );
    }

    #[test]
    fn a_corrupt_remote_checkpoint_is_skipped_for_the_previous_one() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bucket")).unwrap();
        let url = format!("file://{}/bucket", tmp.path().display());
        let remote = RemoteCheckpoints::open(&url).unwrap();
        let here = CheckpointStore::new(tmp.path().join("here"), None);
        for s in [1, 2] {
            remote.upload(&here.write(&payload(s)).unwrap()).unwrap();
        }
        std::fs::write(tmp.path().join("bucket/ba2/model.safetensors"), b"garbage").unwrap();
        let there = CheckpointStore::new(tmp.path().join("there"), None);
        let (got, bad) = remote.download_newest(&there, None).unwrap();
        assert_eq!(got.unwrap().0, 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].0.ends_with("ba2"), "{:?}", bad[0]);
        assert!(!tmp.path().join("there/ba2").exists());
    }
}
