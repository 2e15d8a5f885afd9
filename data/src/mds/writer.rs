//! `MdsWriter`: writes shards and `index.json` byte-identical to streaming's `MDSWriter`.
//!
//! Behaviour copied (by reading, not code) from `format/base/writer.py` and `format/mds/writer.py`:
//! - columns are sorted by name; the shard config is `json.dumps(config, sort_keys=True)`;
//! - a sample is `u32 size per variable column | payloads`;
//! - `size_limit` accounting: a shard "costs" `4 + 4 + len(config)` plus `len(sample) + 4` per
//!   sample, and a new sample that would push the cost past the limit first flushes the current
//!   shard. Like streaming, a first sample bigger than the limit flushes an empty shard first;
//! - basenames `shard.{n:05}.mds` and `+ ".<ext>"` when compressed; raw hashes over the
//!   decompressed bytes, zip hashes over the compressed file.
//!
//! Unlike streaming, every file is written atomically and `index.json` last, a shard over
//! 4 GiB (which streaming would silently corrupt by wrapping its u32 offsets) is an error, and a
//! sample with an unknown column name is an error rather than silently dropped.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::atomic::{is_temporary, sync_dir, write_atomic};
use super::codec;
use super::columns::Columns;
use super::compression::Compression;
use super::error::{MdsError, Result};
use super::hashing::HashAlgo;
use super::index::{FileInfo, INDEX_BASENAME, Index, ShardInfo};
use super::pyjson;
use super::tokens::encode_tokens;
use super::value::Value;

/// Streaming's default shard size limit: 64 MiB.
pub const DEFAULT_SIZE_LIMIT: u64 = 1 << 26;

/// Writer settings, with streaming's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// Shard compression (`None` = uncompressed).
    pub compression: Option<Compression>,
    /// Hashes recorded for every shard file (sorted and de-duplicated by the writer, as streaming
    /// requires them sorted).
    pub hashes: Vec<HashAlgo>,
    /// Start a new shard past this many bytes (`None` or `Some(0)` = one shard). Below 2^32.
    pub size_limit: Option<u64>,
    /// If the folder already holds files: `false` refuses; `true` deletes `index.json` first
    /// (so the old dataset is never mistaken for the new one), then the old shard files and
    /// temp files. Other files are left alone.
    pub overwrite: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: None,
            hashes: Vec::new(),
            size_limit: Some(DEFAULT_SIZE_LIMIT),
            overwrite: false,
        }
    }
}

/// Writes an MDS dataset into one folder.
#[derive(Debug)]
pub struct MdsWriter {
    dir: PathBuf,
    columns: Columns,
    compression: Option<Compression>,
    hashes: Vec<HashAlgo>,
    size_limit: Option<u64>,
    config: Vec<u8>,
    /// Encoded samples of the shard being built, back to back.
    body: Vec<u8>,
    /// End offset (within `body`) of each sample of the shard being built.
    ends: Vec<usize>,
    /// Streaming's `new_shard_size`.
    shard_cost: u64,
    /// One encoded sample, reused.
    scratch: Vec<u8>,
    /// Variable-column sizes of the sample being encoded, reused.
    var_sizes: Vec<u32>,
    shards: Vec<ShardInfo>,
    samples_written: u64,
}

impl MdsWriter {
    /// Creates `dir` if needed and prepares a writer for `columns` (`(name, encoding)`, any
    /// order; written sorted by name).
    pub fn create(
        dir: impl AsRef<Path>,
        columns: &[(&str, &str)],
        options: WriterOptions,
    ) -> Result<MdsWriter> {
        let dir = dir.as_ref().to_path_buf();
        let mut sorted: Vec<(&str, &str)> = columns.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let columns = Columns::new(sorted.iter().copied(), Path::new("writer"))?;
        let size_limit = match options.size_limit {
            None | Some(0) => None,
            Some(v) if v >= 1 << 32 => {
                return Err(MdsError::InvalidOption {
                    option: "size_limit",
                    found: v.to_string(),
                    expected: "below 2^32 (MDS offsets are u32)".into(),
                });
            }
            Some(v) => Some(v),
        };
        let mut hashes = options.hashes.clone();
        hashes.sort_by_key(|h| h.name());
        hashes.dedup();
        let config = json!({
            "column_encodings": columns.iter().map(|c| c.encoding_text.clone()).collect::<Vec<_>>(),
            "column_names": columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            "column_sizes": columns.iter().map(|c| c.size).collect::<Vec<_>>(),
            "compression": options.compression.map(|c| c.to_string()),
            "format": "mds",
            "hashes": hashes.iter().map(|h| h.name()).collect::<Vec<_>>(),
            "size_limit": size_limit,
            "version": 2,
        });
        let config = pyjson::dumps_sorted(&config).into_bytes();
        prepare_dir(&dir, options.overwrite)?;
        let shard_cost = 8 + config.len() as u64;
        Ok(MdsWriter {
            dir,
            columns,
            compression: options.compression,
            hashes,
            size_limit,
            config,
            body: Vec::new(),
            ends: Vec::new(),
            shard_cost,
            scratch: Vec::new(),
            var_sizes: Vec::new(),
            shards: Vec::new(),
            samples_written: 0,
        })
    }

