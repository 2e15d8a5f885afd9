//! What `tessera data inspect DIR` and `tessera data dump DIR [--range A..B]` print.
//!
//! [`summarize`] reads only the index, plus (when asked for tokens) each sample's token-column
//! header: no values are decoded. [`sample_to_json`] is the dump format: one JSON object per
//! sample, ndarrays as nested lists (by shape), bytes as standard base64 with padding.

use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::codec::parse_ndarray_header;
use super::encoding::Encoding;
use super::error::{MdsError, Result};
use super::index::Index;
use super::reader::MdsDataset;
use super::tokens::TokenSpec;
use super::value::{NdArray, Sample, Value};

/// One column as the first shard declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnSummary {
    /// The column name.
    pub name: String,
    /// Its encoding string.
    pub encoding: String,
    /// Fixed payload size, if any.
    pub size: Option<u64>,
}

/// Token counts over the token column.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenStats {
    /// The token column.
    pub column: String,
    /// Tokens over all samples.
    pub total: u64,
    /// The fewest tokens in one sample.
    pub min_per_sample: u64,
    /// The most tokens in one sample.
    pub max_per_sample: u64,
}

/// A dataset at a glance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetSummary {
    /// The dataset folder.
    pub dir: PathBuf,
    /// Samples in the dataset.
    pub samples: u64,
    /// Shard files.
    pub shards: usize,
    /// Columns of the first shard (on-disk order).
    pub columns: Vec<ColumnSummary>,
    /// Whether some shard has different columns from the first.
    pub mixed_columns: bool,
    /// Distinct compression settings (`none` for uncompressed shards).
    pub compression: Vec<String>,
    /// Distinct hash algorithms recorded.
    pub hashes: Vec<String>,
    /// Decompressed bytes over all shards.
    pub raw_bytes: u64,
    /// Bytes of the files on disk.
    pub file_bytes: u64,
    /// Sub-folders of a merged index (empty for a plain one).
    pub sub_folders: Vec<String>,
    /// Token counts, when asked for and the token column exists.
    pub tokens: Option<TokenStats>,
}

/// Summarises the dataset in `dir`. With `tokens`, also counts the ids in that column (reads
/// every shard, but decodes only the ndarray headers / byte lengths).
///
/// Without `tokens` only `index.json` is read, so even a dataset tessera refuses to decode (a
/// `pkl` column) can be inspected.
pub fn summarize(dir: impl AsRef<Path>, tokens: Option<&TokenSpec>) -> Result<DatasetSummary> {
    let index = &Index::load(dir.as_ref())?;
    let first = index.shards.first();
    let columns: Vec<ColumnSummary> = first
        .map(|s| {
            (0..s.column_names.len())
                .map(|i| ColumnSummary {
                    name: s.column_names[i].clone(),
                    encoding: s.column_encodings[i].clone(),
                    size: s.column_sizes[i],
                })
                .collect()
        })
        .unwrap_or_default();
    let mixed_columns = index.shards.iter().any(|s| {
        first.is_some_and(|f| {
            f.column_names != s.column_names || f.column_encodings != s.column_encodings
        })
    });
    let mut compression = Vec::new();
    let mut hashes = Vec::new();
    let mut sub_folders = Vec::new();
    for s in &index.shards {
        let c = s
            .compression
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        if !compression.contains(&c) {
            compression.push(c);
        }
        for h in s.raw_data.hashes.keys() {
            if !hashes.contains(h) {
                hashes.push(h.clone());
            }
        }
        if let Some((sub, _)) = s.raw_data.basename.split_once('/')
            && !sub_folders.iter().any(|x| x == sub)
        {
            sub_folders.push(sub.to_string());
        }
    }
    let tokens = match tokens {
        Some(spec) if columns.iter().any(|c| c.name == spec.column) => {
            Some(count_tokens(&MdsDataset::open(dir.as_ref())?, spec)?)
        }
        _ => None,
    };
    Ok(DatasetSummary {
        dir: dir.as_ref().to_path_buf(),
        samples: index.total_samples(),
        shards: index.shards.len(),
        columns,
        mixed_columns,
        compression,
        hashes,
        raw_bytes: index.shards.iter().map(|s| s.raw_data.bytes).sum(),
        file_bytes: index.shards.iter().map(|s| s.file_on_disk().bytes).sum(),
        sub_folders,
        tokens,
    })
}

