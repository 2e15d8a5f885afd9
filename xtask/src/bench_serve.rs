//! `cargo xtask bench serve`: `tessera serve` under load, driven over HTTP like any client.
//!
//! One server process serves the quickstart model (`runs/quickstart`, trained first if it is
//! missing). Then, in one run, `--concurrency` levels (1, 4, 16 and 32 clients): each client
//! sends streamed greedy completions back to back; output tokens/s is every output token of
//! the level over its wall time, and time to first token (first chunk) and time per output
//! token (the gap between a request's first and last chunk over its tokens after the first)
//! are taken per request, reported as p50 and p99. The goal is ≥ 6× the one-client
//! throughput at 16 clients.
//!
//! With `--adapter NAME=DIR` (repeatable) the server also loads those LoRA adapters, and one
//! more 16-client level spreads its requests over them round-robin: the adapter mix's
//! throughput against the base model's (goal ≥ 0.8×).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{bench_env, markdown, util};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Concurrent clients of each level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    pub concurrency: Vec<usize>,
    /// Requests per client at each level (the 1-client level sends 4× as many, so every
    /// level runs a few seconds).
    #[arg(long, default_value_t = 3)]
    pub requests_per_client: usize,
    /// New tokens per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Model folder (default: the quickstart's last checkpoint, trained if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// tokenizer.json (default: the quickstart's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// LoRA adapters to serve as NAME=DIR; adds the adapter-mix level.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// A tessera binary to run instead of building the release one (for a quick check).
    #[arg(long)]
    pub bin: Option<PathBuf>,
}

impl Args {
    fn command_line(&self) -> String {
        let levels: Vec<String> = self.concurrency.iter().map(usize::to_string).collect();
        let mut s = format!(
            "cargo xtask bench serve --concurrency {} --requests-per-client {} --max-tokens {}",
            levels.join(","),
            self.requests_per_client,
            self.max_tokens
        );
        for a in &self.adapters {
            let _ = write!(s, " --adapter {a}");
        }
        if let Some(model) = &self.model {
            let _ = write!(s, " --model {}", model.display());
        }
        if let Some(bin) = &self.bin {
            let _ = write!(s, " --bin {}", bin.display());
        }
        s
    }
}

/// One request's timings as the client saw them.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ttft: f64,
    tpot: Option<f64>,
    tokens: usize,
}

/// One level's results.
#[derive(Debug)]
struct Level {
    label: String,
    clients: usize,
    requests: usize,
    tokens: usize,
    wall: f64,
    samples: Vec<Sample>,
}

impl Level {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.wall
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency: give positive client counts, e.g. 1,4,16,32");
    }
    if args.requests_per_client == 0 || args.max_tokens == 0 {
        bail!("--requests-per-client and --max-tokens must be at least 1");
    }
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => util::build_tessera(&[])?,
    };
    let (model, tokenizer) = model_and_tokenizer(&args, &bin)?;
    let load_before = bench_env::load_average();
    let max_batch = args.concurrency.iter().max().copied().unwrap_or(32).max(16);
    let mut server = Server::start(&bin, &model, &tokenizer, max_batch, &args.adapters)?;
    let url = Arc::new(format!("http://{}/v1/completions", server.addr));

    // Warm-up: first-touch allocation and the kernels' first runs.
    run_level(&url, "warm-up", 2, 2, args.max_tokens, &["base".into()])?;
    let mut levels = Vec::new();
    for &clients in &args.concurrency {
        let per_client = if clients == 1 {
            4 * args.requests_per_client
        } else {
            args.requests_per_client
        };
        let level = run_level(
            &url,
            &format!("{clients}"),
            clients,
            per_client,
            args.max_tokens,
            &["base".into()],
        )?;
        println!(
            "{clients} clients: {:.0} output tokens/s ({} requests, {} tokens, {:.1} s)",
            level.tokens_per_s(),
            level.requests,
            level.tokens,
            level.wall
        );
        levels.push(level);
    }
    let mix = if args.adapters.is_empty() {
        None
    } else {
        let names: Vec<String> = args
            .adapters
            .iter()
            .map(|a| a.split('=').next().unwrap_or(a).to_string())
            .collect();
        let level = run_level(
            &url,
            &format!("16, {} adapters", names.len()),
            16,
            args.requests_per_client,
            args.max_tokens,
            &names,
        )?;
        println!("adapter mix: {:.0} output tokens/s", level.tokens_per_s());
        Some(level)
    };
    server.stop();
    let load_after = bench_env::load_average();

    let body = report(
        &args,
        &model,
        max_batch,
        &levels,
        mix.as_ref(),
        load_before,
        load_after,
    );
    markdown::publish("serve", "Serving (`tessera serve`)", &body)
}

