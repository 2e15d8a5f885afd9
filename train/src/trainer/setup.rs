//! Everything the loop needs, built once from the config: the run folder, the ranks, the model
//! (fresh, pretrained or resumed) with its sharded training state, the schedule, the data and
//! the writers.

use std::path::Path;

use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use sha2::{Digest, Sha256};
use tessera_data::stream::World;
use tessera_dist::{Communicator, RendezvousConfig};
use tessera_model::lora::{self, Adapter, LoraError};
use tessera_model::{Mpt, MptConfig, hf};

use crate::batch::Separator;
use crate::checkpoint::{AsyncCheckpointer, CheckpointStore, RemoteCheckpoints};
use crate::config::{
    AdapterSource, FsdpPrecision, LoadedConfig, LoaderKind, MicroBatchSize, ModelSource, Precision,
    TrainConfig,
};
use crate::finetune::FinetuneTokenizer;
use crate::guard::{NanGuard, SpikeDetector};
use crate::metrics::{Incident, IncidentKind};
use crate::parallel::{Sharded, ShardingStrategy, Strategy};
use crate::run_dir::{RunDir, SaveFolder, run_name};
use crate::run_lock::RunLock;
use crate::schedule::LrSchedule;

use super::checkpointing::restore;
use super::data::Loader;
use super::log::RunLog;
use super::state::TrainState;
use super::{TrainError, TrainOptions};

/// A run, ready for its first (or next) step.
pub struct Run<B: AutodiffBackend> {
    pub config: TrainConfig,
    pub model_config: MptConfig,
    pub dir: RunDir,
    pub run_name: String,
    /// The model and this rank's shard of its training state, with the communicator.
    pub sharded: Sharded<B>,
    pub schedule: LrSchedule,
    pub state: TrainState,
    pub train: Loader,
    pub evals: Vec<(String, Loader)>,
    pub checkpoints: AsyncCheckpointer,
    pub log: RunLog,
    pub nan: NanGuard,
    pub spike: Option<SpikeDetector>,
    pub max_steps: u64,
    pub microbatch: usize,
    pub eval_every: Option<u64>,
    pub save_every: Option<u64>,
    pub eval_batches: Option<usize>,
    pub resumed_from: Option<u64>,
    /// Held by rank 0 for the run's life: no second trainer writes to this run folder.
    pub lock: Option<RunLock>,
    /// This launch of the job, shared by its ranks: names its checkpoint staging folders.
    pub attempt: String,
    /// Whether every checkpoint holds the consolidated `model.safetensors` (else only the last).
    pub consolidate_every_save: bool,
    /// A LoRA run's `adapter_config.json` (PEFT's), written into every checkpoint beside the
    /// adapter's weights.
    pub adapter_config: Option<serde_json::Value>,
}

