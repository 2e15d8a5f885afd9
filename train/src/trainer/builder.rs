//! [`Trainer`]: the training loop for Rust programs and for `tessera train` alike.
//!
//! A library user brings any `Mpt<B>` (with or without a LoRA adapter), batches from any
//! iterator, an optimizer and a schedule, and callbacks that watch every step, evaluation and
//! checkpoint and may stop the run; [`Trainer::fit`] trains it. A YAML config is one more way
//! to build a trainer: [`Trainer::from_yaml`] adds the run folder and its lock, the
//! `train_loader`, resumable sharded checkpoints, the guards and the report, and
//! [`Trainer::run`] trains it. Both run the same loop and the same step
//! ([`crate::step::train_step`]).
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
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use tessera_dist::Communicator;
use tessera_model::hf;
use tessera_model::{Mpt, MptConfig};

use super::evaluation::{EvalSet, EvalSource};
use super::fit::{Batches, Hooks, Parts, arm_watchdog, run_loop};
use super::log::RunLog;
use super::plan::StepPlan;
use super::recovery::Guards;
use super::saving::Saver;
use super::state::TrainState;
use super::timing::Timing;
use super::yaml_run::YamlRun;
use super::{TrainError, TrainOptions, TrainSummary};
use crate::batch::Example;
use crate::config::LoadedConfig;
use crate::guard::{GuardsConfig, NanGuard, SpikeDetector};
use crate::optim::{OptimizerConfig, OptimizerName};
use crate::parallel::{Sharded, Strategy};
use crate::schedule::LrSchedule;
use crate::step::StepOutcome;

/// What a callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop after this step (evaluation and the final checkpoint, if any, still run).
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

/// One evaluation of one eval set.
#[derive(Debug, Clone)]
pub struct EvalInfo {
    /// The eval set (`eval`, or the YAML loader's `label`).
    pub label: String,
    /// The step it followed (0: before the first, with `eval_first`).
    pub step: u64,
    /// Mean cross-entropy over the eval set's loss tokens (over every rank).
    pub loss: f64,
    /// Loss tokens it averaged over.
    pub loss_tokens: usize,
}

/// One checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    /// The step it holds.
    pub step: u64,
    /// The folder: a transformers folder, or a PEFT adapter folder when an adapter trains; a
    /// YAML run's resumable checkpoint is still being written by a background thread.
    pub path: PathBuf,
}

/// How [`Trainer::fit`] ended.
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

/// A training run under construction; [`Trainer::fit`] or [`Trainer::run`] trains it.
pub struct Trainer<'a, B: AutodiffBackend> {
    build: Build<B>,
    hooks: Hooks<'a, B>,
}

/// What the trainer is built from.
enum Build<B: AutodiffBackend> {
    /// A model and settings from code, made into the loop's parts by `fit`.
    Code(Box<CodeRun<B>>),
    /// A YAML run: every part is built (and resumed) already, so its settings are the YAML's;
    /// the setters that would change them are recorded to refuse the run.
    Yaml {
        run: Box<YamlRun<B>>,
        refused: Vec<&'static str>,
    },
}

/// A trainer's settings from code.
struct CodeRun<B: AutodiffBackend> {
    model: Mpt<B>,
    optimizer: OptimizerConfig,
    schedule: Option<LrSchedule>,
    max_steps: u64,
    microbatch_size: usize,
    clip_norm: Option<f64>,
    seed: u64,
    parallel: Option<(Communicator, Strategy)>,
    guards: GuardsConfig,
    eval: Option<(u64, Vec<Example>)>,
    checkpoint: Option<(u64, PathBuf)>,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// Trains `model`: every parameter that requires a gradient (only the adapter's, when
    /// [`Mpt::with_adapter`] attached one). Defaults: decoupled AdamW at lr 1e-3 (composer's
    /// defaults), constant lr, 1000 steps, the whole batch as one microbatch, clipping at 1.0,
    /// the NaN guard (a non-finite step is skipped; many in a row stop the run) and no spike
    /// detection or watchdog.
    pub fn new(model: Mpt<B>) -> Self {
        let code = CodeRun {
            model,
            optimizer: OptimizerConfig::new(OptimizerName::DecoupledAdamw, 1e-3),
            schedule: None,
            max_steps: 1000,
            microbatch_size: usize::MAX,
            clip_norm: Some(1.0),
            seed: 17,
            parallel: None,
            guards: GuardsConfig {
                spike: None,
                watchdog: None,
                ..GuardsConfig::default()
            },
            eval: None,
            checkpoint: None,
        };
        Self {
            build: Build::Code(Box::new(code)),
            hooks: Hooks::default(),
        }
    }

