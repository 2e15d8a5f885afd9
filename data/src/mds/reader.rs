//! Random access over a local MDS dataset folder (plain or merged index).
//!
//! Shards open lazily on first touch and then stay open: uncompressed ones as memory maps (the
//! OS pages them in and out), compressed ones decompressed into memory once. A global sample
//! index maps to `(shard, local)` by binary search over the shards' cumulative sample counts.
//! `&MdsDataset` is `Sync`, so many threads can read at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::error::{MdsError, Result};
use super::index::{INDEX_BASENAME, Index};
use super::shard::Shard;
use super::tokens::TokenSpec;
use super::value::Sample;

/// How a dataset is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Check every shard against the index's hashes when it is first opened (streaming's
    /// `validate_hash`). Off by default: hashing costs a full read of each shard.
    pub verify_hashes: bool,
    /// Memory-map uncompressed shards instead of reading them into memory.
    pub mmap: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            verify_hashes: false,
            mmap: true,
        }
    }
}

/// A local MDS dataset.
#[derive(Debug)]
pub struct MdsDataset {
    dir: PathBuf,
    index_path: PathBuf,
    index: Index,
    /// `starts[s]` = global index of shard `s`'s first sample; one extra entry = total.
    starts: Vec<u64>,
    shards: Vec<OnceLock<Arc<Shard>>>,
    options: ReadOptions,
}

impl MdsDataset {
    /// Opens `dir` (reads and checks `index.json`; shards open on first use).
    pub fn open(dir: impl AsRef<Path>) -> Result<MdsDataset> {
        MdsDataset::open_with(dir, ReadOptions::default())
    }

    /// Opens `dir` with explicit options.
    pub fn open_with(dir: impl AsRef<Path>, options: ReadOptions) -> Result<MdsDataset> {
        let dir = dir.as_ref().to_path_buf();
        let index = Index::load(&dir)?;
        MdsDataset::from_index(dir, index, options)
    }

    /// A dataset over an already parsed index whose shard files are under `dir`. Every shard's
    /// columns are checked now, so a `pkl` column or bad encoding fails at open, not mid-epoch.
    pub fn from_index(dir: PathBuf, index: Index, options: ReadOptions) -> Result<MdsDataset> {
        let index_path = dir.join(INDEX_BASENAME);
        let mut starts = Vec::with_capacity(index.shards.len() + 1);
        let mut total = 0u64;
        for s in &index.shards {
            s.columns(&index_path)?;
            starts.push(total);
            total += s.samples;
        }
        starts.push(total);
        let shards = (0..index.shards.len()).map(|_| OnceLock::new()).collect();
        Ok(MdsDataset {
            dir,
            index_path,
            index,
            starts,
            shards,
            options,
        })
    }

    /// The dataset folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Total number of samples.
    pub fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.index.shards.len()
    }

    /// Global index of each shard's first sample, plus the total at the end.
    pub fn shard_starts(&self) -> &[u64] {
        &self.starts
    }

    /// Shard `s`, opening it on first use. Concurrent first uses may both open it; one wins.
    pub fn shard(&self, s: usize) -> Result<&Arc<Shard>> {
        let cell = self
            .shards
            .get(s)
            .ok_or_else(|| MdsError::SampleOutOfRange {
                origin: self.index_path.clone(),
                index: s as u64,
                len: self.shards.len() as u64,
            })?;
        if let Some(shard) = cell.get() {
            return Ok(shard);
        }
        let info = &self.index.shards[s];
        let opened = Shard::open(
            &self.dir,
            info,
            &self.index_path,
            self.options.verify_hashes,
            self.options.mmap,
        )?;
        Ok(cell.get_or_init(|| Arc::new(opened)))
    }

    /// `(shard, index within shard)` of global sample `i`.
    pub fn locate(&self, i: u64) -> Result<(usize, usize)> {
        if i >= self.len() {
            return Err(MdsError::SampleOutOfRange {
                origin: self.dir.clone(),
                index: i,
                len: self.len(),
            });
        }
        // The last shard whose start is <= i (empty shards share a start with their successor).
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        Ok((s, (i - self.starts[s]) as usize))
    }

    /// Decodes global sample `i`.
    pub fn get(&self, i: u64) -> Result<Sample> {
        let (s, j) = self.locate(i)?;
        self.shard(s)?.get(j)
    }

    /// Appends global sample `i`'s token ids to `out`; returns how many.
    pub fn tokens_into(&self, i: u64, spec: &TokenSpec, out: &mut Vec<u32>) -> Result<usize> {
        let (s, j) = self.locate(i)?;
        self.shard(s)?.tokens_into(j, spec, out)
    }

    /// Every sample in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Sample>> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// Opens every shard with hash verification (whatever the options) and decodes every
    /// sample; the first problem is returned.
    pub fn verify(&self) -> Result<()> {
        for info in &self.index.shards {
            let shard = Shard::open(&self.dir, info, &self.index_path, true, false)?;
            for j in 0..shard.len() {
                shard.get(j)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mds::value::Value;
    use crate::mds::writer::{MdsWriter, WriterOptions};

    #[test]
    fn locate_maps_global_indices_across_shards_including_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        // A tiny limit gives an empty first shard, then one sample per shard.
        let opts = WriterOptions {
            size_limit: Some(120),
            ..Default::default()
        };
        let mut w = MdsWriter::create(dir.path(), &[("x", "int")], opts).unwrap();
        for i in 0..4 {
            w.write(&[("x", Value::Int(i * 10))]).unwrap();
        }
        w.finish().unwrap();
        let ds = MdsDataset::open(dir.path()).unwrap();
        assert_eq!(ds.shard_starts()[0], ds.shard_starts()[1]);
        for i in 0..4 {
            let (s, j) = ds.locate(i).unwrap();
            assert!(!ds.shard(s).unwrap().is_empty());
            assert_eq!(
                ds.shard(s).unwrap().get(j).unwrap().get("x"),
                Some(&Value::Int(i as i64 * 10))
            );
        }
        assert!(matches!(
            ds.locate(4),
            Err(MdsError::SampleOutOfRange {
                index: 4,
                len: 4,
                ..
            })
        ));
    }

    #[test]
    fn open_refuses_pkl_columns_naming_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            MdsWriter::create(dir.path(), &[("obj", "bytes")], WriterOptions::default()).unwrap();
        w.write(&[("obj", Value::Bytes(b"x".to_vec()))]).unwrap();
        w.finish().unwrap();
        let index = dir.path().join(INDEX_BASENAME);
        let text = std::fs::read_to_string(&index)
            .unwrap()
            .replace("[\"bytes\"]", "[\"pkl\"]");
        std::fs::write(&index, text).unwrap();
        let err = MdsDataset::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, MdsError::UnsafeEncoding { column, .. } if column == "obj"),
            "{err}"
        );
        // The index alone (what `inspect` reads) still parses.
        assert_eq!(
            crate::mds::inspect::summarize(dir.path(), None)
                .unwrap()
                .samples,
            1
        );
    }
}
