//! Where a run's wall time goes: the steps (forward, backward, update), data loading, evaluation
//! and checkpointing, accumulated by the loop and written to `timing.json` in the run folder.
//!
//! The budget is that data loading and checkpointing stay under 5% of the total; this
//! file is how `cargo xtask bench train` checks it, and the per-step durations are how it
//! measures steady-state tokens/s (after the first, slower steps).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::TrainError;

/// The phases of the loop that are timed.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// Building the run: model, optimizer, data streams, resume.
    Setup,
    /// Reading the next batch from the stream.
    Data,
    /// Forward, backward, clipping and the optimizer update.
    Step,
    /// Evaluation (loss and any hook).
    Eval,
    /// Copying state to the host and handing it to the checkpoint thread, and waiting for
    /// that thread at the end.
    Checkpoint,
}

/// Accumulated seconds per phase, plus each step's duration and tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    /// Seconds in [`Phase::Setup`].
    pub setup_s: f64,
    /// Seconds in [`Phase::Data`].
    pub data_s: f64,
    /// Seconds in [`Phase::Step`].
    pub step_s: f64,
    /// Seconds in [`Phase::Eval`].
    pub eval_s: f64,
    /// Seconds in [`Phase::Checkpoint`].
    pub checkpoint_s: f64,
    /// Wall time of the whole `train` call.
    pub total_s: f64,
    /// Seconds of each step of this process (the Step phase only), in order.
    pub step_times_s: Vec<f64>,
    /// Input tokens of each of those steps.
    pub step_tokens: Vec<u64>,
}

impl Timing {
    /// Adds the time since `since` to `phase`.
    pub fn add(&mut self, phase: Phase, since: Instant) {
        let s = since.elapsed().as_secs_f64();
        match phase {
            Phase::Setup => self.setup_s += s,
            Phase::Data => self.data_s += s,
            Phase::Step => self.step_s += s,
            Phase::Eval => self.eval_s += s,
            Phase::Checkpoint => self.checkpoint_s += s,
        }
    }

    /// Records one step: its duration (also added to the Step phase) and its tokens.
    pub fn step(&mut self, took: Duration, tokens: u64) {
        self.step_s += took.as_secs_f64();
        self.step_times_s.push(took.as_secs_f64());
        self.step_tokens.push(tokens);
    }

    /// Seconds not in any phase (logging, metrics files, the loss plot…).
    pub fn other_s(&self) -> f64 {
        (self.total_s - self.setup_s - self.data_s - self.step_s - self.eval_s - self.checkpoint_s)
            .max(0.0)
    }

    /// Data loading plus checkpointing, as a fraction of the total.
    pub fn io_fraction(&self) -> f64 {
        if self.total_s > 0.0 {
            (self.data_s + self.checkpoint_s) / self.total_s
        } else {
            0.0
        }
    }

    /// Tokens per second of the steps after the first `skip` (warm-up), or `None` if there are
    /// no such steps.
    pub fn steady_tokens_per_s(&self, skip: usize) -> Option<f64> {
        let secs: f64 = self.step_times_s.iter().skip(skip).sum();
        let tokens: u64 = self.step_tokens.iter().skip(skip).sum();
        (secs > 0.0).then(|| tokens as f64 / secs)
    }

    /// The file in a run folder.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("timing.json")
    }

    /// Writes `timing.json` (with `other_s` filled in) atomically.
    pub fn write(&self, run_dir: &Path) -> Result<(), TrainError> {
        let path = Self::path(run_dir);
        let mut v = serde_json::to_value(self).map_err(|e| TrainError::Config {
            key: "timing".into(),
            message: e.to_string(),
        })?;
        v["other_s"] = self.other_s().into();
        v["data_and_checkpoint_fraction"] = self.io_fraction().into();
        let bytes = serde_json::to_vec_pretty(&v).map_err(|e| TrainError::Config {
            key: "timing".into(),
            message: e.to_string(),
        })?;
        tessera_fs::atomic_write(&path, &bytes).map_err(|source| TrainError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_throughput_skips_warm_up_steps_and_fractions_add_up() {
        let mut t = Timing::default();
        t.step(Duration::from_secs(10), 100); // a slow first step
        t.step(Duration::from_secs(1), 100);
        t.step(Duration::from_secs(1), 100);
        t.data_s = 0.5;
        t.checkpoint_s = 0.5;
        t.total_s = 20.0;
        assert_eq!(t.steady_tokens_per_s(1), Some(100.0));
        assert_eq!(t.steady_tokens_per_s(0), Some(25.0));
        assert_eq!(t.steady_tokens_per_s(3), None);
        assert!((t.io_fraction() - 0.05).abs() < 1e-12);
        assert!((t.other_s() - 7.0).abs() < 1e-12);
    }

    #[test]
    fn timing_json_round_trips_with_the_derived_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Timing {
            total_s: 4.0,
            data_s: 1.0,
            ..Timing::default()
        };
        t.step(Duration::from_millis(1500), 64);
        t.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(Timing::path(dir.path())).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["other_s"], 1.5);
        assert_eq!(v["data_and_checkpoint_fraction"], 0.25);
        let back: Timing = serde_json::from_str(&text).unwrap();
        assert_eq!(back, t);
    }
}
