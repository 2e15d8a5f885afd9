//! `cargo xtask slurm render|submit|prepare`: training jobs and data preparation on Slurm.
//!
//! - `render CONFIG --nodes N --gpus-per-node G …` writes the sbatch script (`script.rs`);
//! - `submit …` (the same flags) writes it, submits it, prints its log as it grows and ends with
//!   the job's final state (requeues included: a requeued job is followed through its restarts);
//! - `prepare --slices N -- PREPARE_ARGS…` runs `tessera data prepare` as a job array and
//!   `tessera data merge` after it (`prepare.rs`).
//!
//! A CPU-only job (`--gpus-per-node 0 --ntasks-per-node M`) is what the local test cluster runs
//! (`xtask/scripts/slurm-up.sh`).

mod follow;
mod prepare;
mod script;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::run_paths::TrainArgs;
use prepare::PrepareJob;
use script::TrainJob;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the sbatch script of a training job (default: <run folder>/slurm/train.sbatch).
    Render(JobArgs),
    /// Write the script, submit it, print its log until the job ends, exit with its state.
    Submit {
        #[command(flatten)]
        job: JobArgs,
        /// Stop following (and cancel the job) after this many seconds.
        #[arg(long)]
        timeout_s: Option<f64>,
    },
    /// `tessera data prepare … --slice i/N` as a job array, then `tessera data merge`.
    Prepare(PrepareArgs),
}

#[derive(clap::Args)]
pub struct JobArgs {
    /// The training YAML (a path every node can read).
    config: PathBuf,
    #[arg(long)]
    nodes: u32,
    /// GPUs per node, one rank each; 0 for a CPU job (then --ntasks-per-node).
    #[arg(long)]
    gpus_per_node: u32,
    /// Ranks per node of a CPU job (default: --gpus-per-node).
    #[arg(long)]
    ntasks_per_node: Option<u32>,
    #[arg(long)]
    partition: Option<String>,
    /// Wall-clock limit (Slurm's format, e.g. 3-00:00:00).
    #[arg(long)]
    time: Option<String>,
    #[arg(long)]
    account: Option<String>,
    /// Requeues after retryable failures.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    #[arg(long)]
    cpus_per_task: Option<u32>,
    /// The shortest hang window: no new metrics.jsonl line for max(this, 2 × median step) is a
    /// hang. It must exceed your longest evaluation or blocking save.
    #[arg(long, default_value_t = 300)]
    hang_floor_s: u64,
    /// Seconds an attempt may take to write its first metrics line.
    #[arg(long, default_value_t = 1800)]
    start_timeout_s: u64,
    #[arg(long, default_value_t = 29500)]
    master_port: u16,
    /// Slurm job name (default: the run name).
    #[arg(long)]
    job_name: Option<String>,
    /// Config overrides passed to `tessera train --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Run folder (default: runs/<run_name>, from the config).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The tessera binary as the nodes see it (default: the built one, made absolute).
    #[arg(long)]
    tessera_bin: Option<PathBuf>,
    /// `--device` for the ranks (default: cuda with GPUs, else cpu).
    #[arg(long)]
    device: Option<String>,
    /// Where to write the script.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Array tasks, one slice of the input each.
    #[arg(long)]
    slices: u32,
    #[arg(long)]
    partition: Option<String>,
    #[arg(long)]
    time: Option<String>,
    #[arg(long)]
    account: Option<String>,
    #[arg(long)]
    cpus_per_task: Option<u32>,
    #[arg(long, default_value = "prepare")]
    job_name: String,
    #[arg(long)]
    tessera_bin: Option<PathBuf>,
    /// Only write the two scripts (into <out>/slurm/).
    #[arg(long)]
    render_only: bool,
    /// Stop following (and cancel the jobs) after this many seconds.
    #[arg(long)]
    timeout_s: Option<f64>,
    /// `tessera data prepare` arguments, with --out.
    #[arg(last = true, required = true, num_args = 1..)]
    prepare_args: Vec<String>,
}

pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Render(args) => {
            let (job, file) = train_job(&args, "render")?;
            write_script(&file, &script::render(&job))?;
            println!("{}", file.display());
            Ok(0)
        }
        Command::Submit {
            job: args,
            timeout_s,
        } => {
            let (job, file) = train_job(&args, "submit")?;
            write_script(&file, &script::render(&job))?;
            let id = follow::submit(&file, &[])?;
            let log = PathBuf::from(job.log.display().to_string().replace("%j", &id));
            eprintln!(
                "slurm: submitted {} as job {id}; log {}",
                file.display(),
                log.display()
            );
            let states =
                follow::follow(&[(id.clone(), log)], timeout_s.map(Duration::from_secs_f64))?;
            finish(&[id], &states)
        }
        Command::Prepare(args) => prepare_jobs(args),
    }
}

