//! `cargo xtask lean-deps`: proves that a program outside the workspace can use `tessera-model`
//! and `tessera-data` with default features off without building tokio, object_store, parquet
//! or plotters, and measures what such a program compiles.
//!
//! It writes a throwaway crate in a temp folder that depends on the two crates by path (as a
//! fine-tuner's project would), copies the workspace's `Cargo.lock` beside it so versions match,
//! and lists its dependency graph with `cargo tree`. The check fails if any heavy crate appears.
//! `--build` also compiles the program into an empty target dir and times it (a cold build;
//! the crates.io sources in `~/.cargo/registry` are reused, since downloading is not building).
//!
//! `--workspace DIR` points at another checkout, for a before/after comparison.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util;

/// Crates a program using only model and data must not compile: the async runtime, the object
/// stores, the columnar format and the plotting stack.
const HEAVY: &[&str] = &[
    "tokio",
    "object_store",
    "parquet",
    "arrow",
    "plotters",
    "reqwest",
    "hyper",
];

#[derive(clap::Args)]
pub struct Args {
    /// The tessera checkout whose `model/` and `data/` the program depends on (default: this
    /// one).
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// Depend on `tessera-data` with its default features (remote, parquet…) instead.
    #[arg(long)]
    default_features: bool,
    /// Also build the program into an empty target dir and report the time.
    #[arg(long)]
    build: bool,
    /// Build with `--release` (with `--build`).
    #[arg(long)]
    release: bool,
    /// Report the figures without failing when a heavy crate is found (for an old checkout).
    #[arg(long)]
    report_only: bool,
}

/// The program: a model from a preset, and a token shard written and read back.
const MAIN_RS: &str = r#"use burn::backend::Flex;
use tessera_data::mds::{MdsDataset, MdsWriter, WriterOptions};

fn main() {
    let cfg = tessera_model::MptConfig::preset("tiny").expect("preset");
    let model = cfg.init::<Flex>(&Default::default(), 0);
    println!("{} parameters", cfg.num_params());
    drop(model);
    let dir = std::env::temp_dir().join(format!("lean-app-{}", std::process::id()));
    let mut w = MdsWriter::create(&dir, &[("tokens", "ndarray:int32")], WriterOptions::default())
        .expect("writer");
    w.write_tokens(&[1, 2, 3]).expect("write");
    w.finish().expect("finish");
    println!("{} samples", MdsDataset::open(&dir).expect("open").len());
    std::fs::remove_dir_all(&dir).ok();
}
"#;

pub fn run(args: Args) -> anyhow::Result<()> {
    let workspace = match &args.workspace {
        Some(w) => w
            .canonicalize()
            .with_context(|| format!("--workspace {}", w.display()))?,
        None => util::root(),
    };
    let work = std::env::temp_dir().join(format!("tessera-lean-deps-{}", std::process::id()));
    let result = check(&args, &workspace, &work);
    std::fs::remove_dir_all(&work).ok();
    result
}

fn check(args: &Args, workspace: &Path, work: &Path) -> anyhow::Result<()> {
    let app = work.join("app");
    write_app(&app, workspace, args.default_features)?;

    let tree = util::output(
        cargo(&app)
            .args(["tree", "--edges", "normal,build", "--prefix", "none"])
            .arg("--manifest-path")
            .arg(app.join("Cargo.toml")),
    )
    .context("cargo tree of the lean program")?;
    let crates = unique_crates(&tree);
    let heavy: Vec<&String> = crates
        .iter()
        .filter(|c| HEAVY.contains(&crate_name(c)))
        .collect();
    let features = if args.default_features {
        "default features"
    } else {
        "default-features = false"
    };
    println!(
        "tessera-model + tessera-data ({features}) from {}: {} crates (normal and build edges)",
        workspace.display(),
        crates.len()
    );
    if heavy.is_empty() {
        println!("none of {} is built", HEAVY.join(", "));
    } else {
        let names: Vec<&str> = heavy.iter().map(|c| c.as_str()).collect();
        println!("heavy crates built: {}", names.join(", "));
    }

    if args.build {
        let target = work.join("target");
        let mut build = cargo(&app);
        build
            .args(["build", "--quiet", "--manifest-path"])
            .arg(app.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target);
        if args.release {
            build.arg("--release");
        }
        let start = Instant::now();
        util::run(&mut build).context("building the lean program")?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "cold {} build: {secs:.0} s on {}",
            if args.release { "release" } else { "dev" },
            util::machine()
        );
    }

    if !heavy.is_empty() && !args.default_features && !args.report_only {
        bail!(
            "a program using tessera-model and tessera-data without default features builds {}",
            heavy
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `cargo` with this process's cargo, run from `dir` (outside the workspace, so that the
/// workspace's `.cargo/config.toml` and target dir do not apply).
fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir);
    cmd
}

