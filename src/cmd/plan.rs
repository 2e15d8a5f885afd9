//! `tessera plan`: what a training run costs before it is launched (Chinchilla, then adjusted
//! for inference); `--memory`: what one rank allocates under a sharding strategy; `--step-time`:
//! compute and communication of a step on many GPUs.

use anyhow::{Context, bail};
use tessera::model::MptConfig;
use tessera::train::config::{FsdpPrecision, Precision, TrainConfig};
use tessera::train::metrics::Accelerator;
use tessera::train::parallel::ShardingStrategy;
use tessera::train::plan::step_time::strategy_name;
use tessera::train::plan::{
    Interconnect, MemoryInput, OptimizerStateKind, PlanInput, StepTimeInput, StepTimeModel,
    memory_estimate, plan, step_time,
};
use tessera::train::preflight::trial::resolve_model;

#[derive(clap::Args)]
pub struct Args {
    /// Parameters, e.g. 30e9.
    #[arg(long)]
    params: Option<f64>,
    /// Training tokens, e.g. 600e9.
    #[arg(long)]
    tokens: Option<f64>,
    /// Device: h100 (= h100-sxm), h100-pcie, h200, a100.
    #[arg(long, default_value = "h100")]
    gpu: String,
    /// Number of devices.
    #[arg(long, default_value_t = 8)]
    gpus: u64,
    /// Expected model FLOPs utilisation, 0–1.
    #[arg(long, default_value_t = 0.4)]
    mfu: f64,
    /// Dollars per device-hour.
    #[arg(long, default_value_t = 2.0)]
    price: f64,
    /// Tokens the model will serve over its life (for the inference-aware recommendation).
    #[arg(long, default_value_t = 1e12)]
    inference_tokens: f64,
    /// fp32, amp_bf16 or amp_fp16 (selects the device's peak).
    #[arg(long, default_value = "amp_bf16")]
    precision: String,
    /// Estimate per-rank memory instead (needs --preset or --config).
    #[arg(long)]
    memory: bool,
    /// Model the step time on --gpus devices (compute at --mfu, and the bytes each strategy
    /// moves over NVLink and InfiniBand; needs --preset or --config).
    #[arg(long)]
    step_time: bool,
    /// With --memory/--step-time: a model shape (mpt-125m … mpt-70b, mpt-7b, mpt-30b, tiny).
    #[arg(long)]
    preset: Option<String>,
    /// With --memory/--step-time: a model config.json, or a training YAML (its model block,
    /// batch sizes, precision, optimizer and fsdp_config are used; flags given explicitly
    /// override them).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// With --memory: sequence length (default: the model's max_seq_len, or the YAML's).
    #[arg(long)]
    seq_len: Option<usize>,
    /// With --memory: sequences per microbatch per rank (default 1, or the YAML's).
    #[arg(long)]
    microbatch: Option<usize>,
    /// With --memory: ranks the run shards over (alias --devices; default 1).
    #[arg(long, alias = "devices")]
    world_size: Option<usize>,
    /// With --memory: nodes the ranks are spread over (HYBRID_SHARD shards within each; default 1).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// NO_SHARD, SHARD_GRAD_OP, FULL_SHARD or HYBRID_SHARD (default FULL_SHARD, or the YAML's
    /// fsdp_config).
    #[arg(long)]
    sharding: Option<String>,
    /// Recompute each block's forward in its backward (fsdp_config.activation_checkpointing).
    #[arg(long)]
    activation_checkpointing: bool,
    /// PURE, DEFAULT or FULL (fsdp_config.mixed_precision; default DEFAULT, or the YAML's).
    #[arg(long)]
    mixed_precision: Option<String>,
    /// With --memory: adam (two moments) or lion (one).
    #[arg(long)]
    optimizer: Option<String>,
    /// Global batch in sequences (default: the YAML's; --step-time: else 1024). With --memory
    /// it sets the microbatches per rank per step (gradient accumulation).
    #[arg(long)]
    global_batch: Option<usize>,
    /// With --memory: print the estimate as one JSON line (bytes).
    #[arg(long)]
    json: bool,
    /// With --step-time: the GPU counts to model, e.g. 8,64,512 (default: --gpus).
    #[arg(long, value_delimiter = ',')]
    step_gpus: Vec<usize>,
    /// With --step-time: GPUs per node joined by NVLink.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: usize,
    /// With --step-time: share of the link rate a collective reaches.
    #[arg(long, default_value_t = 0.8)]
    link_efficiency: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let precision: Precision = serde_json::from_value(serde_json::Value::String(
        args.precision.clone(),
    ))
    .with_context(|| {
        format!(
            "--precision {:?}: expected fp32, amp_bf16 or amp_fp16",
            args.precision
        )
    })?;
    if args.memory {
        return memory(&args, precision);
    }
    if args.step_time {
        return step_time_table(&args, precision);
    }
    let (Some(params), Some(tokens)) = (args.params, args.tokens) else {
        bail!(
            "give --params and --tokens (e.g. --params 30e9 --tokens 600e9), or --memory with --preset/--config"
        );
    };
    let gpu = Accelerator::from_name(&args.gpu).with_context(|| {
        format!(
            "--gpu {:?}: expected one of {}",
            args.gpu,
            Accelerator::NAMES
        )
    })?;
    let mut input = PlanInput::new(params, tokens, gpu, args.gpus, args.mfu, args.price);
    input.inference_tokens = args.inference_tokens;
    input.precision = precision;
    let p = plan(input)?;
    print!("{}", p.render());
    Ok(())
}

