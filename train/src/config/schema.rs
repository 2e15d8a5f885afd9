//! The typed training config: llm-foundry's key names and defaults (`TrainConfig` in
//! `llmfoundry/utils/config_utils.py`), read with unknown keys refused.
//!
//! Defaults are llm-foundry's where it has one (`seed: 17`, `precision: amp_bf16`,
//! `eval_interval: 1` epoch, `save_interval: 1000ba`, `device_train_microbatch_size: auto`).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::duration::Duration;
use super::model::ModelBlock;
use crate::guard::GuardsConfig;
use crate::optim::OptimizerConfig;
use crate::optim::clip::GradientClippingConfig;
use crate::schedule::SchedulerConfig;

/// A whole training run, as resolved from YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model to train, and the LoRA adapter if only that trains (see [`ModelBlock`]).
    #[serde(deserialize_with = "model_block")]
    pub model: ModelBlock,
    /// The tokenizer: a `tokenizer.json` path (or a folder holding one), with HF kwargs.
    pub tokenizer: TokenizerConfig,
    /// Training data.
    pub train_loader: LoaderConfig,
    /// Evaluation data: one loader, or a list of labelled loaders (llm-foundry allows both).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub eval_loader: Vec<LoaderConfig>,
    /// Optimizer name and hyperparameters.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub scheduler: SchedulerConfig,
    /// Training length (`4800ba`, `2.5e9tok`, `1ep`); never a `dur` fraction.
    pub max_duration: Duration,
    /// Sequence length the data is packed to (also the model's `max_seq_len` in llm-foundry YAMLs).
    pub max_seq_len: usize,
    /// Sequences per optimizer step, summed over all devices.
    pub global_train_batch_size: usize,
    /// Sequences per forward/backward on one device; the rest is gradient accumulation.
    #[serde(default)]
    pub device_train_microbatch_size: MicroBatchSize,
    /// Sequences per eval forward (llm-foundry: the train microbatch size, or 1 with `auto`).
    #[serde(default)]
    pub device_eval_batch_size: Option<usize>,
    /// How often to evaluate (a bare integer is epochs, as in composer).
    #[serde(default = "one_epoch")]
    pub eval_interval: Duration,
    /// Evaluate before the first step too.
    #[serde(default)]
    pub eval_first: bool,
    /// Eval batches per evaluation; -1 for the whole eval set.
    #[serde(default = "minus_one")]
    pub eval_subset_num_batches: i64,
    /// Train batches per epoch; -1 for the whole dataset.
    #[serde(default = "minus_one")]
    pub train_subset_num_batches: i64,
    /// Global-norm gradient clipping (`algorithms.gradient_clipping` in llm-foundry YAMLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_clipping: Option<GradientClippingConfig>,
    /// Numeric precision of compute.
    #[serde(default)]
    pub precision: Precision,
    /// Run seed; every random stream derives from it (plus a purpose and a position).
    #[serde(default = "seventeen")]
    pub seed: u64,
    /// Checkpoint folder (`{run_name}` is substituted by the trainer).
    #[serde(default)]
    pub save_folder: Option<String>,
    /// How often to checkpoint.
    #[serde(default = "thousand_batches")]
    pub save_interval: Duration,
    /// Checkpoints kept on disk; -1 keeps all.
    #[serde(default = "minus_one")]
    pub save_num_checkpoints_to_keep: i64,
    /// Allow writing into a save folder that already holds checkpoints of another run.
    #[serde(default)]
    pub save_overwrite: bool,
    /// Resume from the newest valid checkpoint in `save_folder` if there is one.
    #[serde(default)]
    pub autoresume: bool,
    /// A checkpoint to start from when not autoresuming.
    #[serde(default)]
    pub load_path: Option<String>,
    /// Load only the weights from `load_path` (a fresh optimizer and schedule).
    #[serde(default)]
    pub load_weights_only: bool,
    /// Run name (llm-foundry falls back to `$RUN_NAME`).
    #[serde(default)]
    pub run_name: Option<String>,
    /// Print metrics lines to the console.
    #[serde(default = "yes")]
    pub log_to_console: bool,
    /// How often to print them.
    #[serde(default = "one_batch")]
    pub console_log_interval: Duration,
    /// Show a progress bar instead of lines.
    #[serde(default)]
    pub progress_bar: bool,
    /// llm-foundry: weight microbatches by token count. tessera always does, so only `true` is legal.
    #[serde(default = "yes")]
    pub accumulate_train_batch_on_tokens: bool,
    /// tessera's NaN, loss-spike and stall guards.
    #[serde(default)]
    pub guards: GuardsConfig,
    /// How data-parallel training shards its state (llm-foundry's `fsdp_config`); absent, the
    /// state is replicated on every rank (DDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsdp_config: Option<super::FsdpConfig>,
    /// In-context-learning tasks run at `eval_interval`: a tasks YAML path or an inline list, in
    /// llm-foundry's format. The trainer passes them to tessera-eval through its eval hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icl_tasks: Option<Value>,
    /// The gauntlet applied to those tasks: a YAML path or an inline `eval_gauntlet` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_gauntlet: Option<Value>,
    /// Keep only the first batches of each ICL task (quick evals during training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icl_subset_num_batches: Option<usize>,
    /// Sequence length of the ICL prompts (default: `max_seq_len`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icl_seq_len: Option<usize>,
}

