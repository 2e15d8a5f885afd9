//! The checkpoint folder: atomic multi-writer saves, the `latest` pointer, pruning, recovery
//! after a crash, and autoresume.
//!
//! A save goes through a hidden staging folder that every writer of that save shares (one
//! writer per rank; one in a single-process run):
//!
//! 1. each writer puts its files into `.staging-ba{N}-{attempt}/`, fsynced, then its part list
//!    `part-{i}.json` (the sha256 and size of each of its files), atomically and last;
//! 2. the committer (rank 0) waits, bounded, for every part list, merges them into
//!    `manifest.json`, and publishes: an existing `ba{N}` is first moved aside to
//!    `.replaced-ba{N}-{attempt}`, the staging folder is renamed to `ba{N}`, the old one is
//!    deleted, and `latest` is swapped by an atomic write.
//!
//! A crash at any point leaves every published checkpoint intact or recoverable:
//! [`CheckpointStore::recover`] (run when a trainer opens the folder) moves a set-aside
//! checkpoint back when its replacement never landed, and deletes it when it did; staging
//! folders of other attempts are deleted. `attempt` names one launch of the job (all its ranks
//! share it), so a restarted job never mixes its files with a crashed attempt's.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{CheckpointError, MANIFEST_FILE, Manifest, ManifestEntry};

/// The training state file inside a checkpoint (its schema belongs to the trainer).
pub const STATE_FILE: &str = "state.json";
const LATEST_FILE: &str = "latest";
const STAGING_PREFIX: &str = ".staging-ba";
const REPLACED_PREFIX: &str = ".replaced-ba";

/// Everything one checkpoint holds, already on the host: file name → bytes. The trainer fills it
/// (`model.safetensors`, `state.json`, …); the manifest is added here.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The step the checkpoint is of (its folder is `ba{step}`).
    pub step: u64,
    /// Each file's name and bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A checkpoint that failed verification: where it is, and why.
pub type Rejected<Where> = (Where, CheckpointError);

/// A checkpoint that verified and can be resumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumable {
    /// The checkpoint's step.
    pub step: u64,
    /// Its folder.
    pub dir: PathBuf,
}

/// The moments inside a save where a crash is most interesting; tests inject a kill at each
/// through [`CheckpointStore::with_failpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveWindow {
    /// Some files are in the staging folder, the part list is not.
    Staged,
    /// Every part list is there, `manifest.json` is not.
    Parted,
    /// `manifest.json` is written; nothing is published yet.
    Manifested,
    /// The old `ba{N}` was moved aside; the new one is not renamed in yet.
    MovedAside,
    /// The new `ba{N}` is in place; the old one is not deleted yet.
    Renamed,
    /// The old one is deleted; `latest` still names the previous checkpoint.
    Published,
    /// `latest` is swapped; pruning has not run.
    Pointed,
}

impl SaveWindow {
    /// Every window, in the order a save passes them.
    pub const ALL: [SaveWindow; 7] = [
        SaveWindow::Staged,
        SaveWindow::Parted,
        SaveWindow::Manifested,
        SaveWindow::MovedAside,
        SaveWindow::Renamed,
        SaveWindow::Published,
        SaveWindow::Pointed,
    ];
}

/// A hook called at each [`SaveWindow`] (tests only: production stores have none).
pub type Failpoint = Arc<dyn Fn(SaveWindow) + Send + Sync>;

/// A folder of `ba{step}` checkpoints.
#[derive(Clone)]
pub struct CheckpointStore {
    root: PathBuf,
    /// Keep at most this many checkpoints (oldest pruned first); `None` keeps all.
    keep: Option<usize>,
    failpoint: Option<Failpoint>,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("root", &self.root)
            .field("keep", &self.keep)
            .finish()
    }
}

/// What [`CheckpointStore::recover`] found and did, for the run's incident log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// A checkpoint moved aside by an interrupted replacement was moved back.
    Restored(PathBuf),
    /// An interrupted replacement had landed; the set-aside copy was deleted.
    DroppedReplaced(PathBuf),
    /// An unfinished save of an earlier attempt was deleted.
    DroppedStaging(PathBuf),
}

impl CheckpointStore {
    /// A store over the folder `root`, keeping at most `keep` checkpoints (`None`: all).
    pub fn new(root: impl Into<PathBuf>, keep: Option<usize>) -> Self {
        Self {
            root: root.into(),
            keep,
            failpoint: None,
        }
    }

