//! A training loop for Rust programs: any `Mpt<B>` (with or without a LoRA adapter), batches
//! from any iterator, an optimizer and a schedule, and callbacks that watch every step,
//! evaluation and checkpoint and may stop the run.
//!
//! It runs the step `tessera train` runs ([`crate::step::train_step`] on a
//! [`crate::parallel::Sharded`] state): the same microbatch weighting, clipping and optimizer,
//! bit for bit. What the YAML path adds on top (run folder and lock, resumable sharded
//! checkpoints, guards, data-state resumption, reports) stays in [`super::train`].
//!
//! ```no_run
//! # use burn::backend::{Autodiff, Flex};
//! # use tessera_train::trainer::{Control, Trainer};
//! # use tessera_train::optim::{OptimizerConfig, OptimizerName};
//! # fn main() -> Result<(), tessera_train::trainer::TrainError> {
//! # let device = Default::default();
//! # let batches: Vec<Vec<tessera_train::batch::Example>> = Vec::new();
//! let summary = Trainer::<Autodiff<Flex>>::from_pretrained("hf/mpt", &device)?
//!     .optimizer(OptimizerConfig::new(OptimizerName::DecoupledAdamw, 1e-4))
//!     .max_steps(100)
//!     .microbatch_size(4)
//!     .on_step(|s| {
//!         println!("step {} loss {:.3}", s.step, s.outcome.loss);
//!         if s.outcome.loss < 1.0 { Control::Stop } else { Control::Continue }
//!     })
//!     .fit(batches.into_iter().map(Ok), &device)?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use tessera_dist::Communicator;
use tessera_model::hf::{self, HfDtype};
use tessera_model::lora;
use tessera_model::{Mpt, MptConfig};

use super::{TrainError, microbatches};
use crate::batch::Example;
use crate::optim::{OptimizerConfig, OptimizerName};
use crate::parallel::{Sharded, Strategy};
use crate::schedule::{LrSchedule, lr_at};
use crate::step::{StepOutcome, StepSettings, eval_loss, mix, train_step};

/// What a callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop after this step (the final checkpoint, if any, is still written).
    Stop,
}

/// One finished step, as the step callbacks see it.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Steps done so far (1 after the first).
    pub step: u64,
    /// The learning rate the step used.
    pub lr: f64,
    /// Loss, gradient norm, tokens and whether the update was applied.
    pub outcome: StepOutcome,
}

/// One evaluation.
#[derive(Debug, Clone, Copy)]
pub struct EvalInfo {
    /// The step it followed.
    pub step: u64,
    /// Mean cross-entropy over the eval set's loss tokens.
    pub loss: f64,
    /// Loss tokens it averaged over.
    pub loss_tokens: usize,
}

/// One written checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    /// The step it holds.
    pub step: u64,
    /// The folder: a transformers folder, or a PEFT adapter folder when an adapter trains.
    pub path: PathBuf,
}

/// How a run ended.
pub struct FitSummary<B: AutodiffBackend> {
    /// The trained model (with its adapter attached, if one trained).
    pub model: Mpt<B>,
    /// Steps taken.
    pub steps: u64,
    /// The last step's outcome.
    pub last: Option<StepOutcome>,
    /// Every evaluation, in order.
    pub evals: Vec<EvalInfo>,
    /// Every checkpoint written, in order.
    pub checkpoints: Vec<PathBuf>,
    /// Whether a callback stopped the run (else it ran `max_steps` or out of batches).
    pub stopped_by_callback: bool,
}

/// What [`Trainer::fit`] has done so far.
#[derive(Default)]
struct Progress {
    steps: u64,
    last: Option<StepOutcome>,
    evals: Vec<EvalInfo>,
    checkpoints: Vec<PathBuf>,
}

type Hook<'a, T> = Box<dyn FnMut(&T) -> Control + 'a>;

