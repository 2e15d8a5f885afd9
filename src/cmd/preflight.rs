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
    /// Nodes the devices are spread over (HYBRID_SHARD shards within each).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
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
    match missing_backend(device) {
        // The checklist still runs (on the CPU, without the trial step), so that the missing
        // feature is one ✗ line among the config's other verdicts.
        Some(why) => DeviceSpec::Cpu.run(PreflightJob {
            args,
            requested: device,
            backend_missing: Some(why),
        }),
        None => device.run(PreflightJob {
            args,
            requested: device,
            backend_missing: None,
        }),
    }
}

/// Why `device`'s backend is not in this build (its cargo feature is off).
fn missing_backend(device: DeviceSpec) -> Option<String> {
    let (on, feature) = match device {
        DeviceSpec::Cpu => return None,
        DeviceSpec::Wgpu(_) => (cfg!(feature = "wgpu"), "wgpu"),
        DeviceSpec::Cuda(_) => (cfg!(feature = "cuda"), "cuda"),
    };
    (!on).then(|| {
        format!(
            "--device {device}: this tessera was built without the `{feature}` feature \
             (cargo build --release --features {feature})"
        )
    })
}

/// GPUs this node has (`/dev/nvidiaN` device files), for `--device cuda`; `None` elsewhere (CPU
/// ranks are processes, any number runs; wgpu is single-device).
fn devices_per_node(device: DeviceSpec) -> Option<usize> {
    match device {
        DeviceSpec::Cuda(_) => {
            let count = std::fs::read_dir("/dev")
                .map(|d| {
                    d.flatten()
                        .filter(|e| {
                            e.file_name().to_str().is_some_and(|n| {
                                n.strip_prefix("nvidia").is_some_and(|i| {
                                    !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())
                                })
                            })
                        })
                        .count()
                })
                .unwrap_or(0);
            Some(count)
        }
        DeviceSpec::Wgpu(_) => Some(1),
        DeviceSpec::Cpu => None,
    }
}

struct PreflightJob {
    args: Args,
    /// The device the user asked for (the job runs on the CPU when its backend is missing).
    requested: DeviceSpec,
    backend_missing: Option<String>,
}

impl Job for PreflightJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        let a = self.args;
        let requested = self.requested;
        let opts = PreflightOptions {
            config_path: Some(a.config.clone()),
            run_dir: a.run_dir.clone(),
            device_label: super::device_label(requested),
            device_is_host: spec == DeviceSpec::Cpu && requested == DeviceSpec::Cpu,
            device_memory: a.device_memory,
            world_size: a.devices,
            nodes: a.nodes,
            devices_per_node: devices_per_node(requested),
            step_time_s: a.step_time,
            run_step: !a.no_step && self.backend_missing.is_none(),
            backend_missing: self.backend_missing,
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
