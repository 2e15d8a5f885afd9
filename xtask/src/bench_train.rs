//! `cargo xtask bench train`: CPU training tokens/s of real `tessera` runs against PyTorch
//! (transformers' `MptForCausalLM`, fp32, same threads, AdamW) on the same shapes, plus where
//! a run's time goes (steps, data, checkpoints, eval) and the measured matmul peak for MFU.
//!
//! Three shapes:
//! - the quickstart model (`tessera quickstart`: d_model 256, 6 layers, 4 heads, vocab 4096,
//!   ALiBi, no biases; batch 16 × seq 128), trained by the quickstart itself;
//! - the same model at seq 256 with the released MPT vocabulary (50432), batch 8 × 256: twice
//!   the attention span, and an unembedding that dominates the step (the shape of the GPU
//!   issue's CPU item); `tessera train` of the quickstart's YAML on the quickstart corpus
//!   repacked into 256-token samples;
//! - llm-foundry's `mpt-small-cpu` (d_model 16, 4 heads, 4 layers, expansion 5, vocab 50368,
//!   seq 128, global batch 256 in microbatches of 16), trained by `tessera train` from the YAML
//!   in the shared fixtures, overriding only the data and tokenizer paths and the length.
//!
//! tessera's tokens/s comes from the run's `timing.json` (the step phase only, after `warmup`
//! steps), PyTorch's from `xtask/python/torch_train_bench.py` (after as many warm-up steps).
//!
//! A shared machine's speed drifts by tens of percent from one minute to the next, so the two
//! sides run in `--rounds` alternating rounds (tessera, PyTorch, tessera, PyTorch, ... per
//! shape), and each side's figure is the median of its rounds; every round is shown.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::bench_data::{json_line, skipped};
use crate::bench_env::{self, Scratch};
use crate::{markdown, pyenv, util};

const SMALL_YAML: &str = "llmfoundry_yamls/pretrain/mpt-small-cpu.yaml";

#[derive(clap::Args, Clone, Copy)]
pub struct Args {
    /// Optimizer steps of the quickstart run (16 sequences each).
    #[arg(long, default_value_t = 12)]
    pub quickstart_steps: u64,
    /// Optimizer steps of the mpt-small-cpu run (256 sequences each, in 16 microbatches).
    #[arg(long, default_value_t = 3)]
    pub small_steps: u64,
    /// Optimizer steps of the seq-256 run (8 sequences of 256 tokens each).
    #[arg(long, default_value_t = 12)]
    pub seq256_steps: u64,
    /// Leading steps left out of tokens/s, on both sides (allocation, first-touch, caches).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Alternating rounds of both frameworks; each side reports its median round.
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// Threads for both frameworks (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Do not run the PyTorch side.
    #[arg(long)]
    pub no_torch: bool,
}

impl Args {
    fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask bench train --quickstart-steps {} --small-steps {} --seq256-steps {} --warmup {} --rounds {}",
            self.quickstart_steps, self.small_steps, self.seq256_steps, self.warmup, self.rounds
        );
        if let Some(t) = self.threads {
            let _ = write!(s, " --threads {t}");
        }
        if self.no_torch {
            s.push_str(" --no-torch");
        }
        s
    }
}

/// A training shape, as both sides run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub expansion: usize,
    pub vocab: usize,
    pub seq: usize,
    pub batch: usize,
    pub microbatch: usize,
    /// Why the two sides do not train the same thing, for a shape that is listed for reference
    /// only; such a shape's ratio is no part of the goal or a headline.
    pub unlike: Option<&'static str>,
}

const QUICKSTART: Shape = Shape {
    name: "quickstart",
    d_model: 256,
    n_heads: 4,
    n_layers: 6,
    expansion: 4,
    vocab: 4096,
    seq: 128,
    batch: 16,
    microbatch: 16,
    unlike: None,
};

const SEQ256: Shape = Shape {
    name: "quickstart-seq256",
    d_model: 256,
    n_heads: 4,
    n_layers: 6,
    expansion: 4,
    vocab: 50432,
    seq: 256,
    batch: 8,
    microbatch: 8,
    unlike: None,
};

