//! `tessera serve`: an OpenAI-compatible HTTP server for an HF MPT checkpoint folder, with
//! continuous batching (see the `tessera-serve` crate).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use tessera::data::tokenizer::Tokenizer;
use tessera::device::{DeviceSpec, Job};
use tessera::model::hf;
use tessera::serve::{
    ChatTemplate, Engine, EngineConfig, ModelLimits, ServedModels, Server, ServerConfig,
};

#[derive(clap::Args)]
pub struct Args {
    /// HF MPT folder: config.json + model.safetensors (or sharded safetensors with an index).
    #[arg(long)]
    model: PathBuf,
    /// The name clients put in `model` (default: the model folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// A LoRA adapter served under NAME, as PEFT saves it (repeatable).
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// tokenizer.json (default: the one in the model folder).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Address to listen on. Anything but a loopback address needs --api-key or --insecure.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Every request but /health must send `Authorization: Bearer KEY`.
    #[arg(long, conflicts_with = "insecure")]
    api_key: Option<String>,
    /// Allow a non-loopback --host without an API key.
    #[arg(long)]
    insecure: bool,
    /// Sequences decoded together at most (the running batch).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Sequences waiting for a place at most; past it requests get 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Prompt tokens per prefill forward (longer prompts are prefilled in chunks between
    /// decode steps, so they never stall the running requests).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Seconds a request may run before it is ended (408, or an error event in a stream).
    #[arg(long, default_value_t = 600.0)]
    request_timeout: f64,
    /// End-of-sequence id (default: generation_config.json's eos_token_id, else the tokenizer's).
    #[arg(long)]
    eos_id: Option<u32>,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    http_threads: usize,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    check_args(&args)?;
    device.run(ServeJob(args))
}

/// Flag checks that need no model: bind safety and limits.
fn check_args(args: &Args) -> anyhow::Result<()> {
    let loopback = args.host == "localhost"
        || args
            .host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !loopback && args.api_key.is_none() && !args.insecure {
        bail!(
            "--host {}: serving beyond this machine needs --api-key KEY (clients then send \
             `Authorization: Bearer KEY`), or --insecure to serve without one",
            args.host
        );
    }
    for (flag, value) in [
        ("--max-batch", args.max_batch),
        ("--max-queue", args.max_queue),
        ("--prefill-chunk", args.prefill_chunk),
        ("--http-threads", args.http_threads),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if !(args.request_timeout.is_finite() && args.request_timeout > 0.0) {
        bail!(
            "--request-timeout {}: must be a positive number of seconds",
            args.request_timeout
        );
    }
    if args.api_key.as_deref().is_some_and(str::is_empty) {
        bail!("--api-key: the key is empty");
    }
    if let Some(spec) = args.adapters.first() {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--adapter {spec:?}: expected NAME=DIR"))?;
        bail!(
            "--adapter {name}={dir}: serving LoRA adapters needs LoRA support in tessera-model, \
             which this build does not have yet; serve the base model, or a merged checkpoint"
        );
    }
    Ok(())
}

struct ServeJob(Args);

impl Job for ServeJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> anyhow::Result<()> {
        let args = self.0;
        let tokenizer_path = args
            .tokenizer
            .clone()
            .unwrap_or_else(|| args.model.join("tokenizer.json"));
        if !tokenizer_path.exists() {
            bail!(
                "{}: no tokenizer; pass --tokenizer FILE or put tokenizer.json in the model folder",
                tokenizer_path.display()
            );
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let tokenizer_dir = tokenizer_path.parent().unwrap_or(Path::new("."));
        let chat_template = ChatTemplate::find(&[tokenizer_dir, &args.model])?;

        let (config, model) = hf::load::<B::InnerBackend>(&args.model, &device)
            .with_context(|| format!("loading {}", args.model.display()))?;
        if tokenizer.vocab_size() > config.vocab_size {
            bail!(
                "{}: the tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                config.vocab_size
            );
        }
        let eos_ids = match args.eos_id {
            Some(id) => vec![id],
            None => super::generate::generation_config_eos(&args.model)?
                .or_else(|| tokenizer.eos_id())
                .into_iter()
                .collect(),
        };
        let name = args.served_model_name.clone().unwrap_or_else(|| {
            args.model
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "model".into())
        });
        let engine = Engine::start(
            model,
            device,
            EngineConfig {
                max_batch: args.max_batch,
                max_queue: args.max_queue,
                prefill_chunk: args.prefill_chunk,
                eos_ids,
            },
        );
        let server = Server::new(
            engine,
            tokenizer,
            chat_template,
            ServedModels {
                base: name.clone(),
                adapters: Vec::new(),
            },
            ModelLimits {
                max_seq_len: config.max_seq_len,
                vocab_size: config.vocab_size,
            },
            ServerConfig {
                api_key: args.api_key.clone(),
                request_timeout: Duration::from_secs_f64(args.request_timeout),
                ..ServerConfig::default()
            },
        );
        server.run(&args.host, args.port, args.http_threads, |addr| {
            // Tests and `cargo xtask bench serve` read this line for the port.
            println!("tessera serve: model `{name}` listening on http://{addr}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        })?;
        println!("tessera serve: stopped");
        Ok(())
    }
}