fn count_tokens(ds: &MdsDataset, spec: &TokenSpec) -> Result<TokenStats> {
    let mut stats = TokenStats {
        column: spec.column.clone(),
        total: 0,
        min_per_sample: u64::MAX,
        max_per_sample: 0,
    };
    for s in 0..ds.num_shards() {
        let shard = ds.shard(s)?;
        let Some(col) = shard.columns().position(&spec.column) else {
            continue;
        };
        let encoding = &shard.columns().iter().as_slice()[col].encoding;
        for j in 0..shard.len() {
            let payload = shard.field(j, col)?;
            let n = match encoding {
                Encoding::Bytes => (payload.len() / spec.bytes_dtype.size()) as u64,
                Encoding::NdArray { dtype, shape } => {
                    parse_ndarray_header(*dtype, shape.as_deref(), payload, None)
                        .map_err(|reason| MdsError::Tokens {
                            path: shard.path().to_path_buf(),
                            sample: j,
                            column: spec.column.clone(),
                            reason,
                        })?
                        .elements
                }
                _ => continue,
            };
            stats.total += n;
            stats.min_per_sample = stats.min_per_sample.min(n);
            stats.max_per_sample = stats.max_per_sample.max(n);
        }
    }
    if stats.min_per_sample == u64::MAX {
        stats.min_per_sample = 0;
    }
    Ok(stats)
}

impl fmt::Display for DatasetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset      {}", self.dir.display())?;
        writeln!(f, "samples      {}", self.samples)?;
        write!(f, "shards       {}", self.shards)?;
        if !self.sub_folders.is_empty() {
            write!(
                f,
                " (merged from {} folders: {})",
                self.sub_folders.len(),
                self.sub_folders.join(", ")
            )?;
        }
        writeln!(f)?;
        writeln!(f, "columns      {}", self.columns.len())?;
        for c in &self.columns {
            writeln!(f, "  {:<20} {}", c.name, c.encoding)?;
        }
        if self.mixed_columns {
            writeln!(f, "  (some shards have different columns)")?;
        }
        writeln!(f, "compression  {}", self.compression.join(", "))?;
        let hashes = if self.hashes.is_empty() {
            "none".to_string()
        } else {
            self.hashes.join(", ")
        };
        writeln!(f, "hashes       {hashes}")?;
        writeln!(
            f,
            "bytes        {} decompressed, {} on disk",
            self.raw_bytes, self.file_bytes
        )?;
        match &self.tokens {
            Some(t) => writeln!(
                f,
                "tokens       {} in `{}` ({}..{} per sample)",
                t.total, t.column, t.min_per_sample, t.max_per_sample
            ),
            None => writeln!(f, "tokens       -"),
        }
    }
}

/// A value as dump JSON: bytes as base64, ndarrays as nested lists, non-finite floats as null.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Str(s) | Value::Decimal(s) => Json::String(s.clone()),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(x) => Json::from(*x),
        Value::Json(j) => j.clone(),
        Value::NdArray(a) => ndarray_to_json(a),
    }
}