const SMALL: Shape = Shape {
    name: "mpt-small-cpu",
    d_model: 16,
    n_heads: 4,
    n_layers: 4,
    expansion: 5,
    vocab: 50368,
    seq: 128,
    batch: 256,
    microbatch: 16,
    unlike: Some(
        "98% of its parameters are the embedding (50368 × 16), so its step is mostly the \
         unembedding; and transformers' MPT cannot follow its config, so the PyTorch model has \
         ALiBi and no biases where tessera's has learned positions and biases",
    ),
};

/// A run's `timing.json` (see `tessera_train::trainer::timing`).
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Timing {
    pub setup_s: f64,
    pub data_s: f64,
    pub step_s: f64,
    pub eval_s: f64,
    pub checkpoint_s: f64,
    pub total_s: f64,
    pub other_s: f64,
    pub step_times_s: Vec<f64>,
    pub step_tokens: Vec<u64>,
}

impl Timing {
    /// Tokens/s of the steps after the first `skip`.
    pub fn tokens_per_s(&self, skip: usize) -> Option<f64> {
        let secs: f64 = self.step_times_s.iter().skip(skip).sum();
        let tokens: u64 = self.step_tokens.iter().skip(skip).sum();
        (secs > 0.0).then(|| tokens as f64 / secs)
    }
}

/// `torch_train_bench.py`'s line.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct TorchRun {
    pub torch: String,
    pub transformers: String,
    pub threads: usize,
    pub params: u64,
    pub tokens_per_s: f64,
}

/// One shape's results.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub shape: Shape,
    pub params: u64,
    pub flops_per_token: f64,
    /// The first round's run.
    pub timing: Timing,
    /// The median of `tessera_rounds`.
    pub tessera_tokens_per_s: f64,
    /// PyTorch's result (its tokens/s the median of `torch_rounds`), or why there is none.
    pub torch: Result<TorchRun, String>,
    /// Each round's tokens/s, in run order.
    pub tessera_rounds: Vec<f64>,
    pub torch_rounds: Vec<f64>,
}

impl Row {
    /// Adds one round: `run` (a fresh measurement of this shape) and PyTorch's result.
    fn add_round(&mut self, run: Row, torch: Result<TorchRun, String>) {
        self.tessera_rounds.push(run.tessera_tokens_per_s);
        self.tessera_tokens_per_s = median(&self.tessera_rounds);
        match torch {
            Ok(t) => {
                self.torch_rounds.push(t.tokens_per_s);
                let tokens_per_s = median(&self.torch_rounds);
                self.torch = Ok(TorchRun {
                    tokens_per_s,
                    ..self.torch.clone().unwrap_or(t)
                });
            }
            // A later failure does not undo earlier rounds.
            Err(why) if self.torch_rounds.is_empty() => self.torch = Err(why),
            Err(_) => {}
        }
    }
}