/// A training run under construction; [`Trainer::fit`] runs it.
pub struct Trainer<'a, B: AutodiffBackend> {
    model: Mpt<B>,
    optimizer: OptimizerConfig,
    schedule: Option<LrSchedule>,
    max_steps: u64,
    microbatch_size: usize,
    clip_norm: Option<f64>,
    seed: u64,
    parallel: Option<(Communicator, Strategy)>,
    eval: Option<(u64, Vec<Example>)>,
    checkpoint: Option<(u64, PathBuf)>,
    on_step: Vec<Hook<'a, StepInfo>>,
    on_eval: Vec<Hook<'a, EvalInfo>>,
    on_checkpoint: Vec<Hook<'a, CheckpointInfo>>,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Trains `model`: every parameter that requires a gradient (only the adapter's, when
    /// [`Mpt::with_adapter`] attached one). Defaults: decoupled AdamW at lr 1e-3 (composer's
    /// defaults), constant lr, 1000 steps, the whole batch as one microbatch, clipping at 1.0.
    pub fn new(model: Mpt<B>) -> Self {
        Self {
            model,
            optimizer: OptimizerConfig::new(OptimizerName::DecoupledAdamw, 1e-3),
            schedule: None,
            max_steps: 1000,
            microbatch_size: usize::MAX,
            clip_norm: Some(1.0),
            seed: 17,
            parallel: None,
            eval: None,
            checkpoint: None,
            on_step: Vec::new(),
            on_eval: Vec::new(),
            on_checkpoint: Vec::new(),
        }
    }

    /// A fresh model of `config`, initialised as llm-foundry does from `seed`.
    pub fn from_config(config: &MptConfig, seed: u64, device: &B::Device) -> Self {
        Self::new(config.init::<B>(device, seed)).seed(seed)
    }

    /// The model in a transformers folder (`config.json` + safetensors).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, TrainError> {
        let (_, model) =
            hf::load::<B>(dir.as_ref(), device).map_err(|e| TrainError::Model(e.to_string()))?;
        Ok(Self::new(model))
    }

    /// The model changed by `f`: to attach a LoRA adapter to a model loaded by
    /// [`Trainer::from_pretrained`], for instance.
    pub fn map_model<E>(mut self, f: impl FnOnce(Mpt<B>) -> Result<Mpt<B>, E>) -> Result<Self, E> {
        self.model = f(self.model)?;
        Ok(self)
    }

    /// The optimizer (its `lr` is the peak the schedule scales).
    pub fn optimizer(mut self, optimizer: OptimizerConfig) -> Self {
        self.optimizer = optimizer;
        self
    }

    /// The learning-rate schedule, in steps (see [`crate::schedule::SchedulerConfig::resolve`]
    /// to build one from llm-foundry's keys). Without one, the lr stays at the optimizer's.
    pub fn schedule(mut self, schedule: LrSchedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Stop after this many steps (or earlier, when the batches run out).
    pub fn max_steps(mut self, steps: u64) -> Self {
        self.max_steps = steps;
        self
    }

    /// Sequences per forward/backward; a step's batch is split into microbatches of this size
    /// and their gradients accumulated (weighted by loss tokens).
    pub fn microbatch_size(mut self, size: usize) -> Self {
        self.microbatch_size = size.max(1);
        self
    }

    /// Clip the global gradient norm to this (`None`: no clipping).
    pub fn clip_norm(mut self, clip: Option<f64>) -> Self {
        self.clip_norm = clip;
        self
    }

    /// The seed of the dropout masks (each step's masks are a function of it and the step).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Train as one rank of several: `comm` connects them ([`Communicator::connect`] with
    /// composer's environment), `strategy` shards the state. Each rank passes its own batches.
    pub fn distributed(mut self, comm: Communicator, strategy: Strategy) -> Self {
        self.parallel = Some((comm, strategy));
        self
    }

    /// Evaluate the mean loss over `examples` every `every` steps and after the last.
    pub fn eval_every(mut self, every: u64, examples: Vec<Example>) -> Self {
        self.eval = Some((every.max(1), examples));
        self
    }

    /// Write the model every `every` steps and after the last, to `dir/ba{step}`: a
    /// transformers folder, or a PEFT adapter folder when an adapter trains.
    pub fn checkpoint_every(mut self, every: u64, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some((every.max(1), dir.into()));
        self
    }

    /// Called after every step.
    pub fn on_step(mut self, f: impl FnMut(&StepInfo) -> Control + 'a) -> Self {
        self.on_step.push(Box::new(f));
        self
    }

    /// Called after every evaluation.
    pub fn on_eval(mut self, f: impl FnMut(&EvalInfo) -> Control + 'a) -> Self {
        self.on_eval.push(Box::new(f));
        self
    }

    /// Called after every checkpoint.
    pub fn on_checkpoint(mut self, f: impl FnMut(&CheckpointInfo) -> Control + 'a) -> Self {
        self.on_checkpoint.push(Box::new(f));
        self
    }

    /// Trains on `batches` (one item per step: this rank's sequences of the step) until
    /// `max_steps`, the end of the batches, or a callback's [`Control::Stop`].
    pub fn fit(
        mut self,
        batches: impl IntoIterator<Item = Result<Vec<Example>, TrainError>>,
        device: &B::Device,
    ) -> Result<FitSummary<B>, TrainError> {
        self.optimizer.validate().map_err(|e| TrainError::Config {
            key: format!("optimizer.{}", e.key()),
            message: e.message(),
        })?;
        let config = self.model.config().clone();
        let (comm, strategy) = self
            .parallel
            .take()
            .unwrap_or_else(|| (Communicator::single(), Strategy::SINGLE));
        let adapter = self.model.lora_config().cloned();
        let mut sharded = Sharded::new(self.model, self.optimizer.build(), strategy, comm, device)
            .map_err(TrainError::Dist)?;
        let mut summary = Progress::default();
        let mut batches = batches.into_iter();
        let mut stop = false;
        while summary.steps < self.max_steps && !stop {
            let Some(batch) = batches.next() else { break };
            let batch = batch?;
            if batch.is_empty() {
                return Err(TrainError::Config {
                    key: "batches".into(),
                    message: format!("batch {} is empty", summary.steps + 1),
                });
            }
            let step = summary.steps + 1;
            let lr = self
                .schedule
                .as_ref()
                .map_or(self.optimizer.lr(), |s| lr_at(step - 1, s));
            let micro = microbatches(batch, self.microbatch_size);
            let settings = StepSettings {
                lr,
                clip_norm: self.clip_norm,
                dropout_seed: mix(self.seed, step),
            };
            let outcome =
                train_step(&mut sharded, &micro, settings, device).map_err(TrainError::Dist)?;
            summary.steps = step;
            summary.last = Some(outcome);
            let info = StepInfo { step, lr, outcome };
            stop |= call(&mut self.on_step, &info);
            let last = stop || step == self.max_steps;
            if let Some((every, examples)) = &self.eval
                && (step.is_multiple_of(*every) || last)
            {
                let model = sharded.full_model().map_err(TrainError::Dist)?.valid();
                let (mut sum, mut tokens) = (0.0, 0usize);
                for chunk in examples.chunks(self.microbatch_size.min(examples.len()).max(1)) {
                    let (s, k) = eval_loss(&model, chunk, device);
                    sum += s;
                    tokens += k;
                }
                let info = EvalInfo {
                    step,
                    loss: sum / tokens.max(1) as f64,
                    loss_tokens: tokens,
                };
                summary.evals.push(info);
                stop |= call(&mut self.on_eval, &info);
            }
            let last = stop || step == self.max_steps;
            if let Some((every, dir)) = &self.checkpoint
                && (step.is_multiple_of(*every) || last)
            {
                let model = sharded.full_model().map_err(TrainError::Dist)?;
                let path = dir.join(format!("ba{step}"));
                if sharded.comm.rank() == 0 {
                    write_model(&model, &config, adapter.is_some(), &path)?;
                }
                summary.checkpoints.push(path.clone());
                stop |= call(&mut self.on_checkpoint, &CheckpointInfo { step, path });
            }
        }
        Ok(FitSummary {
            model: sharded.full_model().map_err(TrainError::Dist)?,
            steps: summary.steps,
            last: summary.last,
            evals: summary.evals,
            checkpoints: summary.checkpoints,
            stopped_by_callback: stop,
        })
    }
}

/// Runs every hook; true if any asked to stop.
fn call<T>(hooks: &mut [Hook<'_, T>], info: &T) -> bool {
    let mut stop = false;
    for h in hooks.iter_mut() {
        stop |= h(info) == Control::Stop;
    }
    stop
}

/// The model as a transformers folder, or its adapter as a PEFT folder.
fn write_model<B: AutodiffBackend>(
    model: &Mpt<B>,
    config: &MptConfig,
    adapter_only: bool,
    path: &Path,
) -> Result<(), TrainError> {
    let inner = model.valid();
    if adapter_only {
        let adapter = inner
            .adapter()
            .expect("the model carries the adapter it trained");
        lora::peft::save(&adapter, path, None).map_err(|e| TrainError::Adapter {
            key: "checkpoint",
            source: Box::new(e),
        })
    } else {
        hf::save(&inner, config, path, HfDtype::F32).map_err(|e| TrainError::Model(e.to_string()))
    }
}
