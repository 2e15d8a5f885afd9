//! A YAML run: [`Trainer::from_yaml`](super::Trainer::from_yaml) builds it (the ranks, the
//! locked run folder, the model fresh, pretrained or resumed with its sharded training state,
//! the schedule, the data, the guards and the writers), and [`YamlRun::train`] hands its parts
//! to the loop and writes the report however the run ends.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use tessera_data::stream::World;
use tessera_dist::{Communicator, RendezvousConfig};
use tessera_model::MptConfig;

use crate::batch::Separator;
use crate::checkpoint::{AsyncCheckpointer, CheckpointStore, RemoteCheckpoints};
use crate::config::{LoadedConfig, MicroBatchSize, ModelSource, Precision, TrainConfig};
use crate::finetune::FinetuneTokenizer;
use crate::guard::{NanGuard, SpikeDetector, Watchdog};
use crate::metrics::{Incident, IncidentKind, MetricsRecord, RunFacts, read_jsonl, write_report};
use crate::optim::Optim;
use crate::parallel::{Sharded, Strategy};
use crate::run_dir::{RunDir, SaveFolder, run_name};
use crate::run_lock::RunLock;

use super::checkpointing::restore;
use super::data::Loader;
use super::evaluation::{EvalSet, EvalSource};
use super::fit::{Batches, Ended, Hooks, Parts, arm_watchdog, check_stall, run_loop};
use super::log::RunLog;
use super::plan::StepPlan;
use super::recovery::Guards;
use super::saving::{ResumableSaver, Saver};
use super::setup::{
    agree_on_attempt, agree_on_checkpoint, auto_microbatch, build_model, compute_dtype,
    config_hash, connect, finetune_tokenizer, resolve_model, separator, strategy, strategy_name,
};
use super::state::TrainState;
use super::timing::{Phase, Timing};
use super::{TrainError, TrainOptions, TrainSummary};

/// A YAML run, ready for its first (or next) step.
pub(crate) struct YamlRun<B: AutodiffBackend> {
    pub folder: RunFolder,
    sharded: Sharded<B>,
    model_config: MptConfig,
    plan: StepPlan,
    train: Loader,
    evals: Vec<EvalSet>,
    guards: Guards,
    saver: Saver,
    state: TrainState,
    log: RunLog,
    watchdog: Option<Watchdog>,
    started: Instant,
    timing: Timing,
}

/// The run folder and what the report says about the run.
pub(crate) struct RunFolder {
    pub dir: RunDir,
    run_name: String,
    /// Held by rank 0 for the run's life: no second trainer writes to this run folder.
    #[allow(dead_code)]
    lock: Option<RunLock>,
    precision: String,
    device_label: String,
    sample_log: Option<PathBuf>,
}

