//! The heavy checks' machinery: the model as the run will build it, the run's data loaders, and
//! one real training step on one real microbatch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use tessera_data::stream::World;
use tessera_model::{Mpt, MptConfig};

use crate::batch::Example;
use crate::config::{LoaderConfig, TrainConfig};
use crate::finetune::FinetuneTokenizer;
use crate::parallel::{Sharded, Strategy};
use crate::trainer::setup;

/// The architecture the run will build (the trainer's own rule).
pub fn resolve_model(cfg: &TrainConfig) -> Result<MptConfig, String> {
    setup::resolve_model(cfg).map_err(|e| e.to_string())
}

/// The model with the weights the run starts from (the trainer's own rule).
pub fn build_model<B: AutodiffBackend>(
    cfg: &TrainConfig,
    mpt: &MptConfig,
    device: &B::Device,
) -> Result<Mpt<B>, String> {
    setup::build_model::<B>(cfg, mpt, device).map_err(|e| e.to_string())
}

/// Either kind of loader, opened exactly as the trainer opens it.
pub use crate::trainer::data::Loader;

/// Opens a loader for preflight (one rank, from the start).
pub fn open_loader(
    key: &str,
    l: &LoaderConfig,
    cfg: &TrainConfig,
    mpt: Option<&MptConfig>,
    tokenizer: Option<&FinetuneTokenizer>,
    batch: usize,
) -> Result<Loader, String> {
    let separator = mpt.and_then(|m| setup::separator(cfg, m));
    Loader::open(
        key,
        l,
        tokenizer,
        cfg.max_seq_len,
        batch,
        World::SINGLE,
        None,
        separator,
    )
    .map_err(|e| e.to_string())
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
    /// Global L2 norm of the gradient before clipping.
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
        let clip = cfg.gradient_clipping.as_ref().map(|c| c.clipping_threshold);
        let batch = [micro];
        // The trainer's own step, on one process.
        let mut sharded = Sharded::new(
            model,
            cfg.optimizer.build(),
            Strategy::SINGLE,
            tessera_dist::Communicator::single(),
            device,
        )
        .map_err(|e| e.to_string())?;
        let mut step = || -> Result<Trial, String> {
            let t = Instant::now();
            let grads = sharded
                .forward_backward(&batch, 0, 0, device)
                .map_err(|e| e.to_string())?;
            if grads.loss_tokens == 0 {
                return Err("the microbatch has no loss-generating tokens".into());
            }
            let forward_backward_s = t.elapsed().as_secs_f64();
            let loss = grads.loss;
            let t = Instant::now();
            let applied = sharded
                .apply(grads, cfg.optimizer.lr(), clip)
                .map_err(|e| e.to_string())?;
            let update_s = t.elapsed().as_secs_f64();
            Ok(Trial {
                forward_backward_s,
                update_s,
                warm: false,
                loss,
                grad_norm: applied.grad_norm,
            })
        };
        let first = step()?;
        if first.forward_backward_s + first.update_s >= REPEAT_BELOW_S {
            return Ok(first);
        }
        let second = step()?;
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