fn minus_one() -> i64 {
    -1
}
fn seventeen() -> u64 {
    17
}
fn yes() -> bool {
    true
}
fn one_epoch() -> Duration {
    Duration::Epochs(1)
}
fn one_batch() -> Duration {
    Duration::Batches(1)
}
fn thousand_batches() -> Duration {
    Duration::Batches(1000)
}

fn model_block<'de, D: Deserializer<'de>>(d: D) -> Result<ModelBlock, D::Error> {
    let v = Value::deserialize(d)?;
    ModelBlock::from_tree(&v).map_err(de::Error::custom)
}

/// The tokenizer block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// A `tokenizer.json` file, or a folder holding one. Hub names are not downloaded.
    pub name: String,
    /// HF tokenizer kwargs; tessera reads `model_max_length` and keeps the rest for reference.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kwargs: Map<String, Value>,
}

/// Which loader builds batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoaderKind {
    /// Pre-tokenized (MDS `tokens`) or raw-text streaming data, packed to `max_seq_len`.
    Text,
    /// Prompt/response pairs with the loss on response tokens only.
    Finetuning,
}

/// `train_loader` / `eval_loader`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// `text` or `finetuning`.
    pub name: LoaderKind,
    /// Where the data is and how to walk it.
    pub dataset: DatasetConfig,
    /// Drop a final partial batch.
    #[serde(default)]
    pub drop_last: bool,
    /// Name for this eval set when several are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl LoaderConfig {
    /// A `finetuning` loader over the prompt/response (or chat) JSON lines in `path` (a file or
    /// a folder; see [`crate::finetune::source`]), with every other key at its YAML default.
    pub fn prompt_response(path: impl Into<String>, shuffle: bool) -> Self {
        Self::from_yaml_keys(serde_json::json!({
            "name": "finetuning",
            "dataset": {"hf_name": path.into(), "shuffle": shuffle},
        }))
    }

    /// A `text` loader over pre-tokenized MDS shards in `local` (`split`: a sub-folder), with
    /// every other key at its YAML default.
    pub fn text(local: impl Into<String>, split: Option<&str>, shuffle: bool) -> Self {
        Self::from_yaml_keys(serde_json::json!({
            "name": "text",
            "dataset": {"local": local.into(), "split": split, "shuffle": shuffle},
            "drop_last": true,
        }))
    }

    /// The loader the same keys in a YAML would give (the defaults live in one place).
    fn from_yaml_keys(v: Value) -> Self {
        serde_json::from_value(v).expect("the keys above are LoaderConfig's")
    }
}

