//! LoRA (Hu et al. 2021, <https://arxiv.org/abs/2106.09685>) as PEFT implements it: a frozen
//! base model plus, on chosen linear layers, a trainable low-rank update
//! `y = W x + scale · B A dropout(x)`.
//!
//! - [`config`]: [`LoraConfig`] from llm-foundry's `model.peft_config` or PEFT's
//!   `adapter_config.json`.
//! - [`adapter`]: the weights ([`Adapter`] → [`BlockLora`] → [`LoraLayer`]) and PEFT's init.
//! - [`attach`]: putting an adapter into a model for training ([`crate::Mpt::with_adapter`],
//!   which freezes the base), taking it out, holding the frozen base in bf16, and listing the
//!   trainable parameters.
//! - [`peft`]: PEFT's files (`adapter_config.json`, `adapter_model.safetensors`), both ways.
//! - [`merge`]: `W' = W + scale · B A`, a plain model transformers loads without PEFT.
//! - [`bank`]: many adapters on one base, chosen per batch row, unmerged (serving).
//! - [`memory`]: weights, gradients and optimizer state of full fine-tuning against LoRA.

pub mod adapter;
pub mod attach;
pub mod bank;
pub mod config;
pub mod memory;
pub mod merge;
pub mod peft;

use std::path::PathBuf;

pub use adapter::{Adapter, BlockLora, Factor, LoraLayer, peft_name, target_dims};
pub use attach::{TrainableParam, trainable_params};
pub use bank::{AdapterBank, BlockRows, RowAdapters};
pub use config::{LoraConfig, LoraInit, TargetModule};
pub use memory::{TrainingMemory, training_memory};
pub use merge::merge;

/// Errors of the LoRA functions; each names the file, key or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A setting in `model.peft_config` or `adapter_config.json`.
    #[error("{origin}: {key}: {message}")]
    Config {
        /// Where the settings came from.
        origin: String,
        /// The key at fault (`.` for the whole document).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A safetensors file is malformed.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The adapter's tensors do not fit its config or the model; lists every problem.
    #[error("{path}: {} tensor problem(s): {}", problems.len(), problems.join("; "))]
    Tensors {
        /// The weights file.
        path: PathBuf,
        /// One line per tensor.
        problems: Vec<String>,
    },
    /// The adapter does not fit the model, or the model's state does not allow the operation.
    #[error("{message}")]
    Model {
        /// What is wrong.
        message: String,
    },
}