impl<B: AutodiffBackend> Run<B> {
    /// Builds the run, resuming from the newest valid checkpoint when `autoresume` is set.
    pub fn start(
        loaded: &LoadedConfig,
        opts: &TrainOptions,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
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

        let mut incidents = Vec::new();
        if let Some(h) = lock.as_ref().and_then(|l| l.took_over.as_ref()) {
            incidents.push(Incident::now(
                0,
                IncidentKind::LockTakeover,
                format!(
                    "took over the lock on {} left by {h}, which is no longer running",
                    dir.root().display()
                ),
            ));
        }
        if lead {
            for r in store.recover(None)? {
                incidents.push(Incident::now(
                    0,
                    IncidentKind::CorruptCheckpoint,
                    format!("repaired an interrupted save: {r:?}"),
                ));
            }
        }
        // Rank 0 picks the checkpoint (after repairing the folder); every rank resumes from it.
        let mut resume_from: Option<std::path::PathBuf> = None;
        if cfg.autoresume && lead {
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
            if let Some(r) = &remote {
                let (got, bad) = r.download_newest(&store, newest.as_ref().map(|c| c.step))?;
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
            resume_from = newest.map(|c| c.dir);
        } else if lead && !cfg.autoresume && !cfg.save_overwrite && !store.list()?.is_empty() {
            return Err(TrainError::Config {
                key: "save_folder".into(),
                message: format!(
                    "{} already holds checkpoints; set autoresume: true to continue that run, or save_overwrite: true",
                    save_folder.display()
                ),
            });
        }
        let resume_from = agree_on_checkpoint(&mut comm, &save_folder, resume_from)?;

        let separator = separator(&cfg, &model_config);
        let tokenizer = finetune_tokenizer(&cfg)?;
        // Every rank builds the same model (the init is a function of the seed), then keeps its
        // shard of the training state; a resume replaces that state with the checkpoint's.
        let model = build_model::<B>(&cfg, &model_config, device)?;
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
        let mut sharded =
            Sharded::new(model, optim_kind, strategy, comm, device).map_err(TrainError::Dist)?;
        let state = match &resume_from {
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
                r.train
            }
            None => {
                let data_state = None;
                TrainState {
                    version: TrainState::VERSION,
                    step: 0,
                    samples: 0,
                    tokens: 0,
                    data: Loader::open(
                        "train_loader",
                        &cfg.train_loader,
                        tokenizer.as_ref(),
                        cfg.max_seq_len,
                        device_batch,
                        world,
                        data_state,
                        separator,
                    )?
                    .state(),
                    seed: cfg.seed,
                    config_hash: hash.clone(),
                    nan_guard: NanGuard::new(cfg.guards.nan),
                    spike: cfg.guards.spike.map(SpikeDetector::new),
                    elapsed_s: 0.0,
                    rollbacks_in_a_row: 0,
                    rollback_trigger_step: 0,
                    healthy_past_trigger: 0,
                }
            }
        };
        let resumed_from = (state.step > 0).then_some(state.step);

        let train = Loader::open(
            "train_loader",
            &cfg.train_loader,
            tokenizer.as_ref(),
            cfg.max_seq_len,
            device_batch,
            world,
            Some(state.data),
            separator,
        )?;
        let batches_per_epoch = train.epoch_size() / cfg.global_train_batch_size as u64;
        if batches_per_epoch == 0 {
            return Err(TrainError::Config {
                key: "global_train_batch_size".into(),
                message: format!(
                    "{} exceeds the {} samples of one epoch of train_loader",
                    cfg.global_train_batch_size,
                    train.epoch_size()
                ),
            });
        }
        let ctx = cfg.time_context(Some(batches_per_epoch));
        let max_steps =
            cfg.max_batches(Some(batches_per_epoch))
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
        let eval_every = every("eval_interval", cfg.eval_interval)?;
        let save_every = every("save_interval", cfg.save_interval)?;
        let eval_batch = cfg.eval_batch_size();
        let mut evals = Vec::new();
        for (i, l) in cfg.eval_loader.iter().enumerate() {
            let label = l.label.clone().unwrap_or_else(|| {
                if cfg.eval_loader.len() == 1 {
                    "eval".into()
                } else {
                    format!("eval{i}")
                }
            });
            let key = format!("eval_loader[{i}]");
            evals.push((
                label,
                Loader::open(
                    &key,
                    l,
                    tokenizer.as_ref(),
                    cfg.max_seq_len,
                    eval_batch,
                    world,
                    None,
                    separator,
                )?,
            ));
        }

        let console_every = every("console_log_interval", cfg.console_log_interval)?.unwrap_or(1);
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
            max_steps,
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

        let nan = state.nan_guard.clone();
        let spike = state.spike.clone();
        let eval_batches =
            (cfg.eval_subset_num_batches > 0).then_some(cfg.eval_subset_num_batches as usize);
        let attempt = agree_on_attempt(&mut sharded.comm)?;
        let consolidate_every_save = cfg
            .fsdp_config
            .as_ref()
            .is_none_or(|f| f.state_dict_type == crate::config::StateDictType::Full);
        Ok(Self {
            model_config,
            dir,
            run_name,
            sharded,
            schedule,
            state,
            train,
            evals,
            checkpoints: match remote.filter(|_| lead) {
                Some(r) => AsyncCheckpointer::new(store).with_remote(r),
                None => AsyncCheckpointer::new(store),
            },
            log,
            nan,
            spike,
            max_steps,
            microbatch,
            eval_every,
            save_every,
            eval_batches,
            resumed_from,
            lock,
            attempt,
            consolidate_every_save,
            adapter_config,
            config: cfg,
        })
    }

