//! `tessera convert`: rewrite an HF MPT checkpoint (or a tessera training checkpoint, which is
//! one) in another dtype or shard size, for serving with transformers or vLLM; with
//! `--merge-lora`, first merge a PEFT LoRA adapter into it (`W' = W + scale · B A`), so that
//! the result needs no PEFT to load.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use tessera::device::{DeviceSpec, Job};
use tessera::model::hf::{self, HfDtype, SaveOptions};
use tessera::model::lora;

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
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as
    /// `PeftModel.save_pretrained` or tessera writes it) to merge into the weights.
    #[arg(long, value_name = "ADAPTER_DIR")]
    merge_lora: Option<PathBuf>,
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
        let model = match &a.merge_lora {
            Some(dir) => {
                if *dir == a.out {
                    bail!("--out must differ from --merge-lora");
                }
                let adapter = lora::peft::load::<B::InnerBackend>(dir, &config, &device)
                    .with_context(|| format!("loading the LoRA adapter {}", dir.display()))?;
                lora::merge(model, &adapter).with_context(|| {
                    format!("merging {} into {}", dir.display(), a.model.display())
                })?
            }
            None => model,
        };
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
        let merged = a
            .merge_lora
            .as_ref()
            .map(|d| format!(", LoRA adapter {} merged", d.display()))
            .unwrap_or_default();
        println!(
            "wrote {} ({} parameters, {}{merged})",
            a.out.display(),
            config.num_params(),
            a.dtype
        );
        Ok(())
    }
}
