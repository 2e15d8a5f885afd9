//! Where a stream's files live: a local folder, or a remote prefix reached through
//! `object_store` (`s3://`, `gs://`, `az://`/`abfs://`, `http(s)://`, `file://`).
//!
//! Cloud credentials come from the environment, as each store's `from_env()` builder reads
//! them (`AWS_*`, `GOOGLE_*`, `AZURE_*`), the same variables streaming's downloaders use.
//! All remote calls run on one small tokio runtime per source; callers stay synchronous.
//! Without the `remote` feature a URL is refused when the stream is opened, with an error that
//! names the feature.

use std::path::{Path, PathBuf};

use crate::remote::RemoteOptions;
pub(crate) use crate::remote::is_remote;
#[cfg(feature = "remote")]
use crate::remote::{RemoteDir, RemoteError};

use super::error::{Result, StreamError};

/// A stream's origin.
pub(crate) enum Source {
    /// Files already on this machine; read in place, never evicted.
    Local(PathBuf),
    /// Files fetched on demand into a cache folder.
    Remote(Box<Remote>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Local(p) => write!(f, "Local({})", p.display()),
            Source::Remote(r) => write!(f, "Remote({})", r.url()),
        }
    }
}

impl Source {
    /// Parse a location: a URL with a scheme is remote, anything else a local folder.
    #[cfg(test)]
    pub(crate) fn parse(location: &str) -> Result<Source> {
        Self::parse_with(location, RemoteOptions::default())
    }

    /// Like `parse`; remote requests obey `options` (time limit, retries).
    pub(crate) fn parse_with(location: &str, options: RemoteOptions) -> Result<Source> {
        if !is_remote(location) {
            return Ok(Source::Local(PathBuf::from(location)));
        }
        Remote::open(location, options).map(|r| Source::Remote(Box::new(r)))
    }
}

/// A remote stream folder (see [`crate::remote`]).
#[cfg(feature = "remote")]
pub(crate) struct Remote(RemoteDir);

/// A remote stream folder, which a build without the `remote` feature never opens.
#[cfg(not(feature = "remote"))]
pub(crate) struct Remote(std::convert::Infallible);

#[cfg(feature = "remote")]
impl Remote {
    fn open(location: &str, options: RemoteOptions) -> Result<Self> {
        RemoteDir::open_with(location, options)
            .map(Remote)
            .map_err(stream_error)
    }

    fn url(&self) -> &str {
        self.0.url()
    }

    /// The full URL of a file under this prefix.
    pub(crate) fn url_of(&self, relative: &str) -> String {
        self.0.url_of(relative)
    }

    /// Fetch a whole file, retrying transient failures `retries` times with a short backoff.
    /// A missing file is not retried.
    pub(crate) fn fetch(&self, relative: &str, retries: u32) -> Result<Vec<u8>> {
        self.0.fetch(relative, retries).map_err(stream_error)
    }
}

#[cfg(not(feature = "remote"))]
impl Remote {
    /// Refuses: this build cannot reach remote locations.
    fn open(location: &str, _options: RemoteOptions) -> Result<Self> {
        Err(StreamError::Location {
            location: location.to_string(),
            reason: crate::remote::FEATURE_OFF.to_string(),
        })
    }

    fn url(&self) -> &str {
        match self.0 {}
    }

    pub(crate) fn url_of(&self, _relative: &str) -> String {
        match self.0 {}
    }

    pub(crate) fn fetch(&self, _relative: &str, _retries: u32) -> Result<Vec<u8>> {
        match self.0 {}
    }
}

#[cfg(feature = "remote")]
fn stream_error(e: RemoteError) -> StreamError {
    match e {
        RemoteError::Location { location, reason } => StreamError::Location { location, reason },
        RemoteError::Store { url, source } => StreamError::Remote { url, source },
    }
}

/// streaming's default local cache folder for a remote: a temp subfolder named by a hash of
/// the URL, so two runs of the same remote share one cache.
pub(crate) fn default_cache_dir(remote: &str, split: Option<&str>) -> PathBuf {
    let digest = xxhash_rust::xxh3::xxh3_128(remote.as_bytes());
    let mut dir = std::env::temp_dir()
        .join("tessera-streams")
        .join(format!("{digest:032x}"));
    if let Some(split) = split {
        dir.push(split);
    }
    dir
}

/// `dir/relative` where `relative` is a `/`-separated basename from an index.
pub(crate) fn local_path(dir: &Path, relative: &str) -> PathBuf {
    let mut p = dir.to_path_buf();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        p.push(part);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "remote")]
    #[test]
    fn schemes_pick_remote_or_local() {
        assert!(is_remote("s3://bucket/data"));
        assert!(is_remote("file:///tmp/x"));
        assert!(is_remote("https://example.com/d"));
        assert!(!is_remote("/data/mds"));
        assert!(!is_remote("relative/dir"));
        assert!(matches!(
            Source::parse("/data/mds").unwrap(),
            Source::Local(_)
        ));
        assert!(matches!(
            Source::parse("file:///tmp/some/dir").unwrap(),
            Source::Remote(_)
        ));
        assert!(matches!(
            Source::parse("s3://bucket/prefix").unwrap(),
            Source::Remote(_)
        ));
        assert!(matches!(
            Source::parse("gs://bucket/prefix").unwrap(),
            Source::Remote(_)
        ));
        assert!(matches!(
            Source::parse("https://example.com/prefix").unwrap(),
            Source::Remote(_)
        ));
        let err = Source::parse("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("ftp://host/x"), "{err}");
    }

    #[cfg(not(feature = "remote"))]
    #[test]
    fn without_the_remote_feature_a_url_is_refused_naming_the_feature() {
        assert!(matches!(
            Source::parse("/data/mds").unwrap(),
            Source::Local(_)
        ));
        let err = Source::parse("s3://bucket/prefix").unwrap_err().to_string();
        assert!(
            err.contains("s3://bucket/prefix") && err.contains("`remote` feature"),
            "{err}"
        );
    }

    #[cfg(feature = "remote")]
    #[test]
    fn file_remote_fetches_and_reports_missing_files_with_their_url() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.bin"), b"hello").unwrap();
        let url = format!("file://{}", dir.path().display());
        let Source::Remote(remote) = Source::parse(&url).unwrap() else {
            panic!("not remote")
        };
        assert_eq!(remote.fetch("sub/a.bin", 0).unwrap(), b"hello");
        let err = remote.fetch("sub/missing.bin", 3).unwrap_err().to_string();
        assert!(err.contains("sub/missing.bin"), "{err}");
    }
}
