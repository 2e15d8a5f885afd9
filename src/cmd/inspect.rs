//! `tessera inspect`: a checkpoint's (or preset's) config, parameter count and FLOPs per token.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera::model::MptConfig;

#[derive(clap::Args)]
pub struct Args {
    /// HF MPT folder (its config.json is read; weights are not loaded).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A built-in shape instead: mpt-125m … mpt-70b, mpt-7b, mpt-7b-8k, mpt-30b, tiny.
    #[arg(long)]
    preset: Option<String>,
    /// Sequence length for the FLOP count (default: the config's max_seq_len).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (source, config) = match (&args.model, &args.preset) {
        (Some(dir), None) => {
            let path = dir.join("config.json");
            let cfg = MptConfig::from_json_file(&path)?;
            (dir.display().to_string(), cfg)
        }
        (None, Some(name)) => (format!("preset {name}"), MptConfig::preset(name)?),
        _ => bail!("give --model DIR or --preset NAME"),
    };
    let seq = args.seq_len.unwrap_or(config.max_seq_len);
    let params = config.num_params();
    let fwd = config.flops_per_sequence(seq, false) / seq as f64;
    let train = config.flops_per_sequence(seq, true) / seq as f64;
    let config_json = config.to_hf_json();
    if args.json {
        let v = serde_json::json!({
            "source": source,
            "config": config_json,
            "n_params": params,
            "seq_len": seq,
            "flops_per_token_forward": fwd,
            "flops_per_token_train": train,
        });
        println!("{v}");
        return Ok(());
    }
    let pretty = serde_json::to_string_pretty(&config_json).context("rendering the config")?;
    println!("{source}\n{pretty}");
    println!(
        "parameters:            {params} ({:.3} B)",
        params as f64 / 1e9
    );
    println!(
        "FLOPs/token @ seq {seq}: {fwd:.4e} forward, {train:.4e} training (fwd+bwd, llm-foundry formula)"
    );
    Ok(())
}
