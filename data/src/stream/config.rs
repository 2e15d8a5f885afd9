//! What to stream and how: streaming's `StreamingDataset`/`Stream` arguments, with the same
//! names and defaults, parsed once (serde) and validated before anything is read.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{Result, StreamError};
use super::mixing::{SamplingMethod, Weight};
use super::partition::PartitionAlgo;
use super::shuffle::ShuffleAlgo;

/// One stream (a dataset folder, local or remote) of a mix.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Remote prefix (`s3://…`, `gs://…`, `az://…`, `https://…`, `file://…`). `None`: the data
    /// is already in `local`.
    #[serde(default)]
    pub remote: Option<String>,
    /// Local folder: the data itself (no remote) or the download cache (with a remote; a
    /// per-remote temp folder when unset).
    #[serde(default)]
    pub local: Option<PathBuf>,
    /// Subfolder of both `remote` and `local` (e.g. `train`).
    #[serde(default)]
    pub split: Option<String>,
    /// Relative weight in the mix (all streams use proportions, or none does).
    #[serde(default)]
    pub proportion: Option<f64>,
    /// Multiplier on this stream's size.
    #[serde(default)]
    pub repeat: Option<f64>,
    /// Exact samples per epoch from this stream.
    #[serde(default)]
    pub choose: Option<u64>,
}

impl StreamConfig {
    /// A local folder, every sample once.
    pub fn local(dir: impl Into<PathBuf>) -> StreamConfig {
        StreamConfig {
            local: Some(dir.into()),
            ..Default::default()
        }
    }

    /// A remote prefix cached in `local` (or a temp folder).
    pub fn remote(url: impl Into<String>, local: Option<PathBuf>) -> StreamConfig {
        StreamConfig {
            remote: Some(url.into()),
            local,
            ..Default::default()
        }
    }

    /// The stream's weight; at most one of `proportion`, `repeat`, `choose`.
    pub fn weight(&self, index: usize) -> Result<Weight> {
        match (self.proportion, self.repeat, self.choose) {
            (None, None, None) => Ok(Weight::Unweighted),
            (Some(p), None, None) => Ok(Weight::Proportion(p)),
            (None, Some(r), None) => Ok(Weight::Repeat(r)),
            (None, None, Some(c)) => Ok(Weight::Choose(c)),
            _ => Err(StreamError::Config {
                field: format!("streams[{index}]"),
                found: "more than one of proportion, repeat, choose".into(),
                expected: "at most one (the others are derived)".into(),
            }),
        }
    }
}

fn default_seed() -> u64 {
    9176
}
fn default_one() -> u64 {
    1
}
fn default_retry() -> u32 {
    2
}
fn default_timeout_s() -> f64 {
    60.0
}
fn default_threads() -> usize {
    4
}
fn default_column() -> String {
    "tokens".into()
}
fn default_encoding() -> String {
    "int64".into()
}

/// streaming's `StreamingDataset` arguments (names and defaults kept), plus the token column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingConfig {
    /// The datasets to read (one, or several to mix).
    pub streams: Vec<StreamConfig>,
    /// Samples per epoch when weighting by proportion (default: all underlying samples).
    #[serde(default)]
    pub epoch_size: Option<u64>,
    /// Shuffle the order (default false, as in streaming).
    #[serde(default)]
    pub shuffle: bool,
    /// streaming's `shuffle_algo` (default `py1e`).
    #[serde(default)]
    pub shuffle_algo: ShuffleAlgo,
    /// streaming's `shuffle_seed` (default 9176).
    #[serde(default = "default_seed")]
    pub shuffle_seed: u64,
    /// Default: `max(4_000_000 / num_canonical_nodes, 1 << 18)`.
    #[serde(default)]
    pub shuffle_block_size: Option<u64>,
    /// Default: physical nodes (×64 for py1s/py2s). Fix it for a run you will resume elsewhere.
    #[serde(default)]
    pub num_canonical_nodes: Option<u64>,
    /// streaming's `partition_algo` (default `relaxed`).
    #[serde(default)]
    pub partition_algo: PartitionAlgo,
    /// streaming's `sampling_method` (default `balanced`).
    #[serde(default)]
    pub sampling_method: SamplingMethod,
    /// streaming's `sampling_granularity` (default 1).
    #[serde(default = "default_one")]
    pub sampling_granularity: u64,
    /// Per-device batch size (the partition is laid out in whole batches).
    #[serde(default = "default_one")]
    pub batch_size: u64,
    /// Samples to prepare ahead of the reader (default `8 * batch_size`, min 64).
    #[serde(default)]
    pub predownload: Option<u64>,
    /// Bytes of downloaded (raw) shards to keep; `None` keeps everything.
    #[serde(default)]
    pub cache_limit: Option<u64>,
    /// Retries of a failed or timed-out download (streaming's `download_retry`).
    #[serde(default = "default_retry")]
    pub download_retry: u32,
    /// Seconds one download may take before it counts as failed (streaming's
    /// `download_timeout`, default 60).
    #[serde(default = "default_timeout_s")]
    pub download_timeout: f64,
    /// Check shard hashes (default: on for remote downloads, off for local folders).
    #[serde(default)]
    pub validate_hash: Option<bool>,
    /// Background download/decompression threads.
    #[serde(default = "default_threads")]
    pub prefetch_threads: usize,
    /// Column holding token ids (llm-foundry: `tokens`).
    #[serde(default = "default_column")]
    pub token_column: String,
    /// Element type of a `bytes` token column (llm-foundry's `token_encoding_type`).
    #[serde(default = "default_encoding")]
    pub token_encoding_type: String,
}

