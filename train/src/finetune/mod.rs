//! Instruction tuning: prompt/response (or chat) JSON lines in, training [`Example`]s out, with
//! the loss on response tokens only — llm-foundry's `finetuning` dataloader
//! (`llmfoundry/data/finetuning/{tasks,collator,dataloader}.py`, `llmfoundry/data/packing.py`).
//!
//! [`FinetuneData`] has the methods of `trainer::data::TextData` (`next_batch`,
//! `next_eval_batch`, `state`, `epoch_size`, `rewind`, `remaining_in_epoch`), so the trainer can
//! hold either behind one enum.
//!
//! **Modes.** Without `packing_ratio` (or with 1, as llm-foundry), each sequence holds one
//! example, right-padded, padding masked out (`attention` false, `sequence_id` −1, as
//! llm-foundry's `sequence_id = attention_mask − 1`); `allow_pad_trimming` cuts each batch to
//! its longest example rounded up to a multiple of 8, except the run's very first batch (so the
//! first step meets the full memory footprint, as llm-foundry does). With `packing_ratio: r > 1`
//! or `auto`, each global batch packs `⌊r × global batch⌋` examples into the batch's sequences
//! ([`pack`]); example `k` of a sequence has `sequence_id` `k`, so a model with
//! `attn_uses_sequence_id` keeps them from attending to each other, and the first label of
//! every example after the first is ignored, so no example learns to predict its neighbour.
//! With ALiBi and no learned positional embedding (MPT's usual setup), a packed example's loss
//! is then the same as its padded loss. With learned positions (llm-foundry's default),
//! positions run across the whole packed sequence — in llm-foundry as here — so packing moves
//! the later examples' positions.
//!
//! **Order and resumption.** An epoch's order is a permutation of the examples drawn from
//! `(shuffle_seed, purpose, epoch)` (NumPy's `default_rng` algorithm; not torch's sampler, so not
//! llm-foundry's exact order), or file order without `shuffle`. The epoch's sequences — packing
//! included, leftover bins carried from call to call — are a pure function of that order, so the
//! position is a [`StreamState`] of the same shape the text loader stores: `epoch`,
//! `sample_in_epoch` (global sequences consumed), `seed`; `num_canonical_nodes` is always 1
//! (there is no canonical-node partitioning here). Resuming rebuilds the epoch and skips ahead.
//!
//! **Epoch ends.** Training reads whole global batches and starts the next epoch when the rest
//! of this one cannot fill a batch (as the text loader, whatever `drop_last` says). When
//! packing, the examples after the last full packing window and the bins still waiting at the
//! end of an epoch are therefore not trained on in that epoch (llm-foundry carries leftover
//! bins into the next epoch instead; tessera keeps each epoch self-contained so a resume needs
//! no history). [`FinetuneData::unused_in_epoch`] reports how many. Evaluation reads every
//! sequence of the epoch, leftovers included, so every example is scored exactly once.
//!
//! **Ranks.** Rank `r` of `W` reads sequences `[r·b, (r+1)·b)` of each global batch of `W·b`.

pub mod chat_template;
pub mod format;
pub mod pack;
pub mod source;
pub mod tokenizer;

use std::ops::Range;
use std::path::PathBuf;

use tessera_data::stream::numpy_rng::NumpyRng;
use tessera_data::stream::{StreamState, World};
use tessera_data::tokenizer::TokenizerError;

use crate::batch::{Example, IGNORE};
use crate::config::{LoaderConfig, LoaderKind};
use crate::step::mix;
use format::{Dropped, Encoder, Targets, Tokenized, TurnError};
use pack::{Packer, auto_ratio};
pub use tokenizer::{ChatTemplate, FinetuneTokenizer, tokenizer_file};