    /// Whether this is rank 0, which writes the run's logs and publishes its checkpoints.
    pub fn lead(&self) -> bool {
        self.sharded.comm.rank() == 0
    }

    /// The state to write into a checkpoint now.
    pub fn checkpoint_state(&self, elapsed_s: f64) -> TrainState {
        TrainState {
            data: self.train.state(),
            nan_guard: self.nan.clone(),
            spike: self.spike.clone(),
            elapsed_s,
            ..self.state.clone()
        }
    }
}

/// The communicator: NCCL between burn-cuda ranks (one GPU per process, `LOCAL_RANK` picks it),
/// TCP otherwise.
#[cfg_attr(not(feature = "cuda"), allow(clippy::extra_unused_type_parameters))]
fn connect<B: AutodiffBackend>(
    env: &tessera_dist::RankEnv,
    cfg: &RendezvousConfig,
) -> Result<Communicator, TrainError> {
    #[cfg(feature = "cuda")]
    if env.world_size > 1 && tessera_dist::nccl::is_cuda_backend::<B::InnerBackend>() {
        return Communicator::connect_nccl(env, cfg, env.local_rank).map_err(TrainError::Dist);
    }
    Communicator::connect(env, cfg).map_err(TrainError::Dist)
}

/// Every rank resumes from the checkpoint rank 0 chose (`None`: a fresh start). The choice
/// travels as a step number; the folder is the same on every rank (a shared file system).
fn agree_on_checkpoint(
    comm: &mut Communicator,
    save_folder: &std::path::Path,
    chosen: Option<std::path::PathBuf>,
) -> Result<Option<std::path::PathBuf>, TrainError> {
    const NONE: u64 = u64::MAX;
    let mut step = [chosen
        .as_deref()
        .and_then(CheckpointStore::step_of)
        .unwrap_or(NONE)];
    comm.broadcast(&mut step, 0).map_err(TrainError::Dist)?;
    Ok((step[0] != NONE).then(|| save_folder.join(CheckpointStore::name(step[0]))))
}

/// An id for this launch of the job, the same on every rank (rank 0's, broadcast).
fn agree_on_attempt(comm: &mut Communicator) -> Result<String, TrainError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut id = [now ^ u64::from(std::process::id()).rotate_left(40)];
    comm.broadcast(&mut id, 0).map_err(TrainError::Dist)?;
    Ok(format!("a{:016x}", id[0]))
}

/// How the state is split, from `fsdp_config` and the world size.
fn strategy(cfg: &TrainConfig, num_nodes: usize) -> Result<Strategy, TrainError> {
    let Some(f) = &cfg.fsdp_config else {
        // No fsdp_config: data parallel with replicated state (composer's DDP).
        return Ok(Strategy::SINGLE);
    };
    f.validate().map_err(|(k, m)| TrainError::Config {
        key: format!("fsdp_config.{k}"),
        message: m,
    })?;
    let sharding = match f.sharding_strategy {
        // Within one node HYBRID_SHARD is FULL_SHARD; across nodes it needs a communicator per
        // node, which tessera-dist does not have yet.
        ShardingStrategy::HybridShard if num_nodes > 1 => {
            return Err(TrainError::Config {
                key: "fsdp_config.sharding_strategy".into(),
                message:
                    "HYBRID_SHARD is not implemented yet; use FULL_SHARD (the same within one node)"
                        .into(),
            });
        }
        s => s.within_one_node(),
    };
    // composer's FSDP mixed precision, in the run's 16-bit type (none under fp32).
    let half = match cfg.precision {
        Precision::Fp32 => None,
        Precision::AmpBf16 => Some(FloatDType::BF16),
        Precision::AmpFp16 => Some(FloatDType::F16),
    };
    let (param_dtype, reduce_dtype) = match f.mixed_precision {
        FsdpPrecision::Pure => (half, half),
        FsdpPrecision::Default => (half, None),
        FsdpPrecision::Full => (None, None),
    };
    Ok(Strategy {
        sharding,
        recompute: f.activation_checkpointing,
        param_dtype,
        reduce_dtype,
    })
}

