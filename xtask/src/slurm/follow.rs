//! Submitting a script with `sbatch` and following the job to its end: its state (from
//! `squeue`, then `scontrol show job`, then `sacct`) and its log, printed as it grows.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util;

/// `sbatch --parsable [extra] script` → the job id.
pub fn submit(script: &Path, extra: &[String]) -> anyhow::Result<String> {
    let out = util::output(
        Command::new("sbatch")
            .arg("--parsable")
            .args(extra)
            .arg(script),
    )
    .with_context(|| format!("submitting {}", script.display()))?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed {out:?}, expected a job id");
    }
    Ok(id)
}

/// A job's state as Slurm names it (`RUNNING`, `COMPLETED`, …) and, once known, its exit code
/// (`0:0`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub state: String,
    pub exit_code: Option<String>,
}

impl JobState {
    /// Whether the job will not run again (a requeued job passes through `REQUEUED` and
    /// `PENDING`, which are not final).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "OUT_OF_MEMORY"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "PREEMPTED"
                | "SPECIAL_EXIT"
        )
    }
}

/// Reads the state of job `id`; `None` when no Slurm tool knows it (yet).
pub fn state(id: &str) -> Option<JobState> {
    // scontrol keeps finished jobs for MinJobAge and gives the exit code; it needs no
    // accounting database.
    if let Ok(text) = util::output(Command::new("scontrol").args(["show", "job", id]))
        && let Some(s) = parse_scontrol(&text)
    {
        return Some(s);
    }
    if let Ok(text) = util::output(Command::new("sacct").args([
        "-n",
        "-X",
        "-P",
        "-j",
        id,
        "-o",
        "State,ExitCode",
    ])) && let Some(line) = text.lines().next()
    {
        let mut parts = line.split('|');
        let state = parts.next()?.split_whitespace().next()?.to_string();
        return Some(JobState {
            state,
            exit_code: parts.next().map(str::to_string),
        });
    }
    None
}

/// `JobState=…` and `ExitCode=…` from `scontrol show job`. An array job lists one record per
/// task: it is final when every task is, and then reports the first task that did not complete.
fn parse_scontrol(text: &str) -> Option<JobState> {
    let mut tasks = Vec::new();
    for word in text.split_whitespace() {
        if let Some(state) = word.strip_prefix("JobState=") {
            tasks.push(JobState {
                state: state.to_string(),
                exit_code: None,
            });
        } else if let (Some(code), Some(last)) = (word.strip_prefix("ExitCode="), tasks.last_mut())
        {
            last.exit_code = Some(code.to_string());
        }
    }
    let running = tasks.iter().find(|t| !t.is_final());
    let failed = tasks.iter().find(|t| t.state != "COMPLETED");
    running.or(failed).or(tasks.first()).cloned()
}

/// Follows the jobs in `ids` (id, log) until every one is final, printing the logs as they grow.
/// `timeout` bounds the wait (the jobs are cancelled when it passes).
pub fn follow(
    ids: &[(String, PathBuf)],
    timeout: Option<Duration>,
) -> anyhow::Result<Vec<JobState>> {
    let started = Instant::now();
    let mut offsets = vec![0u64; ids.len()];
    let mut last_state: Vec<Option<String>> = vec![None; ids.len()];
    loop {
        let mut states = Vec::new();
        for (i, (id, log)) in ids.iter().enumerate() {
            print_new(log, &mut offsets[i]);
            let s = state(id);
            let name = s.as_ref().map(|s| s.state.clone());
            if name != last_state[i] {
                eprintln!(
                    "slurm: job {id}: {}",
                    name.as_deref()
                        .unwrap_or("unknown to squeue/scontrol/sacct")
                );
                last_state[i] = name;
            }
            states.push(s);
        }
        if states
            .iter()
            .all(|s| s.as_ref().is_some_and(JobState::is_final))
        {
            for (i, (_, log)) in ids.iter().enumerate() {
                print_new(log, &mut offsets[i]);
            }
            return Ok(states.into_iter().flatten().collect());
        }
        if let Some(t) = timeout
            && started.elapsed() > t
        {
            for (id, _) in ids {
                let _ = util::run(Command::new("scancel").arg(id));
            }
            bail!(
                "the job(s) did not finish within {:.0} s; cancelled them",
                t.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Prints what was appended to `log` since `offset`.
fn print_new(log: &Path, offset: &mut u64) {
    let Ok(mut f) = std::fs::File::open(log) else {
        return;
    };
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
        *offset += buf.len() as u64;
        let _ = std::io::stdout().write_all(&buf);
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_state_and_exit_code_are_read() {
        let text = "JobId=7 JobName=t\n   JobState=COMPLETED Reason=None Dependency=(null)\n   \
                    Requeue=1 Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0\n";
        let s = parse_scontrol(text).unwrap();
        assert_eq!(s.state, "COMPLETED");
        assert_eq!(s.exit_code.as_deref(), Some("0:0"));
        assert!(s.is_final());
        let pending = JobState {
            state: "PENDING".into(),
            exit_code: None,
        };
        assert!(!pending.is_final());
        assert!(parse_scontrol("slurm_load_jobs error: Invalid job id specified").is_none());
        let array = "JobId=9 ArrayTaskId=0 JobState=COMPLETED ExitCode=0:0\n\
                     JobId=10 ArrayTaskId=1 JobState=RUNNING ExitCode=0:0\n";
        assert_eq!(parse_scontrol(array).unwrap().state, "RUNNING");
        let array = array
            .replace("RUNNING", "FAILED")
            .replace("=0:0\n", "=1:0\n");
        let s = parse_scontrol(&array).unwrap();
        assert_eq!(
            (s.state.as_str(), s.exit_code.as_deref()),
            ("FAILED", Some("1:0"))
        );
    }
}