/// Why fine-tuning data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A setting is missing, malformed or unsupported.
    #[error("{key}: {message}")]
    Config {
        /// The setting (e.g. `train_loader.dataset.hf_name`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A data file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line that is not a valid row.
    #[error("{path}:{line}: {message}")]
    Row {
        /// The data file.
        path: PathBuf,
        /// The line number in it.
        line: usize,
        /// What is wrong with the row.
        message: String,
    },
    /// A row's text could not be tokenized.
    #[error("{path}:{line}: {source}")]
    Encode {
        /// The data file.
        path: PathBuf,
        /// The line number in it.
        line: usize,
        /// The tokenizer's error.
        source: TokenizerError,
    },
    /// The tokenizer could not be loaded or used.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The data holds too little to train on.
    #[error("{key}: {message}")]
    TooSmall {
        /// The loader (`train_loader`, …).
        key: String,
        /// What is missing.
        message: String,
    },
    /// A resume state that cannot belong to this dataset.
    #[error("{key}: resume state {found} does not fit this dataset: {expected}")]
    State {
        /// The loader (`train_loader`, …).
        key: String,
        /// The saved state's position or seed.
        found: String,
        /// What this dataset allows.
        expected: String,
    },
}

/// One example per sequence, or several.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Packing {
    /// One example per sequence; `trim` cuts batches to their longest example (multiple of 8).
    Padded {
        /// `allow_pad_trimming`: trim each batch (but the run's first) to its longest example.
        trim: bool,
    },
    /// `per_batch = ⌊ratio × global batch⌋` examples packed into each global batch.
    Packed {
        /// The packing ratio (`packing_ratio`, or the one `auto` chose).
        ratio: f64,
        /// Examples packed into each global batch.
        per_batch: usize,
    },
}

/// What reading the data found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FinetuneStats {
    /// Data files read.
    pub files: usize,
    /// Rows read.
    pub rows: usize,
    /// Examples kept.
    pub examples: usize,
    /// Rows left out because a prompt or response was empty.
    pub dropped_empty: usize,
    /// Rows left out because no target survived truncation.
    pub dropped_no_targets: usize,
    /// Kept examples that lost tokens to truncation.
    pub truncated: usize,
    /// Tokens of all kept examples.
    pub tokens: u64,
    /// Loss-generating tokens of all kept examples.
    pub loss_tokens: u64,
}

/// Purpose of the shuffle's random stream.
const SHUFFLE: u64 = 0x5f1e;

/// Instruction-tuning examples for training or evaluation.
pub struct FinetuneData {
    key: String,
    examples: Vec<Tokenized>,
    seq_len: usize,
    batch: usize,
    world: World,
    packing: Packing,
    shuffle: bool,
    seed: u64,
    pad_id: u32,
    stats: FinetuneStats,
    epoch: u64,
    /// Global sequences consumed in `epoch`.
    pos: usize,
    /// The epoch's sequences, each a list of example indices.
    rows: Vec<Vec<u32>>,
    /// How many of `rows` training reads (whole global batches).
    train_rows: usize,
}