/// How the strategy is named in the log.
fn strategy_name(s: Strategy) -> String {
    let name = match s.sharding {
        ShardingStrategy::NoShard => "NO_SHARD (DDP)",
        ShardingStrategy::ShardGradOp => "SHARD_GRAD_OP (ZeRO-2)",
        ShardingStrategy::FullShard => "FULL_SHARD (FSDP)",
        ShardingStrategy::HybridShard => "HYBRID_SHARD",
    };
    if s.recompute {
        format!("{name} with activation checkpointing")
    } else {
        name.to_string()
    }
}

/// `device_train_microbatch_size: auto`: the largest microbatch whose predicted peak memory
/// ([`crate::plan::memory_estimate`], the model `tessera plan --memory` prints) fits in 90% of
/// the device's memory. burn reports an out-of-memory error as a panic from deep inside a
/// backend, so probing with trial steps is not reliable; the memory model is used instead, and
/// the choice and its numbers are returned for the log. Without a known memory size this is an
/// error, never a silent fallback to the whole batch.
pub fn auto_microbatch(
    cfg: &TrainConfig,
    model: &MptConfig,
    device_batch: usize,
    world_size: usize,
    device_memory: Option<u64>,
) -> Result<(usize, String), TrainError> {
    let key = "device_train_microbatch_size";
    let Some(capacity) = device_memory else {
        return Err(TrainError::Config {
            key: key.into(),
            message: "auto needs the device's memory size, which this backend does not report; \
                      set a number instead"
                .into(),
        });
    };
    let budget = 0.9 * capacity as f64;
    let optimizer = crate::plan::OptimizerStateKind::of(cfg.optimizer.name);
    let need = |m: usize| {
        crate::plan::memory_estimate(&crate::plan::MemoryInput::from_mpt(
            model,
            cfg.max_seq_len,
            m,
            cfg.precision,
            optimizer,
            world_size,
            false,
        ))
        .total()
    };
    let gib = |b: f64| b / (1u64 << 30) as f64;
    // Candidates: divisors of the device batch, largest first, so that microbatches are equal.
    let fits = (1..=device_batch.max(1))
        .rev()
        .filter(|m| device_batch.is_multiple_of(*m))
        .find(|m| need(*m) <= budget);
    let Some(m) = fits else {
        return Err(TrainError::Config {
            key: key.into(),
            message: format!(
                "auto: even a microbatch of 1 needs {:.2} GiB by the memory model, more than 90% of \
                 the device's {:.2} GiB",
                gib(need(1)),
                gib(capacity as f64)
            ),
        });
    };
    let next = (m < device_batch).then(|| {
        let bigger = (m + 1..=device_batch)
            .find(|k| device_batch.is_multiple_of(*k))
            .unwrap_or(device_batch);
        format!("; {bigger} would need {:.2} GiB", gib(need(bigger)))
    });
    Ok((
        m,
        format!(
            "{key}: auto → {m} of the device batch of {device_batch} (memory model: {:.2} GiB of the \
             {:.2} GiB available{})",
            gib(need(m)),
            gib(capacity as f64),
            next.unwrap_or_default()
        ),
    ))
}

