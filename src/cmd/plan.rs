//! `tessera plan`: what a training run costs before it is launched (Chinchilla, then adjusted
//! for inference), and `--memory`: what it needs per device.

use anyhow::{Context, bail};
use tessera::model::MptConfig;
use tessera::train::config::Precision;
use tessera::train::metrics::Accelerator;
use tessera::train::plan::{MemoryInput, OptimizerStateKind, PlanInput, memory_estimate, plan};

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
    /// Estimate per-device memory instead (needs --preset or --config).
    #[arg(long)]
    memory: bool,
    /// With --memory: a model shape (mpt-125m … mpt-70b, mpt-7b, mpt-30b, tiny).
    #[arg(long)]
    preset: Option<String>,
    /// With --memory: a model config.json.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// With --memory: sequence length (default: the model's max_seq_len).
    #[arg(long)]
    seq_len: Option<usize>,
    /// With --memory: sequences per microbatch per device.
    #[arg(long, default_value_t = 1)]
    microbatch: usize,
    /// With --memory: devices the run shards over.
    #[arg(long, default_value_t = 1)]
    world_size: usize,
    /// With --memory: replicate weights, gradients and optimizer state (DDP) instead of
    /// sharding them (FSDP).
    #[arg(long)]
    replicated: bool,
    /// With --memory: adam (two moments) or lion (one).
    #[arg(long, default_value = "adam")]
    optimizer: String,
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

fn memory(args: &Args, precision: Precision) -> anyhow::Result<()> {
    let cfg = match (&args.preset, &args.config) {
        (Some(name), None) => MptConfig::preset(name)?,
        (None, Some(path)) => MptConfig::from_json_file(path)?,
        _ => bail!("--memory needs --preset NAME or --config config.json"),
    };
    let optimizer = match args.optimizer.as_str() {
        "adam" | "adamw" | "decoupled_adamw" => OptimizerStateKind::Adam,
        "lion" | "decoupled_lionw" => OptimizerStateKind::Lion,
        other => bail!("--optimizer {other:?}: expected adam or lion"),
    };
    let seq = args.seq_len.unwrap_or(cfg.max_seq_len);
    let input = MemoryInput::from_mpt(
        &cfg,
        seq,
        args.microbatch,
        precision,
        optimizer,
        args.world_size,
        !args.replicated,
    );
    let est = memory_estimate(&input);
    println!(
        "{} parameters, seq {seq}, microbatch {}, {} device(s), {}",
        cfg.num_params(),
        args.microbatch,
        args.world_size,
        if args.replicated {
            "replicated (DDP)"
        } else {
            "sharded (FSDP)"
        }
    );
    print!("{}", est.render());
    Ok(())
}
