//! Near-dedup across slices: a `--slice i/N` run with `near_dedup` leaves the near-dup decision
//! and the packing to `merge`, so N slices keep exactly the documents (and write exactly the
//! shards) one process would.
//!
//! Why it cannot be decided per slice: slices are cut by a hash of the normalized text, so two
//! near-duplicates (whose texts differ) usually land in different slices. And the one-process
//! rule is order-dependent: a document is dropped when it is close to an earlier *kept* one.
//! So each slice runs every other stage (filters, exact dedup, which is slice-local by
//! construction, tokenization, the split) and writes its surviving documents, with their input
//! position and MinHash signature, to `DIR/near-dup/part-i-of-N.bin`. `merge` reads all slices
//! in input order (file, then line), runs the same LSH pass as one process, and packs the kept
//! documents into `DIR/train/` and `DIR/val/` through the same writer.
//!
//! The candidate files are kept after the merge (they are its input: a re-run redoes it); delete
//! them once `prepare.json` is there.
//!
//! Counters of edits (UTF-8 repairs, PII) in a slice report include documents that the merge
//! later drops as near-duplicates; one process counts only the documents it keeps.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PrepareError;
use super::config::Slice;
use super::minhash::{LshIndex, NearDupConfig};
use super::outdir::{TRAIN, VAL};
use super::report::PrepareReport;
use super::sink::{SinkOptions, SplitSink};
use crate::mds::{Compression, HashAlgo};

/// The folder of the candidate files, under the run's `--out`.
pub const CANDIDATES_DIR: &str = "near-dup";

/// The first bytes of a candidate file (format version 1).
const MAGIC: &[u8; 8] = b"TSNDC1\n\0";

/// What `merge` needs to finish a sliced run's near-dedup and packing; stored in every slice
/// report of such a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingNearDup {
    /// The near-dup settings.
    pub near_dup: NearDupConfig,
    /// Whether the run has a `val` split.
    pub val: bool,
    /// The packing and shard settings not already in the report.
    pub wrap: bool,
    /// Shard compression, as configured.
    pub compression: Option<String>,
    /// Shard hashes, as configured.
    pub hashes: Vec<String>,
    /// Shard size limit in bytes.
    pub shard_size: u64,
}

/// The candidate file of `slice` under `out`.
pub fn candidates_path(out: &Path, slice: Slice) -> PathBuf {
    out.join(CANDIDATES_DIR)
        .join(format!("{}.bin", slice.name()))
}

/// One document a slice kept, waiting for the cross-slice near-dup pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its input position: file index, then line (or row) in the file.
    pub file: u32,
    /// See `file`.
    pub line: u64,
    /// 0 for `train`, 1 for `val`.
    pub split: u8,
    /// Its MinHash signature; empty for a text without words (never a near-duplicate).
    pub sig: Vec<u32>,
    /// Its token ids.
    pub ids: Vec<u32>,
}

/// Writes a slice's candidates to a temporary file, renamed into place by [`Self::finish`].
pub struct CandidateWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
}

