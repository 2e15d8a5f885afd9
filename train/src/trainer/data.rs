//! The trainer's view of its data: llm-foundry loader configs turned into streaming datasets,
//! and token samples turned into training [`Example`]s.

use std::path::PathBuf;

use tessera_data::stream::{
    PartitionAlgo, SamplingMethod, ShuffleAlgo, StreamConfig as DataStream, StreamState,
    StreamingConfig, StreamingDataset, TokenLoader, World,
};

use crate::batch::{Example, IGNORE, Separator};
use crate::config::{LoaderConfig, LoaderKind};
use crate::finetune::{FinetuneData, FinetuneTokenizer};

use super::TrainError;

/// Either kind of loader: packed pre-tokenized text (`name: text`) or prompt/response rows
/// (`name: finetuning`). The loop, evaluation and preflight see only this.
pub enum Loader {
    /// Packed pre-tokenized text (`name: text`).
    Text(TextData),
    /// Prompt/response or chat rows (`name: finetuning`).
    Finetune(FinetuneData),
}

/// Training batches without end (a new epoch starts when one runs out), for
/// [`super::Trainer::fit`].
impl Iterator for Loader {
    type Item = Result<Vec<Example>, TrainError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_batch())
    }
}

impl Loader {
    /// Opens `cfg` for one rank; `tokenizer` is needed by `finetuning` loaders only.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        key: &str,
        cfg: &LoaderConfig,
        tokenizer: Option<&FinetuneTokenizer>,
        seq_len: usize,
        batch: usize,
        world: World,
        state: Option<StreamState>,
        separator: Option<Separator>,
    ) -> Result<Self, TrainError> {
        match cfg.name {
            LoaderKind::Text => {
                TextData::open(key, cfg, seq_len, batch, world, state, separator).map(Loader::Text)
            }
            LoaderKind::Finetuning => {
                let tok = tokenizer.ok_or_else(|| TrainError::Config {
                    key: format!("{key}.name"),
                    message: "a finetuning loader needs the tokenizer (`tokenizer.name`), which did not load".into(),
                })?;
                Ok(Loader::Finetune(FinetuneData::open(
                    key, cfg, tok, seq_len, batch, world, state,
                )?))
            }
        }
    }

    /// The next training batch.
    pub fn next_batch(&mut self) -> Result<Vec<Example>, TrainError> {
        match self {
            Loader::Text(d) => d.next_batch(),
            Loader::Finetune(d) => Ok(d.next_batch()?),
        }
    }

    /// Up to one batch of the rest of the epoch (evaluation).
    pub fn next_eval_batch(&mut self) -> Result<Vec<Example>, TrainError> {
        match self {
            Loader::Text(d) => d.next_eval_batch(),
            Loader::Finetune(d) => Ok(d.next_eval_batch()?),
        }
    }

    /// The global sample ids of the last training batch (packed text only).
    pub fn last_sample_ids(&self) -> Option<&[i64]> {
        match self {
            Loader::Text(d) => Some(d.loader.last_batch_ids()),
            Loader::Finetune(_) => None,
        }
    }

    /// Where the stream stands (saved in checkpoints).
    pub fn state(&self) -> StreamState {
        match self {
            Loader::Text(d) => d.state(),
            Loader::Finetune(d) => d.state(),
        }
    }

    /// Sequences per epoch over all ranks.
    pub fn epoch_size(&self) -> u64 {
        match self {
            Loader::Text(d) => d.epoch_size(),
            Loader::Finetune(d) => d.epoch_size(),
        }
    }

    /// Tokens per epoch: exact for fine-tuning data, `sequences × seq_len` for packed text.
    pub fn tokens_per_epoch(&self, seq_len: usize) -> u64 {
        match self {
            Loader::Text(d) => d.epoch_size() * seq_len as u64,
            Loader::Finetune(d) => d.stats().tokens,
        }
    }

    /// Back to the start of epoch 0.
    pub fn rewind(&mut self) -> Result<(), TrainError> {
        match self {
            Loader::Text(d) => d.rewind(),
            Loader::Finetune(d) => Ok(d.rewind()?),
        }
    }

    /// Sequences left in the current epoch for this rank.
    pub fn remaining_in_epoch(&self) -> usize {
        match self {
            Loader::Text(d) => d.remaining_in_epoch(),
            Loader::Finetune(d) => d.remaining_in_epoch(),
        }
    }
}

/// Packed text samples for training or evaluation.
pub struct TextData {
    dataset: StreamingDataset,
    loader: TokenLoader,
    seq_len: usize,
    separator: Option<Separator>,
    pad_id: u32,
    batch: usize,
}