impl<B: AutodiffBackend> YamlRun<B> {
    /// Builds the run, resuming from the newest valid checkpoint when `autoresume` is set.
    pub fn start(
        loaded: &LoadedConfig,
        opts: &TrainOptions,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let started = Instant::now();
        // Armed before setup: a data source or device that hangs while the run starts is a
        // stall too. It only marks the stall; the loop turns it into an error.
        let watchdog = arm_watchdog(loaded.config.guards.watchdog, opts.on_stall.clone());
        let cfg = loaded.config.clone();
        let run_name = run_name(cfg.run_name.as_deref(), opts.config_path.as_deref());
        let dir = RunDir::for_run(opts.run_dir.as_deref(), &run_name);
        let hash = config_hash(&cfg)?;
        let env = opts
            .ranks
            .clone()
            .unwrap_or_else(tessera_dist::RankEnv::single);
        let mut comm = connect::<B>(&env, &RendezvousConfig::new(hash.clone()))?;
        let (rank, world_size) = (comm.rank(), comm.world_size());
        let lead = rank == 0;
        // Rank 0 alone owns the run folder (every rank reads and writes checkpoints in it).
        let lock = if lead {
            Some(RunLock::acquire(dir.root())?)
        } else {
            None
        };
        // A remote save_folder (s3://…) is staged in the run folder and uploaded from there.
        let target = SaveFolder::resolve(cfg.save_folder.as_deref(), &run_name, &dir);
        let save_folder = target.local(&dir);
        let remote = match &target {
            SaveFolder::Remote(url) => Some(RemoteCheckpoints::open(url)?),
            SaveFolder::Local(_) => None,
        };
        let keep = (cfg.save_num_checkpoints_to_keep >= 0)
            .then_some(cfg.save_num_checkpoints_to_keep as usize);
        let store = CheckpointStore::new(&save_folder, keep);

        // The model, before any data: a bad config should fail fast.
        let model_config = resolve_model(&cfg)?;
        if cfg.max_seq_len > model_config.max_seq_len {
            return Err(TrainError::Config {
                key: "max_seq_len".into(),
                message: format!(
                    "{} exceeds the model's max_seq_len ({})",
                    cfg.max_seq_len, model_config.max_seq_len
                ),
            });
        }
        let world = World::new(rank as u64, world_size as u64, env.local_world_size as u64)
            .map_err(|e| TrainError::data("world", e))?;
        if !cfg.global_train_batch_size.is_multiple_of(world_size) {
            return Err(TrainError::Config {
                key: "global_train_batch_size".into(),
                message: format!(
                    "{} does not split evenly over {world_size} ranks",
                    cfg.global_train_batch_size
                ),
            });
        }
        let device_batch = cfg.global_train_batch_size / world_size;
        let strategy = strategy(&cfg, env.num_nodes())?;
        let (microbatch, microbatch_note) = match cfg.device_train_microbatch_size {
            MicroBatchSize::Fixed(m) => (m.min(device_batch), None),
            MicroBatchSize::Auto => {
                let (m, why) = auto_microbatch(
                    &cfg,
                    &model_config,
                    device_batch,
                    world_size,
                    opts.device_memory,
                )?;
                (m, Some(why))
            }
        };
        let optim_kind = cfg.optimizer.build();

        let took_over = lock.as_ref().and_then(|l| l.took_over.as_ref());
        let mut incidents: Vec<Incident> = took_over
            .map(|h| {
                let what = format!(
                    "took over the lock on {} left by {h}, which is no longer running",
                    dir.root().display()
                );
                Incident::now(0, IncidentKind::LockTakeover, what)
            })
            .into_iter()
            .collect();
        // Rank 0 picks the checkpoint (after repairing the folder); every rank resumes from it.
        let resume_from = if lead {
            let (newest, found) = pick_checkpoint(&cfg, &store, remote.as_ref())?;
            incidents.extend(found);
            newest
        } else {
            None
        };
        let resume_from = agree_on_checkpoint(&mut comm, &save_folder, resume_from)?;

        let separator = separator(&cfg, &model_config);
        let tokenizer = finetune_tokenizer(&cfg)?;
        let (mut sharded, bf16_base, adapter_config) =
            sharded_model::<B>(&cfg, &model_config, strategy, optim_kind, comm, device)?;
        // The training state and the train loader where it left off (at the start when fresh).
        let open_train = |data| {
            Loader::open(
                "train_loader",
                &cfg.train_loader,
                tokenizer.as_ref(),
                cfg.max_seq_len,
                device_batch,
                world,
                data,
                separator,
            )
        };
        let (state, train) = match &resume_from {
            Some(dir) => {
                let layout = sharded.layout.clone();
                let r = restore::<B>(dir, &layout, sharded.shard_rank(), optim_kind, device)?;
                if r.train.config_hash != hash {
                    return Err(TrainError::Config {
                        key: "autoresume".into(),
                        message: format!(
                            "{} was written with a different config (hash {} ≠ {}); resuming would not reproduce that run. \
                             Use a new save_folder, or set autoresume: false",
                            dir.display(),
                            &r.train.config_hash[..12.min(r.train.config_hash.len())],
                            &hash[..12]
                        ),
                    });
                }
                sharded.set_state(r.state).map_err(TrainError::Dist)?;
                let train = open_train(Some(r.train.data))?;
                (r.train, train)
            }
            None => {
                let train = open_train(None)?;
                let state = TrainState::fresh(
                    cfg.seed,
                    hash.clone(),
                    train.state(),
                    NanGuard::new(cfg.guards.nan),
                    cfg.guards.spike.map(SpikeDetector::new),
                );
                (state, train)
            }
        };
        let resumed_from = (state.step > 0).then_some(state.step);

        let (plan, console_every) = step_plan(&cfg, train.epoch_size(), microbatch, state.seed)?;
        let evals = eval_sets(&cfg, tokenizer.as_ref(), world, separator)?;
        let flops_per_token =
            model_config.flops_per_sequence(cfg.max_seq_len, true) / cfg.max_seq_len as f64;
        let title = format!(
            "{run_name}: {}M-parameter MPT",
            model_config.num_params() / 1_000_000
        );
        let mut log = RunLog::open(
            &dir,
            lead,
            resumed_from,
            plan.max_steps,
            console_every,
            cfg.progress_bar,
            flops_per_token,
            opts.peak_flops,
            title,
        )?;
        if let Some(w) = loaded.ignored_warning() {
            log.say(&format!("warning: {w}"));
        }
        if let Some(why) = microbatch_note {
            log.say(&why);
        }
        let compute = compute_dtype::<B>(cfg.precision, device, &log);
        if bf16_base {
            log.say("LoRA: the frozen base is held in bf16; the adapter trains in f32");
        }
        sharded.model = sharded.model.clone().with_compute_dtype(compute);
        if world_size > 1 {
            log.say(&format!(
                "{world_size} ranks, {} ({}); {device_batch} sequences per rank per step",
                strategy_name(strategy),
                sharded.comm.backend_name()
            ));
        }
        if let Some(f) = &cfg.fsdp_config {
            let inert = f.inert_keys();
            if !inert.is_empty() {
                log.say(&format!(
                    "note: fsdp_config.{} change nothing in tessera (it gathers one block at a time, in order)",
                    inert.join(", fsdp_config.")
                ));
            }
        }
        for i in incidents {
            log.incident(i)?;
        }
        if let Some(step) = resumed_from {
            log.incident(Incident::now(
                step,
                IncidentKind::Resume,
                format!(
                    "resumed from {}",
                    save_folder.join(CheckpointStore::name(step)).display()
                ),
            ))?;
        }
        if lead {
            let yaml = loaded.config.to_yaml().map_err(|e| TrainError::Config {
                key: "config".into(),
                message: e.to_string(),
            })?;
            tessera_fs::atomic_write(&dir.config(), yaml.as_bytes()).map_err(|source| {
                TrainError::Io {
                    path: dir.config(),
                    source,
                }
            })?;
        }

        let attempt = agree_on_attempt(&mut sharded.comm)?;
        let consolidate_every_save = cfg
            .fsdp_config
            .as_ref()
            .is_none_or(|f| f.state_dict_type == crate::config::StateDictType::Full);
        let writer = match remote.filter(|_| lead) {
            Some(r) => AsyncCheckpointer::new(store).with_remote(r),
            None => AsyncCheckpointer::new(store),
        };
        check_stall(watchdog.as_ref())?;
        let mut timing = Timing::default();
        timing.add(Phase::Setup, started);
        Ok(Self {
            folder: RunFolder {
                dir,
                run_name,
                lock,
                precision: cfg.precision.to_string(),
                device_label: opts.device_label.clone(),
                sample_log: opts.sample_log.clone(),
            },
            guards: Guards::from_state(&state, cfg.guards.max_rollbacks),
            sharded,
            model_config,
            plan,
            train,
            evals,
            saver: Saver::Resumable(ResumableSaver {
                writer,
                attempt,
                consolidate_every_save,
                adapter_config,
            }),
            state,
            log,
            watchdog,
            started,
            timing,
        })
    }