/// The run `--memory` and `--step-time` describe: a model, and (from a training YAML) its
/// batch, precision, optimizer and fsdp_config.
struct Described {
    model: MptConfig,
    train: Option<TrainConfig>,
}

fn described(args: &Args) -> anyhow::Result<Described> {
    let is_yaml = |p: &std::path::Path| {
        matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
    };
    match (&args.preset, &args.config) {
        (Some(name), None) => Ok(Described {
            model: MptConfig::preset(name)?,
            train: None,
        }),
        (None, Some(path)) if is_yaml(path) => {
            let loaded = tessera::train::config::load_file(path, &[])?;
            let model = resolve_model(&loaded.config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Described {
                model,
                train: Some(loaded.config),
            })
        }
        (None, Some(path)) => Ok(Described {
            model: MptConfig::from_json_file(path)?,
            train: None,
        }),
        _ => bail!(
            "--memory and --step-time need --preset NAME, or --config (config.json or a training YAML)"
        ),
    }
}

fn sharding_of(name: &str) -> anyhow::Result<ShardingStrategy> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).with_context(|| {
        format!("--sharding {name:?}: expected NO_SHARD, SHARD_GRAD_OP, FULL_SHARD or HYBRID_SHARD")
    })
}

fn mixed_of(name: &str) -> anyhow::Result<FsdpPrecision> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .with_context(|| format!("--mixed-precision {name:?}: expected PURE, DEFAULT or FULL"))
}

/// The memory input: the YAML's run (when given), then every flag given on top.
fn memory_input(args: &Args, d: &Described, precision: Precision) -> anyhow::Result<MemoryInput> {
    let world = args.world_size.unwrap_or(1).max(1);
    let mut input = match &d.train {
        Some(cfg) => MemoryInput::from_train_config(cfg, &d.model, world, args.nodes)?,
        None => MemoryInput::from_mpt(
            &d.model,
            d.model.max_seq_len,
            1,
            precision,
            OptimizerStateKind::Adam,
            world,
            true,
        ),
    };
    if d.train.is_none() {
        input.precision = precision;
    }
    input.nodes = args.nodes.max(1);
    if let Some(s) = args.seq_len {
        input.seq_len = s;
    }
    if let Some(m) = args.microbatch {
        input.microbatch = m.max(1);
    }
    // Gradient accumulation: the microbatches a rank runs per step.
    let global = args
        .global_batch
        .or(d.train.as_ref().map(|c| c.global_train_batch_size));
    if let Some(g) = global {
        let per_rank = (g / world).max(1);
        input.microbatch = input.microbatch.min(per_rank);
        input.microbatches_per_step = per_rank.div_ceil(input.microbatch);
    }
    if let Some(name) = &args.sharding {
        input.sharding = sharding_of(name)?;
    }
    if args.activation_checkpointing {
        input.recompute = true;
    }
    if let Some(name) = &args.mixed_precision {
        input.mixed_precision = mixed_of(name)?;
    }
    if let Some(name) = &args.optimizer {
        input.optimizer = match name.as_str() {
            "adam" | "adamw" | "decoupled_adamw" => OptimizerStateKind::Adam,
            "lion" | "decoupled_lionw" => OptimizerStateKind::Lion,
            other => bail!("--optimizer {other:?}: expected adam or lion"),
        };
    }
    Ok(input)
}

