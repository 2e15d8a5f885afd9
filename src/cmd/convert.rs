//! `tessera convert`: rewrite an HF MPT checkpoint (or a tessera training checkpoint, which is
//! one) in another dtype or shard size, for serving with transformers or vLLM.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use tessera::device::{DeviceSpec, Job};
use tessera::model::hf::{self, HfDtype, SaveOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint folder to read (config.json + safetensors, any dtype, sharded or not).
    #[arg(long)]
    model: PathBuf,
    /// Where to write it.
    #[arg(long)]
    out: PathBuf,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Start a new shard above this many bytes (transformers' max_shard_size).
    #[arg(long, default_value_t = 5_000_000_000)]
    max_shard_bytes: u64,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    device.run(Convert(args))
}

struct Convert(Args);

impl Job for Convert {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> anyhow::Result<()> {
        let a = self.0;
        let dtype = match a.dtype.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => HfDtype::F32,
            "f16" | "float16" | "fp16" => HfDtype::F16,
            "bf16" | "bfloat16" => HfDtype::Bf16,
            other => bail!("--dtype {other:?}: expected f32, f16 or bf16"),
        };
        if a.out == a.model {
            bail!("--out must differ from --model (convert never overwrites its input)");
        }
        let (config, model) = hf::load::<B::InnerBackend>(&a.model, &device)
            .with_context(|| format!("loading {}", a.model.display()))?;
        hf::save_with(
            &model,
            &config,
            &a.out,
            SaveOptions {
                dtype,
                max_shard_bytes: a.max_shard_bytes,
            },
        )
        .with_context(|| format!("writing {}", a.out.display()))?;
        // Files a serving stack reads beside the weights.
        for extra in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
        ] {
            let from = a.model.join(extra);
            if from.exists() {
                std::fs::copy(&from, a.out.join(extra))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
        println!(
            "wrote {} ({} parameters, {})",
            a.out.display(),
            config.num_params(),
            a.dtype
        );
        Ok(())
    }
}
