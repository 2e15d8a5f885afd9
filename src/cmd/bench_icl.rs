//! Hidden `tessera bench-icl`: ICL examples per second on the shared fixture model
//! (`icl_model/`, the gpt-neox tokenizer, four llm-foundry task families), through
//! `tessera_eval::icl::bench::bench_fixture`. `cargo xtask bench eval` runs it with `--json`.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use tessera::device::{DeviceSpec, Job};
use tessera::eval::icl::bench::bench_fixture;

#[derive(clap::Args)]
pub struct Args {
    /// The shared fixtures folder (holding icl/, icl_model/ and tokenizer/).
    #[arg(long)]
    fixtures: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// One JSON line instead of a markdown table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    device.run(IclBenchJob(args))
}

struct IclBenchJob(Args);

impl Job for IclBenchJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        let a = self.0;
        anyhow::ensure!(
            a.batch > 0,
            "--batch 0: at least one sequence per forward pass"
        );
        // Inference only: the inner (non-autodiff) backend, as evaluation does.
        let bench = bench_fixture::<B::InnerBackend>(&a.fixtures, a.batch, &device)
            .with_context(|| format!("ICL benchmark on {}", a.fixtures.display()))?;
        if !a.json {
            println!("{}", bench.to_markdown());
            return Ok(());
        }
        let tasks: Vec<serde_json::Value> = bench
            .tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "label": t.label,
                    "examples": t.examples,
                    "sequences": t.sequences,
                    "seconds": t.seconds,
                    "accuracy": t.accuracy,
                })
            })
            .collect();
        let out = serde_json::json!({
            "device": super::device_label(spec),
            "batch": a.batch,
            "prepare_seconds": bench.prepare_seconds,
            "examples_per_s": bench.examples_per_second(),
            "tasks": tasks,
        });
        println!("{out}");
        Ok(())
    }
}