impl FinetuneData {
    /// Reads and tokenizes `cfg`'s rows (`key` names the loader in errors: `train_loader`,
    /// `eval_loader[0]`) for one rank reading `batch` sequences of `seq_len` tokens per call,
    /// from `state` (or the beginning). `dataset.max_seq_len`, if set, may only shorten `seq_len`.
    pub fn open(
        key: &str,
        cfg: &LoaderConfig,
        tokenizer: &FinetuneTokenizer,
        seq_len: usize,
        batch: usize,
        world: World,
        state: Option<StreamState>,
    ) -> Result<Self, FinetuneError> {
        let config = |field: &str, message: String| FinetuneError::Config {
            key: format!("{key}.{field}"),
            message,
        };
        if cfg.name != LoaderKind::Finetuning {
            return Err(config(
                "name",
                "this loader reads prompt/response rows; use `finetuning`".into(),
            ));
        }
        let ds = &cfg.dataset;
        if ds.decoder_only_format == Some(false) {
            return Err(config(
                "dataset.decoder_only_format",
                "encoder-decoder models are not supported; MPT is decoder-only".into(),
            ));
        }
        let seq_len = match ds.max_seq_len {
            Some(n) if n > seq_len => {
                return Err(config(
                    "dataset.max_seq_len",
                    format!("{n} exceeds max_seq_len ({seq_len})"),
                ));
            }
            Some(n) => n,
            None => seq_len,
        };
        if seq_len < 2 || batch == 0 {
            return Err(config(
                "dataset",
                format!(
                    "needs sequences of at least 2 tokens and batches of at least 1 (got {seq_len}, {batch})"
                ),
            ));
        }
        let targets = Targets::parse(ds.target_prompts.as_deref(), ds.target_responses.as_deref())
            .map_err(|(field, message)| config(&format!("dataset.{field}"), message))?;
        let tok = &tokenizer.tokenizer;
        let eos = ds.eos_token_id.or_else(|| tok.eos_id()).ok_or_else(|| {
            config(
                "dataset.eos_token_id",
                "the tokenizer has no EOS token (<|endoftext|>, </s> or <eos>); set eos_token_id"
                    .into(),
            )
        })?;
        let pad_id = tok.inner().get_padding().map(|p| p.pad_id).unwrap_or(eos);

        let files = source::data_files(key, ds)?;
        let rows = source::read_rows(&files)?;
        let encoder = Encoder::new(tok, &tokenizer.chat_template);
        let mut stats = FinetuneStats {
            files: files.len(),
            rows: rows.rows.len(),
            ..Default::default()
        };
        let mut examples = Vec::with_capacity(rows.rows.len());
        for r in &rows.rows {
            let (path, line) = rows.location(r);
            let turns = encoder.turns(&r.row).map_err(|e| match e {
                TurnError::Tokenize(source) => FinetuneError::Encode { path, line, source },
                TurnError::Template(message) => FinetuneError::Row {
                    path,
                    line,
                    message: match &tokenizer.chat_template {
                        ChatTemplate::Jinja(t) => {
                            format!("chat template ({}): {message}", t.source.display())
                        }
                        ChatTemplate::DefaultChatMl => message,
                    },
                },
            })?;
            match format::prepare(&turns, targets, Some(eos), seq_len) {
                Ok(ex) => {
                    stats.truncated += usize::from(ex.truncated > 0);
                    stats.tokens += ex.ids.len() as u64;
                    stats.loss_tokens +=
                        ex.labels.iter().skip(1).filter(|&&l| l != IGNORE).count() as u64;
                    examples.push(ex);
                }
                Err(Dropped::Empty) => stats.dropped_empty += 1,
                Err(Dropped::NoTargets) => stats.dropped_no_targets += 1,
            }
        }
        stats.examples = examples.len();
        if examples.is_empty() {
            return Err(FinetuneError::TooSmall {
                key: key.into(),
                message: format!(
                    "no trainable examples among {} rows of {} file(s): {} with an empty prompt or response, {} whose prompt fills max_seq_len ({seq_len})",
                    stats.rows, stats.files, stats.dropped_empty, stats.dropped_no_targets
                ),
            });
        }

        let global = batch * world.world_size as usize;
        let mut data = Self {
            key: key.into(),
            examples,
            seq_len,
            batch,
            world,
            packing: Packing::Padded {
                trim: ds.allow_pad_trimming.unwrap_or(false),
            },
            shuffle: ds.shuffle,
            seed: ds.shuffle_seed,
            pad_id,
            stats,
            epoch: 0,
            pos: 0,
            rows: Vec::new(),
            train_rows: 0,
        };
        let ratio = match &ds.packing_ratio {
            None | Some(serde_json::Value::Null) => 1.0,
            Some(serde_json::Value::String(s)) if s == "auto" => {
                let sizes: Vec<usize> = data
                    .order(0)
                    .iter()
                    .map(|&i| data.examples[i as usize].ids.len())
                    .collect();
                auto_ratio(&sizes, global, seq_len)
            }
            Some(v) => match v.as_f64() {
                Some(r) if r >= 1.0 && r.is_finite() => r,
                _ => {
                    return Err(config(
                        "dataset.packing_ratio",
                        format!("{v} is not \"auto\" or a number ≥ 1"),
                    ));
                }
            },
        };
        if ratio > 1.0 {
            data.packing = Packing::Packed {
                ratio,
                per_batch: (ratio * global as f64) as usize,
            };
        }
        let state = state.unwrap_or_else(|| StreamState::start(data.seed, 1));
        if state.seed != data.seed || state.num_canonical_nodes != 1 {
            return Err(FinetuneError::State {
                key: key.into(),
                found: format!(
                    "(seed {}, {} canonical nodes)",
                    state.seed, state.num_canonical_nodes
                ),
                expected: format!(
                    "shuffle_seed {} and 1 canonical node (was it written by a text loader?)",
                    data.seed
                ),
            });
        }
        data.load_epoch(state.epoch);
        if state.sample_in_epoch > data.rows.len() as u64 {
            return Err(FinetuneError::State {
                key: key.into(),
                found: format!("(epoch {}, sample {})", state.epoch, state.sample_in_epoch),
                expected: format!("epoch {} holds {} sequences", state.epoch, data.rows.len()),
            });
        }
        data.pos = state.sample_in_epoch as usize;
        Ok(data)
    }