/// A loader's `dataset:` block (mosaicml-streaming `StreamingDataset` arguments).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// Local folder (the cache for `remote`, or the data itself).
    #[serde(default)]
    pub local: Option<String>,
    /// Remote location (`s3://…`, or another local path); blank means `local` holds the data.
    #[serde(default)]
    pub remote: Option<String>,
    /// Sub-folder (`train`, `val`).
    #[serde(default)]
    pub split: Option<String>,
    /// Shuffle samples.
    #[serde(default)]
    pub shuffle: bool,
    /// Shuffle seed (streaming's default, 9176).
    #[serde(default = "streaming_seed")]
    pub shuffle_seed: u64,
    /// Shuffle algorithm name (`py1e`, `py1s`, `py1br`, `py2s`, `naive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_algo: Option<String>,
    /// Shuffle block size in samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_block_size: Option<u64>,
    /// Canonical node count (fixes the sample order across world sizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_canonical_nodes: Option<u64>,
    /// Samples per epoch (streaming's `epoch_size`: up- or down-samples).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_size: Option<u64>,
    /// Sequence length of each sample (defaults to the top-level `max_seq_len`).
    #[serde(default)]
    pub max_seq_len: Option<usize>,
    /// Several sub-datasets mixed together, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<BTreeMap<String, StreamConfig>>,
    /// EOS id for `sequence_id` derivation and packing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<u32>,
    /// BOS id, if the data uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// How the `tokens` column is stored when it is `bytes` (`int64`, `int32`, `uint16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_encoding: Option<String>,
    /// How samples are split over nodes (`relaxed`, streaming's default, or `orig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_algo: Option<String>,
    /// How partial stream repeats are drawn (`balanced`, the default, or `fixed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_method: Option<String>,
    /// Samples drawn at a time from a stream when mixing (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_granularity: Option<u64>,
    /// streaming's batching: only `random` (the default) is implemented; others are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching_method: Option<String>,
    /// Ranks sharing one sample stream (tensor parallelism): only 1 is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<u64>,
    /// Samples prepared ahead of the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predownload: Option<u64>,
    /// Bytes of downloaded shards to keep: an integer or streaming's `"10gb"` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_limit: Option<Value>,
    /// Retries per shard download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_retry: Option<u32>,
    /// Seconds a shard download may take (streaming's default: 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_timeout: Option<f64>,
    /// Fine-tuning: concatenate prompt and response (the only mode tessera supports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_only_format: Option<bool>,
    /// Fine-tuning: pack several examples per sequence (`auto` or a ratio ≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing_ratio: Option<Value>,
    /// Fine-tuning: a local JSONL file or folder (hub datasets are not downloaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_name: Option<String>,
    /// Fine-tuning: extra arguments for reading `hf_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_kwargs: Option<Map<String, Value>>,
    /// Fine-tuning: which prompt tokens are targets (`none`, `all`, `length>=N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_prompts: Option<String>,
    /// Fine-tuning: which responses are targets (`last`, `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_responses: Option<String>,
    /// Fine-tuning: trim padding of short examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_pad_trimming: Option<bool>,
}

fn streaming_seed() -> u64 {
    9176
}

/// One entry of `dataset.streams`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Local folder.
    #[serde(default)]
    pub local: Option<String>,
    /// Remote location.
    #[serde(default)]
    pub remote: Option<String>,
    /// Sub-folder.
    #[serde(default)]
    pub split: Option<String>,
    /// Share of each epoch drawn from this stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proportion: Option<f64>,
    /// Times to repeat this stream per epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<f64>,
    /// Samples to draw from this stream per epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choose: Option<u64>,
}

/// `precision:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in f32.
    #[serde(rename = "fp32")]
    Fp32,
    /// bf16 compute, f32 master weights and optimizer state (llm-foundry's default).
    #[default]
    #[serde(rename = "amp_bf16")]
    AmpBf16,
    /// f16 compute, f32 master weights.
    #[serde(rename = "amp_fp16")]
    AmpFp16,
}

/// The YAML spelling (`fp32`, `amp_bf16`, `amp_fp16`), for logs and reports.
impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::AmpBf16 => "amp_bf16",
            Precision::AmpFp16 => "amp_fp16",
        })
    }
}

/// `device_train_microbatch_size`: a count, or `auto` (the trainer picks the largest
/// microbatch its memory model says fits the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MicroBatchSize {
    /// The largest microbatch the memory model says fits (llm-foundry's default, which probes).
    #[default]
    Auto,
    /// This many sequences per device per forward.
    Fixed(usize),
}

impl Serialize for MicroBatchSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MicroBatchSize::Auto => s.serialize_str("auto"),
            MicroBatchSize::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for MicroBatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MicroBatchSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer or \"auto\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MicroBatchSize, E> {
                if s == "auto" {
                    Ok(MicroBatchSize::Auto)
                } else {
                    Err(E::custom(format!(
                        "{s:?} is not a microbatch size (expected a positive integer or \"auto\")"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<MicroBatchSize, E> {
                if n == 0 {
                    return Err(E::custom(
                        "0 is not a microbatch size (expected a positive integer or \"auto\")",
                    ));
                }
                Ok(MicroBatchSize::Fixed(n as usize))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<MicroBatchSize, E> {
                Err(E::custom(format!(
                    "{n} is not a microbatch size (expected a positive integer or \"auto\")"
                )))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<MicroBatchSize, E> {
                Err(E::custom(format!(
                    "{x} is not a microbatch size (fractional microbatches, for sequence parallelism, are not supported)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// `eval_loader:` as one mapping or a list of them.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LoaderConfig>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<LoaderConfig>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a loader mapping or a list of them")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let one = LoaderConfig::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok(vec![one])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(l) = seq.next_element::<LoaderConfig>()? {
                out.push(l);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}