    /// Calls `f` at each [`SaveWindow`] of every save (for crash tests).
    pub fn with_failpoint(mut self, f: Failpoint) -> Self {
        self.failpoint = Some(f);
        self
    }

    /// The folder holding the checkpoints.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder name of the checkpoint at `step`.
    pub fn name(step: u64) -> String {
        format!("ba{step}")
    }

    /// The step of a checkpoint folder `…/ba{step}`.
    pub fn step_of(dir: &Path) -> Option<u64> {
        dir.file_name()?.to_str()?.strip_prefix("ba")?.parse().ok()
    }

    fn reach(&self, window: SaveWindow) {
        if let Some(f) = &self.failpoint {
            f(window);
        }
    }

    /// Opens (creating) the staging folder of the save at `step` for launch `attempt`. Every
    /// writer of the save calls this with the same arguments.
    pub fn staging(&self, step: u64, attempt: &str) -> Result<Staging, CheckpointError> {
        if attempt.is_empty() || attempt.contains(['/', '\\']) || attempt.starts_with('.') {
            return Err(CheckpointError::Invalid {
                path: self.root.clone(),
                what: format!("attempt id {attempt:?} is not a plain name"),
            });
        }
        let dir = self.root.join(format!("{STAGING_PREFIX}{step}-{attempt}"));
        std::fs::create_dir_all(&dir).map_err(CheckpointError::io(&dir))?;
        Ok(Staging {
            dir,
            step,
            attempt: attempt.to_string(),
        })
    }

    /// Writes `payload` as the only writer of its save and publishes it. Returns the folder.
    pub fn write(&self, payload: &Payload) -> Result<PathBuf, CheckpointError> {
        let staging = self.staging(payload.step, &single_attempt())?;
        let mut part = Vec::with_capacity(payload.files.len());
        for (name, bytes) in &payload.files {
            part.push(staging.write_file(name, bytes)?);
            self.reach(SaveWindow::Staged);
        }
        staging.finish_part(0, part)?;
        self.commit(&staging, 1, Duration::ZERO)
    }

    /// Publishes the save in `staging` once all `parts` writers have finished their part
    /// (waiting up to `wait` for the others): merges their lists into `manifest.json`, renames
    /// the folder to `ba{step}` (replacing an older one atomically), swaps `latest`, prunes.
    pub fn commit(
        &self,
        staging: &Staging,
        parts: usize,
        wait: Duration,
    ) -> Result<PathBuf, CheckpointError> {
        let manifest = staging.wait_for_parts(parts, wait)?;
        self.reach(SaveWindow::Parted);
        let bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|source| CheckpointError::Json {
                path: staging.dir.join(MANIFEST_FILE),
                source,
            })?;
        write_synced(&staging.dir.join(MANIFEST_FILE), &bytes)?;
        for i in 0..parts {
            let p = staging.dir.join(part_name(i));
            std::fs::remove_file(&p).map_err(CheckpointError::io(&p))?;
        }
        sync_dir(&staging.dir)?;
        self.reach(SaveWindow::Manifested);

