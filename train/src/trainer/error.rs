//! Why a run could not start or had to stop, and whether running it again could help.

use std::path::PathBuf;

use tessera_data::stream::StreamError;

use crate::checkpoint::CheckpointError;
use crate::metrics::MetricsError;

use super::state::TrainState;

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    #[error("{key}: {source}")]
    Data {
        key: String,
        #[source]
        source: Box<StreamError>,
    },
    #[error(transparent)]
    Finetune(Box<crate::finetune::FinetuneError>),
    /// A transformers folder could not be read or written; `key` says which (a config key,
    /// or `checkpoint`).
    #[error("{key}: {source}")]
    Model {
        key: &'static str,
        #[source]
        source: Box<tessera_model::hf::HfError>,
    },
    /// The LoRA adapter (`model.peft_config` or `model.pretrained_lora_id_or_path`) does not
    /// fit the model, or its folder is unreadable.
    #[error("{key}: {source}")]
    Adapter {
        key: &'static str,
        #[source]
        source: Box<tessera_model::lora::LoraError>,
    },
    /// A tensor could not be copied back from the device.
    #[error("reading {what} back from the device: {detail}")]
    DeviceRead { what: String, detail: String },
    /// A checkpoint file could not be encoded.
    #[error("encoding {file}: {source}")]
    Encode {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint's `state.json` is not valid.
    #[error("{path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint written by a tessera with another `state.json` format.
    #[error(
        "{path}: state version {found} is not {} (written by another tessera; older checkpoints \
         kept the optimizer in burn's record format, which this one does not read)",
        TrainState::VERSION
    )]
    StateVersion { path: PathBuf, found: u32 },
    /// A checkpoint's optimizer state is not the configured optimizer's.
    #[error(
        "{path}: the optimizer state holds {saved:?}, but optimizer {optimizer} keeps {keeps:?}"
    )]
    OptimizerMismatch {
        path: PathBuf,
        saved: Vec<String>,
        optimizer: &'static str,
        keeps: Vec<String>,
    },
    #[error(transparent)]
    Store(Box<CheckpointError>),
    #[error(transparent)]
    Metrics(Box<MetricsError>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stopped at step {step}: {reason}")]
    Aborted { step: u64, reason: String },
    /// The guards gave up on a diverging run (see [`crate::guard`]).
    #[error("diverged at step {step}: {detail}")]
    Diverged { step: u64, detail: String },
    /// The watchdog saw no progress (a hung data source, collective or device).
    #[error(
        "stalled: no step finished for {stalled_for_s:.0} s (guards.watchdog.timeout_s {timeout_s:.0}); last step {last_step}"
    )]
    Stalled {
        last_step: String,
        stalled_for_s: f64,
        timeout_s: f64,
    },
    #[error(transparent)]
    Lock(#[from] crate::run_lock::LockError),
    /// A collective or the rendezvous failed (a lost, hung or mismatched rank).
    #[error(transparent)]
    Dist(tessera_dist::DistError),
    #[error(
        "{key}: token id {token} is outside the model's vocabulary ({vocab} ids); the data was \
         tokenized with a larger vocabulary than `model.vocab_size`"
    )]
    TokenOutOfRange {
        key: String,
        token: u32,
        vocab: usize,
    },
}

// The sources are boxed to keep `Result<_, TrainError>` small on the hot path.
impl From<crate::finetune::FinetuneError> for TrainError {
    fn from(e: crate::finetune::FinetuneError) -> Self {
        TrainError::Finetune(Box::new(e))
    }
}
impl From<CheckpointError> for TrainError {
    fn from(e: CheckpointError) -> Self {
        TrainError::Store(Box::new(e))
    }
}
impl From<tessera_dist::DistError> for TrainError {
    fn from(e: tessera_dist::DistError) -> Self {
        TrainError::Dist(e)
    }
}
impl From<MetricsError> for TrainError {
    fn from(e: MetricsError) -> Self {
        TrainError::Metrics(Box::new(e))
    }
}
/// What kind of failure an error is, for whoever decides whether to retry the run (the
/// `tessera` binary maps these to exit codes, and launchers restart on the transient ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The config or the data is wrong: running again changes nothing.
    BadInput,
    /// The guards stopped a diverging run: running again would diverge again.
    Diverged,
    /// Something outside the run failed and may not fail next time: a stall, a remote that did
    /// not answer, a lost peer.
    Transient,
    /// Anything else (a full disk, a corrupt file…).
    Other,
}

impl TrainError {
    /// The kind of failure (see [`Failure`]).
    pub fn failure(&self) -> Failure {
        match self {
            TrainError::Config { .. }
            | TrainError::TokenOutOfRange { .. }
            | TrainError::Finetune(_)
            | TrainError::Adapter { .. }
            | TrainError::Lock(_) => Failure::BadInput,
            TrainError::Diverged { .. } | TrainError::Aborted { .. } => Failure::Diverged,
            TrainError::Stalled { .. } => Failure::Transient,
            TrainError::Dist(e) => match e {
                tessera_dist::DistError::Mismatch { .. }
                | tessera_dist::DistError::Env(_)
                | tessera_dist::DistError::RankOutOfRange { .. }
                | tessera_dist::DistError::DuplicateRank { .. } => Failure::BadInput,
                _ => Failure::Transient,
            },
            TrainError::Data { source, .. } => match **source {
                StreamError::Remote { .. } => Failure::Transient,
                StreamError::Config { .. } | StreamError::Location { .. } => Failure::BadInput,
                _ => Failure::Other,
            },
            TrainError::Store(e) if matches!(**e, CheckpointError::Remote(_)) => Failure::Transient,
            _ => Failure::Other,
        }
    }

    /// A data error for the loader named `key`.
    pub fn data(key: impl Into<String>, source: StreamError) -> Self {
        TrainError::Data {
            key: key.into(),
            source: Box::new(source),
        }
    }
}
