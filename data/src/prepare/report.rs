//! `prepare.json`: what a run read, dropped, cleaned and wrote, and how fast. It is written last
//! (after every `index.json`), atomically, so it doubles as the run's completion marker.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::PrepareError;
use super::config::Slice;
use super::cross_slice::PendingNearDup;
use super::pii::PiiCounts;

/// At most this many bad lines are listed (all are counted).
pub const MAX_BAD_LINE_EXAMPLES: usize = 100;

/// One split's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    /// Documents routed here.
    pub docs: u64,
    /// Tokens packed (document tokens plus BOS/EOS).
    pub tokens: u64,
    /// Samples written (`seq_len` tokens each).
    pub samples: u64,
    /// Tokens not written: the final partial sample (and remainders without wrap).
    pub tokens_dropped: u64,
    /// Shard files written.
    pub shards: u64,
}

impl SplitReport {
    fn add(&mut self, o: &SplitReport) {
        self.docs += o.docs;
        self.tokens += o.tokens;
        self.samples += o.samples;
        self.tokens_dropped += o.tokens_dropped;
        self.shards += o.shards;
    }
}

/// The report of a run (or of a merge of slice runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepareReport {
    /// The tessera version that wrote it.
    pub tessera_version: String,
    /// Hash of every setting and input that affects the output, slice included.
    pub fingerprint: String,
    /// The same without the slice: equal across the slices of one run.
    pub run_fingerprint: String,
    /// The slice this report covers (`None`: the whole input, or a merge).
    pub slice: Option<Slice>,
    /// Slice reports this one sums (a merge).
    #[serde(default)]
    pub merged_slices: u32,
    /// Input files and their total size on disk.
    pub files: usize,
    /// Their total size on disk, in bytes.
    pub input_bytes: u64,
    /// Tokenizer, vocabulary size and the packing settings used.
    pub tokenizer: String,
    /// The tokenizer's vocabulary size.
    pub vocab_size: usize,
    /// Tokens per packed sample.
    pub seq_len: usize,
    /// The token appended to every document.
    pub eos_id: Option<u32>,
    /// The token put before every document, if any.
    pub bos_id: Option<u32>,
    /// Documents parsed from the inputs (bad lines excluded), this slice or not.
    pub docs_read: u64,
    /// Documents of this slice.
    pub docs_in: u64,
    /// Documents written.
    pub docs_out: u64,
    /// Documents dropped, by reason (`invalid_utf8`, `exact_dup`, `near_dup`, `quality_*`).
    pub dropped: BTreeMap<String, u64>,
    /// Documents whose invalid UTF-8 was repaired.
    pub utf8_repaired: u64,
    /// Documents that had control characters removed.
    pub control_stripped: u64,
    /// PII replacements, by kind, and documents with at least one.
    pub pii: PiiCounts,
    /// Documents with at least one PII replacement.
    pub pii_docs: u64,
    /// Lines that yielded no document (invalid JSON, missing or non-string field, null).
    pub bad_lines: u64,
    /// The first bad lines, as `file:line: reason`.
    pub bad_line_examples: Vec<String>,
    /// Totals over the splits.
    pub tokens: u64,
    /// Samples written, over the splits.
    pub samples: u64,
    /// Tokens not written, over the splits.
    pub tokens_dropped: u64,
    /// Shard files written, over the splits.
    pub shards: u64,
    /// Per split (`train`, `val`).
    pub splits: BTreeMap<String, SplitReport>,
    /// Wall-clock seconds and rates (for a merge: the sum over slices).
    pub seconds: f64,
    /// Documents of this slice per second.
    pub docs_per_sec: f64,
    /// Tokens written per second.
    pub tokens_per_sec: f64,
    /// Worker threads used.
    pub workers: usize,
    /// True when this call found the run already complete and did nothing.
    #[serde(default)]
    pub resumed: bool,
    /// A slice of a near-dedup run: its documents wait in `near-dup/` for `merge`, which
    /// decides the near-duplicates across slices and writes the shards (see `cross_slice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near_dup_pending: Option<PendingNearDup>,
}

impl PrepareReport {
    /// Adds the counts of `o` (a slice) into `self`.
    pub fn add(&mut self, o: &PrepareReport) {
        self.docs_read = self.docs_read.max(o.docs_read);
        self.docs_in += o.docs_in;
        self.docs_out += o.docs_out;
        for (k, v) in &o.dropped {
            *self.dropped.entry(k.clone()).or_default() += v;
        }
        self.utf8_repaired += o.utf8_repaired;
        self.control_stripped += o.control_stripped;
        self.pii.add(&o.pii);
        self.pii_docs += o.pii_docs;
        self.bad_lines = self.bad_lines.max(o.bad_lines);
        if self.bad_line_examples.is_empty() {
            self.bad_line_examples = o.bad_line_examples.clone();
        }
        self.tokens += o.tokens;
        self.samples += o.samples;
        self.tokens_dropped += o.tokens_dropped;
        self.shards += o.shards;
        for (k, v) in &o.splits {
            self.splits.entry(k.clone()).or_default().add(v);
        }
        self.seconds += o.seconds;
        self.set_rates();
    }

    /// Recomputes docs/s and tokens/s from the counts and `seconds`.
    pub fn set_rates(&mut self) {
        let s = self.seconds.max(1e-9);
        self.docs_per_sec = self.docs_in as f64 / s;
        self.tokens_per_sec = self.tokens as f64 / s;
    }

    /// Reads a report file.
    pub fn load(path: &Path) -> Result<Self, PrepareError> {
        let bytes = std::fs::read(path).map_err(PrepareError::io(path))?;
        serde_json::from_slice(&bytes).map_err(|e| PrepareError::Report {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Writes the report atomically (temp file, fsync, rename, fsync of the folder).
    pub fn save(&self, path: &Path) -> Result<(), PrepareError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| PrepareError::Report {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        write_atomic(path, &json)
    }
}

/// Writes `bytes` to `path` atomically and durably, so readers see the old file or the whole
/// new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PrepareError> {
    tessera_fs::atomic_write(path, bytes).map_err(|source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prepare.json");
        let mut r = PrepareReport {
            docs_in: 5,
            tokens: 100,
            seconds: 2.0,
            ..Default::default()
        };
        r.dropped.insert("exact_dup".into(), 2);
        r.splits.insert(
            "train".into(),
            SplitReport {
                docs: 3,
                samples: 4,
                ..Default::default()
            },
        );
        r.set_rates();
        r.save(&path).unwrap();
        assert_eq!(PrepareReport::load(&path).unwrap(), r);
        assert_eq!(r.tokens_per_sec, 50.0);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file may remain");
    }

    #[test]
    fn adding_slices_sums_their_counts() {
        let mut a = PrepareReport {
            docs_read: 10,
            docs_in: 4,
            tokens: 40,
            seconds: 1.0,
            ..Default::default()
        };
        a.splits.insert(
            "train".into(),
            SplitReport {
                docs: 4,
                samples: 2,
                ..Default::default()
            },
        );
        let mut b = a.clone();
        b.docs_in = 6;
        b.dropped.insert("near_dup".into(), 1);
        a.add(&b);
        assert_eq!((a.docs_read, a.docs_in, a.tokens), (10, 10, 80));
        assert_eq!(a.splits["train"].samples, 4);
        assert_eq!(a.dropped["near_dup"], 1);
    }

    #[test]
    fn a_corrupt_report_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prepare.json");
        std::fs::write(&path, b"{").unwrap();
        let err = PrepareReport::load(&path).unwrap_err().to_string();
        assert!(err.contains("prepare.json"), "{err}");
    }
}
