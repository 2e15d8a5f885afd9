//! `cargo xtask bench dist`: real multi-process CPU training of the quickstart-sized model on
//! 1, 2 and 4 ranks under `NO_SHARD`, `SHARD_GRAD_OP` and `FULL_SHARD`, and a LoRA adapter
//! under `FULL_SHARD` (the plan's frozen-base term): each rank's peak RSS against
//! `tessera plan --memory`, step time, `comm_s` from `metrics.jsonl`, and the scaling
//! efficiency of 2 ranks against 1 (the report's arithmetic is in [`crate::bench_dist_report`]).
//!
//! Ranks are `tessera train` processes started here with composer's environment (RANK,
//! WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT), as `cargo xtask launch` starts them;
//! each is reaped with `wait4`, whose `ru_maxrss` is that rank's peak RSS. A rank that outlives
//! the time limit is killed with the others, and the bench fails naming it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::bench_dist_report::{DistReport, Measured, Predicted, Row};
use crate::bench_env::{self, Scratch};
use crate::{markdown, util};

/// What one run trains: every weight under a sharding strategy, or a LoRA adapter of this rank
/// on the frozen base (`model.peft_config`, on Wqkv, out_proj, up_proj and down_proj).
#[derive(Clone, Copy, Debug)]
struct Run {
    strategy: &'static str,
    lora_rank: Option<usize>,
}

impl Run {
    const fn full(strategy: &'static str) -> Self {
        Run {
            strategy,
            lora_rank: None,
        }
    }

    /// The row's strategy column.
    fn label(&self) -> String {
        match self.lora_rank {
            Some(r) => format!("{} + LoRA r{r}", self.strategy),
            None => self.strategy.to_string(),
        }
    }

    /// The `model:` keys that add the adapter.
    fn peft_yaml(&self) -> String {
        match self.lora_rank {
            Some(r) => format!(
                "  peft_config:\n    peft_type: LORA\n    task_type: CAUSAL_LM\n    r: {r}\n    \
                 lora_alpha: {}\n    lora_dropout: 0.0\n    \
                 target_modules: [Wqkv, out_proj, up_proj, down_proj]\n",
                2 * r
            ),
            None => String::new(),
        }
    }
}

const RUNS: [Run; 4] = [
    Run::full("NO_SHARD"),
    Run::full("SHARD_GRAD_OP"),
    Run::full("FULL_SHARD"),
    Run {
        strategy: "FULL_SHARD",
        lora_rank: Some(8),
    },
];

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Optimizer steps per run (the first --warmup are not timed).
    #[arg(long, default_value_t = 6)]
    pub steps: u64,
    /// Untimed steps at the start of each run.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Rank counts, e.g. 1,2,4.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2, 4])]
    pub worlds: Vec<usize>,
    /// Model width.
    #[arg(long, default_value_t = 256)]
    pub d_model: usize,
    /// Model depth.
    #[arg(long, default_value_t = 6)]
    pub n_layers: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Global batch (sequences per step, over every rank).
    #[arg(long, default_value_t = 16)]
    pub global_batch: usize,
    /// Sequences per microbatch on a rank.
    #[arg(long, default_value_t = 4)]
    pub microbatch: usize,
    /// Use this tessera binary instead of building the release one (e.g. the dev build).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Seconds one run may take before its ranks are killed.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

impl Args {
    fn command_line(&self) -> String {
        let worlds: Vec<String> = self.worlds.iter().map(|w| w.to_string()).collect();
        format!(
            "cargo xtask bench dist --steps {} --warmup {} --worlds {} --d-model {} --n-layers {} --seq {} --global-batch {} --microbatch {}",
            self.steps,
            self.warmup,
            worlds.join(","),
            self.d_model,
            self.n_layers,
            self.seq,
            self.global_batch,
            self.microbatch
        )
    }
}