        let name = Self::name(staging.step);
        let dest = self.root.join(&name);
        let aside = self.root.join(format!(
            "{REPLACED_PREFIX}{}-{}",
            staging.step, staging.attempt
        ));
        let replacing = dest.exists();
        if replacing {
            // Typically a corrupt checkpoint a resume skipped, now written again. Moved aside,
            // not deleted, so a crash before the rename below loses nothing.
            rename_synced(&dest, &aside, &self.root)?;
            self.reach(SaveWindow::MovedAside);
        }
        rename_synced(&staging.dir, &dest, &self.root)?;
        self.reach(SaveWindow::Renamed);
        if replacing {
            std::fs::remove_dir_all(&aside).map_err(CheckpointError::io(&aside))?;
            sync_dir(&self.root)?;
        }
        self.reach(SaveWindow::Published);
        tessera_fs::atomic_write(&self.root.join(LATEST_FILE), format!("{name}\n").as_bytes())
            .map_err(CheckpointError::io(self.root.join(LATEST_FILE)))?;
        self.reach(SaveWindow::Pointed);
        self.prune(Some(&staging.attempt))?;
        Ok(dest)
    }

    /// Repairs what a crash during a save left behind (see the module docs), keeping the
    /// staging folders of `current_attempt`. Call it before reading the folder.
    pub fn recover(
        &self,
        current_attempt: Option<&str>,
    ) -> Result<Vec<Recovered>, CheckpointError> {
        let mut done = Vec::new();
        for (name, path) in self.hidden_entries()? {
            if let Some(rest) = name.strip_prefix(REPLACED_PREFIX) {
                let Some(step) = rest.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                let dest = self.root.join(Self::name(step));
                let landed = Manifest::read(&dest).and_then(|m| m.verify(&dest)).is_ok();
                if landed {
                    std::fs::remove_dir_all(&path).map_err(CheckpointError::io(&path))?;
                    done.push(Recovered::DroppedReplaced(path));
                } else {
                    if dest.exists() {
                        std::fs::remove_dir_all(&dest).map_err(CheckpointError::io(&dest))?;
                    }
                    rename_synced(&path, &dest, &self.root)?;
                    done.push(Recovered::Restored(dest));
                }
            } else if name.starts_with(STAGING_PREFIX)
                && current_attempt.is_none_or(|a| !name.ends_with(&format!("-{a}")))
            {
                std::fs::remove_dir_all(&path).map_err(CheckpointError::io(&path))?;
                done.push(Recovered::DroppedStaging(path));
            }
        }
        if !done.is_empty() {
            sync_dir(&self.root)?;
        }
        Ok(done)
    }

    /// All `ba{step}` folders, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let mut out = Vec::new();
        for (name, path) in self.entries()? {
            let Some(step) = name.strip_prefix("ba").and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if path.is_dir() {
                out.push((step, path));
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
        self.newest_verified_before(u64::MAX)
    }

    /// Like [`newest_verified`](Self::newest_verified), among the checkpoints of steps below
    /// `step` (a rollback wants one from before the trouble began).
    pub fn newest_verified_before(
        &self,
        step: u64,
    ) -> Result<(Option<Resumable>, Vec<Rejected<PathBuf>>), CheckpointError> {
        let mut corrupt = Vec::new();
        for (step, dir) in self.list()?.into_iter().rev().filter(|(s, _)| *s < step) {
            match Manifest::read(&dir).and_then(|m| m.verify(&dir)) {
                Ok(()) => return Ok((Some(Resumable { step, dir }), corrupt)),
                Err(e) => corrupt.push((dir, e)),
            }
        }
        Ok((None, corrupt))
    }

    /// Removes the oldest checkpoints beyond `keep`, and staging folders of attempts other than
    /// `current_attempt` (unfinished saves of a crashed launch).
    pub fn prune(&self, current_attempt: Option<&str>) -> Result<(), CheckpointError> {
        for (name, path) in self.hidden_entries()? {
            let stale = name.starts_with(STAGING_PREFIX)
                && current_attempt.is_none_or(|a| !name.ends_with(&format!("-{a}")));
            if stale {
                std::fs::remove_dir_all(&path).map_err(CheckpointError::io(&path))?;
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

    fn entries(&self) -> Result<Vec<(String, PathBuf)>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CheckpointError::io(&self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(CheckpointError::io(&self.root))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push((name.to_string(), entry.path()));
            }
        }
        Ok(out)
    }

    fn hidden_entries(&self) -> Result<Vec<(String, PathBuf)>, CheckpointError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(n, p)| {
                (n.starts_with(STAGING_PREFIX) || n.starts_with(REPLACED_PREFIX)) && p.is_dir()
            })
            .collect())
    }
}

/// One save's staging folder, shared by all its writers.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
    step: u64,
    attempt: String,
}

