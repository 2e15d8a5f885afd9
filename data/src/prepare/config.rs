//! What `tessera data prepare` is asked to do: inputs, tokenizer, packing, output and cleaning.
//!
//! Defaults follow llm-foundry's `convert_dataset_json.py` (EOS after every document, wrap on,
//! no compression, 64 MiB shards) and switch every cleaning stage off, so that a plain run writes
//! exactly the tokenizer's encoding of the documents, as mosaicml-streaming users expect. Cleaning
//! is opt-in per stage ([`CleanConfig::all`] turns everything on with the defaults below).

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::PrepareError;
use super::clean::Utf8Mode;
use super::minhash::NearDupConfig;
use super::pii::PiiConfig;
use super::quality::QualityConfig;

/// The default sample length (llm-foundry's usual `--concat_tokens 2048`).
pub const DEFAULT_SEQ_LEN: usize = 2048;
/// The default shard size limit: mosaicml-streaming's `1 << 26` bytes.
pub const DEFAULT_SHARD_SIZE: u64 = 1 << 26;

/// Settings of one `prepare` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareConfig {
    /// Files, globs or directories (see `input::expand_inputs` for the order).
    pub inputs: Vec<String>,
    /// The `tokenizer.json` to encode with.
    pub tokenizer: PathBuf,
    /// The output folder: `train/` (and `val/`) MDS datasets plus `prepare.json`.
    pub out: PathBuf,
    /// The JSON field or Parquet column holding the text (`"text"`).
    pub text_field: String,
    /// Tokens per sample.
    pub seq_len: usize,
    /// Token appended after every document; `None` means the tokenizer's EOS.
    pub eos_id: Option<u32>,
    /// Token put before every document; `None` means none (llm-foundry's default).
    pub bos_id: Option<u32>,
    /// Carry the tokens past a sample boundary into the next sample (llm-foundry's default; its
    /// `--no_wrap` is `false` here).
    pub wrap: bool,
    /// MDS shard compression as streaming names it (`"zstd"`, `"zstd:7"`, `"gz"`…); `None` =
    /// uncompressed.
    pub compression: Option<String>,
    /// Hashes recorded per shard in `index.json` (`"sha1"`, `"xxh3_64"`…), as `MDSWriter(hashes=…)`.
    pub hashes: Vec<String>,
    /// Shard size limit in bytes (uncompressed), as `MDSWriter(size_limit=…)`.
    pub shard_size: u64,
    /// Worker threads for parsing, cleaning and tokenizing; 0 = every core. The output does not
    /// depend on it.
    pub workers: usize,
    /// Fraction of documents routed to `val/` by a hash of their normalized text.
    pub val_fraction: f64,
    /// Seed of every routing and MinHash hash (slices, validation split, permutations).
    pub seed: u64,
    /// Make the first bad line an error instead of counting it.
    pub strict: bool,
    /// Replace an existing, different run in `out` instead of refusing.
    pub overwrite: bool,
    /// Process only this slice of the documents (`--slice i/N`).
    pub slice: Option<Slice>,
    /// Cleaning stages.
    pub clean: CleanConfig,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

impl PrepareConfig {
    /// A config with the defaults above.
    pub fn new(
        inputs: Vec<String>,
        tokenizer: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            inputs,
            tokenizer: tokenizer.into(),
            out: out.into(),
            text_field: "text".into(),
            seq_len: DEFAULT_SEQ_LEN,
            eos_id: None,
            bos_id: None,
            wrap: true,
            compression: None,
            hashes: Vec::new(),
            shard_size: DEFAULT_SHARD_SIZE,
            workers: 0,
            val_fraction: 0.0,
            seed: 0,
            strict: false,
            overwrite: false,
            slice: None,
            clean: CleanConfig::default(),
            progress: true,
        }
    }

    /// Checks the settings that do not need the tokenizer or the files.
    pub fn validate(&self) -> Result<(), PrepareError> {
        let bad = |field, message: String| Err(PrepareError::Config { field, message });
        if self.inputs.is_empty() {
            return bad("inputs", "no input given".into());
        }
        if self.text_field.is_empty() {
            return bad("text_field", "must not be empty".into());
        }
        if self.seq_len == 0 || self.seq_len > i32::MAX as usize {
            return bad(
                "seq_len",
                format!("{} is out of range (expected 1..=2^31-1)", self.seq_len),
            );
        }
        if self.shard_size == 0 || self.shard_size > u32::MAX as u64 {
            return bad(
                "shard_size",
                format!(
                    "{} bytes is out of range (expected 1..=2^32-1)",
                    self.shard_size
                ),
            );
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(
                "val_fraction",
                format!("{} is outside [0, 1)", self.val_fraction),
            );
        }
        if let Some(nd) = &self.clean.near_dedup {
            if nd.bands == 0 || nd.rows == 0 || nd.ngram == 0 {
                return bad(
                    "near_dedup",
                    format!(
                        "bands ({}), rows ({}) and ngram ({}) must be positive",
                        nd.bands, nd.rows, nd.ngram
                    ),
                );
            }
            if !(0.0..=1.0).contains(&nd.threshold) {
                return bad(
                    "near_dedup.threshold",
                    format!("{} is outside [0, 1]", nd.threshold),
                );
            }
        }
        Ok(())
    }

    /// The number of worker threads `workers` resolves to.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers
        }
    }
}

