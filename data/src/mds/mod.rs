//! MDS v2 shards, byte-compatible with mosaicml-streaming's `MDSWriter`/`MDSReader`.
//!
//! A dataset is a folder with `index.json` (`{"shards": [...], "version": 2}`) and one file per
//! shard (`shard.00000.mds`, or `shard.00000.mds.zstd` when compressed). A decompressed shard is
//! `u32 N | u32 offsets[N+1] (absolute) | JSON config | samples`; a sample is one u32 size per
//! variable-size column, then each column's payload, columns in sorted name order. All integers
//! little-endian. See `fixtures/mds/reference_reader.py` for an executable spec, and
//! `streaming/base/format/mds/{writer,reader,encodings}.py` for the original.
//!
//! Guarantees:
//! - [`MdsWriter`] writes the same bytes as streaming for the same samples and options (shard
//!   files, embedded config, `index.json`, shard splitting by `size_limit`); zstd output too,
//!   since both use libzstd 1.5.7's one-shot compressor. Every file is written atomically and
//!   `index.json` last, so a folder with an index is always a complete dataset.
//! - Reading never panics on bad input: every header, offset and size is bounds-checked, and the
//!   error names the file (and sample/column). With [`ReadOptions::verify_hashes`], shards are
//!   checked against the index's hashes; without, truncation and most corruption are still caught
//!   by the offset table and the per-sample sizes.
//! - `pkl` columns are refused ([`MdsError::UnsafeEncoding`]): tessera never unpickles.
//!
//! Entry points:
//! - [`MdsDataset::open`] / [`MdsDataset::get`] / [`MdsDataset::tokens_into`]: random access
//!   over a local folder (uncompressed shards are memory-mapped, compressed ones decompressed
//!   once on first use).
//! - [`Shard::from_file_bytes`]: decode a shard from the bytes of its file (what the streaming
//!   loader downloads), given its [`ShardInfo`] from the index.
//! - [`MdsWriter`]: columns, compression, hashes, `size_limit`.
//! - [`merge_index`] / [`merge_index_from_root`]: streaming's `merge_index` for `--slice` runs.
//! - [`summarize`], [`sample_to_json`], [`dump_jsonl`]: what `tessera data inspect|dump` print.

mod atomic;
mod codec;
mod columns;
mod compression;
mod encoding;
mod error;
mod hashing;
mod index;
mod inspect;
mod merge;
pub mod pyjson;
mod reader;
mod shard;
mod tokens;
mod value;
mod writer;

pub use codec::{decode as decode_value, encode_into as encode_value};
pub use columns::{Column, Columns};
pub use compression::{Compression, CompressionAlgo};
pub use encoding::{DType, Encoding, EncodingError};
pub use error::{MdsError, Result};
pub use hashing::HashAlgo;
pub use index::{FileInfo, INDEX_BASENAME, Index, ShardInfo, bytes_to_int};
pub use inspect::{
    ColumnSummary, DatasetSummary, SampleRange, TokenStats, dump_jsonl, sample_to_json, summarize,
    value_to_json,
};
pub use merge::{merge_index, merge_index_from_root};
pub use reader::{MdsDataset, ReadOptions};
pub use shard::{Shard, ShardData};
pub use tokens::{TokenSpec, encode_tokens, tokens_from_payload};
pub use value::{NdArray, Sample, Value};
pub use writer::{DEFAULT_SIZE_LIMIT, MdsWriter, WriterOptions};