    /// Trains to the end of `max_duration` (or a callback's stop), then writes the plot, the
    /// report and `timing.json`.
    pub fn train(
        self,
        hooks: Hooks<'_, B>,
        device: &B::Device,
    ) -> Result<TrainSummary, TrainError> {
        let YamlRun {
            folder,
            sharded,
            model_config,
            plan,
            train,
            evals,
            guards,
            saver,
            state,
            log,
            watchdog,
            started,
            timing,
        } = self;
        let max_steps = plan.max_steps;
        let parts = Parts {
            sharded,
            model_config: model_config.clone(),
            plan,
            batches: Batches::Loader(Box::new(train)),
            evals,
            guards,
            saver,
            state,
            log,
            hooks,
            watchdog,
            sample_log: folder.sample_log.clone(),
        };
        let mut ended = run_loop(parts, started, timing, device);
        let summary = finish(&folder, &ended, &model_config, max_steps);
        ended.outcome?;
        let summary = summary?;
        ended.timing.total_s = started.elapsed().as_secs_f64();
        ended.timing.write(folder.dir.root())?;
        Ok(summary)
    }
}

/// Writes the final plot and report (however the loop ended); returns the run's summary.
fn finish<B: AutodiffBackend>(
    folder: &RunFolder,
    ended: &Ended<B>,
    model_config: &MptConfig,
    max_steps: u64,
) -> Result<TrainSummary, TrainError> {
    let Ended {
        log,
        saver,
        evals,
        state,
        ..
    } = ended;
    let stop_reason = match &ended.outcome {
        Err(e) => Some(e.to_string()),
        Ok(()) if ended.stopped_by_callback => Some(format!(
            "a callback asked to stop after step {}",
            state.step
        )),
        Ok(()) => None,
    };
    let (steps, wall_s) = (state.step, state.elapsed_s);
    let lead = ended.sharded.comm.rank() == 0;
    log.finish();
    log.plot()?;
    let final_checkpoint = saver.newest()?;
    let facts = RunFacts {
        run_name: folder.run_name.clone(),
        model: format!(
            "MPT, {} parameters, d_model {}, {} layers, {} heads, vocab {}",
            model_config.num_params(),
            model_config.d_model,
            model_config.n_layers,
            model_config.n_heads,
            model_config.vocab_size
        ),
        device: folder.device_label.clone(),
        precision: folder.precision.clone(),
        max_steps,
        wall_s,
        completed: steps >= max_steps && stop_reason.is_none(),
        stop_reason,
        final_checkpoint: final_checkpoint.as_ref().map(|p| p.display().to_string()),
    };
    // Rank 0 keeps the run's record; the other ranks only report how far they got.
    let metrics = if lead {
        let metrics = read_jsonl(folder.dir.metrics())?;
        let incidents = read_jsonl(folder.dir.incidents())?;
        write_report(&folder.dir.report(), &facts, &metrics, &incidents)?;
        metrics
    } else {
        Vec::new()
    };
    let mut eval = Vec::new();
    for set in evals {
        let newest = metrics.iter().rev().find_map(|m| match m {
            MetricsRecord::Eval(e) if e.label == set.label => Some(e.loss),
            _ => None,
        });
        if let Some(loss) = newest {
            eval.push((set.label.clone(), loss));
        }
    }
    let curve = log.train_curve();
    Ok(TrainSummary {
        run_dir: folder.dir.root().to_path_buf(),
        steps,
        tokens: state.tokens,
        first_loss: curve.first().map(|c| c.1),
        last_loss: curve.last().map(|c| c.1),
        eval,
        final_checkpoint,
        report: folder.dir.report(),
    })
}