impl Staging {
    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The step being saved.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Writes one file of this writer's part, fsynced; returns its manifest entry.
    pub fn write_file(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> Result<(String, ManifestEntry), CheckpointError> {
        self.write_file_with(name, |w| w.write_all(bytes))
    }

    /// Writes one file of this writer's part by streaming into it (so a large file need not be
    /// held in memory), fsynced; the sha256 is computed on the way. Returns its manifest entry.
    pub fn write_file_with(
        &self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(String, ManifestEntry), CheckpointError> {
        let path = self.checked_path(name)?;
        let file = std::fs::File::create(&path).map_err(CheckpointError::io(&path))?;
        let mut w = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        fill(&mut w).map_err(CheckpointError::io(&path))?;
        let file = w
            .inner
            .into_inner()
            .map_err(|e| CheckpointError::io(&path)(e.into_error()))?;
        file.sync_all().map_err(CheckpointError::io(&path))?;
        let entry = ManifestEntry {
            sha256: super::manifest::hex(&w.hasher.finalize()),
            bytes: w.bytes,
        };
        Ok((name.to_string(), entry))
    }

    /// Declares this writer's part complete: its files' entries, as `part-{index}.json`,
    /// written atomically after the files themselves.
    pub fn finish_part(
        &self,
        index: usize,
        entries: Vec<(String, ManifestEntry)>,
    ) -> Result<(), CheckpointError> {
        sync_dir(&self.dir)?;
        let files: BTreeMap<String, ManifestEntry> = entries.into_iter().collect();
        let path = self.dir.join(part_name(index));
        let bytes = serde_json::to_vec(&files).map_err(|source| CheckpointError::Json {
            path: path.clone(),
            source,
        })?;
        tessera_fs::atomic_write(&path, &bytes).map_err(CheckpointError::io(&path))
    }

    /// Waits up to `wait` until the part lists of writers `0..parts` other than `except` are
    /// present (their files are then complete): the committer calls this before it reads the
    /// others' files.
    pub fn wait_for_others(
        &self,
        parts: usize,
        except: usize,
        wait: Duration,
    ) -> Result<(), CheckpointError> {
        let deadline = Instant::now() + wait;
        loop {
            let missing: Vec<usize> = (0..parts)
                .filter(|i| *i != except && !self.dir.join(part_name(*i)).exists())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CheckpointError::Invalid {
                    path: self.dir.clone(),
                    what: format!(
                        "writer(s) {missing:?} of {parts} did not finish their part of ba{} within {:.0} s",
                        self.step,
                        wait.as_secs_f64()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `wait` until every part list is present, then merges them.
    fn wait_for_parts(&self, parts: usize, wait: Duration) -> Result<Manifest, CheckpointError> {
        self.wait_for_others(parts, usize::MAX, wait)?;
        let mut manifest = Manifest {
            version: 1,
            files: BTreeMap::new(),
        };
        for i in 0..parts {
            let path = self.dir.join(part_name(i));
            let text = std::fs::read(&path).map_err(CheckpointError::io(&path))?;
            let files: BTreeMap<String, ManifestEntry> =
                serde_json::from_slice(&text).map_err(|source| CheckpointError::Json {
                    path: path.clone(),
                    source,
                })?;
            for (name, entry) in files {
                if manifest.files.insert(name.clone(), entry).is_some() {
                    return Err(CheckpointError::Invalid {
                        path: path.clone(),
                        what: format!("{name} is listed by two writers"),
                    });
                }
            }
        }
        Ok(manifest)
    }

    fn checked_path(&self, name: &str) -> Result<PathBuf, CheckpointError> {
        let plain = !name.is_empty()
            && !name.contains(['/', '\\'])
            && !name.starts_with('.')
            && name != MANIFEST_FILE
            && !name.starts_with("part-");
        if !plain {
            return Err(CheckpointError::Invalid {
                path: self.dir.join(name),
                what: "not a valid checkpoint file name".into(),
            });
        }
        Ok(self.dir.join(name))
    }
}

/// Counts and hashes what passes through to the file.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn part_name(index: usize) -> String {
    format!("part-{index}.json")
}

/// An attempt id for a single-process save: unique per process.
fn single_attempt() -> String {
    format!("p{}", std::process::id())
}

/// Writes `bytes` to `path` and fsyncs the file (inside a staging folder: no rename needed).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = std::fs::File::create(path).map_err(CheckpointError::io(path))?;
    f.write_all(bytes).map_err(CheckpointError::io(path))?;
    f.sync_all().map_err(CheckpointError::io(path))
}

fn rename_synced(from: &Path, to: &Path, root: &Path) -> Result<(), CheckpointError> {
    std::fs::rename(from, to).map_err(CheckpointError::io(to))?;
    sync_dir(root)
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    tessera_fs::sync_dir(dir).map_err(CheckpointError::io(dir))
}

#[cfg(test)]
mod tests;
