//! The local shard cache: every shard is read from a decompressed ("raw") file on local disk,
//! memory-mapped; this module makes that file exist.
//!
//! - Remote streams download on demand into their cache folder; compressed shards are
//!   decompressed there and only the raw file is kept (streaming's `keep_zip=False`).
//!   Downloads are checked against the index's size and, when asked, its hashes (through
//!   `mds::HashAlgo`), before they become visible.
//! - Local streams are read in place; a compressed local shard is decompressed next to its
//!   zip once, as streaming does.
//! - Several threads and processes may share one cache folder. A shard is materialised under
//!   an exclusive lock on `<raw file>.lock` (std's `File::lock`, an `flock`), written to a
//!   unique temp name, fsynced and renamed into place, so a reader never sees a partial file
//!   and two writers never clobber each other; whoever gets the lock second finds the file.
//! - With a `cache_limit`, making room evicts the least recently used raw files of remote
//!   streams (never local data), skipping any another process holds locked. Evicting a file
//!   that is memory-mapped is safe on Unix: the mapping keeps the inode alive.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::mds::{Columns, HashAlgo, Shard, ShardData, ShardInfo};

use super::error::{Result, StreamError, io_err};
use super::source::{Remote, local_path};

/// One stream's files: where raw shards live and where (if anywhere) they come from.
pub(crate) struct StreamFiles {
    /// Folder holding (or receiving) raw shard files.
    pub dir: PathBuf,
    /// The remote prefix, or `None` for a local stream.
    pub remote: Option<Box<Remote>>,
    /// The index file, named in errors.
    pub index_path: PathBuf,
}

/// One shard of the dataset.
pub(crate) struct CachedShard {
    pub stream: usize,
    pub info: ShardInfo,
    pub columns: Arc<Columns>,
}

/// Cache behaviour knobs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheOptions {
    /// Bytes of raw remote shards to keep on disk at most.
    pub limit: Option<u64>,
    /// Verify downloaded (and decompressed) files against the index's hashes.
    pub verify_hashes: bool,
    /// Extra attempts for a failed download.
    pub retries: u32,
}

/// The dataset-wide shard cache (shared by the loader and its prefetch threads).
pub(crate) struct Cache {
    pub streams: Vec<StreamFiles>,
    pub shards: Vec<CachedShard>,
    opts: CacheOptions,
    /// In-process last use per shard (a logical clock), for LRU eviction.
    last_use: Vec<AtomicU64>,
    clock: AtomicU64,
    /// Serialises this process's threads around one shard / around eviction.
    slot_locks: Vec<Mutex<()>>,
    /// Bytes of downloads in flight in this process, counted against the limit.
    reserved: Mutex<u64>,
}

impl Cache {
    pub(crate) fn new(
        streams: Vec<StreamFiles>,
        shards: Vec<CachedShard>,
        opts: CacheOptions,
    ) -> Cache {
        let n = shards.len();
        Cache {
            streams,
            shards,
            opts,
            last_use: (0..n).map(|_| AtomicU64::new(0)).collect(),
            clock: AtomicU64::new(1),
            slot_locks: (0..n).map(|_| Mutex::new(())).collect(),
            reserved: Mutex::new(0),
        }
    }

    /// Where shard `i`'s raw file is (or will be).
    pub(crate) fn raw_path(&self, i: usize) -> PathBuf {
        let s = &self.shards[i];
        local_path(&self.streams[s.stream].dir, &s.info.raw_data.basename)
    }

    fn is_remote(&self, i: usize) -> bool {
        self.streams[self.shards[i].stream].remote.is_some()
    }