/// Rank 0's choice of the checkpoint to resume from: the folder repaired after an interrupted
/// save, then the newest checkpoint that verifies (here or, when newer, on the remote), with
/// an incident for every repair and every corrupt checkpoint skipped.
fn pick_checkpoint(
    cfg: &TrainConfig,
    store: &CheckpointStore,
    remote: Option<&RemoteCheckpoints>,
) -> Result<(Option<PathBuf>, Vec<Incident>), TrainError> {
    let mut incidents = Vec::new();
    for r in store.recover(None)? {
        incidents.push(Incident::now(
            0,
            IncidentKind::CorruptCheckpoint,
            format!("repaired an interrupted save: {r:?}"),
        ));
    }
    if !cfg.autoresume {
        if !cfg.save_overwrite && !store.list()?.is_empty() {
            return Err(TrainError::Config {
                key: "save_folder".into(),
                message: format!(
                    "{} already holds checkpoints; set autoresume: true to continue that run, or save_overwrite: true",
                    store.root().display()
                ),
            });
        }
        return Ok((None, incidents));
    }
    let (mut newest, corrupt) = store.newest_verified()?;
    let resumable_step = newest.as_ref().map_or(0, |c| c.step);
    for (path, why) in corrupt {
        let step = CheckpointStore::step_of(&path).unwrap_or(0);
        let mut incident = Incident::now(
            step,
            IncidentKind::CorruptCheckpoint,
            format!("{} skipped: {why}", path.display()),
        );
        // The steps between the checkpoint resumed from and this one are trained again.
        incident.lost_steps = step.saturating_sub(resumable_step);
        incidents.push(incident);
    }
    // A newer checkpoint on the remote (another machine wrote it): download and verify it.
    if let Some(r) = remote {
        let (got, bad) = r.download_newest(store, newest.as_ref().map(|c| c.step))?;
        for (url, why) in bad {
            incidents.push(Incident::now(
                0,
                IncidentKind::CorruptCheckpoint,
                format!("{url} skipped: {why}"),
            ));
        }
        if let Some((step, dir)) = got {
            newest = Some(crate::checkpoint::Resumable { step, dir });
        }
    }
    Ok((newest.map(|c| c.dir), incidents))
}

