//! `runs/<name>/`: the run directory is the user interface of a training run. Everything needed
//! to understand or resume a run lives here (see ARCHITECTURE.md).

use std::path::{Path, PathBuf};

/// Paths inside one run's folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run folder `root` (created on first write, not here).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The config as resolved (interpolated, overrides applied), written at start.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.yaml")
    }
    /// One JSON object per logged step.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// Resumes, skipped steps, spikes, corrupt checkpoints, stalls: one JSON object each.
    pub fn incidents(&self) -> PathBuf {
        self.root.join("incidents.jsonl")
    }
    /// TensorBoard event files.
    pub fn tensorboard(&self) -> PathBuf {
        self.root.join("tb")
    }
    /// Train and eval loss curves, redrawn at each eval.
    pub fn loss_plot(&self) -> PathBuf {
        self.root.join("loss.png")
    }
    /// Default checkpoint folder (when the config sets no `save_folder`).
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// Evaluation results (JSON and markdown).
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }
    /// The summary written at the end of the run.
    pub fn report(&self) -> PathBuf {
        self.root.join("report.md")
    }
    /// Where the watchdog dumps the state of a stalled run.
    pub fn stall_dump(&self) -> PathBuf {
        self.root.join("stall.json")
    }

    /// Creates the folder and its subfolders.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.tensorboard())?;
        std::fs::create_dir_all(self.eval())
    }
}