    fn touch(&self, i: usize) {
        self.last_use[i].store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    fn present(&self, i: usize) -> bool {
        fs::metadata(self.raw_path(i)).is_ok_and(|m| m.len() == self.shards[i].info.raw_data.bytes)
    }

    /// Make shard `i`'s raw file exist locally (downloading/decompressing it if needed).
    pub(crate) fn ensure(&self, i: usize) -> Result<()> {
        self.ensure_with(i, false).map(|_| ())
    }

    /// As [`ensure`](Self::ensure), for prefetching: returns `Ok(false)` instead of waiting
    /// when the cache limit leaves no room right now.
    pub(crate) fn prefetch(&self, i: usize) -> Result<bool> {
        self.ensure_with(i, true)
    }

    fn ensure_with(&self, i: usize, soft: bool) -> Result<bool> {
        self.touch(i);
        if self.present(i) {
            return Ok(true);
        }
        let s = &self.shards[i];
        let local_uncompressed = !self.is_remote(i) && s.info.zip_data.is_none();
        if local_uncompressed {
            // Nothing to fetch: opening reports a missing or short file with its path.
            return Ok(true);
        }
        let _slot = self.slot_locks[i].lock().unwrap_or_else(|e| e.into_inner());
        let raw = self.raw_path(i);
        let lock = lock_file(&raw)?;
        lock.lock().map_err(io_err(lock_path(&raw)))?;
        if self.present(i) {
            return Ok(true);
        }
        let _reservation = if self.opts.limit.is_some() && self.is_remote(i) {
            match self.make_room(i, soft)? {
                Some(r) => Some(r),
                None => return Ok(false),
            }
        } else {
            None
        };
        let data = self.fetch_raw(i)?;
        write_atomic(&raw, &data)?;
        Ok(true)
    }

    /// Open shard `i` for reading (memory-mapping its raw file).
    pub(crate) fn open(&self, i: usize) -> Result<Shard> {
        let s = &self.shards[i];
        let path = self.raw_path(i);
        // Another process may evict the file between `ensure` and `open`: fetch it again.
        let mut attempts = 0;
        let file = loop {
            self.ensure(i)?;
            match File::open(&path) {
                Ok(f) => break f,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && attempts < 3
                        && self.is_remote(i) =>
                {
                    attempts += 1
                }
                Err(e) => return Err(StreamError::Io { path, source: e }),
            }
        };
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len != s.info.raw_data.bytes {
            return Err(StreamError::SizeMismatch {
                path,
                found: len,
                expected: s.info.raw_data.bytes,
            });
        }
        // SAFETY: shard files are only ever replaced by rename (a new inode) or unlinked, never
        // written in place, so the mapped bytes cannot change underneath us; every read of the
        // map is bounds-checked by `Shard`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(&path))?;
        let verify = self.opts.verify_hashes && !self.is_remote(i) && s.info.zip_data.is_none();
        Ok(Shard::from_raw(
            ShardData::Mapped(map),
            &s.info,
            s.columns.clone(),
            &path,
            verify,
        )?)
    }

    /// Get shard `i`'s raw bytes from its origin (remote file, or local zip), checked.
    fn fetch_raw(&self, i: usize) -> Result<Vec<u8>> {
        let s = &self.shards[i];
        let stream = &self.streams[s.stream];
        let file = s.info.file_on_disk();
        let (bytes, origin) = match &stream.remote {
            Some(remote) => (
                remote.fetch(&file.basename, self.opts.retries)?,
                PathBuf::from(remote.url_of(&file.basename)),
            ),
            None => {
                let p = local_path(&stream.dir, &file.basename);
                (fs::read(&p).map_err(io_err(&p))?, p)
            }
        };
        check_file(
            &origin,
            &bytes,
            file.bytes,
            &file.hashes,
            self.opts.verify_hashes,
        )?;
        match (&s.info.zip_data, s.info.compression) {
            (Some(_), Some(c)) => {
                let raw = c.decompress(&bytes, s.info.raw_data.bytes, &origin)?;
                check_file(
                    &origin,
                    &raw,
                    s.info.raw_data.bytes,
                    &s.info.raw_data.hashes,
                    self.opts.verify_hashes,
                )?;
                Ok(raw)
            }
            _ => Ok(bytes),
        }
    }

    /// Evict least-recently-used remote raw files until shard `i` fits under the limit, and
    /// reserve its bytes until the returned guard drops. `soft`: give up (`None`) instead of
    /// waiting for other in-flight downloads to land.
    fn make_room(&self, i: usize, soft: bool) -> Result<Option<Reservation<'_>>> {
        let Some(limit) = self.opts.limit else {
            return Ok(None);
        };
        let need = self.shards[i].info.raw_data.bytes;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
            let mut usage = self.evict_until(i, limit.saturating_sub(*reserved + need));
            if usage + *reserved + need <= limit {
                *reserved += need;
                return Ok(Some(Reservation {
                    cache: self,
                    bytes: need,
                }));
            }
            usage += *reserved;
            let in_flight = *reserved > 0;
            drop(reserved);
            if soft {
                return Ok(None);
            }
            if !in_flight || std::time::Instant::now() > deadline {
                return Err(StreamError::CacheLimit {
                    limit,
                    reason: format!(
                        "{usage} bytes are in use or locked and shard {} needs {need} more",
                        self.shards[i].info.raw_data.basename
                    ),
                });
            }
            // Other downloads of this process hold the room; wait for them to land.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Evict LRU remote raw files (other than `i`, and any locked by someone) until at most
    /// `target` bytes remain on disk; returns the bytes left. Usage is measured on disk, so
    /// other processes sharing the folder are counted too.
    fn evict_until(&self, i: usize, target: u64) -> u64 {
        let mut present: Vec<(u64, std::time::SystemTime, usize, u64)> = Vec::new();
        let mut usage = 0u64;
        for j in 0..self.shards.len() {
            if j == i || !self.is_remote(j) {
                continue;
            }
            if let Ok(m) = fs::metadata(self.raw_path(j)) {
                usage += m.len();
                let mtime = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                present.push((self.last_use[j].load(Ordering::Relaxed), mtime, j, m.len()));
            }
        }
        present.sort();
        for (_, _, j, bytes) in present {
            if usage <= target {
                break;
            }
            let raw = self.raw_path(j);
            let Ok(lock) = lock_file(&raw) else { continue };
            // Someone is writing (or evicting) this shard right now: leave it.
            if lock.try_lock().is_err() {
                continue;
            }
            if fs::remove_file(&raw).is_ok() {
                usage = usage.saturating_sub(bytes);
            }
        }
        usage
    }
}

/// Bytes reserved for one in-flight download; released when dropped.
struct Reservation<'a> {
    cache: &'a Cache,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut r = self
            .cache
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *r = r.saturating_sub(self.bytes);
    }
}

fn lock_path(raw: &Path) -> PathBuf {
    let mut name = raw
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    raw.with_file_name(name)
}

/// Open (creating folders and the file as needed) the lock file that guards `raw`.
fn lock_file(raw: &Path) -> Result<File> {
    let path = lock_path(raw);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))
}

/// Check a fetched file's size and (when asked and listed) every hash the index records.
fn check_file(
    path: &Path,
    data: &[u8],
    bytes: u64,
    hashes: &BTreeMap<String, String>,
    verify: bool,
) -> Result<()> {
    if data.len() as u64 != bytes {
        return Err(StreamError::SizeMismatch {
            path: path.to_path_buf(),
            found: data.len() as u64,
            expected: bytes,
        });
    }
    if verify {
        for (name, expected) in hashes {
            let algo = HashAlgo::parse(name, &path.display().to_string())?;
            let found = algo.hex(data);
            if !found.eq_ignore_ascii_case(expected) {
                return Err(StreamError::HashMismatch {
                    path: path.to_path_buf(),
                    algo: name.clone(),
                    found,
                    expected: expected.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Writes `data` to `path` atomically and durably (creating the folder).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    tessera_fs::atomic_write(path, data).map_err(io_err(path))
}