/// The architecture the run builds: the `model:` fields, or a pretrained folder's `config.json`
/// with `config_overrides` applied.
pub fn resolve_model(cfg: &TrainConfig) -> Result<MptConfig, TrainError> {
    match &cfg.model.base {
        ModelSource::Mpt(_) => cfg
            .mpt_config()
            .map_err(|e| TrainError::Config {
                key: "model".into(),
                message: e.to_string(),
            })?
            .ok_or_else(|| TrainError::Config {
                key: "model".into(),
                message: "no MPT fields".into(),
            }),
        ModelSource::Pretrained {
            path,
            config_overrides,
            ..
        } => {
            let file = Path::new(path).join("config.json");
            let text = std::fs::read_to_string(&file).map_err(|source| TrainError::Io {
                path: file.clone(),
                source,
            })?;
            let mut json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| TrainError::Model(format!("{}: {e}", file.display())))?;
            let obj = json.as_object_mut().ok_or_else(|| {
                TrainError::Model(format!("{}: expected a JSON object", file.display()))
            })?;
            for (k, v) in config_overrides {
                obj.insert(k.clone(), v.clone());
            }
            let mpt = MptConfig::from_json_str(&json.to_string(), &file.display().to_string())
                .map_err(|e| TrainError::Config {
                    key: "model.config_overrides".into(),
                    message: e.to_string(),
                })?;
            mpt.validate().map_err(|e| TrainError::Config {
                key: "model".into(),
                message: e.to_string(),
            })?;
            Ok(mpt)
        }
    }
}

/// The weights a fresh run starts from: llm-foundry's init from the run seed, the pretrained
/// folder's weights, or `load_path`'s; then, for LoRA, the adapter (new from the run seed, or
/// read from its PEFT folder) attached with the base frozen, so only the adapter trains.
pub fn build_model<B: AutodiffBackend>(
    cfg: &TrainConfig,
    mpt: &MptConfig,
    device: &B::Device,
) -> Result<Mpt<B>, TrainError> {
    let path = match (&cfg.load_path, &cfg.model.base) {
        (Some(p), _) => Some(p.as_str()),
        (
            None,
            ModelSource::Pretrained {
                path,
                load_weights: true,
                ..
            },
        ) => Some(path.as_str()),
        _ => None,
    };
    let base = match path {
        Some(p) => {
            hf::load_weights(mpt, p, device).map_err(|e| TrainError::Model(e.to_string()))?
        }
        None => mpt.init::<B>(device, cfg.seed),
    };
    let adapter_error = |key: &'static str| {
        move |e: LoraError| TrainError::Adapter {
            key,
            source: Box::new(e),
        }
    };
    let adapter = match &cfg.model.adapter {
        None => return Ok(base),
        Some(AdapterSource::New { config, .. }) => Adapter::init(config, mpt, cfg.seed, device)
            .map_err(adapter_error("model.peft_config"))?,
        Some(AdapterSource::Pretrained(dir)) => lora::peft::load(dir, mpt, device)
            .map_err(adapter_error("model.pretrained_lora_id_or_path"))?,
    };
    base.with_adapter(adapter)
        .map_err(adapter_error("model.peft_config"))
}

/// The tokenizer, when a `finetuning` loader needs it to tokenize its rows.
pub fn finetune_tokenizer(cfg: &TrainConfig) -> Result<Option<FinetuneTokenizer>, TrainError> {
    let needs = std::iter::once(&cfg.train_loader)
        .chain(&cfg.eval_loader)
        .any(|l| l.name == LoaderKind::Finetuning);
    if !needs {
        return Ok(None);
    }
    Ok(Some(FinetuneTokenizer::load(&cfg.tokenizer.name)?))
}

/// The dtype the model's matmuls run in for `precision` (parameters and optimizer state stay
/// f32 whatever it is). A backend without arithmetic in that dtype computes in f32, with one
/// warning naming it.
fn compute_dtype<B: AutodiffBackend>(
    precision: Precision,
    device: &B::Device,
    log: &RunLog,
) -> Option<FloatDType> {
    let (dtype, name) = match precision {
        Precision::Fp32 => return None,
        Precision::AmpBf16 => (FloatDType::BF16, "bf16"),
        Precision::AmpFp16 => (FloatDType::F16, "f16"),
    };
    let backend = B::name(device);
    if !B::supports_dtype(device, dtype.into()) {
        log.say(&format!(
            "warning: precision {precision}: the {backend} backend has no {name} arithmetic; computing in fp32 \
             (master weights and optimizer state are fp32 either way)"
        ));
        return None;
    }
    if backend.contains("flex") && dtype == FloatDType::BF16 {
        log.say("note: precision amp_bf16 on the CPU (flex) backend: its bf16 matmuls convert to f32 and back, so they \
                 are slower than fp32 there; `precision: fp32` trains faster on a CPU");
    }
    Some(dtype)
}