    /// A fresh model of `config`, initialised as llm-foundry does from `seed`.
    pub fn from_config(config: &MptConfig, seed: u64, device: &B::Device) -> Self {
        Self::new(config.init::<B>(device, seed)).seed(seed)
    }

    /// The model in a transformers folder (`config.json` + safetensors).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, TrainError> {
        let (_, model) = hf::load::<B>(dir.as_ref(), device).map_err(|e| TrainError::Model {
            key: "from_pretrained",
            source: Box::new(e),
        })?;
        Ok(Self::new(model))
    }

    /// The run a YAML config describes, as `tessera train` runs it: the ranks connected, the
    /// run folder locked, the model built or resumed from the newest checkpoint that
    /// verifies, and the data, schedule, guards and logs ready. Train it with
    /// [`Trainer::run`]; callbacks may be added, the settings are the YAML's.
    pub fn from_yaml(
        loaded: &LoadedConfig,
        opts: &TrainOptions,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let run = YamlRun::start(loaded, opts, device)?;
        Ok(Self {
            build: Build::Yaml {
                run: Box::new(run),
                refused: Vec::new(),
            },
            hooks: Hooks::default(),
        })
    }

    /// The run folder of a YAML run (`None` for a trainer built from code).
    pub fn run_dir(&self) -> Option<&crate::run_dir::RunDir> {
        match &self.build {
            Build::Yaml { run, .. } => Some(&run.folder.dir),
            Build::Code(_) => None,
        }
    }

    /// Applies a setting made from code; on a YAML run the YAML decides, so it is recorded
    /// and the run refused.
    fn set(mut self, name: &'static str, f: impl FnOnce(&mut CodeRun<B>)) -> Self {
        match &mut self.build {
            Build::Code(code) => f(code),
            Build::Yaml { refused, .. } => refused.push(name),
        }
        self
    }

    /// The model changed by `f`: to attach a LoRA adapter to a model loaded by
    /// [`Trainer::from_pretrained`], for instance.
    pub fn map_model<E>(self, f: impl FnOnce(Mpt<B>) -> Result<Mpt<B>, E>) -> Result<Self, E> {
        let build = match self.build {
            Build::Code(code) => {
                let mut code = *code;
                code.model = f(code.model)?;
                Build::Code(Box::new(code))
            }
            Build::Yaml { run, mut refused } => {
                refused.push("map_model");
                Build::Yaml { run, refused }
            }
        };
        Ok(Self {
            build,
            hooks: self.hooks,
        })
    }

    /// The optimizer (its `lr` is the peak the schedule scales).
    pub fn optimizer(self, optimizer: OptimizerConfig) -> Self {
        self.set("optimizer", |c| c.optimizer = optimizer)
    }

    /// The learning-rate schedule, in steps (see [`crate::schedule::SchedulerConfig::resolve`]
    /// to build one from llm-foundry's keys). Without one, the lr stays at the optimizer's.
    pub fn schedule(self, schedule: LrSchedule) -> Self {
        self.set("schedule", |c| c.schedule = Some(schedule))
    }

    /// Stop after this many steps (or earlier, when the batches run out).
    pub fn max_steps(self, steps: u64) -> Self {
        self.set("max_steps", |c| c.max_steps = steps)
    }

    /// Sequences per forward/backward; a step's batch is split into microbatches of this size
    /// and their gradients accumulated (weighted by loss tokens).
    pub fn microbatch_size(self, size: usize) -> Self {
        self.set("microbatch_size", |c| c.microbatch_size = size.max(1))
    }

    /// Clip the global gradient norm to this (`None`: no clipping).
    pub fn clip_norm(self, clip: Option<f64>) -> Self {
        self.set("clip_norm", |c| c.clip_norm = clip)
    }

    /// The seed of the dropout masks (each step's masks are a function of it and the step).
    pub fn seed(self, seed: u64) -> Self {
        self.set("seed", |c| c.seed = seed)
    }

    /// The guards (llm-foundry-style YAML `guards:` keys): NaN handling, loss-spike detection
    /// and the stall watchdog. A rollback needs resumable checkpoints, which only a YAML run
    /// writes; from code a diverging run stops with [`TrainError::Diverged`].
    pub fn guards(self, guards: GuardsConfig) -> Self {
        self.set("guards", |c| c.guards = guards)
    }

    /// Train as one rank of several: `comm` connects them ([`Communicator::connect`] with
    /// composer's environment), `strategy` shards the state. Each rank passes its own batches.
    pub fn distributed(self, comm: Communicator, strategy: Strategy) -> Self {
        self.set("distributed", |c| c.parallel = Some((comm, strategy)))
    }

    /// Evaluate the mean loss over `examples` (this rank's; the sums are added over ranks)
    /// every `every` steps and after the last.
    pub fn eval_every(self, every: u64, examples: Vec<Example>) -> Self {
        self.set("eval_every", |c| c.eval = Some((every.max(1), examples)))
    }

    /// Write the model every `every` steps and after the last, to `dir/ba{step}`: a
    /// transformers folder, or a PEFT adapter folder when an adapter trains.
    pub fn checkpoint_every(self, every: u64, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.set("checkpoint_every", |c| {
            c.checkpoint = Some((every.max(1), dir))
        })
    }

    /// Called after every step.
    pub fn on_step(mut self, f: impl FnMut(&StepInfo) -> Control + 'a) -> Self {
        self.hooks.on_step.push(Box::new(f));
        self
    }

    /// Called after every evaluation of every eval set.
    pub fn on_eval(mut self, f: impl FnMut(&EvalInfo) -> Control + 'a) -> Self {
        self.hooks.on_eval.push(Box::new(f));
        self
    }

    /// Called after every checkpoint.
    pub fn on_checkpoint(mut self, f: impl FnMut(&CheckpointInfo) -> Control + 'a) -> Self {
        self.hooks.on_checkpoint.push(Box::new(f));
        self
    }

    /// At every evaluation, also evaluates the inference model (on rank 0; ICL tasks, for
    /// instance) and logs the named scalars it returns. Its arguments: the model and the step.
    pub fn evaluate_model_with(
        mut self,
        f: impl FnMut(&Mpt<B::InnerBackend>, u64) -> Vec<(String, f64)> + 'a,
    ) -> Self {
        self.hooks.model_eval = Some(Box::new(f));
        self
    }

    /// Trains on `batches` (one item per step: this rank's sequences of the step) until
    /// `max_steps`, the end of the batches, or a callback's [`Control::Stop`].
    pub fn fit(
        self,
        batches: impl IntoIterator<Item = Result<Vec<Example>, TrainError>> + 'a,
        device: &B::Device,
    ) -> Result<FitSummary<B>, TrainError> {
        let started = Instant::now();
        let code = match self.build {
            Build::Code(code) => code,
            Build::Yaml { .. } => {
                return Err(TrainError::Config {
                    key: "batches".into(),
                    message: "a trainer built from YAML reads its train_loader: call run()".into(),
                });
            }
        };
        let parts = code.into_parts(
            Batches::Caller(Box::new(batches.into_iter())),
            self.hooks,
            device,
        )?;
        let mut ended = run_loop(parts, started, Timing::default(), device);
        ended.outcome?;
        Ok(FitSummary {
            model: ended.sharded.full_model().map_err(TrainError::Dist)?,
            steps: ended.state.step,
            last: ended.last,
            evals: ended.eval_infos,
            checkpoints: ended.checkpoints,
            stopped_by_callback: ended.stopped_by_callback,
        })
    }

    /// Trains a YAML run ([`Trainer::from_yaml`]) until its `max_duration` or a callback's
    /// [`Control::Stop`]. However it ends, it leaves a complete `report.md` that says how;
    /// an error is returned after the report is written.
    pub fn run(self, device: &B::Device) -> Result<TrainSummary, TrainError> {
        match self.build {
            Build::Yaml { run, refused } => {
                if let Some(name) = refused.first() {
                    return Err(TrainError::Config {
                        key: (*name).into(),
                        message: "a trainer built from YAML takes its settings from the YAML; \
                                  only callbacks may be added"
                            .into(),
                    });
                }
                run.train(self.hooks, device)
            }
            Build::Code(_) => Err(TrainError::Config {
                key: "run".into(),
                message: "run() trains a YAML run (Trainer::from_yaml); call fit(batches)".into(),
            }),
        }
    }
}