impl TextData {
    /// Opens `cfg` (`key` names it in errors: `train_loader`, `eval_loader`) for one rank,
    /// reading `batch` samples per call, from `state` (or the beginning).
    pub fn open(
        key: &str,
        cfg: &LoaderConfig,
        seq_len: usize,
        batch: usize,
        world: World,
        state: Option<StreamState>,
        separator: Option<Separator>,
    ) -> Result<Self, TrainError> {
        if cfg.name != LoaderKind::Text {
            return Err(TrainError::Config {
                key: format!("{key}.name"),
                message: "this loader reads packed text; use `text` (fine-tuning data goes through `finetuning`)".into(),
            });
        }
        let streaming = streaming_config(key, cfg, batch)?;
        let dataset =
            StreamingDataset::new(streaming, world).map_err(|e| TrainError::data(key, e))?;
        let state = state.unwrap_or_else(|| dataset.initial_state());
        let loader = dataset
            .loader(state)
            .map_err(|e| TrainError::data(key, e))?;
        Ok(Self {
            dataset,
            loader,
            seq_len,
            separator,
            pad_id: 0,
            batch,
        })
    }

    /// The next batch of examples. Samples longer than `seq_len` are cut (as llm-foundry's text
    /// dataset does); shorter ones are padded and the padding is masked out.
    pub fn next_batch(&mut self) -> Result<Vec<Example>, TrainError> {
        let rows = self
            .loader
            .next_batch()
            .map_err(|e| TrainError::data("train_loader", e))?;
        Ok(rows.into_iter().map(|r| self.example(r)).collect())
    }

    /// Up to one batch of the rest of the current epoch (evaluation walks one epoch exactly once,
    /// the last batch possibly short).
    pub fn next_eval_batch(&mut self) -> Result<Vec<Example>, TrainError> {
        let n = self.remaining_in_epoch().min(self.batch);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut tokens = Vec::with_capacity(self.seq_len);
            self.loader
                .next_sample_into(&mut tokens)
                .map_err(|e| TrainError::data("eval_loader", e))?;
            out.push(self.example(tokens));
        }
        Ok(out)
    }

    /// The stream position after everything returned so far.
    pub fn state(&self) -> StreamState {
        self.loader.state()
    }

    /// Samples per epoch (over all ranks).
    pub fn epoch_size(&self) -> u64 {
        self.dataset.epoch_size()
    }

    /// Restart from the beginning of epoch 0 (evaluation reads the same samples every time).
    pub fn rewind(&mut self) -> Result<(), TrainError> {
        self.loader = self
            .dataset
            .loader(self.dataset.initial_state())
            .map_err(|e| TrainError::data("eval_loader", e))?;
        Ok(())
    }

    /// Samples left in the current epoch for this rank.
    pub fn remaining_in_epoch(&self) -> usize {
        self.loader.remaining_in_epoch()
    }

    fn example(&self, mut tokens: Vec<u32>) -> Example {
        tokens.truncate(self.seq_len);
        let real = tokens.len();
        if real == self.seq_len {
            return Example::packed(tokens, self.separator);
        }
        tokens.resize(self.seq_len, self.pad_id);
        let mut e = Example::packed(tokens, self.separator);
        for t in e.targets.iter_mut().skip(real.saturating_sub(1)) {
            *t = IGNORE;
        }
        e.attention = Some((0..self.seq_len).map(|i| i < real).collect());
        e
    }
}

/// llm-foundry's `dataset:` block as mosaicml-streaming arguments.
fn streaming_config(
    key: &str,
    cfg: &LoaderConfig,
    batch: usize,
) -> Result<StreamingConfig, TrainError> {
    let ds = &cfg.dataset;
    let streams: Vec<DataStream> = match &ds.streams {
        Some(named) => named
            .values()
            .map(|s| DataStream {
                remote: s.remote.clone(),
                local: s.local.as_ref().map(PathBuf::from),
                split: s.split.clone().or_else(|| ds.split.clone()),
                proportion: s.proportion,
                repeat: s.repeat,
                choose: s.choose,
            })
            .collect(),
        None => vec![DataStream {
            remote: ds.remote.clone().filter(|r| !r.trim().is_empty()),
            local: ds.local.as_ref().map(PathBuf::from),
            split: ds.split.clone(),
            ..Default::default()
        }],
    };
    let mut c = StreamingConfig::from_streams(streams);
    c.shuffle = ds.shuffle;
    c.shuffle_seed = ds.shuffle_seed;
    if let Some(algo) = &ds.shuffle_algo {
        c.shuffle_algo = serde_json::from_value::<ShuffleAlgo>(serde_json::Value::String(algo.clone())).map_err(|_| {
            TrainError::Config {
                key: format!("{key}.dataset.shuffle_algo"),
                message: format!("{algo:?} is not a shuffle algorithm (expected py1e, py1s, py1br, py1b, py2s or naive)"),
            }
        })?;
    }
    c.shuffle_block_size = ds.shuffle_block_size;
    c.num_canonical_nodes = ds.num_canonical_nodes;
    c.epoch_size = ds.epoch_size;
    c.batch_size = batch as u64;
    if let Some(enc) = &ds.token_encoding {
        c.token_encoding_type = enc.clone();
    }
    let field = |name: &str| format!("{key}.dataset.{name}");
    if let Some(algo) = &ds.partition_algo {
        c.partition_algo =
            named::<PartitionAlgo>(algo, &field("partition_algo"), "relaxed or orig")?;
    }
    if let Some(method) = &ds.sampling_method {
        c.sampling_method =
            named::<SamplingMethod>(method, &field("sampling_method"), "balanced or fixed")?;
    }
    if let Some(g) = ds.sampling_granularity {
        if g == 0 {
            return Err(TrainError::Config {
                key: field("sampling_granularity"),
                message: "must be at least 1".into(),
            });
        }
        c.sampling_granularity = g;
    }
    if let Some(method) = ds.batching_method.as_deref().filter(|m| *m != "random") {
        return Err(TrainError::Config {
            key: field("batching_method"),
            message: format!(
                "{method:?} is not implemented: tessera batches as streaming's `random` (the default)"
            ),
        });
    }
    if let Some(r) = ds.replication.filter(|r| *r != 1) {
        return Err(TrainError::Config {
            key: field("replication"),
            message: format!("{r}: tessera trains one rank per sample stream (replication 1)"),
        });
    }
    c.predownload = ds.predownload.or(c.predownload);
    if let Some(limit) = &ds.cache_limit {
        c.cache_limit = Some(byte_count(limit).map_err(|message| TrainError::Config {
            key: field("cache_limit"),
            message,
        })?);
    }
    if let Some(timeout) = ds.download_timeout {
        c.download_timeout = timeout;
    }
    if let Some(retry) = ds.download_retry {
        c.download_retry = retry;
    }
    c.validate().map_err(|e| TrainError::data(key, e))?;
    Ok(c)
}