/// The model and data one run trains.
struct Shape {
    d_model: usize,
    n_heads: usize,
    n_layers: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.steps <= args.warmup {
        bail!(
            "--steps {} must exceed --warmup {}",
            args.steps,
            args.warmup
        );
    }
    for &w in &args.worlds {
        if w == 0 || !args.global_batch.is_multiple_of(w) {
            bail!(
                "--global-batch {} does not split over {w} ranks",
                args.global_batch
            );
        }
    }
    let uptime = util::output(&mut Command::new("uptime"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let load_before = bench_env::load_average();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let bin = match &args.binary {
        Some(b) => b.clone(),
        None => util::build_tessera(&[])?,
    };
    let scratch = Scratch::new("dist")?;
    // The quickstart's tokenizer and MDS data (one training step; its model is not used).
    let qs = scratch.join("quickstart");
    util::run(Command::new(&bin).args([
        "quickstart",
        "--run-dir",
        &qs.display().to_string(),
        "--steps",
        "1",
        "--vocab-size",
        "4096",
    ]))?;

    let model = Shape {
        d_model: args.d_model,
        n_heads: (args.d_model / 64).max(1),
        n_layers: args.n_layers,
    };
    let tiny = Shape {
        d_model: 16,
        n_heads: 1,
        n_layers: 1,
    };
    let mut rows = Vec::new();
    let mut params = 0;
    for &world in &args.worlds {
        let threads = (cores / world).max(1);
        // The fixed overhead at this world size: the tiny model's peak minus its prediction.
        let base_tag = format!("tiny-{world}");
        let no_shard = Run::full("NO_SHARD");
        let base_yaml = write_yaml(&scratch, &qs, &args, &tiny, no_shard, world, &base_tag)?;
        let base = measure(&bin, &base_yaml, world, threads, &args, &scratch, &base_tag)?;
        let base_plan = predict(&bin, &base_yaml, world)?;
        let overhead = base.max_peak() as f64 - base_plan.total;
        println!(
            "{world} rank(s): fixed overhead {:.0} MiB per rank (tiny model peak {:.0} MiB)",
            overhead / (1u64 << 20) as f64,
            base.max_peak() as f64 / (1u64 << 20) as f64
        );
        for run in RUNS {
            let strategy = run.label();
            let tag = format!("{strategy}-{world}").replace([' ', '+'], "");
            let yaml = write_yaml(&scratch, &qs, &args, &model, run, world, &tag)?;
            let predicted = predict(&bin, &yaml, world)?;
            if run.lora_rank.is_none() {
                params = plan_params(&bin, &yaml)?;
            }
            let mut measured = measure(&bin, &yaml, world, threads, &args, &scratch, &tag)?;
            measured.strategy = strategy.clone();
            println!(
                "{world} × {strategy}: training peak {:.0} MiB/rank (plan {:.0} + overhead {:.0}; {:.0} with the final save), {:.2} s/step, comm {:.3} s/step, {:.0} tokens/s",
                measured.max_peak() as f64 / (1u64 << 20) as f64,
                predicted.total / (1u64 << 20) as f64,
                overhead / (1u64 << 20) as f64,
                measured.max_peak_with_save() as f64 / (1u64 << 20) as f64,
                measured.step_s,
                measured.comm_s,
                measured.tokens_per_s
            );
            rows.push(Row {
                measured,
                predicted,
                overhead,
            });
        }
    }
    let report = DistReport {
        rows,
        shape: format!(
            "d_model {}, {} layers, {} heads, vocab 4096, seq {}, global batch {}, microbatch {}",
            model.d_model,
            model.n_layers,
            model.n_heads,
            args.seq,
            args.global_batch,
            args.microbatch
        ),
        params,
        machine: util::machine(),
        date: util::today(),
        command: args.command_line(),
        uptime,
        noise: bench_env::noise_note(cores, load_before, bench_env::load_average()),
        threads: format!("{cores} cores / ranks (RAYON_NUM_THREADS)"),
    };
    let md = report.to_markdown();
    markdown::publish("dist", "Distributed training on the CPU", &md)
}

/// The training YAML of one run.
fn write_yaml(
    scratch: &Scratch,
    qs: &Path,
    args: &Args,
    shape: &Shape,
    run: Run,
    world: usize,
    tag: &str,
) -> anyhow::Result<PathBuf> {
    let microbatch = args.microbatch.min(args.global_batch / world).max(1);
    let yaml = format!(
        r#"run_name: bench-dist
seed: 17
max_seq_len: {seq}
model:
  name: mpt_causal_lm
  d_model: {d}
  n_heads: {h}
  n_layers: {l}
  expansion_ratio: 4
  max_seq_len: {seq}
  vocab_size: 4096
  no_bias: true
  attn_config:
    alibi: true
{peft}tokenizer:
  name: {tok}
train_loader:
  name: text
  dataset:
    local: {data}
    split: train
    shuffle: true
    max_seq_len: {seq}
  drop_last: true
optimizer:
  name: decoupled_adamw
  lr: 1.0e-3
  betas: [0.9, 0.95]
  eps: 1.0e-8
  weight_decay: 0.0
scheduler:
  name: constant_with_warmup
  t_warmup: 0ba
gradient_clipping:
  clipping_type: norm
  clipping_threshold: 1.0
max_duration: {steps}ba
eval_interval: 1000ba
global_train_batch_size: {global}
device_train_microbatch_size: {microbatch}
precision: fp32
save_interval: 1000ba
progress_bar: false
save_overwrite: true
fsdp_config:
  sharding_strategy: {strategy}
  mixed_precision: FULL
"#,
        seq = args.seq,
        d = shape.d_model,
        h = shape.n_heads,
        l = shape.n_layers,
        tok = qs.join("tokenizer.json").display(),
        data = qs.join("data").display(),
        steps = args.steps,
        global = args.global_batch,
        strategy = run.strategy,
        peft = run.peft_yaml(),
    );
    let path = scratch.join(format!("{tag}.yaml"));
    util::write_atomic(&path, yaml.as_bytes())?;
    Ok(path)
}

/// `tessera plan --memory --config yaml --devices world --json`.
fn predict(bin: &Path, yaml: &Path, world: usize) -> anyhow::Result<Predicted> {
    let v = plan_json(bin, yaml, world)?;
    let f = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("plan --memory: no {k}"))
    };
    Ok(Predicted {
        total: f("total")?,
        state: f("master")? + f("optimizer")?,
        params: f("parameters")?,
    })
}

