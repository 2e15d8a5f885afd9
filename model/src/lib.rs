#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod alibi;
pub mod attention;
pub mod block;
pub mod cache;
pub mod config;
pub mod counts;
pub mod ffn;
pub mod generate;
pub mod hf;
pub mod init;
pub mod kernels;
pub mod linear;
pub mod lm_loss;
pub mod lora;
pub mod loss;
pub mod mask;
pub mod mpt;
pub mod norm;
pub mod rope;
pub mod spec;

pub use cache::KvCache;
pub use config::{ConfigError, MptConfig};
pub use generate::{FinishReason, GenerateError, Generation, GenerationConfig, generate};
pub use mpt::{Mpt, MptInput};