/// The quickstart's checkpoint and tokenizer, training it first if `runs/quickstart` has none.
fn model_and_tokenizer(args: &Args, bin: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let Some(model) = &args.model {
        let tokenizer = args
            .tokenizer
            .clone()
            .unwrap_or_else(|| model.join("tokenizer.json"));
        return Ok((model.clone(), tokenizer));
    }
    let run = util::root().join("runs/quickstart");
    let checkpoints = run.join("run/checkpoints");
    if !checkpoints.join("latest").exists() {
        println!(
            "no quickstart model in {}: training it (a few minutes)",
            run.display()
        );
        util::run(
            Command::new(bin)
                .arg("quickstart")
                .arg("--run-dir")
                .arg(&run),
        )?;
    }
    let latest = std::fs::read_to_string(checkpoints.join("latest"))
        .with_context(|| format!("reading {}", checkpoints.join("latest").display()))?;
    let model = checkpoints.join(latest.trim());
    let tokenizer = args
        .tokenizer
        .clone()
        .unwrap_or_else(|| run.join("tokenizer.json"));
    Ok((model, tokenizer))
}

/// A `tessera serve` process on 127.0.0.1 with a free port.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(
        bin: &Path,
        model: &Path,
        tokenizer: &Path,
        max_batch: usize,
        adapters: &[String],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--model")
            .arg(model)
            .arg("--tokenizer")
            .arg(tokenizer)
            .args(["--port", "0", "--served-model-name", "base"])
            .args(["--max-batch", &max_batch.to_string(), "--max-queue", "1024"]);
        for a in adapters {
            cmd.args(["--adapter", a]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("starting tessera serve")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.split("http://").nth(1).map(|a| a.trim().to_string()) else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("tessera serve did not start ({status}); it printed {line:?}");
        };
        Ok(Self { child, addr })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `clients` threads, each sending `per_client` streamed requests back to back, spread over
/// `models` round-robin.
fn run_level(
    url: &Arc<String>,
    label: &str,
    clients: usize,
    per_client: usize,
    max_tokens: usize,
    models: &[String],
) -> anyhow::Result<Level> {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            let models = models.to_vec();
            std::thread::spawn(move || -> anyhow::Result<Vec<Sample>> {
                (0..per_client)
                    .map(|k| {
                        let i = c * per_client + k;
                        let body = json!({
                            "model": models[i % models.len()],
                            "prompt": PROMPTS[i % PROMPTS.len()],
                            "max_tokens": max_tokens,
                            "temperature": 0,
                            "stream": true,
                            "stream_options": {"include_usage": true},
                        });
                        one_request(&url, &body)
                    })
                    .collect()
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in threads {
        samples.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(Level {
        label: label.to_string(),
        clients,
        requests: samples.len(),
        tokens: samples.iter().map(|s| s.tokens).sum(),
        wall,
        samples,
    })
}

/// One streamed completion, timed at each chunk's arrival.
fn one_request(url: &str, body: &Value) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let resp = ureq::post(url)
        .send(body.to_string())
        .with_context(|| format!("POST {url}"))?;
    let mut first = None;
    let mut last = None;
    let mut tokens = None;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data)?;
        if let Some(e) = chunk.get("error") {
            bail!("the server failed a request: {e}");
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = Some(n as usize);
            continue;
        }
        let now = start.elapsed().as_secs_f64();
        first.get_or_insert(now);
        last = Some(now);
    }
    let (Some(first), Some(last), Some(tokens)) = (first, last, tokens) else {
        bail!("a stream ended without tokens or usage");
    };
    Ok(Sample {
        ttft: first,
        tpot: (tokens > 1).then(|| (last - first) / (tokens - 1) as f64),
        tokens,
    })
}

/// Nearest-rank percentile (`q` in 0..=1) of unsorted values.
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn report(
    args: &Args,
    model: &Path,
    max_batch: usize,
    levels: &[Level],
    mix: Option<&Level>,
    load_before: Option<f64>,
    load_after: Option<f64>,
) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let what = match &args.model {
        None => format!(
            "the quickstart model (`{}`: d_model 256, 6 layers, vocab 4096, max_seq_len 128)",
            model.display()
        ),
        Some(m) => format!("`{}`", m.display()),
    };
    let binary = match &args.bin {
        None => "release build".to_string(),
        Some(b) => format!("binary `{}`", b.display()),
    };
    let mut body = format!(
        "`tessera serve` on {what}, CPU (flex), {binary}, `--max-batch {max_batch}`. \
         Clients send streamed greedy completions of up to {} new tokens back to back over HTTP \
         on 127.0.0.1; TTFT is the time to the first chunk, TPOT the mean gap between a \
         request's tokens after the first.\n\n\
         | clients | requests | output tokens/s | vs 1 client | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.max_tokens
    );
    let single = levels
        .iter()
        .find(|l| l.clients == 1)
        .map(Level::tokens_per_s);
    let ms = |s: f64| format!("{:.0} ms", s * 1000.0);
    let mut row = |l: &Level| {
        let ttft: Vec<f64> = l.samples.iter().map(|s| s.ttft).collect();
        let tpot: Vec<f64> = l.samples.iter().filter_map(|s| s.tpot).collect();
        let ratio = single.map_or("-".into(), |s| format!("{:.2}×", l.tokens_per_s() / s));
        let _ = writeln!(
            body,
            "| {} | {} | {:.0} | {ratio} | {} | {} | {:.1} ms | {:.1} ms |",
            l.label,
            l.requests,
            l.tokens_per_s(),
            ms(percentile(&ttft, 0.5)),
            ms(percentile(&ttft, 0.99)),
            percentile(&tpot, 0.5) * 1000.0,
            percentile(&tpot, 0.99) * 1000.0,
        );
    };
    for l in levels {
        row(l);
    }
    if let Some(m) = mix {
        row(m);
    }
    if let (Some(s), Some(l16)) = (single, levels.iter().find(|l| l.clients == 16)) {
        let r = l16.tokens_per_s() / s;
        let _ = write!(
            body,
            "\nGoal ≥ 6× the one-client throughput at 16 clients: **{}** ({r:.2}×).",
            if r >= 6.0 { "met" } else { "not met" }
        );
    }
    match (mix, levels.iter().find(|l| l.clients == 16)) {
        (Some(m), Some(base)) => {
            let r = m.tokens_per_s() / base.tokens_per_s();
            let _ = write!(
                body,
                " Adapter mix vs base at 16 clients, goal ≥ 0.8×: **{}** ({r:.2}×).",
                if r >= 0.8 { "met" } else { "not met" }
            );
        }
        _ => body.push_str(
            " The adapter-mix figure needs LoRA adapters: rerun with `--adapter NAME=DIR` ×4.",
        ),
    }
    let _ = write!(
        body,
        "\n\n{}\n\nMachine: {}. Date: {}. Command: `{}`.",
        bench_env::noise_note(cores, load_before, load_after),
        util::machine(),
        util::today(),
        args.command_line()
    );
    body
}

