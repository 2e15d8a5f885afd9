//! `cargo xtask bench gpu`: training throughput on one NVIDIA GPU, tessera against PyTorch, like
//! for like.
//!
//! For each of llm-foundry's MPT-125M, 350M and 1B shapes (ALiBi, no linear biases, tied
//! embedding, vocabulary 50368) at seq 2048:
//! - tessera: `tessera --device cuda train` of a generated YAML, a real step each time (the MDS
//!   loader, decoupled AdamW, gradient clipping at norm 1.0, `amp_bf16`), on the quickstart
//!   corpus repacked into 2048-token samples; tokens/s from the run's `timing.json`;
//! - PyTorch: transformers' `MptForCausalLM` (`xtask/python/torch_train_bench.py`) with bf16
//!   autocast, `scaled_dot_product_attention`, fused AdamW and the same clipping, on random ids.
//!
//! Each side gets the largest microbatch that fits (doubling from a per-model guess while it
//! fits, halving while it does not; an out-of-memory error is recognised, any other failure
//! stops the bench). MFU uses one FLOP count for both (PaLM's, as `MptConfig::flops_per_token`)
//! against the card's datasheet bf16 dense peak, not a measured one. Peak memory is the device's
//! `memory.used` (nvidia-smi, sampled every 200 ms) above what it was before the run, the same
//! yardstick for both processes.
//!
//! It needs a GPU and refuses to run without one. `xtask/scripts/gpu-check.sh` runs it on a lent
//! machine (a prebuilt `xtask` binary with `--tessera`, since that machine has no Rust).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench_data::json_line;
use crate::bench_env::Scratch;
use crate::bench_train::Timing;
use crate::{markdown, pyenv, util};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// A tessera binary built with `--features cuda` (default: build one, release).
    #[arg(long)]
    pub tessera: Option<PathBuf>,
    /// Which shapes: mpt-125m, mpt-350m, mpt-1b.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mpt-125m,mpt-350m,mpt-1b"
    )]
    pub models: Vec<String>,
    /// Tokens per sample.
    #[arg(long, default_value_t = 2048)]
    pub seq: usize,
    /// Timed optimizer steps per run.
    #[arg(long, default_value_t = 8)]
    pub steps: u64,
    /// Untimed steps before them (allocation, kernel compilation, autotuning).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// The card, for its datasheet peak: h100, h100-pcie, h200, a100 (default: nvidia-smi's name).
    #[arg(long)]
    pub gpu: Option<String>,
    /// The largest microbatch tried.
    #[arg(long, default_value_t = 64)]
    pub max_microbatch: usize,
    /// Seconds one run may take before it is killed (and the bench stops).
    #[arg(long, default_value_t = 900)]
    pub run_timeout: u64,
    /// Leave PyTorch out.
    #[arg(long)]
    pub no_torch: bool,
    /// Also write report.md and results.json here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl Args {
    fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask bench gpu --models {} --seq {} --steps {} --warmup {} --max-microbatch {}",
            self.models.join(","),
            self.seq,
            self.steps,
            self.warmup,
            self.max_microbatch
        );
        if self.no_torch {
            s.push_str(" --no-torch");
        }
        s
    }
}

/// One MPT shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model {
    pub name: &'static str,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    /// Where the microbatch search starts (a guess for an 80 GB card at seq 2048).
    pub first_microbatch: usize,
}

/// The released MPT vocabulary (padded to a multiple of 64).
pub const VOCAB: usize = 50368;

/// llm-foundry's `scripts/train/yamls/pretrain/mpt-{125m,350m,1b}.yaml` sizes.
pub const MODELS: [Model; 3] = [
    Model {
        name: "mpt-125m",
        d_model: 768,
        n_heads: 12,
        n_layers: 12,
        first_microbatch: 16,
    },
    Model {
        name: "mpt-350m",
        d_model: 1024,
        n_heads: 16,
        n_layers: 24,
        first_microbatch: 8,
    },
    Model {
        name: "mpt-1b",
        d_model: 2048,
        n_heads: 16,
        n_layers: 24,
        first_microbatch: 4,
    },
];

impl Model {
    fn by_name(name: &str) -> anyhow::Result<Model> {
        MODELS
            .iter()
            .find(|m| m.name == name)
            .copied()
            .with_context(|| {
                let names: Vec<_> = MODELS.iter().map(|m| m.name).collect();
                format!("--models: unknown {name:?} (one of {})", names.join(", "))
            })
    }