/// Writes the program's crate: manifest, `main.rs`, and the workspace's lockfile.
fn write_app(app: &Path, workspace: &Path, default_features: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(app.join("src"))?;
    let manifest = format!(
        r#"[package]
name = "lean-app"
version = "0.0.0"
edition = "2024"
publish = false

# Not part of any enclosing workspace.
[workspace]

[dependencies]
tessera-model = {{ path = "{model}" }}
tessera-data = {{ path = "{data}", default-features = {default_features} }}
burn = {{ version = "=0.21.0", default-features = false, features = ["std", "flex"] }}
"#,
        model = workspace.join("model").display(),
        data = workspace.join("data").display(),
    );
    std::fs::write(app.join("Cargo.toml"), manifest)?;
    std::fs::write(app.join("src/main.rs"), MAIN_RS)?;
    let lock = workspace.join("Cargo.lock");
    std::fs::copy(&lock, app.join("Cargo.lock"))
        .with_context(|| format!("copying {}", lock.display()))?;
    Ok(())
}

/// The distinct `name vX.Y.Z` entries of a `cargo tree --prefix none` listing.
fn unique_crates(tree: &str) -> BTreeSet<String> {
    tree.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, version) = (parts.next()?, parts.next()?);
            version
                .starts_with('v')
                .then(|| format!("{name} {version}"))
        })
        .filter(|c| !c.starts_with("lean-app "))
        .collect()
}

fn crate_name(entry: &str) -> &str {
    entry.split(' ').next().unwrap_or(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proof the issue asks for, in the test suite: `cargo tree` of a program outside the
    /// workspace (no build, a few seconds), which fails if tokio, object_store, parquet,
    /// plotters… appear. `cargo xtask lean-deps --build` also compiles it.
    #[test]
    fn a_program_on_model_and_data_without_default_features_builds_no_heavy_crate() {
        let work = std::env::temp_dir().join(format!("tessera-lean-test-{}", std::process::id()));
        let args = Args {
            workspace: None,
            default_features: false,
            build: false,
            release: false,
            report_only: false,
        };
        let lean = check(&args, &util::root(), &work.join("lean"));
        // And the check can fail: with data's default features the heavy crates are there.
        let app = work.join("full/app");
        write_app(&app, &util::root(), true).unwrap();
        let tree =
            util::output(cargo(&app).args(["tree", "--edges", "normal,build", "--prefix", "none"]));
        std::fs::remove_dir_all(&work).ok();
        lean.unwrap();
        let crates = unique_crates(&tree.unwrap());
        for heavy in ["tokio", "object_store", "parquet"] {
            assert!(
                crates.iter().any(|c| crate_name(c) == heavy),
                "{heavy} with default features"
            );
        }
    }

    #[test]
    fn tree_lines_count_each_crate_version_once() {
        let tree = "lean-app v0.0.0 (/tmp/app)\ntokio v1.54.1\nserde v1.0.1\ntokio v1.54.1 (*)\n\
                    serde_derive v1.0.1 (proc-macro)\n\nhalf v2.7.1\nhalf v1.8.3\n";
        let crates = unique_crates(tree);
        assert_eq!(
            crates.into_iter().collect::<Vec<_>>(),
            vec![
                "half v1.8.3",
                "half v2.7.1",
                "serde v1.0.1",
                "serde_derive v1.0.1",
                "tokio v1.54.1"
            ]
        );
        assert_eq!(crate_name("tokio v1.54.1"), "tokio");
    }
}