/// One deterministic slice of the documents: `index` of `count`, 0-based (`--slice 0/4` …
/// `--slice 3/4`, matching a Slurm array's `SLURM_ARRAY_TASK_ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// This slice, from 0.
    pub index: u32,
    /// Slices in the run.
    pub count: u32,
}

impl Slice {
    /// The subfolder (inside `train/` and `val/`) and report suffix of this slice.
    pub fn name(&self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }
}

impl FromStr for Slice {
    type Err = PrepareError;
    fn from_str(s: &str) -> Result<Self, PrepareError> {
        let bad = || PrepareError::Config {
            field: "slice",
            message: format!("{s:?} is not i/N with 0 <= i < N (e.g. 0/4)"),
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count || count > 99_999 {
            return Err(bad());
        }
        Ok(Slice { index, count })
    }
}

/// The cleaning stages; each is off unless set, and each counts what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanConfig {
    /// Invalid UTF-8: repair (default) or drop. Always active: the tokenizer needs text.
    pub utf8: Utf8Mode,
    /// Remove control characters other than tab, newline and carriage return.
    pub strip_control: bool,
    /// Drop documents whose normalized text (lowercase, collapsed whitespace) was seen before.
    pub exact_dedup: bool,
    /// Drop near-duplicates (MinHash LSH).
    pub near_dedup: Option<NearDupConfig>,
    /// Replace PII with placeholders.
    pub pii: Option<PiiConfig>,
    /// Gopher quality and repetition filters.
    pub quality: Option<QualityConfig>,
}

impl Default for CleanConfig {
    fn default() -> Self {
        Self {
            utf8: Utf8Mode::Repair,
            strip_control: false,
            exact_dedup: false,
            near_dedup: None,
            pii: None,
            quality: None,
        }
    }
}

impl CleanConfig {
    /// Every stage on, with default parameters.
    pub fn all() -> Self {
        Self {
            utf8: Utf8Mode::Repair,
            strip_control: true,
            exact_dedup: true,
            near_dedup: Some(NearDupConfig::default()),
            pii: Some(PiiConfig::default()),
            quality: Some(QualityConfig::default()),
        }
    }

    /// True when a stage needs the documents in order (dedup), which splits each batch into a
    /// parallel clean phase, a sequential decision and a parallel tokenize phase.
    pub fn needs_sequential_pass(&self) -> bool {
        self.exact_dedup || self.near_dedup.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_parses_zero_based_and_rejects_nonsense() {
        assert_eq!(
            "2/4".parse::<Slice>().unwrap(),
            Slice { index: 2, count: 4 }
        );
        assert_eq!(
            "0/1".parse::<Slice>().unwrap().name(),
            "part-00000-of-00001"
        );
        for bad in ["4/4", "1/0", "a/2", "3", "-1/2", ""] {
            let err = bad.parse::<Slice>().unwrap_err().to_string();
            assert!(err.contains("slice"), "{bad}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let base = PrepareConfig::new(vec!["x.jsonl".into()], "t.json", "out");
        assert!(base.validate().is_ok());
        let cases: Vec<(PrepareConfig, &str)> = vec![
            (
                PrepareConfig {
                    seq_len: 0,
                    ..base.clone()
                },
                "seq_len",
            ),
            (
                PrepareConfig {
                    val_fraction: 1.0,
                    ..base.clone()
                },
                "val_fraction",
            ),
            (
                PrepareConfig {
                    shard_size: 0,
                    ..base.clone()
                },
                "shard_size",
            ),
            (
                PrepareConfig {
                    inputs: vec![],
                    ..base.clone()
                },
                "inputs",
            ),
            (
                PrepareConfig {
                    clean: CleanConfig {
                        near_dedup: Some(NearDupConfig {
                            bands: 0,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "near_dedup",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn defaults_leave_documents_untouched() {
        let c = CleanConfig::default();
        assert!(
            !c.strip_control
                && !c.exact_dedup
                && c.near_dedup.is_none()
                && c.pii.is_none()
                && c.quality.is_none()
        );
        assert!(!c.needs_sequential_pass());
        assert!(CleanConfig::all().needs_sequential_pass());
    }
}
