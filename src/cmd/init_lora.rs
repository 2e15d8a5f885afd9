//! Hidden `tessera init-lora`: writes a LoRA adapter with random A and B (PEFT's
//! `init_lora_weights=False`) for a model folder, as PEFT saves one. A fresh adapter from
//! PEFT's standard init has B = 0 and changes nothing; this one changes the output, so tests
//! and `cargo xtask bench serve` can serve adapters that do real work without training them.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::backend::Flex;
use tessera::model::MptConfig;
use tessera::model::lora::{self, Adapter, LoraConfig, LoraInit, TargetModule};

#[derive(clap::Args)]
pub struct Args {
    /// The model folder the adapter is for (its config.json gives the shapes).
    #[arg(long)]
    model: PathBuf,
    /// The adapter folder to write (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Rank.
    #[arg(long, default_value_t = 8)]
    r: usize,
    /// lora_alpha (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Target modules, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Wqkv,out_proj,up_proj,down_proj"
    )]
    targets: Vec<String>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let config_path = a.model.join("config.json");
    let config = MptConfig::from_json_file(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let mut target_modules = Vec::with_capacity(a.targets.len());
    for name in &a.targets {
        match TargetModule::from_name(name) {
            Some(t) => target_modules.push(t),
            None => bail!(
                "--targets {name}: not an MPT target module (Wqkv, out_proj, up_proj, gate_proj, \
                 down_proj)"
            ),
        }
    }
    if a.r == 0 {
        bail!("--r must be at least 1");
    }
    let lora_config = LoraConfig {
        r: a.r,
        lora_alpha: a.alpha,
        target_modules,
        init_lora_weights: LoraInit::Random,
        ..LoraConfig::default()
    };
    let adapter = Adapter::<Flex>::init(&lora_config, &config, a.seed, &Default::default())?;
    let base = a.model.display().to_string();
    lora::peft::save(&adapter, &a.out, Some(&base))
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote a random LoRA adapter (r {}) to {}",
        a.r,
        a.out.display()
    );
    Ok(())
}