    /// The writer's columns, sorted by name.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// Samples accepted so far.
    pub fn samples_written(&self) -> u64 {
        self.samples_written
    }

    /// Shards flushed to disk so far.
    pub fn shards_written(&self) -> usize {
        self.shards.len()
    }

    /// Writes one sample given as `(column, value)` pairs in any order. Every column must be
    /// present once; an unknown name is an error.
    pub fn write(&mut self, fields: &[(&str, Value)]) -> Result<()> {
        for (name, _) in fields {
            if self.columns.position(name).is_none() {
                return Err(MdsError::UnknownColumn {
                    column: name.to_string(),
                    available: self.columns.names_list(),
                });
            }
        }
        let mut ordered: Vec<&Value> = Vec::with_capacity(self.columns.len());
        for c in self.columns.iter() {
            let mut it = fields.iter().filter(|(n, _)| *n == c.name);
            let value = it.next().ok_or_else(|| MdsError::MissingColumn {
                origin: "writer".into(),
                column: c.name.clone(),
                available: fields
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if it.next().is_some() {
                return Err(MdsError::Encode {
                    column: c.name.clone(),
                    encoding: c.encoding_text.clone(),
                    reason: "given twice in one sample".into(),
                });
            }
            ordered.push(&value.1);
        }
        self.write_ordered(&ordered)
    }

    /// Writes one sample given as one value per column, in sorted column order.
    pub fn write_values(&mut self, values: &[Value]) -> Result<()> {
        let refs: Vec<&Value> = values.iter().collect();
        self.write_ordered(&refs)
    }

    fn write_ordered(&mut self, values: &[&Value]) -> Result<()> {
        self.check_arity(values.len())?;
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        self.var_sizes.clear();
        for (c, v) in self.columns.iter().zip(values) {
            let before = body.len();
            codec::encode_into(&c.encoding, v, &mut body).map_err(|reason| MdsError::Encode {
                column: c.name.clone(),
                encoding: c.encoding_text.clone(),
                reason,
            })?;
            note_size(
                &mut self.var_sizes,
                c.size,
                body.len() - before,
                &c.name,
                &c.encoding_text,
            )?;
        }
        self.push_encoded_body(body)
    }

    /// Writes one sample from pre-encoded payloads (one per column, sorted column order), for
    /// callers that encode in parallel. Fixed-size columns are checked.
    pub fn write_raw(&mut self, payloads: &[&[u8]]) -> Result<()> {
        self.check_arity(payloads.len())?;
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        self.var_sizes.clear();
        for (c, p) in self.columns.iter().zip(payloads) {
            body.extend_from_slice(p);
            note_size(
                &mut self.var_sizes,
                c.size,
                p.len(),
                &c.name,
                &c.encoding_text,
            )?;
        }
        self.push_encoded_body(body)
    }

    /// Writes one sample of a single-column token dataset (`tokens: ndarray:int32` as
    /// llm-foundry's converters write it; any integer `ndarray` or `bytes` as int64 also works).
    pub fn write_tokens(&mut self, tokens: &[u32]) -> Result<()> {
        if self.columns.len() != 1 {
            return Err(MdsError::InvalidOption {
                option: "columns",
                found: self.columns.names_list(),
                expected: "exactly one token column for write_tokens".into(),
            });
        }
        let c = &self.columns.iter().as_slice()[0];
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        self.var_sizes.clear();
        encode_tokens(&c.encoding, super::encoding::DType::I64, tokens, &mut body).map_err(
            |reason| MdsError::Encode {
                column: c.name.clone(),
                encoding: c.encoding_text.clone(),
                reason,
            },
        )?;
        note_size(
            &mut self.var_sizes,
            c.size,
            body.len(),
            &c.name,
            &c.encoding_text,
        )?;
        self.push_encoded_body(body)
    }

    fn check_arity(&self, n: usize) -> Result<()> {
        if n != self.columns.len() {
            return Err(MdsError::InvalidOption {
                option: "sample",
                found: format!("{n} values"),
                expected: format!(
                    "{} (columns {})",
                    self.columns.len(),
                    self.columns.names_list()
                ),
            });
        }
        Ok(())
    }

    /// Appends `sizes | body` as one sample, flushing the current shard first if the limit
    /// says so (streaming's `Writer.write`).
    fn push_encoded_body(&mut self, body: Vec<u8>) -> Result<()> {
        let sample_len = 4 * self.var_sizes.len() + body.len();
        let cost = sample_len as u64 + 4;
        if let Some(limit) = self.size_limit
            && limit < self.shard_cost + cost
        {
            self.flush_shard()?;
        }
        for s in &self.var_sizes {
            self.body.extend_from_slice(&s.to_le_bytes());
        }
        self.body.extend_from_slice(&body);
        self.ends.push(self.body.len());
        self.shard_cost += cost;
        self.samples_written += 1;
        self.scratch = body;
        Ok(())
    }

    /// Encodes, hashes, compresses and atomically writes the current shard.
    fn flush_shard(&mut self) -> Result<()> {
        let n = self.ends.len();
        let header = 4 + 4 * (n + 1) + self.config.len();
        let total = header as u64 + self.body.len() as u64;
        let number = self.shards.len();
        let raw_name = format!("shard.{number:05}.mds");
        if total > u32::MAX as u64 {
            return Err(MdsError::ShardTooLarge {
                path: self.dir.join(&raw_name),
                bytes: total,
            });
        }
        let mut raw = Vec::with_capacity(total as usize);
        raw.extend_from_slice(&(n as u32).to_le_bytes());
        raw.extend_from_slice(&(header as u32).to_le_bytes());
        for &end in &self.ends {
            raw.extend_from_slice(&((header + end) as u32).to_le_bytes());
        }
        raw.extend_from_slice(&self.config);
        raw.extend_from_slice(&self.body);
        let raw_info = FileInfo {
            basename: raw_name.clone(),
            bytes: raw.len() as u64,
            hashes: self.hash(&raw),
        };
        let zip_info = match self.compression {
            Some(c) => {
                let zip_name = format!("{raw_name}.{}", c.extension());
                let zipped = c
                    .compress(&raw)
                    .map_err(|e| MdsError::io(self.dir.join(&zip_name), "compressing", e))?;
                let info = FileInfo {
                    basename: zip_name.clone(),
                    bytes: zipped.len() as u64,
                    hashes: self.hash(&zipped),
                };
                write_atomic(&self.dir, &zip_name, &zipped)?;
                Some(info)
            }
            None => {
                write_atomic(&self.dir, &raw_name, &raw)?;
                None
            }
        };
        self.shards.push(ShardInfo {
            column_encodings: self
                .columns
                .iter()
                .map(|c| c.encoding_text.clone())
                .collect(),
            column_names: self.columns.iter().map(|c| c.name.clone()).collect(),
            column_sizes: self.columns.iter().map(|c| c.size).collect(),
            compression: self.compression,
            hashes: self.hashes.iter().map(|h| h.name().to_string()).collect(),
            raw_data: raw_info,
            samples: n as u64,
            size_limit: self.size_limit,
            zip_data: zip_info,
        });
        self.body.clear();
        self.ends.clear();
        self.shard_cost = 8 + self.config.len() as u64;
        Ok(())
    }

    fn hash(&self, data: &[u8]) -> std::collections::BTreeMap<String, String> {
        self.hashes
            .iter()
            .map(|h| (h.name().to_string(), h.hex(data)))
            .collect()
    }

    /// Flushes the last shard and writes `index.json` (last, atomically). Returns the index.
    pub fn finish(mut self) -> Result<Index> {
        if !self.ends.is_empty() {
            self.flush_shard()?;
        }
        let index = Index {
            shards: std::mem::take(&mut self.shards),
        };
        index.write_atomic(&self.dir)?;
        Ok(index)
    }
}

/// Checks a payload against its column's fixed size, or records its size for the header.
fn note_size(
    var_sizes: &mut Vec<u32>,
    fixed: Option<u64>,
    len: usize,
    name: &str,
    enc: &str,
) -> Result<()> {
    match fixed {
        Some(want) if want != len as u64 => Err(MdsError::Encode {
            column: name.to_string(),
            encoding: enc.to_string(),
            reason: format!("payload is {len} bytes, the encoding's fixed size is {want}"),
        }),
        Some(_) => Ok(()),
        None => {
            let n = u32::try_from(len).map_err(|_| MdsError::Encode {
                column: name.to_string(),
                encoding: enc.to_string(),
                reason: format!("payload of {len} bytes exceeds the u32 size field"),
            })?;
            var_sizes.push(n);
            Ok(())
        }
    }
}

/// Creates `dir`, or checks it is empty, or (with `overwrite`) clears a previous dataset.
fn prepare_dir(dir: &Path, overwrite: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| MdsError::io(dir, "creating folder", e))?;
    let entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| MdsError::io(dir, "listing", e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let Some(first) = entries.first() else {
        return Ok(());
    };
    if !overwrite {
        return Err(MdsError::DirNotEmpty {
            path: dir.to_path_buf(),
            example: first.clone(),
        });
    }
    // Index first: from here on the folder is not a dataset, whatever else remains.
    let index = dir.join(INDEX_BASENAME);
    if index.exists() {
        std::fs::remove_file(&index).map_err(|e| MdsError::io(&index, "removing", e))?;
        sync_dir(dir)?;
    }
    for name in entries
        .iter()
        .filter(|n| is_shard_name(n) || is_temporary(n))
    {
        let p = dir.join(name);
        std::fs::remove_file(&p).map_err(|e| MdsError::io(&p, "removing", e))?;
    }
    Ok(())
}

/// `shard.NNNNN.mds` with an optional compression extension.
fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("shard.") else {
        return false;
    };
    let Some((digits, tail)) = rest.split_once(".mds") else {
        return false;
    };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (tail.is_empty() || tail.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mds::reader::MdsDataset;

    #[test]
    fn size_limit_splits_like_streaming_including_the_empty_first_shard() {
        let dir = tempfile::tempdir().unwrap();
        // Config is long, so a limit of 100 is below one sample's cost: streaming flushes an
        // empty shard before the first sample, then one sample per shard.
        let opts = WriterOptions {
            size_limit: Some(100),
            ..Default::default()
        };
        let mut w = MdsWriter::create(dir.path(), &[("x", "int")], opts).unwrap();
        for i in 0..3 {
            w.write(&[("x", Value::Int(i))]).unwrap();
        }
        let index = w.finish().unwrap();
        let counts: Vec<u64> = index.shards.iter().map(|s| s.samples).collect();
        assert_eq!(counts, vec![0, 1, 1, 1]);
        let ds = MdsDataset::open(dir.path()).unwrap();
        assert_eq!(ds.get(2).unwrap().get("x"), Some(&Value::Int(2)));
    }

    #[test]
    fn writer_refuses_a_non_empty_folder_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shard.00007.mds"), b"old").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"keep").unwrap();
        let err =
            MdsWriter::create(dir.path(), &[("x", "int")], WriterOptions::default()).unwrap_err();
        assert!(matches!(err, MdsError::DirNotEmpty { .. }), "{err}");
        let opts = WriterOptions {
            overwrite: true,
            ..Default::default()
        };
        let w = MdsWriter::create(dir.path(), &[("x", "int")], opts).unwrap();
        assert!(!dir.path().join("shard.00007.mds").exists());
        assert!(dir.path().join("notes.txt").exists());
        assert_eq!(w.finish().unwrap().shards.len(), 0);
        assert_eq!(MdsDataset::open(dir.path()).unwrap().len(), 0);
    }

    #[test]
    fn samples_with_missing_unknown_or_mistyped_columns_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MdsWriter::create(
            dir.path(),
            &[("a", "int"), ("b", "str")],
            WriterOptions::default(),
        )
        .unwrap();
        assert!(matches!(
            w.write(&[("a", Value::Int(1))]),
            Err(MdsError::MissingColumn { .. })
        ));
        let extra = [
            ("a", Value::Int(1)),
            ("b", Value::Str("x".into())),
            ("c", Value::Int(0)),
        ];
        assert!(matches!(
            w.write(&extra),
            Err(MdsError::UnknownColumn { .. })
        ));
        let wrong = [("a", Value::Str("1".into())), ("b", Value::Str("x".into()))];
        assert!(matches!(w.write(&wrong), Err(MdsError::Encode { .. })));
        assert!(matches!(
            w.write_raw(&[&[0; 7], b"x"]),
            Err(MdsError::Encode { .. })
        ));
        assert!(w.write_tokens(&[1]).is_err());
        assert_eq!(w.samples_written(), 0);
        assert!(
            MdsWriter::create(
                dir.path().join("q"),
                &[("a", "pkl")],
                WriterOptions::default()
            )
            .is_err()
        );
    }

    #[test]
    fn no_index_exists_until_finish() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WriterOptions {
            size_limit: Some(200),
            ..Default::default()
        };
        let mut w = MdsWriter::create(dir.path(), &[("tokens", "ndarray:int32")], opts).unwrap();
        for i in 0..20u32 {
            w.write_tokens(&[i; 10]).unwrap();
        }
        assert!(w.shards_written() > 1);
        assert!(!dir.path().join(INDEX_BASENAME).exists());
        drop(w);
        assert!(MdsDataset::open(dir.path()).is_err());
    }

    #[test]
    fn shard_names_are_recognised() {
        assert!(is_shard_name("shard.00000.mds"));
        assert!(is_shard_name("shard.00012.mds.zstd"));
        assert!(!is_shard_name("shard.mds"));
        assert!(!is_shard_name("shard.0001.mdsx"));
        assert!(!is_shard_name("index.json"));
    }
}