fn ndarray_to_json(a: &NdArray) -> Json {
    let flat: Vec<Json> = match a.to_i64_vec() {
        Some(ints) => ints.into_iter().map(Json::from).collect(),
        None if a.dtype == super::encoding::DType::U64 => a
            .data
            .chunks_exact(8)
            .map(|c| Json::from(u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect(),
        None => a.to_f64_vec().into_iter().map(Json::from).collect(),
    };
    nest(&flat, &a.shape)
}

/// Folds a flat C-order list into nested lists of `shape`.
fn nest(flat: &[Json], shape: &[u64]) -> Json {
    match shape {
        [] | [_] => Json::Array(flat.to_vec()),
        [outer, rest @ ..] => {
            let step = flat.len() / (*outer as usize).max(1);
            Json::Array(flat.chunks(step.max(1)).map(|c| nest(c, rest)).collect())
        }
    }
}

/// A sample as one dump JSON object (`{column: value}`).
pub fn sample_to_json(s: &Sample) -> Json {
    let mut m = Map::new();
    for (name, v) in s.iter() {
        m.insert(name.to_string(), value_to_json(v));
    }
    Json::Object(m)
}

/// Writes samples `range` (clamped to the dataset) as JSON lines; returns how many.
pub fn dump_jsonl(ds: &MdsDataset, range: Range<u64>, out: &mut dyn Write) -> Result<u64> {
    let end = range.end.min(ds.len());
    let mut n = 0;
    for i in range.start..end {
        let line = serde_json::to_string(&sample_to_json(&ds.get(i)?)).unwrap_or_default();
        writeln!(out, "{line}").map_err(|e| MdsError::io("<output>", "writing", e))?;
        n += 1;
    }
    Ok(n)
}

/// A `--range` argument: `A..B` (half-open), `A..`, `..B`, `..` or a single index `A`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRange {
    /// The first sample.
    pub start: u64,
    /// One past the last sample; `None`: to the end.
    pub end: Option<u64>,
}

impl SampleRange {
    /// Parses the text form.
    pub fn parse(text: &str) -> Result<SampleRange> {
        let bad = || MdsError::InvalidRange {
            found: text.to_string(),
        };
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
        let r = match text.split_once("..") {
            None => {
                let a = num(text)?;
                SampleRange {
                    start: a,
                    end: Some(a.checked_add(1).ok_or_else(bad)?),
                }
            }
            Some((a, b)) => SampleRange {
                start: if a.trim().is_empty() { 0 } else { num(a)? },
                end: if b.trim().is_empty() {
                    None
                } else {
                    Some(num(b)?)
                },
            },
        };
        if r.end.is_some_and(|e| e < r.start) {
            return Err(bad());
        }
        Ok(r)
    }

    /// The concrete range for a dataset of `len` samples (end clamped to `len`).
    pub fn resolve(&self, len: u64) -> Range<u64> {
        let end = self.end.unwrap_or(len).min(len);
        self.start.min(end)..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mds::encoding::DType;

    #[test]
    fn ndarrays_dump_as_nested_lists_and_bytes_as_base64() {
        let a = NdArray::new(
            DType::I16,
            vec![2, 3],
            [1i16, 2, 3, -4, 5, 6]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .unwrap();
        assert_eq!(
            value_to_json(&Value::NdArray(a)),
            serde_json::json!([[1, 2, 3], [-4, 5, 6]])
        );
        let f = NdArray::from_f32(&[0.5, 1.5]);
        assert_eq!(
            value_to_json(&Value::NdArray(f)),
            serde_json::json!([0.5, 1.5])
        );
        assert_eq!(
            value_to_json(&Value::Bytes(b"hi!".to_vec())),
            serde_json::json!("aGkh")
        );
        assert_eq!(value_to_json(&Value::Float(f64::NAN)), Json::Null);
    }

    #[test]
    fn ranges_parse_and_clamp() {
        let r = |s: &str| SampleRange::parse(s).unwrap().resolve(10);
        assert_eq!(r("2..5"), 2..5);
        assert_eq!(r("3"), 3..4);
        assert_eq!(r("..4"), 0..4);
        assert_eq!(r("7.."), 7..10);
        assert_eq!(r(".."), 0..10);
        assert_eq!(r("8..50"), 8..10);
        assert_eq!(r("12"), 10..10);
        for bad in ["5..2", "a..b", "", "1...3", "-1"] {
            assert!(SampleRange::parse(bad).is_err(), "{bad}");
        }
    }
}
