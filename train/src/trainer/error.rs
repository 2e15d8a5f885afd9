//! Why a run could not start or had to stop, and whether running it again could help.

use std::path::PathBuf;

use tessera_data::stream::StreamError;

use crate::checkpoint::CheckpointError;
use crate::metrics::MetricsError;

use super::state::TrainState;

/// Why a run could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config value is missing, out of range or inconsistent with another.
    #[error("{key}: {message}")]
    Config {
        /// The config key at fault (e.g. `max_duration`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A data loader could not be opened or read.
    #[error("{key}: {source}")]
    Data {
        /// Which loader (`train_loader`, `eval_loader`, …).
        key: String,
        /// The data layer's error.
        #[source]
        source: Box<StreamError>,
    },
    /// A finetuning dataset could not be loaded, formatted or tokenized.
    #[error(transparent)]
    Finetune(Box<crate::finetune::FinetuneError>),
    /// A transformers folder could not be read or written; `key` says which (a config key,
    /// or `checkpoint`).
    #[error("{key}: {source}")]
    Model {
        /// A config key (e.g. `load_path`), `checkpoint` or `from_pretrained`.
        key: &'static str,
        /// The transformers reader's or writer's error.
        #[source]
        source: Box<tessera_model::hf::HfError>,
    },
    /// The LoRA adapter (`model.peft_config` or `model.pretrained_lora_id_or_path`) does not
    /// fit the model, or its folder is unreadable.
    #[error("{key}: {source}")]
    Adapter {
        /// The config key at fault (e.g. `model.peft_config`), or `checkpoint` when saving.
        key: &'static str,
        /// The LoRA error.
        #[source]
        source: Box<tessera_model::lora::LoraError>,
    },
    /// A tensor could not be copied back from the device.
    #[error("reading {what} back from the device: {detail}")]
    DeviceRead {
        /// What was being read (e.g. a unit of the training state).
        what: String,
        /// The backend's message.
        detail: String,
    },
    /// A checkpoint file could not be encoded.
    #[error("encoding {file}: {source}")]
    Encode {
        /// The file being written.
        file: &'static str,
        /// The JSON encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint's `state.json` is not valid.
    #[error("{path}: {source}")]
    StateFile {
        /// The `state.json` file.
        path: PathBuf,
        /// The JSON decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint written by a tessera with another `state.json` format.
    #[error(
        "{path}: state version {found} is not {} (written by another tessera; older checkpoints \
         kept the optimizer in burn's record format, which this one does not read)",
        TrainState::VERSION
    )]
    StateVersion {
        /// The `state.json` file.
        path: PathBuf,
        /// The version it holds.
        found: u32,
    },
    /// A checkpoint's optimizer state is not the configured optimizer's.
    #[error(
        "{path}: the optimizer state holds {saved:?}, but optimizer {optimizer} keeps {keeps:?}"
    )]
    OptimizerMismatch {
        /// The checkpoint's state file.
        path: PathBuf,
        /// The state names the checkpoint holds.
        saved: Vec<String>,
        /// The configured optimizer's name.
        optimizer: &'static str,
        /// The state names the configured optimizer keeps.
        keeps: Vec<String>,
    },
    /// The checkpoint store failed (a local or remote read or write).
    #[error(transparent)]
    Store(Box<CheckpointError>),
    /// A metrics sink could not be opened or written.
    #[error(transparent)]
    Metrics(Box<MetricsError>),
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The guards gave up on a diverging run (see [`crate::guard`]).
    #[error("diverged at step {step}: {detail}")]
    Diverged {
        /// The step at which the guards gave up.
        step: u64,
        /// What the guards saw.
        detail: String,
    },
    /// The watchdog saw no progress (a hung data source, collective or device).
    #[error(
        "stalled: no step finished for {stalled_for_s:.0} s (guards.watchdog.timeout_s {timeout_s:.0}); last step {last_step}"
    )]
    Stalled {
        /// The last step that finished, or a note that none did.
        last_step: String,
        /// How long no step had finished, in seconds.
        stalled_for_s: f64,
        /// The watchdog's limit (`guards.watchdog.timeout_s`), in seconds.
        timeout_s: f64,
    },
    /// The run folder could not be locked (another trainer holds it, or the lock file failed).
    #[error(transparent)]
    Lock(#[from] crate::run_lock::LockError),
    /// A collective or the rendezvous failed (a lost, hung or mismatched rank).
    #[error(transparent)]
    Dist(tessera_dist::DistError),
    /// The data holds a token id the model has no embedding for.
    #[error(
        "{key}: token id {token} is outside the model's vocabulary ({vocab} ids); the data was \
         tokenized with a larger vocabulary than `model.vocab_size`"
    )]
    TokenOutOfRange {
        /// The loader or eval set the batch came from.
        key: String,
        /// The first out-of-range token id.
        token: u32,
        /// The model's vocabulary size (`model.vocab_size`).
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
            TrainError::Diverged { .. } => Failure::Diverged,
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
