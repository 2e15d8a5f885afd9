//! `cargo xtask cold-build`: how long CI takes on a machine that has never built tessera.
//!
//! Clones the committed HEAD into a temporary folder and runs `.ci/run` there with an empty
//! `CARGO_TARGET_DIR` (and a fresh Python venv beside it), timing the whole run. The crates.io
//! download cache (`~/.cargo/registry`) is kept, since fetching sources is a small part of the
//! time; pass `--fresh-cargo-home` to start from nothing at all.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Also use an empty CARGO_HOME (re-downloads every crate).
    #[arg(long)]
    fresh_cargo_home: bool,
    /// Record the result in BENCHMARKS.md.
    #[arg(long)]
    record: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("tessera-cold-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let clone = work.join("tessera");
    let root = util::root();
    util::run(
        Command::new("git")
            .args(["clone", "--quiet"])
            .arg(&root)
            .arg(&clone),
    )?;
    let commit = util::output(Command::new("git").current_dir(&clone).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))?;

    let mut ci = Command::new(clone.join(".ci/run"));
    ci.current_dir(&clone)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .env("TESSERA_FIXTURES", root.join("../shared/fixtures"));
    if args.fresh_cargo_home {
        ci.env("CARGO_HOME", work.join("cargo-home"));
    }
    let start = Instant::now();
    util::run(&mut ci).context("cold CI run failed")?;
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    println!("cold CI run of {} took {minutes:.1} min", commit.trim());

    if args.record {
        let body = format!(
            "| commit | machine | date | cold `.ci/run` |\n|---|---|---|---|\n| {} | {} | {} | {minutes:.1} min |\n\nCommand: `cargo xtask cold-build --record`{}",
            commit.trim(),
            util::machine(),
            util::today(),
            if args.fresh_cargo_home {
                " --fresh-cargo-home"
            } else {
                ""
            },
        );
        crate::markdown::replace_section(&root.join("BENCHMARKS.md"), "cold-ci", "Cold CI", &body)?;
    }
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}