    /// The next batch of this rank's sequences; a new epoch begins when this one cannot fill
    /// another global batch.
    pub fn next_batch(&mut self) -> Result<Vec<Example>, FinetuneError> {
        let global = self.global_batch();
        if self.pos + global > self.train_rows {
            self.load_epoch(self.epoch + 1);
            if self.train_rows < global {
                return Err(FinetuneError::TooSmall {
                    key: self.key.clone(),
                    message: format!(
                        "one global batch needs {global} sequences but an epoch yields {} ({} examples, {:?})",
                        self.train_rows,
                        self.examples.len(),
                        self.packing
                    ),
                });
            }
        }
        let start = self.pos + self.world.rank as usize * self.batch;
        Ok(self.take(start..start + self.batch, global))
    }

    /// Up to one batch of the rest of the current epoch for this rank (evaluation walks the
    /// epoch once, leftovers included; empty only when [`remaining_in_epoch`](Self::remaining_in_epoch) is 0).
    pub fn next_eval_batch(&mut self) -> Result<Vec<Example>, FinetuneError> {
        let len = self.rows.len();
        let start = (self.pos + self.world.rank as usize * self.batch).min(len);
        let end = (start + self.batch).min(len);
        Ok(self.take(start..end, self.global_batch()))
    }

    /// The position after everything returned so far.
    pub fn state(&self) -> StreamState {
        StreamState {
            epoch: self.epoch,
            sample_in_epoch: self.pos as u64,
            seed: self.seed,
            num_canonical_nodes: 1,
            initial_physical_nodes: None,
        }
    }

    /// Sequences per epoch over all ranks that training can use: the examples when padded;
    /// whole packing windows times the global batch when packed.
    pub fn epoch_size(&self) -> u64 {
        match self.packing {
            Packing::Padded { .. } => self.examples.len() as u64,
            Packing::Packed { per_batch, .. } => {
                (self.examples.len() / per_batch * self.global_batch()) as u64
            }
        }
    }

    /// Back to the start of epoch 0 (evaluation reads the same sequences every time).
    pub fn rewind(&mut self) -> Result<(), FinetuneError> {
        if self.epoch != 0 {
            self.load_epoch(0);
        }
        self.pos = 0;
        Ok(())
    }

    /// Sequences left in the current epoch for this rank (leftover bins included).
    pub fn remaining_in_epoch(&self) -> usize {
        let rest = self.rows.len().saturating_sub(self.pos);
        let global = self.global_batch();
        let partial = (rest % global)
            .saturating_sub(self.world.rank as usize * self.batch)
            .min(self.batch);
        rest / global * self.batch + partial
    }

    /// Examples of the current epoch that training does not reach (the tail after the last full
    /// batch or packing window, and packed leftovers).
    pub fn unused_in_epoch(&self) -> usize {
        let used: usize = self.rows[..self.train_rows].iter().map(Vec::len).sum();
        self.examples.len() - used
    }

    /// What reading the data found.
    pub fn stats(&self) -> &FinetuneStats {
        &self.stats
    }