/// A streaming enum given by name (`partition_algo: orig`), or an error naming `key`.
fn named<T: serde::de::DeserializeOwned>(
    name: &str,
    key: &str,
    expected: &str,
) -> Result<T, TrainError> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        TrainError::Config {
            key: key.to_string(),
            message: format!("{name:?} is not one of {expected}"),
        }
    })
}

/// A byte count as streaming takes it: an integer, or a string for
/// [`tessera_data::mds::bytes_to_int`] (`"10gb"`, `"512 KB"`).
fn byte_count(v: &serde_json::Value) -> Result<u64, String> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    v.as_str()
        .and_then(tessera_data::mds::bytes_to_int)
        .ok_or_else(|| {
            format!(
                "{v} is not a byte count (an integer, or a string like \"10gb\": b, kb, mb, gb, tb, pb or eb)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatasetConfig;
    use serde_json::json;

    fn loader(dataset: serde_json::Value) -> LoaderConfig {
        let mut ds = json!({"local": "/data/train"});
        ds.as_object_mut()
            .unwrap()
            .extend(dataset.as_object().unwrap().clone());
        LoaderConfig {
            name: LoaderKind::Text,
            dataset: serde_json::from_value::<DatasetConfig>(ds).unwrap(),
            drop_last: true,
            label: None,
        }
    }

    #[test]
    fn streaming_order_keys_reach_the_stream() {
        let c = streaming_config(
            "train_loader",
            &loader(json!({"partition_algo": "orig", "sampling_method": "fixed",
                "sampling_granularity": 4, "batching_method": "random", "replication": 1,
                "predownload": 64, "cache_limit": "1.5mb", "download_retry": 7})),
            8,
        )
        .unwrap();
        assert_eq!(c.partition_algo, PartitionAlgo::Orig);
        assert_eq!(c.sampling_method, SamplingMethod::Fixed);
        assert_eq!(c.sampling_granularity, 4);
        assert_eq!(c.predownload, Some(64));
        assert_eq!(c.cache_limit, Some(1_572_864));
        assert_eq!(c.download_retry, 7);
        let defaults = streaming_config("train_loader", &loader(json!({})), 8).unwrap();
        assert_eq!(defaults.partition_algo, PartitionAlgo::Relaxed);
        assert_eq!(defaults.sampling_method, SamplingMethod::Balanced);
    }

    #[test]
    fn unimplemented_or_invalid_order_keys_are_errors_naming_the_field() {
        for (extra, field) in [
            (json!({"batching_method": "stratified"}), "batching_method"),
            (json!({"replication": 2}), "replication"),
            (json!({"partition_algo": "fancy"}), "partition_algo"),
            (json!({"sampling_method": "balance"}), "sampling_method"),
            (json!({"sampling_granularity": 0}), "sampling_granularity"),
            (json!({"cache_limit": "ten gb"}), "cache_limit"),
        ] {
            let err = streaming_config("eval_loader", &loader(extra.clone()), 8).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("eval_loader.dataset.{field}")),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn byte_counts_follow_streamings_bytes_to_int() {
        assert_eq!(byte_count(&json!(1000)).unwrap(), 1000);
        assert_eq!(byte_count(&json!("10gb")).unwrap(), 10 << 30);
        assert_eq!(byte_count(&json!("512 KB")).unwrap(), 512 << 10);
        assert_eq!(byte_count(&json!("77b")).unwrap(), 77);
        assert_eq!(byte_count(&json!("2tb")).unwrap(), 2 << 40);
        assert!(byte_count(&json!(-1)).is_err());
        assert!(byte_count(&json!("1.5xb")).is_err());
    }
}
