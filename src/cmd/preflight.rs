//! `tessera preflight CONFIG`: the pass/fail checklist to run before launching a training run.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use tessera::device::{DeviceSpec, Job};
use tessera::train::preflight::{PreflightOptions, preflight_file};

#[derive(clap::Args)]
pub struct Args {
    /// The training YAML.
    config: PathBuf,
    /// Override any key, as for `tessera train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Devices the run will use (for the failure-rate and memory checks).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Memory of one device, in bytes (default: this machine's RAM on the CPU).
    #[arg(long)]
    device_memory: Option<u64>,
    /// Seconds per optimizer step on the target hardware (default: measured here).
    #[arg(long)]
    step_time: Option<f64>,
    /// Skip the trial forward/backward step.
    #[arg(long)]
    no_step: bool,
    /// The run folder the checks look at (default: runs/<run_name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    device.run(PreflightJob(args))
}

struct PreflightJob(Args);

impl Job for PreflightJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        let a = self.0;
        let opts = PreflightOptions {
            config_path: Some(a.config.clone()),
            run_dir: a.run_dir.clone(),
            device_label: super::device_label(spec),
            device_is_host: spec == DeviceSpec::Cpu,
            device_memory: a.device_memory,
            world_size: a.devices.max(1),
            step_time_s: a.step_time,
            run_step: !a.no_step,
            ..PreflightOptions::default()
        };
        let report = preflight_file::<B>(&a.config, &a.overrides, &opts, &device);
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report.to_json())?);
        } else {
            print!("{}", report.render());
        }
        if !report.passed() {
            anyhow::bail!(
                "preflight failed for {}: fix the ✗ items above before launching",
                a.config.display()
            );
        }
        Ok(())
    }
}
