//! `tessera data prepare`: raw text → cleaned, deduplicated, tokenized, packed MDS shards that
//! llm-foundry's `StreamingTextDataset` (and tessera's `stream`) read as `tokens: ndarray:int32`.
//!
//! ```text
//! inputs (.jsonl[.gz|.zst], .txt, .parquet; files, globs, dirs)
//!   → reader thread (decompress, split lines)           input.rs, parquet.rs
//!   → workers: parse JSON field, UTF-8 repair/drop,      record.rs, clean.rs
//!     control strip, slice, quality, PII, MinHash        quality.rs, pii.rs, minhash.rs
//!   → in order: exact dedup, near dedup (LSH), split      pipeline.rs
//!   → workers: tokenize                                   stages.rs
//!   → writer thread: pack (EOS after each doc) → MDS     pack.rs, sink.rs
//!   → index.json per split, then prepare.json            outdir.rs, report.rs
//! ```
//!
//! Guarantees:
//! - **Packing** is llm-foundry's `ConcatTokensDataset`: `[BOS] doc [EOS]` per document, one
//!   running buffer, `seq_len` samples, remainder carried over, final partial sample dropped.
//! - **Deterministic**: the same inputs and settings give byte-identical shards for any
//!   `workers` (parallel work is per document and collected in order; dedup, packing and sharding
//!   are sequential).
//! - **Defaults change nothing**: every cleaning stage is off unless asked for, so a plain run
//!   writes exactly the tokenizer's encoding of the documents.
//! - **Bad lines** (invalid JSON, missing or non-string field, null) are counted and listed with
//!   file:line in `prepare.json`; `strict` makes the first one an error.
//! - **Interruption-safe**: `index.json` is written last per split and atomically, then
//!   `prepare.json` (the completion marker). A re-run with the same settings returns the stored
//!   report; an interrupted run of the same settings is redone; anything else needs `overwrite`
//!   (see `outdir`).
//! - **Slices** (`--slice i/N`): documents are assigned by a hash of their normalized text, so
//!   every slice job reads all inputs but processes 1/N of the documents, exact duplicates always
//!   meet in the same slice (exact dedup stays global), and [`merge`] joins the finished slices
//!   with streaming's `merge_index`. With near-dedup, slices hand their documents to [`merge`],
//!   which removes near-duplicates across slices in input order and packs the rest, so N
//!   slices keep the same documents and write the same shards as one process (`cross_slice`).
//! - **Validation split**: `val_fraction` routes whole documents by a hash of their normalized
//!   text into `val/` (the rest into `train/`), so a duplicate can never straddle the split.

mod clean;
mod config;
mod cross_slice;
mod error;
pub(crate) mod input;
mod merge;
mod minhash;
mod outdir;
mod pack;
#[cfg(feature = "parquet")]
mod parquet;
mod pii;
mod pipeline;
mod progress;
mod quality;
pub(crate) mod record;
mod report;
mod sink;
mod stages;

pub use clean::{Utf8Mode, normalized_key, strip_control};
pub use config::{CleanConfig, DEFAULT_SEQ_LEN, DEFAULT_SHARD_SIZE, PrepareConfig, Slice};
pub use cross_slice::PendingNearDup;
pub use error::PrepareError;
pub use input::{InputFile, InputFormat, expand_inputs};
pub use merge::merge;
pub use minhash::{LshIndex, MinHasher, NearDupConfig};
pub use outdir::{TRAIN, VAL};
pub use pack::{PackStats, Packer};
pub use pii::{PiiConfig, PiiCounts, PiiScrubber};
pub use pipeline::run;
pub use quality::{QualityConfig, QualityFailure};
pub use record::BadLineReason;
pub use report::{PrepareReport, SplitReport};
pub use sink::TOKENS_COLUMN;

/// Stands in for `parquet.rs` in a build without the `parquet` feature: `.parquet` inputs are
/// refused when the inputs are expanded, naming the file and the feature.
#[cfg(not(feature = "parquet"))]
mod parquet {
    use std::path::Path;

    use super::PrepareError;

    /// Refuses `path` (see [`super::input::PARQUET_OFF`]).
    pub fn read_text_column(
        path: &Path,
        _field: &str,
        _each: impl FnMut(u64, Option<&[u8]>) -> bool,
    ) -> Result<(), PrepareError> {
        Err(super::input::parquet_off(path))
    }
}
