//! `tessera preflight CONFIG`: a pass/fail checklist to read before spending a cluster on a run.
//!
//! The checks, in order (each later one needs what the earlier ones found; when a prerequisite
//! failed, a check is reported as skipped, never as passed):
//! 1. **config** — the YAML validates; the global batch splits over the devices;
//!    **parallelism** — this build can run the launch as configured: the backend is compiled
//!    in and has the devices, `fsdp_config` asks for nothing unimplemented (CPU offload),
//!    the devices split evenly over the nodes
//!    ([`parallel::parallel_check`]);
//! 2. **model** — the architecture resolves (fields or a pretrained `config.json`) and covers
//!    `max_seq_len`;
//! 3. **tokenizer** — `tokenizer.name` loads and its vocabulary fits `model.vocab_size`;
//! 4. **train data** — the loader opens as the trainer opens it, its first batch reads with
//!    every id inside the vocabulary, and an epoch holds at least one global batch;
//!    `max_duration` is converted to steps and epochs (warning above `max_epochs`);
//! 5. **eval data** — every eval loader opens;
//! 6. **save folder** — writable, with disk for the checkpoints the run keeps at once
//!    ([`checks::checkpoints_on_disk`], sizes from [`checks::checkpoint_bytes`]), and no other
//!    run's checkpoints in the way;
//! 7. **forward/backward** — the model is built with the run's weights and one real step
//!    (forward, backward, clip, update) runs on one real microbatch; its time gives the step
//!    time (× microbatches per step) and the host's peak RSS is read;
//! 8. **memory** — `plan::memory_estimate` for one microbatch against `--device-memory`, or the
//!    host RAM when the device is the host;
//! 9. **autoresume** — on, with a save interval inside the run;
//! 10. **checkpoint interval** — the expected work lost to failures (formula in [`checks`]).

pub mod checks;
pub mod parallel;
mod run;
pub mod system;
pub mod trial;

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use checks::FailureBudget;
pub use run::{preflight_file, run_preflight};

/// Name of the check that the YAML validates and the global batch splits over the devices.
pub const CONFIG: &str = "config";
/// Name of the check that this build can run the launch as configured.
pub const PARALLELISM: &str = "parallelism";
/// Name of the check that the architecture resolves and covers `max_seq_len`.
pub const MODEL: &str = "model";
/// Name of the check that `tokenizer.name` loads and fits `model.vocab_size`.
pub const TOKENIZER: &str = "tokenizer";
/// Name of the check that the train loader opens and its first batch reads.
pub const TRAIN_DATA: &str = "train data";
/// Name of the check that every eval loader opens.
pub const EVAL_DATA: &str = "eval data";
/// Name of the check that the save folder is writable and has disk for the checkpoints.
pub const SAVE_FOLDER: &str = "save folder";
/// Name of the check that runs one real training step.
pub const FORWARD_BACKWARD: &str = "forward/backward";
/// Name of the check that the memory estimate fits the device.
pub const MEMORY: &str = "memory";
/// Name of the check that autoresume is on with a save interval inside the run.
pub const AUTORESUME: &str = "autoresume";
/// Name of the check on the expected work lost to failures between checkpoints.
pub const CHECKPOINT_INTERVAL: &str = "checkpoint interval";

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Checked and fine.
    Pass,
    /// Runs, but something deserves a look.
    Warn,
    /// Would not run, or would run badly.
    Fail,
    /// Not checked, because something it needs failed or was switched off.
    Skip,
}

impl Status {
    /// The checklist mark.
    pub fn mark(&self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skip => "-",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// The check's name (one of the constants above, e.g. [`CONFIG`]).
    pub name: &'static str,
    /// Its verdict.
    pub status: Status,
    /// What was found, in one line.
    pub detail: String,
}

impl Check {
    /// A check line from its name, verdict and detail.
    pub fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
        }
    }

    fn skip(name: &'static str, why: &str) -> Self {
        Self::new(name, Status::Skip, format!("skipped: {why}"))
    }
}

/// Settings that come from the command line.
#[derive(Debug, Clone)]
pub struct PreflightOptions {
    /// The YAML file (its stem names the run when the config does not, as for `train`).
    pub config_path: Option<PathBuf>,
    /// The run folder (default `runs/<run_name>`), where the default save folder lives.
    pub run_dir: Option<PathBuf>,
    /// For the report: "cpu (flex)", "cuda:0"…
    pub device_label: String,
    /// Whether the device's memory is the host's RAM (CPU backends).
    pub device_is_host: bool,
    /// Memory of one device in bytes (`--device-memory`); default: host RAM on the host.
    pub device_memory: Option<u64>,
    /// Devices of the launch: splits the global batch, and scales the failure rate.
    pub world_size: usize,
    /// Nodes the devices are spread over (`HYBRID_SHARD` shards within each).
    pub nodes: usize,
    /// Devices of this kind one node has, when the backend says (`None`: the CPU, where ranks
    /// are processes and any number runs).
    pub devices_per_node: Option<usize>,
    /// Why the requested backend cannot run in this build (a cargo feature that is off).
    pub backend_missing: Option<String>,
    /// Step time on the target hardware, replacing the one measured here (seconds).
    pub step_time_s: Option<f64>,
    /// Expected failures per device per day (default 1/1000).
    pub failures_per_device_day: f64,
    /// Warn when checkpoints are further apart than this (default 1 h).
    pub max_save_interval_s: f64,
    /// Warn when one failure loses more than this share of the run (default 2 %).
    pub max_loss_per_failure: f64,
    /// Warn when `max_duration` repeats the data more than this many times (default 4).
    pub max_epochs: f64,
    /// Run the forward/backward check (it builds the model and takes one step).
    pub run_step: bool,
}

