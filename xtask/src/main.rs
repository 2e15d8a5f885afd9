//! `cargo xtask`: benchmarks, launchers (local, Slurm, Kubernetes) and CI helpers.
//!
//! xtask drives the `tessera` binary as a process (of the library crates it links only
//! `tessera-fs`, for durable writes), so every figure it records is what a user of the CLI gets.

mod bench;
mod bench_data;
mod bench_data_report;
mod bench_dist;
mod bench_dist_report;
mod bench_env;
mod bench_eval;
mod bench_gpu;
mod bench_serve;
mod bench_train;
mod cold_build;
mod k8s;
mod launch;
mod lean_deps;
mod markdown;
mod pyenv;
mod run_paths;
mod slurm;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "tessera's benchmarks, launchers and CI helpers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a benchmark suite and record its table in BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        suite: bench::Suite,
    },
    /// Measure a cold CI run: a fresh clone and an empty target dir, timed end to end.
    ColdBuild(cold_build::Args),
    /// Start N ranks of a training job on this host and restart them together after a
    /// retryable failure: `cargo xtask launch --nproc 2 -- tessera train CONFIG`.
    Launch(launch::Args),
    /// Training and data-preparation jobs on Slurm: render, submit and follow.
    Slurm {
        #[command(subcommand)]
        command: slurm::Command,
    },
    /// Kubernetes manifests of a training job (a headless Service and an Indexed Job).
    K8s {
        #[command(subcommand)]
        command: k8s::Command,
    },
    /// Check that a program using tessera-model and tessera-data without default features
    /// builds no tokio, object_store, parquet or plotters (and count what it builds).
    LeanDeps(lean_deps::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench { suite } => bench::run(suite),
        Command::ColdBuild(args) => cold_build::run(args),
        Command::Launch(args) => std::process::exit(launch::run(args)?),
        Command::Slurm { command } => std::process::exit(slurm::run(command)?),
        Command::K8s { command } => std::process::exit(k8s::run(command)?),
        Command::LeanDeps(args) => lean_deps::run(args),
    }
}
