//! Errors of starting a server (bad files or settings). Errors answered to clients are
//! [`crate::api::ApiError`]s.

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
