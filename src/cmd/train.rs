//! `tessera train CONFIG`: pretrain or fine-tune from an llm-foundry-style YAML.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use tessera::device::{DeviceSpec, Job};
use tessera::train::config;
use tessera::train::trainer::{TrainOptions, train};

#[derive(clap::Args)]
pub struct Args {
    /// The training YAML (llm-foundry keys).
    config: PathBuf,
    /// Override any key: --set optimizer.lr=3e-4 --set variables.max_seq_len=256.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run folder (default: runs/<run_name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    let loaded = config::load_file(&args.config, &args.overrides)?;
    device.run(TrainJob { args, loaded })
}

struct TrainJob {
    args: Args,
    loaded: config::LoadedConfig,
}

impl Job for TrainJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        let opts = TrainOptions {
            config_path: Some(self.args.config.clone()),
            run_dir: self.args.run_dir.clone(),
            device_label: super::device_label(spec),
            peak_flops: None,
        };
        let summary = train::<B>(&self.loaded, &opts, None, &device)
            .with_context(|| format!("training with {}", self.args.config.display()))?;
        println!(
            "trained {} steps ({} tokens); loss {} → {}; report: {}",
            summary.steps,
            summary.tokens,
            summary.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
            summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            summary.report.display()
        );
        Ok(())
    }
}