    /// Parameters as both sides build the model (tied embedding, ALiBi, no linear biases,
    /// LayerNorm weights only): `V d + L (12 d² + 2 d) + d`.
    pub fn params(&self) -> u64 {
        let (v, d, l) = (VOCAB as u64, self.d_model as u64, self.n_layers as u64);
        v * d + l * (12 * d * d + 2 * d) + d
    }

    /// Training FLOPs per token, PaLM's accounting as `MptConfig::flops_per_token`:
    /// `3 · (2 N + 4 L d S)` (the tied embedding counts: it is the unembedding matmul).
    pub fn flops_per_token(&self, seq: usize) -> f64 {
        let attn = 4.0 * self.n_layers as f64 * self.d_model as f64 * seq as f64;
        3.0 * (2.0 * self.params() as f64 + attn)
    }
}

/// A card's name for `tessera train --gpu` and its datasheet bf16 dense peak, FLOP/s (the
/// figures of `tessera_train::metrics::mfu`, composer's `SpeedMonitor` table).
pub fn datasheet_peak(card: &str) -> Option<(&'static str, f64)> {
    let c = card.to_ascii_lowercase();
    if c.contains("h200") {
        Some(("h200", 989.5e12))
    } else if c.contains("h100") && c.contains("pcie") {
        Some(("h100-pcie", 756.5e12))
    } else if c.contains("h100") && !c.contains("nvl") {
        Some(("h100", 989.5e12))
    } else if c.contains("a100") {
        Some(("a100", 312e12))
    } else {
        None
    }
}

/// nvidia-smi's `--format=csv,noheader,nounits` value of one GPU (MiB), if it is a number.
pub fn parse_mib(out: &str) -> Option<u64> {
    out.lines().next()?.trim().parse().ok()
}

/// Whether a failed run's stderr reports running out of device memory (cubecl's
/// `OutOfMemory`, the CUDA driver's, or PyTorch's wording).
pub fn is_oom(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("outofmemory") || s.contains("out of memory") || s.contains("out_of_memory")
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub tokens_per_s: f64,
    /// Device memory above the idle level, MiB (None if nvidia-smi gave no number).
    pub peak_mib: Option<u64>,
}

/// How one run ended: measured, or out of device memory.
#[derive(Clone, Debug, PartialEq)]
pub enum Trial {
    Fits(Measured),
    OutOfMemory,
}

/// The largest microbatch `trial` fits, with its measurement: from `first`, doubling while it
/// fits (up to `max`), else halving until it does. An error from `trial` stops the search.
pub fn largest_fit(
    first: usize,
    max: usize,
    mut trial: impl FnMut(usize) -> anyhow::Result<Trial>,
) -> anyhow::Result<(usize, Measured)> {
    let mut mb = first.clamp(1, max.max(1));
    match trial(mb)? {
        Trial::Fits(m) => {
            let mut best = (mb, m);
            while mb * 2 <= max {
                mb *= 2;
                match trial(mb)? {
                    Trial::Fits(m) => best = (mb, m),
                    Trial::OutOfMemory => break,
                }
            }
            Ok(best)
        }
        Trial::OutOfMemory => {
            while mb > 1 {
                mb /= 2;
                if let Trial::Fits(m) = trial(mb)? {
                    return Ok((mb, m));
                }
            }
            bail!("out of device memory even at microbatch 1")
        }
    }
}

/// `torch_train_bench.py`'s JSON line: a measurement, an out-of-memory notice or a skip.
pub fn torch_trial(stdout: &str) -> anyhow::Result<Trial> {
    let v: serde_json::Value = json_line(stdout)?;
    if v["oom"] == true {
        return Ok(Trial::OutOfMemory);
    }
    if let Some(why) = v["skipped"].as_str() {
        bail!("PyTorch did not run: {why} (pass --no-torch to leave it out)");
    }
    let tokens_per_s = v["tokens_per_s"]
        .as_f64()
        .context("torch_train_bench.py printed no tokens_per_s")?;
    Ok(Trial::Fits(Measured {
        tokens_per_s,
        peak_mib: None,
    }))
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub model: Model,
    pub framework: &'static str,
    pub microbatch: usize,
    pub measured: Measured,
}

