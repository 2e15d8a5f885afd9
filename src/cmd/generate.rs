//! `tessera generate`: sample a continuation from an HF MPT checkpoint folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use tessera::data::tokenizer::Tokenizer;
use tessera::device::{DeviceSpec, Job};
use tessera::model::{GenerationConfig, generate, hf};

#[derive(clap::Args)]
pub struct Args {
    /// HF MPT folder: config.json + model.safetensors (or sharded safetensors with an index).
    #[arg(long)]
    model: PathBuf,
    /// The prompt as text (needs a tokenizer: --tokenizer, or tokenizer.json in the model folder).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as token ids, comma-separated: 1,2,3.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// tokenizer.json to encode --prompt and decode the output.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// How many tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to P.
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// End-of-sequence id (default: generation_config.json's eos_token_id, else the tokenizer's).
    #[arg(long)]
    eos_id: Option<u32>,
    /// Stop when the generated text contains this string (repeatable; needs a tokenizer).
    #[arg(long)]
    stop: Vec<String>,
    /// Recompute the whole sequence at each step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    /// Print {"prompt_ids": [...], "generated_ids": [...], "text": ...} instead of the text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    device.run(GenerateJob(args))
}

struct GenerateJob(Args);

impl Job for GenerateJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> anyhow::Result<()> {
        let args = self.0;
        let tokenizer = load_tokenizer(&args)?;
        let prompt_ids = match (&args.prompt, &args.prompt_ids) {
            (Some(text), None) => {
                let tok = tokenizer.as_ref().with_context(|| {
                    format!(
                        "--prompt needs a tokenizer: pass --tokenizer FILE or put tokenizer.json in {}",
                        args.model.display()
                    )
                })?;
                tok.encode(text)?
            }
            (None, Some(ids)) => ids.clone(),
            _ => bail!("give the prompt as --prompt TEXT or --prompt-ids 1,2,3"),
        };
        if prompt_ids.is_empty() {
            bail!("the prompt is empty: generation needs at least one token");
        }
        if !args.stop.is_empty() && tokenizer.is_none() {
            bail!("--stop needs a tokenizer to decode the generated text (--tokenizer FILE)");
        }

        let (config, model) = hf::load::<B::InnerBackend>(&args.model, &device)
            .with_context(|| format!("loading {}", args.model.display()))?;
        if let Some(&bad) = prompt_ids
            .iter()
            .find(|&&id| id as usize >= config.vocab_size)
        {
            bail!(
                "--prompt-ids: token {bad} is outside the model's vocab of {}",
                config.vocab_size
            );
        }
        let eos_ids = match args.eos_id {
            Some(id) => vec![id],
            None => generation_config_eos(&args.model)?
                .or_else(|| {
                    if args.prompt.is_some() {
                        tokenizer.as_ref().and_then(Tokenizer::eos_id)
                    } else {
                        None
                    }
                })
                .into_iter()
                .collect(),
        };
        let cfg = GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
            eos_ids,
            use_cache: !args.no_cache,
            pad_id: 0,
        };
        let stop_strings = args.stop.clone();
        let stop_tok = tokenizer.clone();
        let stop = move |_row: usize, new_ids: &[u32]| -> bool {
            match &stop_tok {
                Some(tok) if !stop_strings.is_empty() => tok
                    .decode(new_ids, false)
                    .map(|text| stop_strings.iter().any(|s| text.contains(s.as_str())))
                    .unwrap_or(false),
                _ => false,
            }
        };
        let out = generate(
            &model,
            std::slice::from_ref(&prompt_ids),
            &cfg,
            Some(&stop),
            &device,
        )
        .context("generating")?;
        let generated = &out[0].ids;
        let text = match &tokenizer {
            Some(tok) => Some(tok.decode(generated, false)?),
            None => None,
        };
        if args.json {
            let v = serde_json::json!({
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "text": text,
            });
            println!("{v}");
        } else {
            match text {
                Some(t) => println!("{}{t}", args.prompt.unwrap_or_default()),
                None => println!(
                    "{}",
                    generated
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }
        }
        Ok(())
    }
}

fn load_tokenizer(args: &Args) -> anyhow::Result<Option<Tokenizer>> {
    let path = match &args.tokenizer {
        Some(p) => p.clone(),
        None => {
            let p = args.model.join("tokenizer.json");
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    Ok(Some(Tokenizer::from_file(&path)?))
}

/// `eos_token_id` from the checkpoint's generation_config.json, if it names one (`serve` uses
/// the same rule, so its greedy output matches this command's).
pub fn generation_config_eos(model_dir: &Path) -> anyhow::Result<Option<u32>> {
    let path = model_dir.join("generation_config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    Ok(match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Array(a) => a.first().and_then(|n| n.as_u64()).map(|n| n as u32),
        _ => None,
    })
}
