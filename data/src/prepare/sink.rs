//! The writing end: one packer and one MDS writer per split, fed documents in order by a single
//! thread, so sample boundaries and shard contents never depend on the worker count.

use std::path::PathBuf;

use super::PrepareError;
use super::pack::Packer;
use super::report::SplitReport;
use crate::mds::{Compression, HashAlgo, MdsWriter, WriterOptions};

/// The column llm-foundry's `StreamingTextDataset` reads, with the encoding its
/// `ConcatTokensDataset` writes.
pub const TOKENS_COLUMN: (&str, &str) = ("tokens", "ndarray:int32");

/// One split's packer and writer.
pub struct SplitSink {
    name: &'static str,
    dir: PathBuf,
    packer: Packer,
    writer: MdsWriter,
    docs: u64,
}

/// Settings every split's writer shares.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub seq_len: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub wrap: bool,
    pub compression: Option<Compression>,
    pub hashes: Vec<HashAlgo>,
    pub shard_size: u64,
}

impl SplitSink {
    /// Opens the writer for split `name` in `dir` (which must be empty or absent).
    pub fn create(name: &'static str, dir: PathBuf, o: &SinkOptions) -> Result<Self, PrepareError> {
        let options = WriterOptions {
            compression: o.compression,
            hashes: o.hashes.clone(),
            size_limit: Some(o.shard_size),
            overwrite: false,
        };
        let writer =
            MdsWriter::create(&dir, &[TOKENS_COLUMN], options).map_err(|e| PrepareError::Mds {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            name,
            dir,
            packer: Packer::new(o.seq_len, o.bos, o.eos, o.wrap),
            writer,
            docs: 0,
        })
    }

    /// Packs one document, writing every sample it completes.
    pub fn push(&mut self, ids: &[u32]) -> Result<(), PrepareError> {
        self.docs += 1;
        let writer = &mut self.writer;
        let dir = &self.dir;
        self.packer.push(ids, |sample| {
            writer.write_tokens(sample).map_err(|e| PrepareError::Mds {
                path: dir.clone(),
                message: e.to_string(),
            })
        })
    }

    /// Drops the partial last sample, flushes the last shard and writes `index.json`.
    pub fn finish(self) -> Result<(&'static str, SplitReport), PrepareError> {
        let stats = self.packer.finish();
        let index = self.writer.finish().map_err(|e| PrepareError::Mds {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        Ok((
            self.name,
            SplitReport {
                docs: self.docs,
                tokens: stats.tokens_in,
                samples: stats.samples,
                tokens_dropped: stats.tokens_dropped,
                shards: index.shards.len() as u64,
            },
        ))
    }
}