    /// The mode in force (`auto` resolved).
    pub fn packing(&self) -> Packing {
        self.packing
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    fn global_batch(&self) -> usize {
        self.batch * self.world.world_size as usize
    }

    /// Examples of epoch `epoch` in reading order.
    fn order(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.examples.len() as u32).collect();
        if self.shuffle {
            NumpyRng::new(mix(mix(self.seed, SHUFFLE), epoch)).shuffle(&mut order);
        }
        order
    }

    /// Builds epoch `epoch`'s sequences and moves to its start.
    fn load_epoch(&mut self, epoch: u64) {
        let order = self.order(epoch);
        let global = self.global_batch();
        let (rows, train_rows) = match self.packing {
            Packing::Padded { .. } => {
                let rows: Vec<Vec<u32>> = order.iter().map(|&i| vec![i]).collect();
                let train = rows.len() / global * global;
                (rows, train)
            }
            Packing::Packed { per_batch, .. } => {
                let sized = |ids: &[u32]| -> Vec<(usize, u32)> {
                    ids.iter()
                        .map(|&i| (self.examples[i as usize].ids.len(), i))
                        .collect()
                };
                let mut packer = Packer::new(global, self.seq_len);
                let mut rows = Vec::new();
                let windows = order.len() / per_batch;
                for w in order.chunks(per_batch).take(windows) {
                    rows.extend(packer.pack(&sized(w)).into_iter().map(|b| b.items));
                }
                let train = rows.len();
                let tail = &order[windows * per_batch..];
                if !tail.is_empty() {
                    rows.extend(packer.pack(&sized(tail)).into_iter().map(|b| b.items));
                }
                rows.extend(packer.drain().into_iter().map(|b| b.items));
                (rows, train)
            }
        };
        self.epoch = epoch;
        self.pos = 0;
        self.rows = rows;
        self.train_rows = train_rows;
    }

    /// Sequences `range` as examples, then advances past one global batch.
    fn take(&mut self, range: Range<usize>, global: usize) -> Vec<Example> {
        let first_of_run = self.epoch == 0 && self.pos == 0;
        let len = match self.packing {
            Packing::Padded { trim: true } if !first_of_run => {
                let longest = self.rows[range.clone()]
                    .iter()
                    .map(|r| self.row_len(r))
                    .max()
                    .unwrap_or(0);
                longest.div_ceil(8).saturating_mul(8).clamp(2, self.seq_len)
            }
            _ => self.seq_len,
        };
        let out = self.rows[range]
            .iter()
            .map(|r| self.example(r, len))
            .collect();
        self.pos = (self.pos + global).min(self.rows.len());
        out
    }

    fn row_len(&self, items: &[u32]) -> usize {
        items
            .iter()
            .map(|&i| self.examples[i as usize].ids.len())
            .sum()
    }

    /// The examples `items`, concatenated and padded to `len` tokens.
    fn example(&self, items: &[u32], len: usize) -> Example {
        let mut ids = Vec::with_capacity(len);
        let mut labels: Vec<i64> = Vec::with_capacity(len);
        let mut sequence_id = Vec::with_capacity(len);
        for (k, &i) in items.iter().enumerate() {
            let ex = &self.examples[i as usize];
            let start = labels.len();
            ids.extend_from_slice(&ex.ids);
            labels.extend_from_slice(&ex.labels);
            if k > 0 {
                // llm-foundry's `_combine_in_place`: the previous example's last token must not
                // learn to predict this one's first.
                labels[start] = IGNORE;
            }
            sequence_id.extend(std::iter::repeat_n(k as i64, ex.ids.len()));
        }
        let real = ids.len();
        ids.resize(len, self.pad_id);
        labels.resize(len, IGNORE);
        sequence_id.resize(len, -1);
        // Targets are the labels shifted left by one (llm-foundry's MPT: `roll(labels, -1)`).
        let mut targets: Vec<i64> = labels[1..].to_vec();
        targets.push(IGNORE);
        Example {
            input_ids: ids,
            targets,
            attention: Some((0..len).map(|i| i < real).collect()),
            sequence_id: Some(sequence_id),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