impl CandidateWriter {
    /// Starts the candidate file at `path` (written as `path.tmp` until finished).
    pub fn create(path: PathBuf) -> Result<Self, PrepareError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(PrepareError::io(dir))?;
        let tmp = path.with_extension("bin.tmp");
        let file = File::create(&tmp).map_err(PrepareError::io(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(PrepareError::io(&tmp))?;
        Ok(Self { path, tmp, out })
    }

    /// Appends one document.
    pub fn push(&mut self, c: &Candidate) -> Result<(), PrepareError> {
        let mut record = Vec::with_capacity(21 + 4 * (c.sig.len() + c.ids.len()));
        record.extend_from_slice(&c.file.to_le_bytes());
        record.extend_from_slice(&c.line.to_le_bytes());
        record.push(c.split);
        for list in [&c.sig, &c.ids] {
            record.extend_from_slice(&(list.len() as u32).to_le_bytes());
            record.extend_from_slice(bytemuck::cast_slice(list));
        }
        self.out
            .write_all(&record)
            .map_err(PrepareError::io(&self.tmp))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(self) -> Result<(), PrepareError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| PrepareError::io(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(PrepareError::io(&self.tmp))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(PrepareError::io(&self.path))
    }
}

/// Reads a candidate file back, in the order it was written.
struct CandidateReader {
    path: PathBuf,
    input: BufReader<File>,
}

impl CandidateReader {
    fn open(path: PathBuf) -> Result<Self, PrepareError> {
        let file = File::open(&path).map_err(PrepareError::io(&path))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(PrepareError::io(&path))?;
        if &magic != MAGIC {
            return Err(PrepareError::Merge {
                path,
                message: "not a tessera near-dup candidate file".into(),
            });
        }
        Ok(Self { path, input })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), PrepareError> {
        self.input
            .read_exact(buf)
            .map_err(PrepareError::io(&self.path))
    }

    /// The next candidate, or `None` at the end of the file.
    fn next(&mut self) -> Result<Option<Candidate>, PrepareError> {
        let mut head = [0u8; 13];
        match self.input.read(&mut head[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(PrepareError::io(&self.path)(e)),
        }
        self.read_exact(&mut head[1..])?;
        let file = u32::from_le_bytes(head[0..4].try_into().unwrap());
        let line = u64::from_le_bytes(head[4..12].try_into().unwrap());
        let split = head[12];
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let mut len = [0u8; 4];
            self.read_exact(&mut len)?;
            // Read as it comes rather than allocated up front: a damaged length cannot ask
            // for gigabytes.
            let want = u64::from(u32::from_le_bytes(len)) * 4;
            let mut bytes = Vec::new();
            (&mut self.input)
                .take(want)
                .read_to_end(&mut bytes)
                .map_err(PrepareError::io(&self.path))?;
            if bytes.len() as u64 != want {
                return Err(PrepareError::Merge {
                    path: self.path.clone(),
                    message: "the file ends inside a record (an interrupted write?)".into(),
                });
            }
            *list = bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
        }
        let [sig, ids] = lists;
        Ok(Some(Candidate {
            file,
            line,
            split,
            sig,
            ids,
        }))
    }
}

/// The cross-slice pass of `merge`: reads every slice's candidates in input order, drops the
/// near-duplicates as one process would, and packs the rest into `out/train` (and `out/val`),
/// filling the counts of `merged` (which holds the slices' sums).
pub fn merge_candidates(
    out: &Path,
    slices: &[Slice],
    pending: &PendingNearDup,
    merged: &mut PrepareReport,
) -> Result<(), PrepareError> {
    let err = |message: String| PrepareError::Merge {
        path: out.to_path_buf(),
        message,
    };
    let sink_options = SinkOptions {
        seq_len: merged.seq_len,
        bos: merged.bos_id,
        eos: merged.eos_id,
        wrap: pending.wrap,
        compression: pending
            .compression
            .as_deref()
            .map(|c| Compression::parse(c, "compression"))
            .transpose()
            .map_err(|e| err(e.to_string()))?,
        hashes: pending
            .hashes
            .iter()
            .map(|h| HashAlgo::parse(h, "hashes"))
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?,
        shard_size: pending.shard_size,
    };
    let mut readers = slices
        .iter()
        .map(|&s| CandidateReader::open(candidates_path(out, s)))
        .collect::<Result<Vec<_>, _>>()?;
    // The split folders hold only what this pass writes: a re-run of the merge starts over.
    let mut names = vec![TRAIN];
    if pending.val {
        names.push(VAL);
    }
    let mut sinks = Vec::new();
    for name in names {
        let dir = out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(PrepareError::io(&dir))?;
        }
        sinks.push(SplitSink::create(name, dir, &sink_options)?);
    }

    let mut heads = readers
        .iter_mut()
        .map(CandidateReader::next)
        .collect::<Result<Vec<_>, _>>()?;
    let mut lsh = LshIndex::new(&pending.near_dup);
    let mut near_dups = 0u64;
    // Each file is in input order; take the earliest head each time (a k-way merge).
    while let Some(i) = (0..heads.len())
        .filter(|&i| heads[i].is_some())
        .min_by_key(|&i| heads[i].as_ref().map(|c| (c.file, c.line)))
    {
        let c = heads[i].take().expect("a head was picked");
        heads[i] = readers[i].next()?;
        if !c.sig.is_empty() && lsh.check_and_insert(&c.sig) {
            near_dups += 1;
            continue;
        }
        let sink = sinks.get_mut(c.split as usize).ok_or_else(|| {
            err(format!(
                "a candidate of split {} in a run without it",
                c.split
            ))
        })?;
        sink.push(&c.ids)?;
    }

    merged.docs_out -= near_dups.min(merged.docs_out);
    if near_dups > 0 {
        *merged.dropped.entry("near_dup".into()).or_default() += near_dups;
    }
    merged.splits.clear();
    (
        merged.tokens,
        merged.samples,
        merged.tokens_dropped,
        merged.shards,
    ) = (0, 0, 0, 0);
    for sink in sinks {
        let (name, split) = sink.finish()?;
        merged.tokens += split.tokens;
        merged.samples += split.samples;
        merged.tokens_dropped += split.tokens_dropped;
        merged.shards += split.shards;
        merged.splits.insert(name.to_string(), split);
    }
    merged.set_rates();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("near-dup/part-0-of-2.bin");
        let written = vec![
            Candidate {
                file: 0,
                line: 3,
                split: 1,
                sig: vec![7, 8, 9],
                ids: vec![1, 2],
            },
            Candidate {
                file: 2,
                line: u64::MAX,
                split: 0,
                sig: vec![],
                ids: vec![u32::MAX],
            },
        ];
        let mut w = CandidateWriter::create(path.clone()).unwrap();
        for c in &written {
            w.push(c).unwrap();
        }
        assert!(!path.exists(), "not in place before finish");
        w.finish().unwrap();
        let mut r = CandidateReader::open(path.clone()).unwrap();
        let mut read = Vec::new();
        while let Some(c) = r.next().unwrap() {
            read.push(c);
        }
        assert_eq!(read, written);

        // A cut-off file is an error naming it, not a silent end.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let mut r = CandidateReader::open(path.clone()).unwrap();
        r.next().unwrap();
        let e = r.next().unwrap_err().to_string();
        assert!(e.contains("part-0-of-2.bin"), "{e}");
    }
}
