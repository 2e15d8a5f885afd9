//! Asynchronous saves: the step loop hands over host bytes and goes on training while a
//! background thread writes, fsyncs and renames.
//!
//! At most one save is in flight: a second `save` first waits for the first, which bounds the
//! host memory held to one checkpoint. A failed background write is reported by the next `save`
//! or by `finish`, so no failure is silent.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use std::sync::Arc;

use super::{CheckpointError, CheckpointStore, Payload, RemoteCheckpoints};

/// The thread writing one save; it returns the published folder (on rank 0).
type SaveThread = JoinHandle<Result<Option<PathBuf>, CheckpointError>>;

/// A checkpoint store with a background writer thread (and, optionally, an object store each
/// checkpoint is uploaded to after it is written locally).
pub struct AsyncCheckpointer {
    store: CheckpointStore,
    remote: Option<Arc<RemoteCheckpoints>>,
    in_flight: Option<(u64, SaveThread)>,
    /// Folders written so far, with their step, in order (for the run log).
    done: mpsc::Sender<(u64, PathBuf)>,
    done_rx: mpsc::Receiver<(u64, PathBuf)>,
}

impl AsyncCheckpointer {
    /// A writer for `store`, with no save in flight.
    pub fn new(store: CheckpointStore) -> Self {
        let (done, done_rx) = mpsc::channel();
        Self {
            store,
            remote: None,
            in_flight: None,
            done,
            done_rx,
        }
    }

    /// Also upload every checkpoint to `remote` (on the writer thread, after the local write).
    pub fn with_remote(mut self, remote: RemoteCheckpoints) -> Self {
        self.remote = Some(Arc::new(remote));
        self
    }

    /// The store it writes to.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Starts writing `payload` (as the save's only writer) in the background, after the
    /// previous save has finished.
    pub fn save(&mut self, payload: Payload) -> Result<(), CheckpointError> {
        let step = payload.step;
        self.spawn(step, move |store| store.write(&payload).map(Some))
    }

    /// Runs `write` on the writer thread after the previous save has finished. `write` does this
    /// process's part of the save at `step` and returns the folder if it published one (the
    /// committing rank), which is then uploaded to the remote, if any.
    pub fn spawn(
        &mut self,
        step: u64,
        write: impl FnOnce(&CheckpointStore) -> Result<Option<PathBuf>, CheckpointError>
        + Send
        + 'static,
    ) -> Result<(), CheckpointError> {
        self.wait()?;
        let store = self.store.clone();
        let remote = self.remote.clone();
        let done = self.done.clone();
        let handle = std::thread::Builder::new()
            .name(format!("checkpoint-ba{step}"))
            .spawn(move || {
                let Some(dir) = write(&store)? else {
                    return Ok(None);
                };
                if let Some(remote) = remote {
                    remote.upload(&dir)?;
                }
                let _ = done.send((step, dir.clone()));
                Ok(Some(dir))
            })
            .map_err(|e| CheckpointError::Writer(e.to_string()))?;
        self.in_flight = Some((step, handle));
        Ok(())
    }

    /// Waits for the save in flight, if any, and returns its error.
    pub fn wait(&mut self) -> Result<(), CheckpointError> {
        if let Some((step, handle)) = self.in_flight.take() {
            match handle.join() {
                Ok(result) => {
                    result?;
                }
                Err(_) => {
                    return Err(CheckpointError::Writer(format!(
                        "the thread writing ba{step} panicked"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checkpoints completed since the last call, oldest first.
    pub fn completed(&self) -> Vec<(u64, PathBuf)> {
        self.done_rx.try_iter().collect()
    }

    /// Waits for the last save. Call before exiting.
    pub fn finish(mut self) -> Result<(), CheckpointError> {
        self.wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::STATE_FILE;

    #[test]
    fn saves_complete_in_order_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut ck = AsyncCheckpointer::new(CheckpointStore::new(dir.path(), Some(2)));
        for step in [1u64, 2, 3] {
            ck.save(Payload {
                step,
                files: vec![(STATE_FILE.into(), vec![step as u8; 1 << 16])],
            })
            .unwrap();
        }
        ck.wait().unwrap();
        let steps: Vec<u64> = ck.completed().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![1, 2, 3]);
        let store = ck.store().clone();
        ck.finish().unwrap();
        assert_eq!(store.newest_verified().unwrap().0.unwrap().step, 3);
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn a_failed_background_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the checkpoint folder should be: every write fails.
        let root = dir.path().join("ck");
        std::fs::write(&root, b"not a folder").unwrap();
        let mut ck = AsyncCheckpointer::new(CheckpointStore::new(&root, None));
        ck.save(Payload {
            step: 1,
            files: vec![(STATE_FILE.into(), vec![1])],
        })
        .unwrap();
        let err = ck.finish().unwrap_err();
        assert!(err.to_string().contains("ck"), "{err}");
    }
}
