//! `runs/<name>/`: the run directory is the user interface of a training run. Everything needed
//! to understand or resume a run lives here (see ARCHITECTURE.md).

use std::path::{Path, PathBuf};

/// `run_name`, else `$RUN_NAME` (as llm-foundry), else the config file's stem, else "tessera".
/// `train` and `preflight` both name a run this way.
pub fn run_name(configured: Option<&str>, config_path: Option<&Path>) -> String {
    configured
        .map(str::to_string)
        .or_else(|| std::env::var("RUN_NAME").ok())
        .or_else(|| {
            config_path
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tessera".into())
}

/// Where checkpoints go: `save_folder` with `{run_name}` substituted, else the run folder's
/// `checkpoints/`.
#[derive(Debug, Clone, PartialEq)]
pub enum SaveFolder {
    /// A local folder: checkpoints are written straight into it.
    Local(PathBuf),
    /// An object-store URL (`s3://…`): checkpoints are staged in the run folder's
    /// `checkpoints/` and uploaded from there.
    Remote(String),
}

impl SaveFolder {
    /// The folder for `save_folder` (`configured`), with `{run_name}` substituted; without one,
    /// `dir`'s `checkpoints/`.
    pub fn resolve(configured: Option<&str>, run_name: &str, dir: &RunDir) -> Self {
        match configured.map(|f| f.replace("{run_name}", run_name)) {
            Some(f) if tessera_data::remote::is_remote(&f) => SaveFolder::Remote(f),
            Some(f) => SaveFolder::Local(PathBuf::from(f)),
            None => SaveFolder::Local(dir.checkpoints()),
        }
    }

    /// The local folder checkpoints are written to (the staging folder for a remote one).
    pub fn local(&self, dir: &RunDir) -> PathBuf {
        match self {
            SaveFolder::Local(p) => p.clone(),
            SaveFolder::Remote(_) => dir.checkpoints(),
        }
    }
}

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

    /// The folder given on the command line, else `runs/<run_name>`.
    pub fn for_run(given: Option<&Path>, run_name: &str) -> Self {
        Self::new(
            given
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("runs").join(run_name)),
        )
    }

    /// The run folder.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_folders_resolve_as_train_writes_them() {
        let dir = RunDir::for_run(None, "demo");
        assert_eq!(dir.root(), Path::new("runs/demo"));
        assert_eq!(
            RunDir::for_run(Some(Path::new("x")), "demo").root(),
            Path::new("x")
        );
        let local = SaveFolder::resolve(Some("/ck/{run_name}"), "demo", &dir);
        assert_eq!(local, SaveFolder::Local("/ck/demo".into()));
        assert_eq!(local.local(&dir), PathBuf::from("/ck/demo"));
        let remote = SaveFolder::resolve(Some("s3://b/{run_name}"), "demo", &dir);
        assert_eq!(remote, SaveFolder::Remote("s3://b/demo".into()));
        assert_eq!(remote.local(&dir), PathBuf::from("runs/demo/checkpoints"));
        assert_eq!(
            SaveFolder::resolve(None, "demo", &dir).local(&dir),
            PathBuf::from("runs/demo/checkpoints")
        );
    }

    #[test]
    fn the_configured_run_name_wins_then_the_config_file_stem() {
        assert_eq!(run_name(Some("a"), Some(Path::new("x/b.yaml"))), "a");
        if std::env::var_os("RUN_NAME").is_none() {
            assert_eq!(run_name(None, Some(Path::new("x/b.yaml"))), "b");
            assert_eq!(run_name(None, None), "tessera");
        }
    }
}