impl<B: AutodiffBackend> CodeRun<B> {
    /// The loop's parts: the model sharded over the ranks with its optimizer state, the plan,
    /// the guards, and where evaluation and checkpoints go.
    fn into_parts<'a>(
        self,
        batches: Batches<'a>,
        hooks: Hooks<'a, B>,
        device: &B::Device,
    ) -> Result<Parts<'a, B>, TrainError> {
        self.optimizer.validate().map_err(|e| TrainError::Config {
            key: format!("optimizer.{}", e.key()),
            message: e.message(),
        })?;
        self.guards
            .validate()
            .map_err(|(key, message)| TrainError::Config {
                key: format!("guards.{key}"),
                message,
            })?;
        let model_config = self.model.config().clone();
        let adapter_only = self.model.has_adapter();
        let (comm, strategy) = self
            .parallel
            .unwrap_or_else(|| (Communicator::single(), Strategy::SINGLE));
        let sharded = Sharded::new(self.model, self.optimizer.build(), strategy, comm, device)
            .map_err(TrainError::Dist)?;
        let plan = StepPlan {
            max_steps: self.max_steps,
            microbatch: self.microbatch_size,
            clip_norm: self.clip_norm,
            lr: self.optimizer.lr(),
            schedule: self.schedule,
            seed: self.seed,
            eval_every: self.eval.as_ref().map(|(every, _)| *every),
            eval_first: false,
            eval_batches: None,
            save_every: self.checkpoint.as_ref().map(|(every, _)| *every),
        };
        let evals = self
            .eval
            .into_iter()
            .map(|(_, examples)| EvalSet {
                label: "eval".into(),
                source: EvalSource::Examples {
                    examples,
                    batch: self.microbatch_size,
                },
            })
            .collect();
        let saver = match self.checkpoint {
            Some((_, dir)) => Saver::Folders { dir, adapter_only },
            None => Saver::None,
        };
        let state = TrainState::fresh(
            self.seed,
            String::new(),
            tessera_data::stream::StreamState::start(self.seed, 1),
            NanGuard::new(self.guards.nan),
            self.guards.spike.map(SpikeDetector::new),
        );
        let watchdog = arm_watchdog(self.guards.watchdog, None);
        Ok(Parts {
            sharded,
            model_config,
            plan,
            batches,
            evals,
            guards: Guards::from_state(&state, self.guards.max_rollbacks),
            saver,
            state,
            log: RunLog::silent(),
            hooks,
            watchdog,
            sample_log: None,
        })
    }
}