/// How `sequence_id` is derived, when the model attends within documents only.
pub fn separator(cfg: &TrainConfig, model: &MptConfig) -> Option<Separator> {
    if !model.attn_config.attn_uses_sequence_id {
        return None;
    }
    let ds = &cfg.train_loader.dataset;
    match (ds.eos_token_id, ds.bos_token_id) {
        (Some(e), _) => Some(Separator::Eos(e)),
        (None, Some(b)) => Some(Separator::Bos(b)),
        // llm-foundry requires one of them; tessera defaults to the gpt-neox / tessera EOS.
        (None, None) => Some(Separator::Eos(0)),
    }
}

/// sha256 of the config with the keys that may change across a resume removed (how long to
/// train, how often to log, eval or save, and where).
fn config_hash(cfg: &TrainConfig) -> Result<String, TrainError> {
    let mut v = serde_json::to_value(cfg).map_err(|e| TrainError::Config {
        key: "config".into(),
        message: e.to_string(),
    })?;
    if let Some(m) = v.as_object_mut() {
        for k in [
            "max_duration",
            "eval_interval",
            "eval_first",
            "eval_subset_num_batches",
            "save_interval",
            "save_num_checkpoints_to_keep",
            "save_folder",
            "save_overwrite",
            "autoresume",
            "run_name",
            "log_to_console",
            "console_log_interval",
            "progress_bar",
            "guards",
            "eval_loader",
            "device_eval_batch_size",
        ] {
            m.remove(k);
        }
    }
    let bytes = serde_json::to_vec(&v).map_err(|e| TrainError::Config {
        key: "config".into(),
        message: e.to_string(),
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(microbatch: &str) -> TrainConfig {
        let yaml = format!(
            r#"
max_seq_len: 128
model: {{name: mpt_causal_lm, d_model: 128, n_heads: 4, n_layers: 4, max_seq_len: 128, vocab_size: 1024}}
tokenizer: {{name: unused}}
train_loader: {{name: text, dataset: {{local: /nowhere}}}}
optimizer: {{name: decoupled_adamw, lr: 1.0e-3}}
scheduler: {{name: constant_with_warmup, t_warmup: 0ba}}
max_duration: 10ba
global_train_batch_size: 64
device_train_microbatch_size: {microbatch}
"#
        );
        crate::config::load_str(&yaml, "auto.yaml", &[])
            .unwrap()
            .config
    }

    #[test]
    fn auto_microbatch_picks_the_largest_that_fits_and_says_why() {
        let cfg = config("auto");
        let model = resolve_model(&cfg).unwrap();
        let gib = 1u64 << 30;
        // Plenty of memory: the whole device batch.
        let (m, why) = auto_microbatch(&cfg, &model, 64, 1, Some(64 * gib)).unwrap();
        assert_eq!(m, 64, "{why}");
        assert!(
            why.contains("auto → 64") && why.contains("memory model"),
            "{why}"
        );
        // Less memory: a smaller divisor of the device batch, never the whole batch.
        let need = |m: usize| {
            crate::plan::memory_estimate(&crate::plan::MemoryInput::from_mpt(
                &model,
                128,
                m,
                cfg.precision,
                crate::plan::OptimizerStateKind::Adam,
                1,
                false,
            ))
            .total()
        };
        let budget = (need(8) + need(16)) / 2.0 / 0.9;
        let (m, why) = auto_microbatch(&cfg, &model, 64, 1, Some(budget as u64)).unwrap();
        assert_eq!(m, 8, "{why}");
        assert!(why.contains("16 would need"), "{why}");
        // Not even one sequence fits: an error with the numbers, not a silent fallback.
        let err = auto_microbatch(&cfg, &model, 64, 1, Some(1 << 20))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("device_train_microbatch_size:"), "{err}");
        assert!(err.contains("GiB"), "{err}");
        // A device that does not report its memory: asked for a number.
        let err = auto_microbatch(&cfg, &model, 64, 1, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("set a number"), "{err}");
    }
}
