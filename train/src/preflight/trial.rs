//! The heavy checks' machinery: the model as the run will build it, the run's data loaders, and
//! one real training step on one real microbatch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use tessera_data::stream::World;
use tessera_model::{Mpt, MptConfig, hf};

use crate::batch::{Example, Separator};
use crate::config::{LoaderConfig, LoaderKind, ModelSource, TrainConfig};
use crate::finetune::{FinetuneData, FinetuneTokenizer};
use crate::step::{apply_update, forward_backward};
use crate::trainer::data::TextData;

/// The architecture the run will build: the `model:` fields, or a pretrained folder's
/// `config.json` with `config_overrides` applied (as `trainer::setup` does).
pub fn resolve_model(cfg: &TrainConfig) -> Result<MptConfig, String> {
    match &cfg.model {
        ModelSource::Mpt(_) => cfg
            .mpt_config()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "model: no MPT fields".into()),
        ModelSource::Pretrained {
            path,
            config_overrides,
            ..
        } => {
            let file = Path::new(path).join("config.json");
            let at = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
            let text = std::fs::read_to_string(&file).map_err(|e| at(&e))?;
            let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| at(&e))?;
            let Some(obj) = json.as_object_mut() else {
                return Err(at(&"expected a JSON object"));
            };
            for (k, v) in config_overrides {
                obj.insert(k.clone(), v.clone());
            }
            let mpt = MptConfig::from_json_str(&json.to_string(), &file.display().to_string())
                .map_err(|e| e.to_string())?;
            mpt.validate().map_err(|e| e.to_string())?;
            Ok(mpt)
        }
    }
}

/// The model with the weights the run starts from (fresh, pretrained, or `load_path`).
pub fn build_model<B: AutodiffBackend>(
    cfg: &TrainConfig,
    mpt: &MptConfig,
    device: &B::Device,
) -> Result<Mpt<B>, String> {
    let model = match &cfg.model {
        ModelSource::Pretrained {
            path,
            load_weights: true,
            ..
        } => hf::load_weights(mpt, path, device).map_err(|e| e.to_string())?,
        _ => mpt.init::<B>(device, cfg.seed),
    };
    match &cfg.load_path {
        Some(p) => hf::load_weights(mpt, p, device).map_err(|e| format!("load_path: {e}")),
        None => Ok(model),
    }
}

/// Either kind of loader, opened exactly as the trainer will open it.
pub enum Loader {
    Text(TextData),
    Finetune(FinetuneData),
}

impl Loader {
    /// `tokenizer` is needed for `finetuning` loaders only.
    pub fn open(
        key: &str,
        l: &LoaderConfig,
        cfg: &TrainConfig,
        mpt: Option<&MptConfig>,
        tokenizer: Option<&FinetuneTokenizer>,
        batch: usize,
    ) -> Result<Self, String> {
        match l.name {
            LoaderKind::Text => {
                let separator = mpt.and_then(|m| separator(cfg, m));
                TextData::open(
                    key,
                    l,
                    cfg.max_seq_len,
                    batch,
                    World::SINGLE,
                    None,
                    separator,
                )
                .map(Loader::Text)
                .map_err(|e| e.to_string())
            }
            LoaderKind::Finetuning => {
                let tok = tokenizer
                    .ok_or("a finetuning loader needs the tokenizer, which did not load")?;
                FinetuneData::open(key, l, tok, cfg.max_seq_len, batch, World::SINGLE, None)
                    .map(Loader::Finetune)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Sequences per epoch over all ranks.
    pub fn epoch_size(&self) -> u64 {
        match self {
            Loader::Text(d) => d.epoch_size(),
            Loader::Finetune(d) => d.epoch_size(),
        }
    }

    /// Tokens per epoch: exact for fine-tuning data, `sequences × max_seq_len` for packed text.
    pub fn tokens_per_epoch(&self, seq_len: usize) -> u64 {
        match self {
            Loader::Text(d) => d.epoch_size() * seq_len as u64,
            Loader::Finetune(d) => d.stats().tokens,
        }
    }

    pub fn next_batch(&mut self) -> Result<Vec<Example>, String> {
        match self {
            Loader::Text(d) => d.next_batch().map_err(|e| e.to_string()),
            Loader::Finetune(d) => d.next_batch().map_err(|e| e.to_string()),
        }
    }
}

/// `trainer::setup`'s rule for deriving `sequence_id` in packed text (kept in step with it).
fn separator(cfg: &TrainConfig, model: &MptConfig) -> Option<Separator> {
    if !model.attn_config.attn_uses_sequence_id {
        return None;
    }
    let ds = &cfg.train_loader.dataset;
    match (ds.eos_token_id, ds.bos_token_id) {
        (Some(e), _) => Some(Separator::Eos(e)),
        (None, Some(b)) => Some(Separator::Bos(b)),
        (None, None) => Some(Separator::Eos(0)),
    }
}

/// What one training step on one microbatch showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    /// Forward and backward of the microbatch, seconds.
    pub forward_backward_s: f64,
    /// Clipping and the optimizer update, seconds.
    pub update_s: f64,
    /// Whether the timed step was the second (the first pays one-time allocation and setup).
    pub warm: bool,
    /// The microbatch's mean loss.
    pub loss: f64,
    pub grad_norm: f64,
}

/// A first step slower than this is not repeated for a warm timing.
const REPEAT_BELOW_S: f64 = 20.0;

/// Runs the step the trainer runs (forward, backward, clip, update) on `micro`; a panic inside
/// the backend (out of memory, a shape the kernels refuse) comes back as an error.
pub fn trial<B: AutodiffBackend>(
    model: Mpt<B>,
    cfg: &TrainConfig,
    micro: Vec<Example>,
    device: &B::Device,
) -> Result<Trial, String> {
    let run = AssertUnwindSafe(|| -> Result<Trial, String> {
        let mut optim = cfg.optimizer.init::<B, Mpt<B>>();
        let clip = cfg.gradient_clipping.as_ref().map(|c| c.clipping_threshold);
        let batch = [micro];
        let mut step = |model: Mpt<B>| -> Result<(Mpt<B>, Trial), String> {
            let t = Instant::now();
            let grads = forward_backward(&model, &batch, 0, device)
                .ok_or("the microbatch has no loss-generating tokens")?;
            let forward_backward_s = t.elapsed().as_secs_f64();
            let loss = grads.loss;
            let t = Instant::now();
            let (model, grad_norm, _) =
                apply_update(model, &mut optim, grads, cfg.optimizer.lr(), clip);
            let update_s = t.elapsed().as_secs_f64();
            Ok((
                model,
                Trial {
                    forward_backward_s,
                    update_s,
                    warm: false,
                    loss,
                    grad_norm,
                },
            ))
        };
        let (model, first) = step(model)?;
        if first.forward_backward_s + first.update_s >= REPEAT_BELOW_S {
            return Ok(first);
        }
        let (_, second) = step(model)?;
        // The loss reported is the untrained model's, as the run's first step will see it.
        Ok(Trial {
            warm: true,
            loss: first.loss,
            ..second
        })
    });
    catch_unwind(run).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(format!("the step panicked: {msg}"))
    })
}