impl StreamingConfig {
    /// One local folder, unshuffled, streaming's defaults otherwise.
    pub fn local(dir: impl Into<PathBuf>) -> StreamingConfig {
        StreamingConfig::from_streams(vec![StreamConfig::local(dir)])
    }

    /// The given streams with streaming's defaults.
    pub fn from_streams(streams: Vec<StreamConfig>) -> StreamingConfig {
        StreamingConfig {
            streams,
            epoch_size: None,
            shuffle: false,
            shuffle_algo: ShuffleAlgo::default(),
            shuffle_seed: default_seed(),
            shuffle_block_size: None,
            num_canonical_nodes: None,
            partition_algo: PartitionAlgo::default(),
            sampling_method: SamplingMethod::default(),
            sampling_granularity: 1,
            batch_size: 1,
            predownload: None,
            cache_limit: None,
            download_retry: default_retry(),
            download_timeout: default_timeout_s(),
            validate_hash: None,
            prefetch_threads: default_threads(),
            token_column: default_column(),
            token_encoding_type: default_encoding(),
        }
    }

    /// Range checks that need no data.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, found: String, expected: &str| StreamError::Config {
            field: field.into(),
            found,
            expected: expected.into(),
        };
        if self.streams.is_empty() {
            return Err(bad("streams", "none".into(), "at least one stream"));
        }
        for (i, s) in self.streams.iter().enumerate() {
            if s.remote.is_none() && s.local.is_none() {
                return Err(bad(
                    &format!("streams[{i}]"),
                    "neither remote nor local".into(),
                    "remote and/or local",
                ));
            }
            s.weight(i)?;
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "0".into(), "> 0"));
        }
        if !(self.download_timeout.is_finite() && self.download_timeout > 0.0) {
            return Err(bad(
                "download_timeout",
                self.download_timeout.to_string(),
                "a positive number of seconds",
            ));
        }
        if self.sampling_granularity == 0 {
            return Err(bad("sampling_granularity", "0".into(), "> 0"));
        }
        if self.num_canonical_nodes == Some(0) {
            return Err(bad("num_canonical_nodes", "0".into(), "> 0"));
        }
        if let Some(b) = self.shuffle_block_size
            && b < 2
        {
            return Err(bad("shuffle_block_size", b.to_string(), ">= 2"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_streamings_names_and_defaults() {
        let c: StreamingConfig = serde_json::from_str(
            r#"{"streams": [{"remote": "s3://b/x", "local": "/tmp/x", "proportion": 0.5},
                            {"local": "/data/y", "proportion": 0.5}],
                "shuffle": true, "shuffle_algo": "py1s", "num_canonical_nodes": 8}"#,
        )
        .unwrap();
        assert_eq!(c.shuffle_seed, 9176);
        assert_eq!(c.shuffle_algo, ShuffleAlgo::Py1s);
        assert_eq!(c.partition_algo, PartitionAlgo::Relaxed);
        assert_eq!(c.streams[0].weight(0).unwrap(), Weight::Proportion(0.5));
        c.validate().unwrap();
        assert!(
            serde_json::from_str::<StreamingConfig>(r#"{"streams": [], "shufle": true}"#).is_err()
        );
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut c = StreamingConfig::local("/data");
        c.streams[0].repeat = Some(2.0);
        c.streams[0].choose = Some(3);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("streams[0]"), "{e}");
        let mut c = StreamingConfig::local("/data");
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
    }
}
