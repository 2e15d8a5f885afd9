#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod api;
pub mod detokenize;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod validation;

pub use engine::{Engine, EngineConfig};
pub use error::ServeError;
pub use http::{ModelLimits, Server, ServerConfig, shutdown_signal};
pub use tessera_data::chat_template::ChatTemplate;
pub use validation::ServedModels;
