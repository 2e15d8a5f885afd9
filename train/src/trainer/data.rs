//! The trainer's view of its data: llm-foundry loader configs turned into streaming datasets,
//! and token samples turned into training [`Example`]s.

use std::path::PathBuf;

use tessera_data::stream::{
    ShuffleAlgo, StreamConfig as DataStream, StreamState, StreamingConfig, StreamingDataset,
    TokenLoader, World,
};

use crate::batch::{Example, IGNORE, Separator};
use crate::config::{LoaderConfig, LoaderKind};
use crate::finetune::{FinetuneData, FinetuneTokenizer};

use super::TrainError;

/// Either kind of loader: packed pre-tokenized text (`name: text`) or prompt/response rows
/// (`name: finetuning`). The loop, evaluation and preflight see only this.
pub enum Loader {
    Text(TextData),
    Finetune(FinetuneData),
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
    c.validate().map_err(|e| TrainError::data(key, e))?;
    Ok(c)
}