fn memory(args: &Args, precision: Precision) -> anyhow::Result<()> {
    let d = described(args)?;
    let input = memory_input(args, &d, precision)?;
    let est = memory_estimate(&input);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "params": d.model.num_params(),
                "world_size": input.world_size,
                "nodes": input.nodes,
                "sharding": strategy_name(input.sharding),
                "recompute": input.recompute,
                "microbatch": input.microbatch,
                "microbatches_per_step": input.microbatches_per_step,
                "master": est.master,
                "parameters": est.params,
                "optimizer": est.optimizer,
                "gradients": est.grads,
                "activations": est.activations,
                "update": est.update,
                "frozen_base": est.frozen,
                "resident": est.resident(),
                "total": est.total(),
            })
        );
        return Ok(());
    }
    println!(
        "{} parameters, seq {}, microbatch {} × {} per step, {} rank(s) on {} node(s), {}{}, precision {}, mixed_precision {:?}",
        d.model.num_params(),
        input.seq_len,
        input.microbatch,
        input.microbatches_per_step,
        input.world_size,
        input.nodes,
        strategy_name(input.sharding),
        if input.recompute {
            " + activation checkpointing"
        } else {
            ""
        },
        input.precision,
        input.mixed_precision,
    );
    print!("{}", est.render());
    Ok(())
}

fn step_time_table(args: &Args, precision: Precision) -> anyhow::Result<()> {
    let d = described(args)?;
    let gpu = Accelerator::from_name(&args.gpu).with_context(|| {
        format!(
            "--gpu {:?}: expected one of {}",
            args.gpu,
            Accelerator::NAMES
        )
    })?;
    let mem = memory_input(args, &d, precision)?;
    let seq = mem.seq_len;
    let global = args
        .global_batch
        .or(d.train.as_ref().map(|c| c.global_train_batch_size))
        .unwrap_or(1024);
    let interconnect = Interconnect {
        gpus_per_node: args.gpus_per_node.max(1),
        efficiency: args.link_efficiency,
        ..Interconnect::H100_NDR
    };
    let sharding = args
        .sharding
        .as_deref()
        .map(sharding_of)
        .transpose()?
        .unwrap_or(mem.sharding);
    println!(
        "{} parameters, {global} × {seq} tokens per step, {} at {:.0}% MFU ({:.0} TFLOP/s peak), microbatch {}, mixed_precision {:?}",
        d.model.num_params(),
        gpu.display_name(),
        100.0 * args.mfu,
        gpu.peak_flops(mem.precision) / 1e12,
        mem.microbatch,
        mem.mixed_precision,
    );
    println!(
        "NVLink {:.0} GB/s and InfiniBand {:.0} GB/s per GPU per direction, {:.0}% reached; {} GPUs per node; no overlap of communication and compute in tessera today\n",
        interconnect.nvlink_bytes_per_s / 1e9,
        interconnect.ib_bytes_per_s / 1e9,
        100.0 * interconnect.efficiency,
        interconnect.gpus_per_node,
    );
    println!("{}", StepTimeModel::header());
    let counts = if args.step_gpus.is_empty() {
        vec![args.gpus as usize]
    } else {
        args.step_gpus.clone()
    };
    for gpus in counts {
        for s in [
            ShardingStrategy::NoShard,
            ShardingStrategy::ShardGradOp,
            ShardingStrategy::FullShard,
            ShardingStrategy::HybridShard,
            sharding,
        ]
        .into_iter()
        .fold(Vec::new(), |mut v, s| {
            if !v.contains(&s) {
                v.push(s);
            }
            v
        }) {
            let per_rank = (global / gpus.max(1)).max(1);
            let model = step_time(StepTimeInput {
                params: d.model.num_params() as f64,
                flops_per_token: d.model.flops_per_token(seq, true),
                tokens_per_step: (global * seq) as f64,
                microbatches_per_rank: per_rank.div_ceil(mem.microbatch.clamp(1, per_rank)),
                gpus,
                peak_flops: gpu.peak_flops(mem.precision),
                mfu: args.mfu,
                sharding: s,
                mixed_precision: mem.mixed_precision,
                interconnect,
            });
            println!("{}", model.row());
        }
    }
    Ok(())
}