/// The markdown table, with tessera/PyTorch ratios.
pub fn report(rows: &[Row], seq: usize, card: &str, peak: f64) -> String {
    let mut md = format!(
        "Training on one {card} (MFU against its datasheet bf16 dense peak, {:.1} TFLOP/s), \
         seq {seq}, bf16, the largest microbatch that fits.\n\n\
         | model | params | framework | microbatch | tokens/s | MFU | peak memory (GiB) |\n\
         |---|---|---|---|---|---|---|\n",
        peak / 1e12
    );
    for r in rows {
        let mfu = r.measured.tokens_per_s * r.model.flops_per_token(seq) / peak;
        let mem = r
            .measured
            .peak_mib
            .map_or("n/a".to_string(), |m| format!("{:.1}", m as f64 / 1024.0));
        let _ = writeln!(
            md,
            "| {} | {:.0}M | {} | {} | {:.0} | {:.1}% | {mem} |",
            r.model.name,
            r.model.params() as f64 / 1e6,
            r.framework,
            r.microbatch,
            r.measured.tokens_per_s,
            mfu * 100.0
        );
    }
    for m in MODELS {
        let side = |f: &str| rows.iter().find(|r| r.model == m && r.framework == f);
        if let (Some(t), Some(p)) = (side("tessera"), side("pytorch")) {
            let _ = write!(
                md,
                "\n{}: tessera at {:.2}× PyTorch's tokens/s.",
                m.name,
                t.measured.tokens_per_s / p.measured.tokens_per_s
            );
        }
    }
    md.push_str(
        "\n\nBoth sides: ALiBi, no linear biases, tied embedding, AdamW (betas 0.9/0.95, no weight \
         decay), gradient clipping at norm 1.0, bf16 autocast with f32 master weights. tessera trains \
         from its MDS loader; PyTorch (transformers' `MptForCausalLM` with its attention replaced by \
         `scaled_dot_product_attention`, fused AdamW) on random ids. Peak memory: the device's \
         `memory.used` above idle (nvidia-smi), the same measure for both.\n",
    );
    md
}

/// A `tessera train` YAML of `m` at `seq` with `microbatch`-sequence steps.
pub fn train_yaml(
    m: &Model,
    seq: usize,
    microbatch: usize,
    steps: u64,
    data: &Path,
    tokenizer: &Path,
) -> String {
    format!(
        r#"run_name: bench-gpu-{name}
seed: 17
max_seq_len: {seq}
model:
  name: mpt_causal_lm
  d_model: {d}
  n_heads: {h}
  n_layers: {l}
  expansion_ratio: 4
  max_seq_len: {seq}
  vocab_size: {VOCAB}
  no_bias: true
  attn_config:
    alibi: true
tokenizer:
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
  lr: 6.0e-4
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
eval_interval: 1000000ba
global_train_batch_size: {microbatch}
device_train_microbatch_size: {microbatch}
precision: amp_bf16
save_interval: 1000000ba
progress_bar: false
"#,
        name = m.name,
        d = m.d_model,
        h = m.n_heads,
        l = m.n_layers,
        tok = tokenizer.display(),
        data = data.display(),
    )
}

/// Runs `cmd` (stdout and stderr to `log` and `log.err`) for at most `limit`, sampling the
/// device's memory; returns whether it succeeded and the peak memory above `idle_mib`.
fn run_sampled(
    cmd: &mut Command,
    log: &Path,
    limit: Duration,
    idle_mib: Option<u64>,
) -> anyhow::Result<(bool, Option<u64>)> {
    let line = format!("{cmd:?}");
    let out = std::fs::File::create(log)?;
    let err = std::fs::File::create(log.with_extension("err"))?;
    let mut child = cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    let start = Instant::now();
    let mut peak: Option<u64> = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{line} ran past {} s: killed (see {})",
                limit.as_secs(),
                log.display()
            );
        }
        if let Some(used) = memory_used_mib() {
            peak = Some(peak.map_or(used, |p| p.max(used)));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let above_idle = peak.zip(idle_mib).map(|(p, idle)| p.saturating_sub(idle));
    Ok((status.success(), above_idle))
}

