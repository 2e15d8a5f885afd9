//! One trainer per run folder.
//!
//! Two trainers on one folder would interleave `metrics.jsonl`, delete each other's staging
//! folders and race on `latest`. A trainer therefore holds an exclusive `flock(2)` on
//! `<run>/.lock` for its whole life. The kernel drops the lock when the holder dies, however it
//! dies, so a lock file whose lock is free is stale by construction: the next trainer takes it
//! over and says whose it was. The file records the holder (pid, host, start time) only so that
//! the refusal can name it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who holds (or held) a run folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's process id.
    pub pid: u32,
    /// The holder's host name.
    pub host: String,
    /// Unix time in seconds when the lock was taken.
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {}", self.pid, self.host)
    }
}

/// Why a run folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live trainer holds the folder's lock.
    #[error(
        "{folder} is in use by another trainer ({holder}); stop it, or give this run another \
         run_name or --run-dir"
    )]
    Busy {
        /// The run folder.
        folder: PathBuf,
        /// Who holds it, as recorded in the lock file (or `unknown holder`).
        holder: String,
    },
    /// The folder or its lock file could not be created, read, written or locked.
    #[error("{path}: {source}")]
    Io {
        /// The folder or lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases the folder.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// The holder whose stale lock this one replaced, if any.
    pub took_over: Option<Holder>,
}

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

impl RunLock {
    /// Locks `folder` (created if missing) for this process, or names the trainer holding it.
    pub fn acquire(folder: &Path) -> Result<Self, LockError> {
        std::fs::create_dir_all(folder).map_err(|source| LockError::Io {
            path: folder.to_path_buf(),
            source,
        })?;
        let path = folder.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut previous = String::new();
        file.read_to_string(&mut previous).map_err(io)?;
        let previous: Option<Holder> = serde_json::from_str(previous.trim()).ok();
        if !try_lock_exclusive(&file).map_err(io)? {
            return Err(LockError::Busy {
                folder: folder.to_path_buf(),
                holder: previous.map_or_else(|| "unknown holder".into(), |h| h.to_string()),
            });
        }
        let me = Holder {
            pid: std::process::id(),
            host: hostname(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let text = serde_json::to_string(&me).unwrap_or_default();
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self {
            file,
            path,
            took_over: previous,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Cleared so that the next trainer does not report a stale holder; the kernel releases
        // the lock itself when the file closes.
        let _ = self.file.set_len(0);
    }
}

#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// This machine's host name (for messages).
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
        // truncates, and we stop at the first NUL.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    "unknown".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_trainer_is_refused_with_the_holders_pid_and_host() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        assert!(first.took_over.is_none());
        // flock locks belong to open file descriptions, so a second open in this process
        // conflicts exactly as another process would.
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains(&hostname()),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        drop(first);
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_stale_lock_is_taken_over_and_its_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        // What a SIGKILLed trainer leaves: the file with its holder, and no flock.
        let dead = Holder {
            pid: 999_999,
            host: "node7".into(),
            since: 1,
        };
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(lock.took_over, Some(dead));
    }
}