/// Prompts in the quickstart corpus's style (Python code and docs).
const PROMPTS: &[&str] = &[
    "def ",
    "import os\nimport sys\n\n",
    "class Parser:\n    def __init__(self",
    "The following example shows how to",
    "    return self.",
    "# Copyright (c) Python Software Foundation\n",
    "for i in range(",
    "def read_file(path):\n    with open(",
    "This module provides",
    "if __name__ == '__main__':\n",
    "    def test_",
    "raise ValueError(",
    "from collections import",
    "The :mod:`os` module",
    "try:\n    import",
    "async def ",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn the_report_states_the_goal_and_the_command() {
        let sample = |ttft| Sample {
            ttft,
            tpot: Some(0.01),
            tokens: 64,
        };
        let level = |clients: usize, wall: f64| Level {
            label: clients.to_string(),
            clients,
            requests: 4,
            tokens: 256,
            wall,
            samples: vec![sample(0.1); 4],
        };
        let args = Args {
            concurrency: vec![1, 16],
            requests_per_client: 3,
            max_tokens: 64,
            model: None,
            tokenizer: None,
            adapters: vec![],
            bin: None,
        };
        let md = report(
            &args,
            Path::new("m"),
            16,
            &[level(1, 8.0), level(16, 1.0)],
            None,
            None,
            None,
        );
        assert!(md.contains("| 16 | 4 | 256 | 8.00× |"), "{md}");
        assert!(md.contains("**met** (8.00×)"), "{md}");
        assert!(
            md.contains("cargo xtask bench serve --concurrency 1,16"),
            "{md}"
        );
    }
}
