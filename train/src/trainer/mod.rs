//! The training loop.
//!
//! One loop (`fit.rs`) trains a model from code ([`Trainer::fit`]) and a YAML run
//! ([`Trainer::from_yaml`], which [`train`] wraps) alike. Per step: data → forward/backward →
//! guards → update → log → callbacks → eval → checkpoint, each stage handed only the parts it
//! uses: the step plan (`plan.rs`), the guards (`recovery.rs`), the saver (`saving.rs`), the
//! eval sets (`evaluation.rs`). A YAML run's parts are built once, each by one call, in
//! `yaml_run.rs`. Every random stream derives from the run seed, a purpose and the step, and
//! the data position is part of every checkpoint, so a resumed run reproduces the
//! uninterrupted one bit for bit on the same backend.

pub mod builder;
pub mod checkpointing;
pub mod data;
mod error;
mod evaluation;
mod fit;
mod log;
mod plan;
mod recovery;
mod saving;
pub mod setup;
pub mod state;
pub mod timing;
mod yaml_run;

pub use builder::{CheckpointInfo, Control, EvalInfo, FitSummary, StepInfo, Trainer};
pub use error::{Failure, TrainError};
pub use evaluation::ModelEval;

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use tessera_model::Mpt;

use crate::batch::Example;

/// Fails on the first input id the model has no embedding for (which would otherwise be an
/// out-of-bounds panic, or a silent wrong lookup, deep inside a backend).
fn check_vocab(examples: &[Example], vocab: usize, key: &str) -> Result<(), TrainError> {
    let too_big = examples
        .iter()
        .flat_map(|e| e.input_ids.iter())
        .find(|&&t| t as usize >= vocab);
    match too_big {
        Some(&token) => Err(TrainError::TokenOutOfRange {
            key: key.to_string(),
            token,
            vocab,
        }),
        None => Ok(()),
    }
}

/// Settings that come from the command line rather than the YAML.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// The YAML file (its stem names the run when the config does not).
    pub config_path: Option<PathBuf>,
    /// The run folder (default `runs/<run_name>`).
    pub run_dir: Option<PathBuf>,
    /// "cpu (flex)", "cuda:0"…, for the report.
    pub device_label: String,
    /// Peak FLOP/s of the devices, for MFU (none: MFU is not reported).
    pub peak_flops: Option<f64>,
    /// Append the global sample ids each step trained on to `rank{r}.jsonl` in this folder
    /// (packed text data): tests use it to check that every sample is seen exactly once across
    /// resumes and world sizes.
    pub sample_log: Option<PathBuf>,
    /// This process's rank among the run's processes (composer's environment, read by the
    /// binary); `None` is a single process.
    pub ranks: Option<tessera_dist::RankEnv>,
    /// Bytes of memory the device has for training, for `device_train_microbatch_size: auto`
    /// (the binary reads it from the OS or the driver).
    pub device_memory: Option<u64>,
    /// Called (on the watchdog's thread) when the watchdog declares a stall, besides the loop
    /// returning [`TrainError::Stalled`] at its next check. A program whose main thread may be
    /// stuck for good (a hung GPU kernel) can end itself here after a grace period; the library
    /// never does.
    pub on_stall: Option<StallHook>,
}

/// See [`TrainOptions::on_stall`].
#[derive(Clone)]
pub struct StallHook(pub std::sync::Arc<dyn Fn(crate::guard::StallReport) + Send + Sync>);

impl std::fmt::Debug for StallHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StallHook")
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The step the run ended at.
    pub steps: u64,
    /// Training tokens consumed (padding excluded).
    pub tokens: u64,
    /// The train loss of the first and the last logged step.
    pub first_loss: Option<f64>,
    /// See `first_loss`.
    pub last_loss: Option<f64>,
    /// The last evaluation of each eval set.
    pub eval: Vec<(String, f64)>,
    /// The newest checkpoint on disk at the end.
    pub final_checkpoint: Option<PathBuf>,
    /// The run's `report.md`.
    pub report: PathBuf,
}

/// Extra evaluation the caller runs at `eval_interval` on the inference model (ICL tasks, for
/// instance), given the step and the run's `eval/` folder; it returns named scalars to log.
pub type EvalHook<'a, B> = &'a mut dyn FnMut(
    &Mpt<<B as AutodiffBackend>::InnerBackend>,
    u64,
    &std::path::Path,
) -> Vec<(String, f64)>;

/// Trains the run `loaded` describes until `max_duration`, resuming first if the config says
/// so: [`Trainer::from_yaml`] then [`Trainer::run`], with `hook` evaluating the model beyond
/// its loss (ICL tasks) given the step and the run's `eval/` folder.
///
/// However the run ends, once it has started it leaves a complete `report.md` that says how
/// it ended; an error is returned after the report is written.
pub fn train<B: AutodiffBackend>(
    loaded: &crate::config::LoadedConfig,
    opts: &TrainOptions,
    hook: Option<EvalHook<'_, B>>,
    device: &B::Device,
) -> Result<TrainSummary, TrainError> {
    let trainer = Trainer::<B>::from_yaml(loaded, opts, device)?;
    let trainer = match (hook, trainer.run_dir().map(|d| d.eval())) {
        (Some(hook), Some(eval_dir)) => {
            trainer.evaluate_model_with(move |model, step| hook(model, step, &eval_dir))
        }
        _ => trainer,
    };
    trainer.run(device)
}

/// This rank's batch as `k`-sequence microbatches, taken with a stride: microbatch `i` holds
/// sequences `i, i + n/k, i + 2n/k, …`. streaming deals a node's samples to its ranks the same
/// way, so one process's microbatch `r` of a global batch is what rank `r` of a run with as many
/// ranks as microbatches gets, and the two runs add the same gradients in the same order.
pub fn microbatches(examples: Vec<Example>, k_size: usize) -> Vec<Vec<Example>> {
    let n = examples.len();
    let count = n.div_ceil(k_size.max(1)).max(1);
    let mut out: Vec<Vec<Example>> = (0..count).map(|_| Vec::new()).collect();
    for (j, e) in examples.into_iter().enumerate() {
        out[j % count].push(e);
    }
    out.retain(|m| !m.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_beyond_the_vocabulary_is_an_error_naming_the_loader() {
        let ok = vec![Example::packed(vec![0, 5, 99], None)];
        assert!(check_vocab(&ok, 100, "train_loader").is_ok());
        let bad = vec![ok[0].clone(), Example::packed(vec![3, 100, 7], None)];
        let err = check_vocab(&bad, 100, "eval_loader")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "eval_loader: token id 100 is outside the model's vocabulary (100 ids)"
            ),
            "{err}"
        );
    }
}
