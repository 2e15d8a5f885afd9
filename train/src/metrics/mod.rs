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

/// Writes `bytes` to `path` atomically and durably (see `tessera_fs`).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
    tessera_fs::atomic_write(path, bytes).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })
}
