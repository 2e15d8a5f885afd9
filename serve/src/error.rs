//! Errors of starting a server (bad files or settings). Errors answered to clients are
//! [`crate::api::ApiError`]s.

use std::path::PathBuf;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `tokenizer_config.json` or `chat_template.jinja` could not be read or parsed.
    #[error("{path}: {message}")]
    ChatTemplate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A setting is out of range.
    #[error("{setting}: {message}")]
    Setting {
        /// The flag or field (`--max-batch`).
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The address could not be bound or served.
    #[error("{addr}: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// The system error.
        source: std::io::Error,
    },
}