impl Default for PreflightOptions {
    fn default() -> Self {
        Self {
            config_path: None,
            run_dir: None,
            device_label: "cpu".into(),
            device_is_host: true,
            device_memory: None,
            world_size: 1,
            nodes: 1,
            devices_per_node: None,
            backend_missing: None,
            step_time_s: None,
            failures_per_device_day: 1e-3,
            max_save_interval_s: 3600.0,
            max_loss_per_failure: 0.02,
            max_epochs: 4.0,
            run_step: true,
        }
    }
}

/// The numbers behind the verdicts (absent where a check could not compute them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Facts {
    /// The model's parameter count.
    pub params: Option<u64>,
    /// Sequences in one epoch of the train data.
    pub sequences_per_epoch: Option<u64>,
    /// Tokens in one epoch of the train data.
    pub tokens_per_epoch: Option<u64>,
    /// Optimizer steps in one epoch.
    pub steps_per_epoch: Option<u64>,
    /// Optimizer steps in the run (`max_duration` in steps).
    pub max_steps: Option<u64>,
    /// Epochs the run covers (`max_duration` in epochs).
    pub epochs: Option<f64>,
    /// Steps between checkpoints (`save_interval` in steps).
    pub save_every_steps: Option<u64>,
    /// Estimated size of one checkpoint, in bytes (see [`checks::checkpoint_bytes`]).
    pub checkpoint_bytes: Option<u64>,
    /// Checkpoints on disk at the run's peak (see [`checks::checkpoints_on_disk`]).
    pub checkpoints_on_disk: Option<u64>,
    /// Free space in the save folder's file system, in bytes.
    pub free_disk_bytes: Option<u64>,
    /// The loss of the forward/backward check's step.
    pub first_loss: Option<f64>,
    /// Seconds per optimizer step (measured here, or given).
    pub step_time_s: Option<f64>,
    /// This process's peak resident memory after the forward/backward check, in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// One rank's estimated memory for one microbatch, in bytes.
    pub memory_estimate_bytes: Option<f64>,
    /// The memory the estimate is checked against (`--device-memory` or host RAM), in bytes.
    pub device_memory_bytes: Option<u64>,
    /// The expected work lost to failures, behind the checkpoint interval check.
    pub failure: Option<FailureBudget>,
}

/// The checklist.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PreflightReport {
    /// What was checked ("runs/x on cpu").
    pub subject: String,
    /// The checklist lines, in the order they ran.
    pub checks: Vec<Check>,
    /// The numbers behind them.
    pub facts: Facts,
}

impl PreflightReport {
    /// No check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The verdict of the check called `name`.
    pub fn status(&self, name: &str) -> Option<Status> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.status)
    }

    /// `✓ name  detail` lines and a summary.
    pub fn render(&self) -> String {
        let mut s = format!("preflight: {}\n", self.subject);
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        for c in &self.checks {
            let _ = writeln!(s, "  {} {:<width$}  {}", c.status.mark(), c.name, c.detail);
        }
        let count = |st| self.checks.iter().filter(|c| c.status == st).count();
        let _ = writeln!(
            s,
            "{}: {} passed, {} warnings, {} failed, {} skipped",
            if self.passed() { "ready" } else { "NOT ready" },
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        );
        s
    }

    /// `{"passed": …, "subject": …, "checks": [{name, status, detail}], "facts": {…}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("passed".into(), self.passed().into());
        }
        v
    }

    fn push(&mut self, c: Check) -> Status {
        let st = c.status;
        self.checks.push(c);
        st
    }
}

/// 1536 → `1.5 KiB`.
pub(crate) fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// 0.25 → `250 ms`, 75 → `1m 15s`, 3600 → `1h 00m`, 200 000 → `2.3 days`.
pub(crate) fn secs(s: f64) -> String {
    if !s.is_finite() {
        return "never".into();
    }
    if s < 1.0 {
        return format!("{:.0} ms", s * 1e3);
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let whole = s.round() as u64;
    if whole < 3_600 {
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else if whole < 172_800 {
        format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

#[cfg(test)]
mod run_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * (1u64 << 30) as f64), "3.0 GiB");
        assert_eq!(secs(0.25), "250 ms");
        assert_eq!(secs(75.0), "1m 15s");
        assert_eq!(secs(3600.0), "1h 00m");
        assert_eq!(secs(200_000.0), "2.3 days");
        assert_eq!(secs(f64::INFINITY), "never");
    }

    #[test]
    fn the_report_renders_marks_and_counts_and_fails_on_any_failure() {
        let mut r = PreflightReport {
            subject: "x on cpu".into(),
            ..Default::default()
        };
        r.push(Check::new(CONFIG, Status::Pass, "valid"));
        r.push(Check::new(TOKENIZER, Status::Warn, "hmm"));
        assert!(r.passed());
        r.push(Check::new(MEMORY, Status::Fail, "too big"));
        r.push(Check::skip(AUTORESUME, "off"));
        let text = r.render();
        assert!(
            text.contains("  ✓ config      valid\n") && text.contains("  ! tokenizer   hmm\n"),
            "{text}"
        );
        assert!(
            text.contains("  ✗ memory      too big\n")
                && text.contains("  - autoresume  skipped: off\n"),
            "{text}"
        );
        assert!(
            text.ends_with("NOT ready: 1 passed, 1 warnings, 1 failed, 1 skipped\n"),
            "{text}"
        );
        let j = r.to_json();
        assert_eq!(j["passed"], false);
        assert_eq!(j["checks"][2]["status"], "fail");
        assert_eq!(j["checks"][1]["name"], "tokenizer");
    }
}
