//! `cargo xtask slurm prepare --slices N -- ARGS…`: `tessera data prepare ARGS --slice i/N` as a
//! job array of N tasks, then `tessera data merge OUT` in a job that starts only when every
//! slice succeeded (`--dependency=afterok:<array>`; `--kill-on-invalid-dep=yes` cancels it when
//! a slice failed, instead of leaving it pending forever).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::script::sh_quote;

/// The two scripts' shared settings.
#[derive(Debug, Clone)]
pub struct PrepareJob {
    pub job_name: String,
    pub slices: u32,
    pub cpus_per_task: Option<u32>,
    pub partition: Option<String>,
    pub time: Option<String>,
    pub account: Option<String>,
    pub tessera: PathBuf,
    pub workdir: PathBuf,
    /// `tessera data prepare` arguments (without `--slice`).
    pub prepare_args: Vec<String>,
    /// The `--out` folder the slices are written into, and merged.
    pub out: PathBuf,
    /// Where the logs go (`%A` array id, `%a` task, `%j` job id).
    pub log_dir: PathBuf,
    pub rendered_by: String,
}

fn header(job: &PrepareJob, name: &str, log: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(s, "# Written by: {}", job.rendered_by);
    let _ = writeln!(s, "#SBATCH --job-name={}", sh_quote(name));
    let _ = writeln!(s, "#SBATCH --nodes=1");
    let _ = writeln!(s, "#SBATCH --ntasks=1");
    if let Some(c) = job.cpus_per_task {
        let _ = writeln!(s, "#SBATCH --cpus-per-task={c}");
    }
    for (flag, value) in [
        ("partition", &job.partition),
        ("time", &job.time),
        ("account", &job.account),
    ] {
        if let Some(v) = value {
            let _ = writeln!(s, "#SBATCH --{flag}={}", sh_quote(v));
        }
    }
    let _ = writeln!(
        s,
        "#SBATCH --output={}",
        sh_quote(&job.log_dir.join(log).display().to_string())
    );
    let _ = writeln!(
        s,
        "#SBATCH --chdir={}",
        sh_quote(&job.workdir.display().to_string())
    );
    s
}

/// The array script: task `i` prepares slice `i/N` (0-based, as `--slice` counts).
pub fn render_array(job: &PrepareJob) -> String {
    let mut s = header(
        job,
        &format!("{}-slices", job.job_name),
        "prepare-%A_%a.log",
    );
    let _ = writeln!(s, "#SBATCH --array=0-{}", job.slices - 1);
    let _ = writeln!(s, "set -euo pipefail");
    let args: Vec<String> = job.prepare_args.iter().map(|a| sh_quote(a)).collect();
    let _ = writeln!(
        s,
        "exec {} data prepare {} --slice \"$SLURM_ARRAY_TASK_ID/{}\"",
        sh_quote(&job.tessera.display().to_string()),
        args.join(" "),
        job.slices
    );
    s
}

/// The merge script (submitted with `--dependency=afterok:<array id>`).
pub fn render_merge(job: &PrepareJob) -> String {
    let mut s = header(job, &format!("{}-merge", job.job_name), "merge-%j.log");
    let _ = writeln!(s, "#SBATCH --kill-on-invalid-dep=yes");
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(
        s,
        "exec {} data merge {}",
        sh_quote(&job.tessera.display().to_string()),
        sh_quote(&job.out.display().to_string())
    );
    s
}

/// The `--out` value of `tessera data prepare` arguments.
pub fn out_dir(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--out" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--out=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Whether `args` already choose a slice (the array chooses it).
pub fn has_slice(args: &[String]) -> bool {
    args.iter()
        .any(|a| a == "--slice" || a.starts_with("--slice="))
}

/// `path` made absolute against `base` (scripts run in `--chdir`, and logs must be absolute).
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> PrepareJob {
        PrepareJob {
            job_name: "c4".into(),
            slices: 16,
            cpus_per_task: Some(32),
            partition: Some("cpu".into()),
            time: None,
            account: None,
            tessera: "/shared/bin/tessera".into(),
            workdir: "/shared/work".into(),
            prepare_args: [
                "--input",
                "c4/*.jsonl.zst",
                "--tokenizer",
                "tok.json",
                "--out",
                "data",
            ]
            .map(String::from)
            .to_vec(),
            out: "data".into(),
            log_dir: "/shared/work/logs".into(),
            rendered_by: "test".into(),
        }
    }

    #[test]
    fn the_array_runs_one_slice_per_task_and_merge_waits_for_all() {
        let a = render_array(&job());
        assert!(a.lines().any(|l| l == "#SBATCH --array=0-15"), "{a}");
        assert!(a.contains(
            "exec /shared/bin/tessera data prepare --input 'c4/*.jsonl.zst' --tokenizer tok.json --out data --slice \"$SLURM_ARRAY_TASK_ID/16\""
        ), "{a}");
        assert!(a.contains("#SBATCH --output=/shared/work/logs/prepare-%A_%a.log"));
        let m = render_merge(&job());
        assert!(
            m.lines()
                .any(|l| l == "exec /shared/bin/tessera data merge data"),
            "{m}"
        );
        assert!(m.lines().any(|l| l == "#SBATCH --kill-on-invalid-dep=yes"));
    }

    #[test]
    fn out_and_slice_flags_are_found() {
        let args: Vec<String> = ["--out=x", "--slice", "1/2"].map(String::from).to_vec();
        assert_eq!(out_dir(&args), Some(PathBuf::from("x")));
        assert!(has_slice(&args));
        assert_eq!(out_dir(&[]), None);
    }
}
