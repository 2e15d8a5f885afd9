//! What a run writes about itself in `runs/<name>/`: `metrics.jsonl`, TensorBoard events,
//! `loss.png`, `incidents.jsonl` and `report.md`, plus throughput and MFU.
//!
//! Each writer is independent of the loop: the loop hands them numbers. Line logs are appended
//! and flushed per line; whole files (`loss.png`, `report.md`) are written under a temporary name,
//! fsynced and renamed, so a reader never sees half a file.

pub mod jsonl;
pub mod mfu;
pub mod plot;
pub mod report;
pub mod tensorboard;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use jsonl::{
    EvalRecord, Incident, IncidentKind, JsonlWriter, MetricsRecord, TrainRecord, read_jsonl,
};
pub use mfu::{Accelerator, Throughput, measure_matmul_flops, mfu};
pub use plot::plot_loss;
pub use report::{RunFacts, render_report, write_report};
pub use tensorboard::EventWriter;

/// A metrics file that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record that could not be encoded.
    #[error("{path}: cannot encode record: {message}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// serde's message.
        message: String,
    },
    /// A line of a JSON-lines file that does not parse.
    #[error("{path}:{line}: {message}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// serde's message.
        message: String,
    },
    /// Drawing `loss.png` failed.
    #[error("{path}: cannot draw the plot: {message}")]
    Plot {
        /// The picture.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename, then
/// fsync of the folder so the rename itself is durable.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MetricsError::Io { path: p, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    fsync_dir(dir)
}

/// fsyncs a directory (a no-op where directories cannot be opened, e.g. on Windows).
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), MetricsError> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(dir).map_err(|source| MetricsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        d.sync_all().map_err(|source| MetricsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