/// GPU 0's `memory.used`, MiB.
fn memory_used_mib() -> Option<u64> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            "-i",
            "0",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_mib(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

/// The name of GPU 0, or an error saying there is none.
fn gpu_name() -> anyhow::Result<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"])
        .output()
        .context("bench gpu needs an NVIDIA GPU: nvidia-smi could not be started")?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        bail!(
            "bench gpu needs an NVIDIA GPU: nvidia-smi failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(name)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let models = args
        .models
        .iter()
        .map(|n| Model::by_name(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let card = gpu_name()?;
    let gpu = args.gpu.clone().unwrap_or_else(|| card.clone());
    let (gpu_flag, peak) = datasheet_peak(&gpu).with_context(|| {
        format!("no datasheet peak for {gpu:?}: pass --gpu h100, h100-pcie, h200 or a100")
    })?;
    println!("{card}: datasheet bf16 peak {:.1} TFLOP/s", peak / 1e12);
    let bin = match &args.tessera {
        Some(b) => b.clone(),
        None => util::build_tessera(&["cuda"])?,
    };
    let scratch = Scratch::new("gpu")?;
    let limit = Duration::from_secs(args.run_timeout);

    // The data: the quickstart's corpus and tokenizer, repacked into `seq`-token samples.
    let qs = scratch.join("qs");
    util::run(
        Command::new(&bin)
            .args(["quickstart", "--steps", "1", "--run-dir"])
            .arg(&qs),
    )?;
    let data = scratch.join("data");
    util::run(
        Command::new(&bin)
            .args([
                "data",
                "prepare",
                "--seq-len",
                &args.seq.to_string(),
                "--input",
            ])
            .arg(qs.join("corpus.jsonl.zst"))
            .arg("--tokenizer")
            .arg(qs.join("tokenizer.json"))
            .arg("--out")
            .arg(&data)
            .args(["--val-fraction", "0.05"]),
    )?;

    let steps = args.warmup + args.steps;
    let mut rows = Vec::new();
    for m in &models {
        let tessera_trial = |mb: usize| -> anyhow::Result<Trial> {
            let dir = scratch.join(format!("{}-tessera-mb{mb}", m.name));
            std::fs::create_dir_all(&dir)?;
            let yaml = dir.join("config.yaml");
            let text = train_yaml(m, args.seq, mb, steps, &data, &qs.join("tokenizer.json"));
            std::fs::write(&yaml, text)?;
            let mut cmd = Command::new(&bin);
            cmd.args(["--device", "cuda", "train"])
                .arg(&yaml)
                .arg("--run-dir")
                .arg(dir.join("run"))
                .args(["--gpu", gpu_flag]);
            let log = dir.join("train.log");
            let (ok, peak_mib) = run_sampled(&mut cmd, &log, limit, memory_used_mib())?;
            if !ok {
                let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
                if is_oom(&err) {
                    println!("{} tessera microbatch {mb}: out of memory", m.name);
                    return Ok(Trial::OutOfMemory);
                }
                bail!(
                    "tessera train of {} at microbatch {mb} failed:\n{}",
                    m.name,
                    tail(&log.with_extension("err"), 20)
                );
            }
            let path = dir.join("run/timing.json");
            let timing: Timing = serde_json::from_str(
                &std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("parsing {}", path.display()))?;
            let tokens_per_s = timing
                .tokens_per_s(args.warmup as usize)
                .with_context(|| format!("{}: no timed steps", path.display()))?;
            println!(
                "{} tessera microbatch {mb}: {tokens_per_s:.0} tokens/s",
                m.name
            );
            Ok(Trial::Fits(Measured {
                tokens_per_s,
                peak_mib,
            }))
        };
        let (mb, measured) = largest_fit(m.first_microbatch, args.max_microbatch, tessera_trial)
            .with_context(|| format!("tessera, {}", m.name))?;
        rows.push(Row {
            model: *m,
            framework: "tessera",
            microbatch: mb,
            measured,
        });
        if args.no_torch {
            continue;
        }
        let torch_trial_at = |mb: usize| -> anyhow::Result<Trial> {
            let log = scratch.join(format!("{}-pytorch-mb{mb}.log", m.name));
            let mut cmd = Command::new(pyenv::system());
            cmd.arg(util::root().join("xtask/python/torch_train_bench.py"));
            for (flag, v) in [
                ("--d-model", m.d_model),
                ("--n-heads", m.n_heads),
                ("--n-layers", m.n_layers),
                ("--vocab", VOCAB),
                ("--seq", args.seq),
                ("--batch", mb),
                ("--microbatch", mb),
                ("--threads", 8),
                ("--warmup", args.warmup as usize),
                ("--steps", args.steps as usize),
            ] {
                cmd.arg(flag).arg(v.to_string());
            }
            cmd.args([
                "--device",
                "cuda",
                "--dtype",
                "bf16",
                "--attention",
                "sdpa",
                "--fused-adamw",
            ]);
            let (ok, peak_mib) = run_sampled(&mut cmd, &log, limit, memory_used_mib())?;
            if !ok {
                bail!(
                    "PyTorch at microbatch {mb} failed:\n{}",
                    tail(&log.with_extension("err"), 20)
                );
            }
            let trial = torch_trial(&std::fs::read_to_string(&log)?)?;
            Ok(match trial {
                Trial::Fits(m) => {
                    println!("pytorch microbatch {mb}: {:.0} tokens/s", m.tokens_per_s);
                    Trial::Fits(Measured { peak_mib, ..m })
                }
                oom => oom,
            })
        };
        let (mb, measured) = largest_fit(m.first_microbatch, args.max_microbatch, torch_trial_at)
            .with_context(|| format!("PyTorch, {}", m.name))?;
        rows.push(Row {
            model: *m,
            framework: "pytorch",
            microbatch: mb,
            measured,
        });
    }

    let mut body = report(&rows, args.seq, &card, peak);
    let _ = write!(
        body,
        "\nMachine: {card}. Date: {}. Command: `{}`.",
        util::today(),
        args.command_line()
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        util::write_atomic(&out.join("report.md"), body.as_bytes())?;
        let json: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "model": r.model.name, "framework": r.framework, "microbatch": r.microbatch,
                    "tokens_per_s": r.measured.tokens_per_s,
                    "mfu": r.measured.tokens_per_s * r.model.flops_per_token(args.seq) / peak,
                    "peak_memory_mib": r.measured.peak_mib, "gpu": card, "seq": args.seq,
                })
            })
            .collect();
        util::write_atomic(
            &out.join("results.json"),
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )?;
    }
    markdown::publish("gpu-train", "GPU training: tessera vs PyTorch", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_transformers() {
        // sum(p.numel()) of transformers' MptForCausalLM at these shapes (ALiBi, vocab 50368),
        // measured with transformers 4.57.6.
        let want = [123_636_480, 353_616_896, 1_311_213_568];
        for (m, want) in MODELS.iter().zip(want) {
            assert_eq!(m.params(), want, "{}", m.name);
        }
        // 6 N + 12 L d S.
        let m = MODELS[0];
        let want = 6.0 * 123_636_480.0 + 12.0 * 12.0 * 768.0 * 2048.0;
        assert!((m.flops_per_token(2048) - want).abs() < 1.0);
    }

    #[test]
    fn cards_get_their_datasheet_peaks() {
        assert_eq!(
            datasheet_peak("NVIDIA H100 80GB HBM3"),
            Some(("h100", 989.5e12))
        );
        assert_eq!(
            datasheet_peak("NVIDIA H100 PCIe"),
            Some(("h100-pcie", 756.5e12))
        );
        assert_eq!(datasheet_peak("NVIDIA H200"), Some(("h200", 989.5e12)));
        assert_eq!(
            datasheet_peak("NVIDIA A100-SXM4-80GB"),
            Some(("a100", 312e12))
        );
        assert_eq!(datasheet_peak("NVIDIA H100 NVL"), None);
        assert_eq!(datasheet_peak("Tesla T4"), None);
    }

    #[test]
    fn nvidia_smi_numbers_and_oom_messages_are_read() {
        assert_eq!(parse_mib("81559\n"), Some(81559));
        assert_eq!(parse_mib(" 12 \n34\n"), Some(12));
        assert_eq!(parse_mib("[N/A]\n"), None);
        assert_eq!(parse_mib(""), None);
        assert!(is_oom("Error: OutOfMemory { requested: 1073741824 }"));
        assert!(is_oom("CUDA_ERROR_OUT_OF_MEMORY"));
        assert!(is_oom(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        ));
        assert!(!is_oom("Error: reading config.yaml: no such file"));
    }

    #[test]
    fn torch_lines_are_measurements_oom_or_loud_skips() {
        let ok =
            "warming\n{\"framework\": \"pytorch\", \"tokens_per_s\": 123456.5, \"step_ms\": 3.0}\n";
        assert_eq!(
            torch_trial(ok).unwrap(),
            Trial::Fits(Measured {
                tokens_per_s: 123456.5,
                peak_mib: None
            })
        );
        let oom = "{\"oom\": true, \"microbatch\": 64, \"error\": \"CUDA out of memory\"}";
        assert_eq!(torch_trial(oom).unwrap(), Trial::OutOfMemory);
        let skipped = "{\"skipped\": \"torch/transformers not importable: no module torch\"}";
        let err = torch_trial(skipped).unwrap_err().to_string();
        assert!(
            err.contains("no module torch") && err.contains("--no-torch"),
            "{err}"
        );
        assert!(torch_trial("Traceback (most recent call last):").is_err());
    }

    fn fits_up_to(
        limit: usize,
        tried: &mut Vec<usize>,
    ) -> impl FnMut(usize) -> anyhow::Result<Trial> + '_ {
        move |mb| {
            tried.push(mb);
            Ok(if mb <= limit {
                Trial::Fits(Measured {
                    tokens_per_s: mb as f64,
                    peak_mib: Some(mb as u64),
                })
            } else {
                Trial::OutOfMemory
            })
        }
    }

    #[test]
    fn the_microbatch_search_finds_the_largest_power_of_two_that_fits() {
        let mut tried = Vec::new();
        let (mb, m) = largest_fit(16, 64, fits_up_to(40, &mut tried)).unwrap();
        assert_eq!((mb, m.tokens_per_s), (32, 32.0));
        assert_eq!(tried, [16, 32, 64]);
        let mut tried = Vec::new();
        assert_eq!(largest_fit(16, 64, fits_up_to(5, &mut tried)).unwrap().0, 4);
        assert_eq!(tried, [16, 8, 4]);
        let mut tried = Vec::new();
        assert_eq!(
            largest_fit(16, 64, fits_up_to(1000, &mut tried)).unwrap().0,
            64
        );
        let mut tried = Vec::new();
        let err = largest_fit(4, 64, fits_up_to(0, &mut tried)).unwrap_err();
        assert!(err.to_string().contains("microbatch 1"), "{err}");
        assert_eq!(tried, [4, 2, 1]);
        // Any other failure stops the search at once.
        let mut calls = 0;
        let failing = |_| -> anyhow::Result<Trial> {
            calls += 1;
            bail!("segfault")
        };
        assert!(largest_fit(8, 64, failing).is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_report_gives_mfu_memory_and_the_ratio() {
        let m = MODELS[0];
        let row = |framework, tokens_per_s, peak_mib| Row {
            model: m,
            framework,
            microbatch: 16,
            measured: Measured {
                tokens_per_s,
                peak_mib,
            },
        };
        // 400k tokens/s × 6.99e8 FLOP/token ÷ 989.5e12 = 28.3%.
        let rows = [
            row("tessera", 400_000.0, Some(40 * 1024)),
            row("pytorch", 320_000.0, None),
        ];
        let md = report(&rows, 2048, "NVIDIA H100 80GB HBM3", 989.5e12);
        let mfu = 400_000.0 * m.flops_per_token(2048) / 989.5e12 * 100.0;
        assert!(
            md.contains(&format!(
                "| mpt-125m | 124M | tessera | 16 | 400000 | {mfu:.1}% | 40.0 |"
            )),
            "{md}"
        );
        assert!(
            md.contains("| pytorch | 16 | 320000 |") && md.contains("| n/a |"),
            "{md}"
        );
        assert!(
            md.contains("mpt-125m: tessera at 1.25× PyTorch's tokens/s."),
            "{md}"
        );
        assert!(md.contains("989.5 TFLOP/s"), "{md}");
    }

    #[test]
    fn the_yaml_trains_in_bf16_with_clipping_at_the_microbatch() {
        let y = train_yaml(
            &MODELS[2],
            2048,
            4,
            11,
            Path::new("/d"),
            Path::new("/t.json"),
        );
        for want in [
            "d_model: 2048",
            "n_layers: 24",
            "vocab_size: 50368",
            "precision: amp_bf16",
            "clipping_threshold: 1.0",
            "global_train_batch_size: 4",
            "device_train_microbatch_size: 4",
            "max_duration: 11ba",
            "local: /d",
            "alibi: true",
        ] {
            assert!(y.contains(want), "{want} missing:\n{y}");
        }
    }
}

#[cfg(test)]
mod script_tests {
    use std::process::Command;

    /// `gpu-check.sh` parses, and on a machine whose `nvidia-smi` fails it stops at once with a
    /// message and a failing status (a fake `nvidia-smi` first on PATH stands in for no GPU).
    #[test]
    fn the_gpu_script_parses_and_fails_loudly_without_a_gpu() {
        let script = crate::util::root().join("xtask/scripts/gpu-check.sh");
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        assert!(syntax.success(), "bash -n {}", script.display());
        let dir = std::env::temp_dir().join(format!("tessera-gpu-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("nvidia-smi");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out_dir = dir.join("out");
        let out = Command::new("bash")
            .arg(&script)
            .arg("/bin/true")
            .arg(&out_dir)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("no NVIDIA GPU"), "{stderr}");
        assert!(!out_dir.exists(), "it wrote results without a GPU");
    }
}