fn plan_params(bin: &Path, yaml: &Path) -> anyhow::Result<u64> {
    plan_json(bin, yaml, 1)?["params"]
        .as_u64()
        .context("plan --memory: no params")
}

fn plan_json(bin: &Path, yaml: &Path, world: usize) -> anyhow::Result<Value> {
    let out = util::output(Command::new(bin).args([
        "plan",
        "--memory",
        "--config",
        &yaml.display().to_string(),
        "--devices",
        &world.to_string(),
        "--json",
    ]))?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("parsing plan output: {out}"))
}

/// Runs `world` ranks of `tessera train yaml` and measures them.
fn measure(
    bin: &Path,
    yaml: &Path,
    world: usize,
    threads: usize,
    args: &Args,
    scratch: &Scratch,
    tag: &str,
) -> anyhow::Result<Measured> {
    let run_dir = scratch.join(format!("run-{tag}"));
    let port = free_port()?;
    let mut children = Vec::with_capacity(world);
    for rank in 0..world {
        let log = std::fs::File::create(scratch.join(format!("{tag}-rank{rank}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.arg("train")
            .arg(yaml)
            .arg("--run-dir")
            .arg(&run_dir)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("NODE_RANK", "0")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(log);
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                kill_all(&mut children);
                return Err(e).context("starting a rank");
            }
        }
    }
    let metrics = run_dir.join("metrics.jsonl");
    let marker = args.steps - 1;
    let (train_peaks, peaks) = reap(
        children,
        Duration::from_secs(args.timeout),
        || logged_step(&metrics, marker),
        |rank| {
            let log = scratch.join(format!("{tag}-rank{rank}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        },
    )?;
    let (step_s, tokens_per_s, comm_s) =
        timing(&run_dir.join("metrics.jsonl"), args.warmup).with_context(|| tag.to_string())?;
    Ok(Measured {
        world,
        strategy: yaml_strategy(yaml)?,
        train_peak: train_peaks,
        peak_rss: peaks,
        step_s,
        tokens_per_s,
        comm_s,
    })
}

fn yaml_strategy(yaml: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(yaml)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("sharding_strategy:"))
        .map(|s| s.trim().to_string())
        .context("no sharding_strategy")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Whether rank 0's `metrics.jsonl` has logged `step`.
fn logged_step(metrics: &Path, step: u64) -> bool {
    std::fs::read_to_string(metrics).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["kind"] == "train" && v["step"].as_u64() == Some(step))
    })
}

/// `VmHWM` of a live process, in bytes.
fn vm_hwm(pid: libc::pid_t) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Waits for every rank with `wait4`. Returns each rank's peak RSS during training (its
/// `VmHWM` when `trained()` first holds: the run has logged its next-to-last step, so the
/// final checkpoint save has not begun; for a rank already gone by then, its `ru_maxrss`) and
/// over the whole process (`ru_maxrss`, the save included), in bytes. After `limit` every rank still running is killed; a rank that failed
/// or was killed fails the bench with the end of its log.
fn reap(
    children: Vec<Child>,
    limit: Duration,
    trained: impl Fn() -> bool,
    log_tail: impl Fn(usize) -> String,
) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    let deadline = Instant::now() + limit;
    let pids: Vec<libc::pid_t> = children.iter().map(|c| c.id() as libc::pid_t).collect();
    let mut peaks: Vec<Option<u64>> = vec![None; pids.len()];
    let mut train_peaks: Option<Vec<Option<u64>>> = None;
    let mut failed = Vec::new();
    // `children` is kept only so that nothing else reaps them; they are waited for below.
    let _keep = children;
    while peaks.iter().any(Option::is_none) {
        if train_peaks.is_none() && trained() {
            train_peaks = Some(
                pids.iter()
                    .zip(&peaks)
                    .map(|(&pid, done)| done.or_else(|| vm_hwm(pid)))
                    .collect(),
            );
        }
        for (rank, &pid) in pids.iter().enumerate() {
            if peaks[rank].is_some() {
                continue;
            }
            let mut status = 0;
            // SAFETY: rusage is plain data written by the kernel; pid is our child.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == pid {
                // ru_maxrss is in KiB on Linux.
                peaks[rank] = Some(usage.ru_maxrss as u64 * 1024);
                let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                if !ok {
                    failed.push(format!(
                        "rank {rank} ended with status {status:#x}:\n{}",
                        log_tail(rank)
                    ));
                }
            } else if r < 0 {
                bail!(
                    "waiting for rank {rank}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        if Instant::now() > deadline {
            for (rank, &pid) in pids.iter().enumerate() {
                if peaks[rank].is_none() {
                    // SAFETY: signalling and reaping our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), 0);
                    }
                }
            }
            bail!("ranks did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    let peaks: Vec<u64> = peaks.into_iter().map(Option::unwrap_or_default).collect();
    let train_peaks =
        train_peaks.context("the ranks ended before the training-peak marker step was logged")?;
    // A rank that had already exited (a zombie has no VmHWM) when the marker was seen: its
    // whole-process peak, save included, is the only figure left, and an upper bound.
    let train_peaks = train_peaks
        .into_iter()
        .zip(&peaks)
        .enumerate()
        .map(|(rank, (train, &whole))| {
            train.unwrap_or_else(|| {
                println!(
                    "rank {rank} had exited before its training peak was read: using its peak \
                     with the final save ({} MiB)",
                    whole >> 20
                );
                whole
            })
        })
        .collect();
    Ok((train_peaks, peaks))
}

/// Seconds per step, tokens/s and mean `comm_s` over the steps after `warmup`, from rank 0's
/// `metrics.jsonl`.
fn timing(metrics: &Path, warmup: u64) -> anyhow::Result<(f64, f64, f64)> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let train: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .collect();
    let at = |step: u64| train.iter().find(|v| v["step"].as_u64() == Some(step));
    let last = train
        .iter()
        .filter_map(|v| v["step"].as_u64())
        .max()
        .context("no train records")?;
    let (Some(a), Some(b)) = (at(warmup), at(last)) else {
        bail!(
            "{}: steps {warmup} and {last} not both logged",
            metrics.display()
        );
    };
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let steps = (last - warmup) as f64;
    let secs = num(b, "elapsed_s") - num(a, "elapsed_s");
    let tokens = num(b, "tokens") - num(a, "tokens");
    let comm: Vec<f64> = train
        .iter()
        .filter(|v| v["step"].as_u64().is_some_and(|s| s > warmup))
        .map(|v| v["comm_s"].as_f64().unwrap_or(0.0))
        .collect();
    let comm_s = comm.iter().sum::<f64>() / comm.len().max(1) as f64;
    Ok((secs / steps, tokens / secs, comm_s))
}