/// The model every rank builds the same way (the init is a function of the seed), sharded
/// with its optimizer state; a resume then replaces that state with the checkpoint's. Also
/// returns whether a LoRA run holds its frozen base in bf16, and the adapter's PEFT config.
#[allow(clippy::type_complexity)]
fn sharded_model<B: AutodiffBackend>(
    cfg: &TrainConfig,
    model_config: &MptConfig,
    strategy: Strategy,
    optim_kind: Optim,
    comm: Communicator,
    device: &B::Device,
) -> Result<(Sharded<B>, bool, Option<serde_json::Value>), TrainError> {
    let model = build_model::<B>(cfg, model_config, device)?;
    // LoRA under amp_bf16: the frozen base is stored in bf16 (half its memory, as PEFT on a
    // bf16 model); the adapter, its gradients and optimizer state stay f32.
    let bf16_base = model.has_adapter()
        && cfg.precision == Precision::AmpBf16
        && B::supports_dtype(device, FloatDType::BF16.into());
    let model = if bf16_base {
        model
            .with_base_dtype(FloatDType::BF16)
            .map_err(|e| TrainError::Adapter {
                key: "precision",
                source: Box::new(e),
            })?
    } else {
        model
    };
    let adapter_config = model.lora_config().map(|l| {
        let base = match &cfg.model.base {
            ModelSource::Pretrained { path, .. } => Some(path.as_str()),
            ModelSource::Mpt(_) => cfg.load_path.as_deref(),
        };
        l.to_adapter_config(base)
    });
    let sharded =
        Sharded::new(model, optim_kind, strategy, comm, device).map_err(TrainError::Dist)?;
    Ok((sharded, bf16_base, adapter_config))
}

/// The steps of a YAML run: `max_duration` and the intervals in whole batches (an epoch is
/// `epoch_samples / global_train_batch_size` of them), the schedule, the microbatch; also the
/// console's log interval.
fn step_plan(
    cfg: &TrainConfig,
    epoch_samples: u64,
    microbatch: usize,
    seed: u64,
) -> Result<(StepPlan, u64), TrainError> {
    let batches_per_epoch = epoch_samples / cfg.global_train_batch_size as u64;
    if batches_per_epoch == 0 {
        return Err(TrainError::Config {
            key: "global_train_batch_size".into(),
            message: format!(
                "{} exceeds the {epoch_samples} samples of one epoch of train_loader",
                cfg.global_train_batch_size
            ),
        });
    }
    let ctx = cfg.time_context(Some(batches_per_epoch));
    let max_steps = cfg
        .max_batches(Some(batches_per_epoch))
        .map_err(|e| TrainError::Config {
            key: "max_duration".into(),
            message: e.to_string(),
        })?;
    let schedule = cfg
        .scheduler
        .resolve(cfg.optimizer.lr(), &ctx)
        .map_err(|e| TrainError::Config {
            key: format!("scheduler.{}", e.key()),
            message: e.message(),
        })?;
    let every = |key: &str, d: crate::config::Duration| -> Result<Option<u64>, TrainError> {
        let n = d.whole_batches(&ctx).map_err(|e| TrainError::Config {
            key: key.into(),
            message: e.to_string(),
        })?;
        Ok((n > 0).then_some(n))
    };
    let plan = StepPlan {
        max_steps,
        microbatch,
        clip_norm: cfg.gradient_clipping.as_ref().map(|c| c.clipping_threshold),
        lr: cfg.optimizer.lr(),
        schedule: Some(schedule),
        seed,
        eval_every: every("eval_interval", cfg.eval_interval)?,
        eval_first: cfg.eval_first,
        eval_batches: (cfg.eval_subset_num_batches > 0)
            .then_some(cfg.eval_subset_num_batches as usize),
        save_every: every("save_interval", cfg.save_interval)?,
    };
    let console_every = every("console_log_interval", cfg.console_log_interval)?.unwrap_or(1);
    Ok((plan, console_every))
}

/// One eval set per `eval_loader` entry, labelled by its `label` (else `eval`, or `eval{i}`
/// when there are several).
fn eval_sets(
    cfg: &TrainConfig,
    tokenizer: Option<&FinetuneTokenizer>,
    world: World,
    separator: Option<Separator>,
) -> Result<Vec<EvalSet>, TrainError> {
    let mut evals = Vec::new();
    for (i, l) in cfg.eval_loader.iter().enumerate() {
        let label = l.label.clone().unwrap_or_else(|| {
            if cfg.eval_loader.len() == 1 {
                "eval".into()
            } else {
                format!("eval{i}")
            }
        });
        let loader = Loader::open(
            &format!("eval_loader[{i}]"),
            l,
            tokenizer,
            cfg.max_seq_len,
            cfg.eval_batch_size(),
            world,
            None,
            separator,
        )?;
        evals.push(EvalSet {
            label,
            source: EvalSource::Loader(Box::new(loader)),
        });
    }
    Ok(evals)
}