/// The job's description and where its script goes.
fn train_job(a: &JobArgs, verb: &str) -> anyhow::Result<(TrainJob, PathBuf)> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let tasks_per_node = match (a.gpus_per_node, a.ntasks_per_node) {
        (0, None) => bail!("a CPU job (--gpus-per-node 0) needs --ntasks-per-node"),
        (0, Some(0)) => bail!("--ntasks-per-node must be at least 1"),
        (0, Some(n)) => n,
        (g, None) => g,
        (g, Some(n)) if n == g => n,
        (g, Some(n)) => {
            bail!("--ntasks-per-node {n} with --gpus-per-node {g}: a GPU job runs one rank per GPU")
        }
    };
    let workdir = std::env::current_dir().context("reading the current folder")?;
    let config = prepare::absolute(&workdir, &a.config);
    let mut train_args: Vec<String> = vec!["train".into(), config.display().to_string()];
    for o in &a.overrides {
        train_args.extend(["--set".into(), o.clone()]);
    }
    if let Some(d) = &a.run_dir {
        train_args.extend(["--run-dir".into(), d.display().to_string()]);
    }
    let paths = TrainArgs::parse(&train_args)?
        .expect("a train command")
        .paths()?;
    let run_dir = prepare::absolute(&workdir, &paths.run_dir);
    let save_folder = prepare::absolute(&workdir, &paths.save_folder);
    let device = a
        .device
        .clone()
        .unwrap_or_else(|| if a.gpus_per_node > 0 { "cuda" } else { "cpu" }.to_string());
    // The script names the run folder explicitly, so it and the ranks agree on it.
    let mut tessera_args = vec!["--device".to_string(), device, "train".into()];
    tessera_args.push(config.display().to_string());
    for o in &a.overrides {
        tessera_args.extend(["--set".into(), o.clone()]);
    }
    tessera_args.extend(["--run-dir".into(), run_dir.display().to_string()]);
    let job_name = a.job_name.clone().unwrap_or_else(|| {
        run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tessera".into())
    });
    let file = a
        .out
        .clone()
        .unwrap_or_else(|| run_dir.join("slurm/train.sbatch"));
    let job = TrainJob {
        job_name,
        nodes: a.nodes,
        gpus_per_node: a.gpus_per_node,
        tasks_per_node,
        cpus_per_task: a.cpus_per_task,
        partition: a.partition.clone(),
        time: a.time.clone(),
        account: a.account.clone(),
        max_restarts: a.max_restarts,
        hang_floor_s: a.hang_floor_s,
        start_timeout_s: a.start_timeout_s,
        master_port: a.master_port,
        tessera: tessera_bin(a.tessera_bin.as_deref())?,
        log: run_dir.join("slurm-%j.log"),
        run_dir,
        save_folder,
        workdir,
        tessera_args,
        rendered_by: format!("cargo xtask slurm {verb} {}", rendered_flags(a)),
    };
    Ok((job, file))
}

/// The flags as given, for the script's header.
fn rendered_flags(a: &JobArgs) -> String {
    let mut s = format!(
        "{} --nodes {} --gpus-per-node {}",
        a.config.display(),
        a.nodes,
        a.gpus_per_node
    );
    if let Some(n) = a.ntasks_per_node {
        s.push_str(&format!(" --ntasks-per-node {n}"));
    }
    for (flag, v) in [
        ("partition", &a.partition),
        ("time", &a.time),
        ("account", &a.account),
    ] {
        if let Some(v) = v {
            s.push_str(&format!(" --{flag} {v}"));
        }
    }
    if let Some(c) = a.cpus_per_task {
        s.push_str(&format!(" --cpus-per-task {c}"));
    }
    s.push_str(&format!(" --max-restarts {}", a.max_restarts));
    s
}

fn tessera_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(b) => b.to_path_buf(),
        None => crate::launch::resolve_program("tessera")?,
    };
    // A relative path would be resolved in the job's folder on another machine.
    Ok(bin.canonicalize().unwrap_or(bin))
}

fn write_script(file: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::util::write_atomic(file, text.as_bytes())
}

/// Prints the final states; 0 when every job completed.
fn finish(ids: &[String], states: &[follow::JobState]) -> anyhow::Result<i32> {
    let mut ok = true;
    for (id, s) in ids.iter().zip(states) {
        println!(
            "slurm: job {id} ended {} (exit code {})",
            s.state,
            s.exit_code.as_deref().unwrap_or("?")
        );
        ok &= s.state == "COMPLETED";
    }
    Ok(if ok { 0 } else { 1 })
}

fn prepare_jobs(a: PrepareArgs) -> anyhow::Result<i32> {
    if a.slices == 0 {
        bail!("--slices must be at least 1");
    }
    if prepare::has_slice(&a.prepare_args) {
        bail!("the job array chooses --slice; leave it out of the prepare arguments");
    }
    let out = prepare::out_dir(&a.prepare_args)
        .context("the prepare arguments need --out (the folder the slices are merged in)")?;
    let workdir = std::env::current_dir().context("reading the current folder")?;
    let scripts = prepare::absolute(&workdir, &out).join("slurm");
    let job = PrepareJob {
        job_name: a.job_name.clone(),
        slices: a.slices,
        cpus_per_task: a.cpus_per_task,
        partition: a.partition.clone(),
        time: a.time.clone(),
        account: a.account.clone(),
        tessera: tessera_bin(a.tessera_bin.as_deref())?,
        workdir,
        prepare_args: a.prepare_args.clone(),
        out,
        log_dir: scripts.clone(),
        rendered_by: format!(
            "cargo xtask slurm prepare --slices {} -- {}",
            a.slices,
            a.prepare_args.join(" ")
        ),
    };
    let array = scripts.join("prepare.sbatch");
    let merge = scripts.join("merge.sbatch");
    write_script(&array, &prepare::render_array(&job))?;
    write_script(&merge, &prepare::render_merge(&job))?;
    if a.render_only {
        println!("{}\n{}", array.display(), merge.display());
        return Ok(0);
    }
    let array_id = follow::submit(&array, &[])?;
    let merge_id = follow::submit(&merge, &[format!("--dependency=afterok:{array_id}")])?;
    eprintln!("slurm: slices as array job {array_id}, merge as job {merge_id} (afterok)");
    let logs = |pattern: &str| scripts.join(pattern);
    let states = follow::follow(
        &[
            (array_id.clone(), logs(&format!("prepare-{array_id}_0.log"))),
            (merge_id.clone(), logs(&format!("merge-{merge_id}.log"))),
        ],
        a.timeout_s.map(Duration::from_secs_f64),
    )?;
    finish(&[array_id, merge_id], &states)
}