/// The median (the mean of the middle two for an even count; 0 for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Everything the section shows.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub rows: Vec<Row>,
    /// The measured f32 matmul peak (1024³ products on flex), FLOP/s.
    pub peak_flops: f64,
    /// The CPU's peak from its datasheet quantities (MFU is stated against it).
    pub cpu_peak: Option<bench_env::CpuPeak>,
    pub threads: usize,
    pub warmup: u64,
    pub machine: String,
    pub date: String,
    pub command: String,
    pub noise: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if [args.quickstart_steps, args.small_steps, args.seq256_steps]
        .iter()
        .any(|&steps| steps <= args.warmup)
    {
        bail!(
            "each run needs more steps than --warmup {} (the warm-up steps are not timed)",
            args.warmup
        );
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let fixtures = bench_env::shared_fixtures(&[SMALL_YAML])?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = args.threads.unwrap_or(cores);
    let load_before = bench_env::load_average();
    let bin = util::build_tessera(&[])?;
    let scratch = Scratch::new("train")?;
    let tessera = |args: &[&str]| -> Command {
        let mut c = Command::new(&bin);
        // rayon (Flex's element-wise kernels and gemm) sizes its pool from this.
        c.env("RAYON_NUM_THREADS", threads.to_string()).args(args);
        c
    };

    let peak: serde_json::Value = json_line(&util::output(&mut tessera(&[
        "bench-step",
        "--peak-flops",
    ]))?)?;
    let peak_flops = peak["peak_flops"]
        .as_f64()
        .context("bench-step --peak-flops printed no peak_flops")?;
    println!("matmul peak: {:.1} GFLOP/s", peak_flops / 1e9);

    let torch_side = |shape: &Shape, steps: u64| {
        if args.no_torch {
            Err("--no-torch given".to_string())
        } else {
            torch(shape, threads, args.warmup, steps)
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..args.rounds {
        println!("round {} of {}", round + 1, args.rounds);
        // (a) The quickstart: tokenizer, data, then a real training run.
        let qs = scratch.join(format!("quickstart-{round}"));
        let steps = args.quickstart_steps.to_string();
        let qs_dir = qs.display().to_string();
        util::run(&mut tessera(&[
            "quickstart",
            "--run-dir",
            &qs_dir,
            "--steps",
            &steps,
        ]))?;
        let qs_row = measure(&QUICKSTART, &qs.join("run"), &tessera, args.warmup)?;
        let qs_torch = torch_side(&QUICKSTART, args.quickstart_steps);

        // (b) The quickstart model at seq 256 with a 50432-token vocabulary: the quickstart's
        // corpus and tokenizer, repacked into 256-token samples.
        let data256 = scratch.join(format!("data256-{round}"));
        let corpus = qs.join("corpus.jsonl.zst");
        let tokenizer = qs.join("tokenizer.json");
        let mut prep = tessera(&["data", "prepare", "--seq-len", "256"]);
        prep.arg("--input")
            .arg(&corpus)
            .arg("--tokenizer")
            .arg(&tokenizer)
            .arg("--out")
            .arg(&data256)
            .args(["--val-fraction", "0.05"]);
        util::run(&mut prep)?;
        let seq256 = scratch.join(format!("seq256-{round}"));
        let data = data256.display().to_string();
        let sets = [
            "max_seq_len=256".to_string(),
            "model.max_seq_len=256".to_string(),
            format!("model.vocab_size={}", SEQ256.vocab),
            format!("train_loader.dataset.local={data}"),
            "train_loader.dataset.max_seq_len=256".to_string(),
            format!("eval_loader.dataset.local={data}"),
            "eval_loader.dataset.max_seq_len=256".to_string(),
            format!("global_train_batch_size={}", SEQ256.batch),
            format!("device_train_microbatch_size={}", SEQ256.microbatch),
            format!("device_eval_batch_size={}", SEQ256.microbatch),
            format!("max_duration={}ba", args.seq256_steps),
            // One eval and one checkpoint, at the end (`measure` reads the model from it).
            format!("eval_interval={}ba", args.seq256_steps),
            format!("save_interval={}ba", args.seq256_steps),
            "progress_bar=false".to_string(),
            "run_name=bench-quickstart-seq256".to_string(),
        ];
        let mut cmd = tessera(&["train"]);
        cmd.arg(qs.join("quickstart.yaml"))
            .arg("--run-dir")
            .arg(&seq256);
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        util::run(&mut cmd)?;
        let seq256_row = measure(&SEQ256, &seq256, &tessera, args.warmup)?;
        let seq256_torch = torch_side(&SEQ256, args.seq256_steps);

        // (c) mpt-small-cpu from llm-foundry's YAML, on the quickstart's data and tokenizer.
        let small = scratch.join(format!("small-{round}"));
        let sets = [
            format!("variables.data_local={}", qs.join("data").display()),
            format!("tokenizer.name={}", qs.join("tokenizer.json").display()),
            format!("max_duration={}ba", args.small_steps),
            "run_name=bench-mpt-small-cpu".to_string(),
        ];
        let mut cmd = tessera(&["train"]);
        cmd.arg(fixtures.join(SMALL_YAML))
            .arg("--run-dir")
            .arg(&small);
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        util::run(&mut cmd)?;
        let small_row = measure(&SMALL, &small, &tessera, args.warmup)?;
        let small_torch = torch_side(&SMALL, args.small_steps);

        for (i, (run, torch)) in [
            (qs_row, qs_torch),
            (seq256_row, seq256_torch),
            (small_row, small_torch),
        ]
        .into_iter()
        .enumerate()
        {
            match &torch {
                Ok(t) => println!(
                    "{}: tessera {:.0} tokens/s, PyTorch {:.0}",
                    run.shape.name, run.tessera_tokens_per_s, t.tokens_per_s
                ),
                Err(why) => println!(
                    "{}: tessera {:.0} tokens/s; PyTorch skipped: {why}",
                    run.shape.name, run.tessera_tokens_per_s
                ),
            }
            match rows.get_mut(i) {
                Some(row) => row.add_round(run, torch),
                None => {
                    let mut row = Row {
                        tessera_rounds: Vec::new(),
                        torch: Err("not run".into()),
                        ..run.clone()
                    };
                    row.add_round(run, torch);
                    rows.push(row);
                }
            }
        }
    }
    let report = TrainReport {
        rows,
        peak_flops,
        cpu_peak: bench_env::CpuPeak::detect(threads),
        threads,
        warmup: args.warmup,
        machine: util::machine(),
        date: util::today(),
        command: args.command_line(),
        noise: bench_env::noise_note(cores, load_before, bench_env::load_average()),
    };
    markdown::publish("train", "CPU training", &report.to_markdown())
}

/// Reads a finished run's timing, and the model's size and FLOPs from its last checkpoint.
fn measure(
    shape: &Shape,
    run_dir: &Path,
    tessera: &dyn Fn(&[&str]) -> Command,
    warmup: u64,
) -> anyhow::Result<Row> {
    let path = run_dir.join("timing.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let timing: Timing =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let tokens_per_s = timing.tokens_per_s(warmup as usize).with_context(|| {
        format!(
            "{}: no timed steps after {warmup} warm-up steps",
            path.display()
        )
    })?;
    let ckpt = last_checkpoint(&run_dir.join("checkpoints"))?;
    let seq = shape.seq.to_string();
    let ckpt_s = ckpt.display().to_string();
    let info: serde_json::Value = json_line(&util::output(&mut tessera(&[
        "inspect",
        "--model",
        &ckpt_s,
        "--seq-len",
        &seq,
        "--json",
    ]))?)?;
    Ok(Row {
        shape: shape.clone(),
        params: info["n_params"].as_u64().context("inspect: n_params")?,
        flops_per_token: info["flops_per_token_train"]
            .as_f64()
            .context("inspect: flops_per_token_train")?,
        timing,
        tessera_tokens_per_s: tokens_per_s,
        torch: Err("not run".into()),
        tessera_rounds: vec![tokens_per_s],
        torch_rounds: Vec::new(),
    })
}

/// The newest `ba{N}` folder under `dir`.
fn last_checkpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        let n = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("ba"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n.filter(|_| p.join("config.json").exists())
            && best.as_ref().is_none_or(|(b, _)| n > *b)
        {
            best = Some((n, p));
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("no checkpoint in {}", dir.display()))
}

/// Runs the PyTorch script for `shape` (the error is the reason it did not), timing as many
/// steps as tessera's run (`steps` less the warm-up), at most 10, or 3 for an accumulating
/// shape (PyTorch is the slower side to wait for).
fn torch(shape: &Shape, threads: usize, warmup: u64, steps: u64) -> Result<TorchRun, String> {
    let python = pyenv::system();
    let script = util::root().join("xtask/python/torch_train_bench.py");
    let cap = if shape.batch == shape.microbatch {
        10
    } else {
        3
    };
    let steps = (steps - warmup).min(cap);
    let mut cmd = Command::new(&python);
    cmd.arg(&script);
    for (flag, v) in [
        ("--d-model", shape.d_model),
        ("--n-heads", shape.n_heads),
        ("--n-layers", shape.n_layers),
        ("--expansion", shape.expansion),
        ("--vocab", shape.vocab),
        ("--seq", shape.seq),
        ("--batch", shape.batch),
        ("--microbatch", shape.microbatch),
        ("--threads", threads),
        ("--warmup", warmup as usize),
        ("--steps", steps as usize),
    ] {
        cmd.arg(flag).arg(v.to_string());
    }
    let out = util::output(&mut cmd).map_err(|e| format!("{} failed: {e:#}", script.display()))?;
    if let Some(why) = skipped(&out) {
        return Err(why);
    }
    json_line(&out).map_err(|e| format!("{e:#}"))
}

impl TrainReport {
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Training tokens/s on the CPU, {} threads, fp32, tessera (flex backend, a real `tessera` run) \
             against PyTorch (transformers `MptForCausalLM`, `torch.optim.AdamW`, grad-norm clipping) on the \
             same shapes. Both exclude the first {} step(s).",
            self.threads, self.warmup,
        );
        match &self.cpu_peak {
            Some(p) => {
                let _ = writeln!(
                    md,
                    "MFU is model FLOP/s (6·N per token plus attention) over this CPU's peak: {}. \
                     The measured f32 matmul peak, 1024³ products on flex (`tessera bench-step \
                     --peak-flops`), is {:.1} GFLOP/s, {:.0}% of that.\n",
                    p.arithmetic(),
                    self.peak_flops / 1e9,
                    100.0 * self.peak_flops / p.flops()
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "MFU is not given: `/proc/cpuinfo` does not say this CPU's clock. The measured f32 \
                     matmul peak (1024³ products on flex) is {:.1} GFLOP/s.\n",
                    self.peak_flops / 1e9
                );
            }
        }
        md.push_str("| model | params | tokens/step (micro) | tessera tok/s | PyTorch tok/s | tessera / PyTorch | tessera MFU | PyTorch MFU |\n");
        md.push_str("|---|---|---|---|---|---|---|---|\n");
        let peak = self.cpu_peak.as_ref().map(|p| p.flops());
        for r in &self.rows {
            let s = &r.shape;
            let mfu = |tps: f64| match peak {
                Some(peak) => format!("{:.1}%", 100.0 * r.flops_per_token * tps / peak),
                None => "–".into(),
            };
            let (torch, ratio, torch_mfu) = match &r.torch {
                Ok(t) => (
                    format!("{:.0}", t.tokens_per_s),
                    match s.unlike {
                        None => format!("**{:.2}×**", r.tessera_tokens_per_s / t.tokens_per_s),
                        Some(_) => format!(
                            "{:.2}× (not like for like¹)",
                            r.tessera_tokens_per_s / t.tokens_per_s
                        ),
                    },
                    mfu(t.tokens_per_s),
                ),
                Err(_) => ("–".into(), "–".into(), "–".into()),
            };
            let _ = writeln!(
                md,
                "| {} (d {}, {} layers, {} heads, vocab {}) | {:.2}M | {} × {} ({}) | {:.0} | {torch} | {ratio} | {} | {torch_mfu} |",
                s.name,
                s.d_model,
                s.n_layers,
                s.n_heads,
                s.vocab,
                r.params as f64 / 1e6,
                s.batch,
                s.seq,
                s.microbatch,
                r.tessera_tokens_per_s,
                mfu(r.tessera_tokens_per_s),
            );
        }
        for r in self.rows.iter().filter(|r| r.torch.is_ok()) {
            if let Some(why) = r.shape.unlike {
                let _ = writeln!(
                    md,
                    "\n¹ {}: {why}. Listed for reference only; it counts towards no goal.",
                    r.shape.name
                );
            }
        }
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "\nEach figure is the median of {} alternating rounds (tessera, then PyTorch, per shape); \
             tokens/s of every round, in run order:\n",
            self.rows.first().map_or(0, |r| r.tessera_rounds.len())
        );
        for r in &self.rows {
            let torch = if r.torch_rounds.is_empty() {
                "–".to_string()
            } else {
                list(&r.torch_rounds)
            };
            let _ = writeln!(
                md,
                "- {}: tessera {}; PyTorch {torch}",
                r.shape.name,
                list(&r.tessera_rounds)
            );
        }
        md.push_str(
            "\nWhere each tessera run's wall time went (`timing.json` in the first round's run folder):\n\n",
        );
        md.push_str("| run | steps | total | step | data | checkpoint | eval | setup | other | data + checkpoint |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let t = &r.timing;
            let pct = |x: f64| {
                if t.total_s > 0.0 {
                    100.0 * x / t.total_s
                } else {
                    0.0
                }
            };
            let io = pct(t.data_s + t.checkpoint_s);
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} s | {:.1}% | {:.2}% | {:.2}% | {:.1}% | {:.1}% | {:.1}% | {:.2}% {} |",
                r.shape.name,
                t.step_times_s.len(),
                t.total_s,
                pct(t.step_s),
                pct(t.data_s),
                pct(t.checkpoint_s),
                pct(t.eval_s),
                pct(t.setup_s),
                pct(t.other_s),
                io,
                if io < 5.0 { "(< 5%)" } else { "(**over 5%**)" },
            );
        }
        md.push('\n');
        let versions = self.rows.iter().find_map(|r| r.torch.as_ref().ok());
        if let Some(t) = versions {
            let _ = writeln!(
                md,
                "PyTorch {}, transformers {}, {} threads.",
                t.torch, t.transformers, t.threads
            );
        }
        for r in &self.rows {
            if let Err(why) = &r.torch {
                let _ = writeln!(md, "PyTorch was not run for {}: {why}.", r.shape.name);
            }
        }
        let _ = writeln!(
            md,
            "The quickstart shapes are the same model on both sides (ALiBi, no biases). The data: the \
             quickstart's corpus and tokenizer for every tessera run (repacked into 256-token samples \
             for quickstart-seq256; token ids do not change the cost); random ids for PyTorch."
        );
        let _ = writeln!(md, "\n{}", self.goal_verdict());
        let _ = writeln!(
            md,
            "\nMachine: {}. Date: {}. Command: `{}`.\n{}",
            self.machine, self.date, self.command, self.noise
        );
        md
    }

    /// The goals, each said met or not from the rows: tessera ≥ 1.2× PyTorch on every
    /// like-for-like shape, and data loading plus checkpointing under 5% of each run.
    fn goal_verdict(&self) -> String {
        let ratios: Vec<(&str, f64)> = self
            .rows
            .iter()
            .filter(|r| r.shape.unlike.is_none())
            .filter_map(|r| {
                let t = r.torch.as_ref().ok()?;
                Some((r.shape.name, r.tessera_tokens_per_s / t.tokens_per_s))
            })
            .collect();
        let listed = ratios
            .iter()
            .map(|(n, x)| format!("{x:.2}× on {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let speed = if ratios.is_empty() {
            "**Goal ≥ 1.2× PyTorch (like for like): not measured** (PyTorch did not run)."
                .to_string()
        } else if ratios.iter().all(|(_, x)| *x >= 1.2) {
            format!("**Goal ≥ 1.2× PyTorch (like for like): met** ({listed}).")
        } else {
            format!("**Goal ≥ 1.2× PyTorch (like for like): not met** ({listed}).")
        };
        let worst = self
            .rows
            .iter()
            .map(|r| (r.timing.data_s + r.timing.checkpoint_s) / r.timing.total_s.max(1e-9))
            .fold(0.0, f64::max);
        let split = if worst < 0.05 {
            format!(
                "**Data loading + checkpointing under 5% of each run: met** (at most {:.2}%).",
                worst * 100.0
            )
        } else {
            format!(
                "**Data loading + checkpointing under 5% of each run: not met** ({:.2}% in the worst run).",
                worst * 100.0
            )
        };
        format!("{speed} {split}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            setup_s: 1.0,
            data_s: 0.2,
            step_s: 8.0,
            eval_s: 0.5,
            checkpoint_s: 0.1,
            total_s: 10.0,
            other_s: 0.2,
            step_times_s: vec![4.0, 2.0, 2.0],
            step_tokens: vec![2048, 2048, 2048],
        }
    }

    fn report(torch_tokens_per_s: f64) -> TrainReport {
        TrainReport {
            rows: vec![Row {
                shape: QUICKSTART,
                params: 5_770_000,
                flops_per_token: 3.6e7,
                timing: timing(),
                tessera_tokens_per_s: 1200.0,
                torch: Ok(TorchRun {
                    torch: "2.x".into(),
                    transformers: "4.x".into(),
                    threads: 2,
                    params: 5_770_000,
                    tokens_per_s: torch_tokens_per_s,
                }),
                tessera_rounds: vec![1200.0],
                torch_rounds: vec![torch_tokens_per_s],
            }],
            peak_flops: 1e11,
            cpu_peak: Some(bench_env::CpuPeak {
                cores: 2,
                ghz: 2.5,
                lanes: 16,
                isa: "AVX-512",
                fma_units: 2,
            }),
            threads: 2,
            warmup: 1,
            machine: "m".into(),
            date: "d".into(),
            command: "c".into(),
            noise: String::new(),
        }
    }

    #[test]
    fn the_verdict_follows_the_measured_ratio_and_split() {
        let met = report(900.0).goal_verdict();
        assert!(
            met.contains("1.2× PyTorch (like for like): met** (1.33× on quickstart)"),
            "{met}"
        );
        assert!(
            met.contains("under 5% of each run: met** (at most 3.00%)"),
            "{met}"
        );
        let not_met = report(1100.0).goal_verdict();
        assert!(
            not_met.contains("1.2× PyTorch (like for like): not met** (1.09× on quickstart)"),
            "{not_met}"
        );
        let mut slow_io = report(900.0);
        slow_io.rows[0].timing.checkpoint_s = 1.0;
        assert!(
            slow_io
                .goal_verdict()
                .contains("under 5% of each run: not met** (12.00%")
        );
    }

    #[test]
    fn rounds_report_each_sides_median() {
        let torch = |tps: f64| TorchRun {
            torch: "2".into(),
            transformers: "4".into(),
            threads: 2,
            params: 1,
            tokens_per_s: tps,
        };
        let mut row = report(900.0).rows.remove(0);
        for (tessera, pytorch) in [
            (1000.0, Err("broke".to_string())),
            (3000.0, Ok(torch(700.0))),
        ] {
            let run = Row {
                tessera_tokens_per_s: tessera,
                ..row.clone()
            };
            row.add_round(run, pytorch);
        }
        assert_eq!(row.tessera_rounds, vec![1200.0, 1000.0, 3000.0]);
        assert_eq!(row.tessera_tokens_per_s, 1200.0);
        // PyTorch's failed round is left out, not counted as zero.
        assert_eq!(row.torch_rounds, vec![900.0, 700.0]);
        assert_eq!(row.torch.as_ref().unwrap().tokens_per_s, 800.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn steady_tokens_per_s_skips_warm_up() {
        assert_eq!(timing().tokens_per_s(1), Some(1024.0));
        assert_eq!(timing().tokens_per_s(3), None);
    }

    #[test]
    fn report_shows_ratio_mfu_and_the_time_split() {
        let row = |torch: Result<TorchRun, String>| Row {
            shape: QUICKSTART,
            params: 5_770_496,
            flops_per_token: 4e7,
            timing: timing(),
            tessera_tokens_per_s: 1000.0,
            torch_rounds: torch.iter().map(|t| t.tokens_per_s).collect(),
            torch,
            tessera_rounds: vec![1000.0],
        };
        let report = TrainReport {
            rows: vec![
                row(Ok(TorchRun {
                    torch: "2.15".into(),
                    transformers: "4.57".into(),
                    threads: 2,
                    params: 5_770_496,
                    tokens_per_s: 800.0,
                })),
                row(Err("torch/transformers not importable".into())),
            ],
            peak_flops: 1e11,
            cpu_peak: Some(bench_env::CpuPeak {
                cores: 2,
                ghz: 2.5,
                lanes: 16,
                isa: "AVX-512",
                fma_units: 2,
            }),
            threads: 2,
            warmup: 1,
            machine: "AMD EPYC, 2 cores".into(),
            date: "2026-11-27".into(),
            command: "cargo xtask bench train".into(),
            noise: "noisy".into(),
        };
        let md = report.to_markdown();
        assert!(
            md.contains("| 1000 | 800 | **1.25×** | 12.5% | 10.0% |"),
            "{md}"
        );
        assert!(
            md.contains("| 80.0% | 2.00% | 1.00% | 5.0% | 10.0% | 2.0% | 3.00% (< 5%) |"),
            "{md}"
        );
        assert!(
            md.contains("PyTorch was not run for quickstart: torch/transformers not importable."),
            "{md}"
        );
        // The peak's arithmetic, and the measured matmul peak as a fraction of it.
        assert!(md.contains("= 320.0 GFLOP/s"), "{md}");
        assert!(md.contains("is 100.0 GFLOP/s, 31% of that"), "{md}");
    }

    #[test]
    fn a_shape_that_is_not_like_for_like_counts_towards_no_goal() {
        let mut r = report(900.0);
        let mut small = r.rows[0].clone();
        small.shape = SMALL;
        small.tessera_tokens_per_s = 9000.0; // 10× PyTorch, but unlike
        r.rows.push(small);
        let verdict = r.goal_verdict();
        assert!(
            verdict.contains("met** (1.33× on quickstart)."),
            "{verdict}"
        );
        assert!(!verdict.contains("mpt-small-cpu"), "{verdict}");
        let md = r.to_markdown();
        assert!(md.contains("10.00× (not like for like¹)"), "{md}");
        assert!(
            md.contains("¹ mpt-small-cpu: 98% of its parameters"),
            "{md}"
        );
        // A slower like-for-like shape still fails the goal whatever the unlike one does.
        r.rows[0].tessera_tokens_per_s = 1000.0;
        assert!(r.goal_verdict().contains("not met"), "{}", r.goal_verdict());
    }
}
