//! Remote folders reached through `object_store`: `s3://`, `gs://`, `az://`/`abfs://`,
//! `http(s)://` and `file://`. The streaming loader downloads shards through it and the trainer
//! uploads checkpoints through it.
//!
//! Cloud credentials come from the environment, as each store's `from_env()` builder reads
//! them (`AWS_*`, `GOOGLE_*`, `AZURE_*`), the same variables mosaicml-streaming and composer use.
//! All calls run on one small tokio runtime per folder; callers stay synchronous.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme, PutPayload};

/// A remote location that could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The location is not a URL tessera can reach.
    #[error("{location}: {reason}")]
    Location { location: String, reason: String },
    /// The store failed (after any retries).
    #[error("{url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
}

impl RemoteError {
    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RemoteError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}

/// Whether `location` names a remote (has a URL scheme) rather than a local path.
pub fn is_remote(location: &str) -> bool {
    location.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
    })
}

/// A remote prefix with its store and the runtime that drives it.
pub struct RemoteDir {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for RemoteDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteDir({})", self.url)
    }
}

impl RemoteDir {
    /// Opens `location` (a URL with a scheme).
    pub fn open(location: &str) -> Result<Self, RemoteError> {
        let bad = |reason: String| RemoteError::Location {
            location: location.to_string(),
            reason,
        };
        if !is_remote(location) {
            return Err(bad(
                "not a URL (expected s3://, gs://, az://, http(s):// or file://)".into(),
            ));
        }
        let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&url).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
            ObjectStoreScheme::AmazonS3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            ObjectStoreScheme::Http => Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(&url[..url::Position::BeforePath])
                    // A plain `http://` location is an explicit choice (e.g. an in-cluster server).
                    .with_client_options(
                        object_store::ClientOptions::new().with_allow_http(url.scheme() == "http"),
                    )
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => return Err(bad(format!("unsupported scheme ({other:?})"))),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-remote")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Self {
            url: location.trim_end_matches('/').to_string(),
            store,
            prefix,
            runtime,
        })
    }

    /// The URL of this folder.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The full URL of a file under this prefix.
    pub fn url_of(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url)
    }

    fn location(&self, relative: &str) -> StorePath {
        let mut location = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            location = location.child(part);
        }
        location
    }

    /// Fetches a whole file (`relative` to the prefix, `/`-separated), retrying transient
    /// failures `retries` times with a short backoff. A missing file is not retried.
    pub fn fetch(&self, relative: &str, retries: u32) -> Result<Vec<u8>, RemoteError> {
        let location = self.location(relative);
        self.retrying(relative, retries, || async {
            let got = self.store.get(&location).await?;
            got.bytes().await.map(|b| b.to_vec())
        })
    }

    /// Writes a whole file (object stores make each put atomic: readers see the old object or
    /// the new one, never a part).
    pub fn put(&self, relative: &str, bytes: Vec<u8>, retries: u32) -> Result<(), RemoteError> {
        let location = self.location(relative);
        let payload = PutPayload::from(bytes);
        self.retrying(relative, retries, || async {
            self.store.put(&location, payload.clone()).await.map(|_| ())
        })
    }

    /// The names of the immediate sub-folders (common prefixes) of `relative`.
    pub fn list_dirs(&self, relative: &str) -> Result<Vec<String>, RemoteError> {
        let location = self.location(relative);
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&location)))
            .map_err(|source| RemoteError::Store {
                url: self.url_of(relative),
                source,
            })?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    fn retrying<T, F, Fut>(&self, relative: &str, retries: u32, op: F) -> Result<T, RemoteError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let mut attempt = 0;
        loop {
            match self.runtime.block_on(op()) {
                Ok(v) => return Ok(v),
                Err(e)
                    if matches!(e, object_store::Error::NotFound { .. }) || attempt >= retries =>
                {
                    return Err(RemoteError::Store {
                        url: self.url_of(relative),
                        source: e,
                    });
                }
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_remote("s3://bucket/x"));
        assert!(is_remote("file:///tmp/x"));
        assert!(!is_remote("/tmp/x"));
        assert!(!is_remote("data/train"));
        assert!(RemoteDir::open("data/train").is_err());
    }

    #[test]
    fn put_fetch_and_list_through_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let r = RemoteDir::open(&url).unwrap();
        r.put("ck/ba1/a.bin", vec![1, 2, 3], 0).unwrap();
        r.put("ck/ba2/a.bin", vec![4], 0).unwrap();
        assert_eq!(r.fetch("ck/ba1/a.bin", 0).unwrap(), vec![1, 2, 3]);
        let mut dirs = r.list_dirs("ck").unwrap();
        dirs.sort();
        assert_eq!(dirs, vec!["ba1", "ba2"]);
        let err = r.fetch("ck/ba3/a.bin", 3).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("ck/ba3/a.bin"), "{err}");
    }
}
