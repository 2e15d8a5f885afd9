//! The pieces of a YAML run's setup (see `yaml_run.rs`) that preflight and `tessera plan`
//! use too: the architecture, the weights, the sharding strategy, the microbatch size, the
//! tokenizer, the communicator and the config hash.

use std::path::Path;

use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use sha2::{Digest, Sha256};
use tessera_dist::{Communicator, RendezvousConfig};
use tessera_model::lora::{self, Adapter, LoraError};
use tessera_model::{Mpt, MptConfig, hf};

use crate::batch::Separator;
use crate::checkpoint::CheckpointStore;
use crate::config::{
    AdapterSource, FsdpPrecision, LoaderKind, ModelSource, Precision, TrainConfig,
};
use crate::finetune::FinetuneTokenizer;
use crate::parallel::{ShardingStrategy, Strategy};

use super::TrainError;
use super::log::RunLog;

/// The communicator: NCCL between burn-cuda ranks (one GPU per process, `LOCAL_RANK` picks it),
/// TCP otherwise.
#[cfg_attr(not(feature = "cuda"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn connect<B: AutodiffBackend>(
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
pub(crate) fn agree_on_checkpoint(
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
pub(crate) fn agree_on_attempt(comm: &mut Communicator) -> Result<String, TrainError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut id = [now ^ u64::from(std::process::id()).rotate_left(40)];
    comm.broadcast(&mut id, 0).map_err(TrainError::Dist)?;
    Ok(format!("a{:016x}", id[0]))
}

/// How the state is split, from `fsdp_config` and the world size.
pub(crate) fn strategy(cfg: &TrainConfig, num_nodes: usize) -> Result<Strategy, TrainError> {
    let Some(f) = &cfg.fsdp_config else {
        // No fsdp_config: data parallel with replicated state (composer's DDP).
        return Ok(Strategy::SINGLE);
    };
    f.validate().map_err(|(k, m)| TrainError::Config {
        key: format!("fsdp_config.{k}"),
        message: m,
    })?;
    // HYBRID_SHARD: FULL_SHARD within each node, replicated across the nodes (on one node it
    // is FULL_SHARD).
    let (sharding, replicas) = match f.sharding_strategy {
        ShardingStrategy::HybridShard if num_nodes > 1 => {
            (ShardingStrategy::HybridShard, num_nodes)
        }
        s => (s.within_one_node(), 1),
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
        replicas,
    })
}

/// How the strategy is named in the log.
pub(crate) fn strategy_name(s: Strategy) -> String {
    let name = match s.sharding {
        ShardingStrategy::NoShard => "NO_SHARD (DDP)".to_string(),
        ShardingStrategy::ShardGradOp => "SHARD_GRAD_OP (ZeRO-2)".to_string(),
        ShardingStrategy::FullShard => "FULL_SHARD (FSDP)".to_string(),
        ShardingStrategy::HybridShard => format!(
            "HYBRID_SHARD (FSDP within each node, replicated over {} nodes)",
            s.replicas
        ),
    };
    if s.recompute {
        format!("{name} with activation checkpointing")
    } else {
        name
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
            let mut json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TrainError::Config {
                    key: "model.pretrained_model_name_or_path".into(),
                    message: format!("{}: {e}", file.display()),
                })?;
            let obj = json.as_object_mut().ok_or_else(|| TrainError::Config {
                key: "model.pretrained_model_name_or_path".into(),
                message: format!("{}: expected a JSON object", file.display()),
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
    let key = if cfg.load_path.is_some() {
        "load_path"
    } else {
        "model.pretrained_model_name_or_path"
    };
    let base = match path {
        Some(p) => hf::load_weights(mpt, p, device).map_err(|e| TrainError::Model {
            key,
            source: Box::new(e),
        })?,
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
pub(crate) fn compute_dtype<B: AutodiffBackend>(
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
pub(crate) fn config_hash(cfg: &TrainConfig) -> Result<String, TrainError> {
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
