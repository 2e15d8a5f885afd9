#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod api;
pub mod chat_template;
pub mod detokenize;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod validation;

pub use chat_template::ChatTemplate;
pub use engine::{Engine, EngineConfig};
pub use error::ServeError;
pub use http::{ModelLimits, Server, ServerConfig, shutdown_signal};
pub use validation::ServedModels;
