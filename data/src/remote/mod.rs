//! Remote locations: `s3://`, `gs://`, `az://`/`abfs://`, `http(s)://` and `file://`. The
//! streaming loader downloads shards from them and the trainer uploads checkpoints to them.
//!
//! Telling a URL from a local path, the time limits and the process-wide cancel are always
//! here. Reaching a store ([`RemoteDir`], through `object_store` on a small tokio runtime) needs
//! the `remote` feature, a default one: a build without it stays free of the async stack, and a
//! remote location then fails with an error naming the feature ([`FEATURE_OFF`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[cfg(feature = "remote")]
mod store;
#[cfg(feature = "remote")]
pub use store::{RemoteDir, RemoteError};

/// Why a remote location fails in a build without the `remote` feature.
pub const FEATURE_OFF: &str = "remote locations need tessera-data's `remote` feature, which this \
     build turned off (enable it, or copy the data to a local folder)";

/// Whether `location` names a remote (has a URL scheme) rather than a local path.
pub fn is_remote(location: &str) -> bool {
    location.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
    })
}

/// Time limit and retry budget of remote requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemoteOptions {
    /// The longest one request (connect, send, the whole answer) may take.
    pub timeout: Duration,
    /// Retries after a failed or timed-out request (a missing object is not retried).
    pub retries: u32,
}

impl Default for RemoteOptions {
    /// mosaicml-streaming's defaults: `download_timeout: 60`, `download_retry: 2`.
    fn default() -> Self {
        RemoteOptions {
            timeout: Duration::from_secs(60),
            retries: 2,
        }
    }
}

/// Set by [`cancel_waits`]: every remote request in this process fails at once.
static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Makes every remote request of this process, in flight or future, fail at once with an error
/// naming its URL. A trainer whose watchdog has declared a stall calls this so that a thread
/// blocked on a silent server returns and the run can stop; it is not undone. (Without the
/// `remote` feature there are no remote requests, and this does nothing else.)
pub fn cancel_waits() {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// Whether [`cancel_waits`] was called.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub(crate) fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_remote("s3://bucket/x"));
        assert!(is_remote("file:///tmp/x"));
        assert!(is_remote("https://example.com/d"));
        assert!(!is_remote("/tmp/x"));
        assert!(!is_remote("data/train"));
        assert!(!is_remote("://x"));
    }
}
