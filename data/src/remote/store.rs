//! Remote folders reached through `object_store` (the `remote` feature).
//!
//! Cloud credentials come from the environment, as each store's `from_env()` builder reads
//! them (`AWS_*`, `GOOGLE_*`, `AZURE_*`), the same variables mosaicml-streaming and composer use.
//! All calls run on one small tokio runtime per folder; callers stay synchronous.
//!
//! Every request has a time limit and a retry budget ([`RemoteOptions`]; streaming's
//! `download_timeout` and `download_retry`), so a server that accepts a connection and never
//! answers ends in an error naming the URL instead of a silent stall. While a request waits
//! longer than a few seconds, a line on stderr says what it waits for.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme, PutPayload};

use super::{RemoteOptions, cancelled, is_remote};

/// A remote location that could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The location is not a URL tessera can reach.
    #[error("{location}: {reason}")]
    Location {
        /// The location as given.
        location: String,
        /// Why it cannot be reached.
        reason: String,
    },
    /// The store failed (after any retries).
    #[error("{url}: {source}")]
    Store {
        /// The URL concerned.
        url: String,
        /// The store's error.
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

/// After this long without an answer, a request says on stderr what it waits for (then again
/// every [`NOTICE_EVERY`]).
const NOTICE_AFTER: Duration = Duration::from_secs(5);
const NOTICE_EVERY: Duration = Duration::from_secs(10);

/// A remote prefix with its store and the runtime that drives it.
pub struct RemoteDir {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    runtime: tokio::runtime::Runtime,
    options: RemoteOptions,
}

impl std::fmt::Debug for RemoteDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteDir({})", self.url)
    }
}

impl RemoteDir {
    /// Opens `location` (a URL with a scheme) with the default [`RemoteOptions`].
    pub fn open(location: &str) -> Result<Self, RemoteError> {
        Self::open_with(location, RemoteOptions::default())
    }

    /// Opens `location` (a URL with a scheme); every request obeys `options`.
    pub fn open_with(location: &str, options: RemoteOptions) -> Result<Self, RemoteError> {
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
        // Time limits on every request; retries are this module's (below), not the store's own
        // (object_store's default retries for up to three minutes).
        let client = object_store::ClientOptions::new()
            .with_timeout(options.timeout)
            .with_connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .with_allow_http(url.scheme() == "http");
        let no_retry = object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
            ObjectStoreScheme::AmazonS3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(location)
                    .with_client_options(client)
                    .with_retry(no_retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(location)
                    .with_client_options(client)
                    .with_retry(no_retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(location)
                    .with_client_options(client)
                    .with_retry(no_retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            ObjectStoreScheme::Http => Arc::new(
                object_store::http::HttpBuilder::new()
                    .with_url(&url[..url::Position::BeforePath])
                    // A plain `http://` location is an explicit choice (e.g. an in-cluster
                    // server): `client` allows it for that scheme only.
                    .with_client_options(client)
                    .with_retry(no_retry)
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
            options,
        })
    }

    /// The time limit and retry budget of this folder's requests.
    pub fn options(&self) -> RemoteOptions {
        self.options
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
        let listed = self.retrying(relative, self.options.retries, || {
            self.store.list_with_delimiter(Some(&location))
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
            match self.one_request(relative, attempt, retries, op()) {
                Ok(v) => return Ok(v),
                Err(e)
                    if matches!(e, object_store::Error::NotFound { .. })
                        || attempt >= retries
                        || cancelled() =>
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

    /// Runs one request under the time limit, saying on stderr what it waits for when it takes
    /// longer than [`NOTICE_AFTER`].
    fn one_request<T>(
        &self,
        relative: &str,
        attempt: u32,
        retries: u32,
        request: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, object_store::Error> {
        let url = self.url_of(relative);
        let limit = self.options.timeout;
        let notice = self.runtime.spawn(async move {
            tokio::time::sleep(NOTICE_AFTER).await;
            let mut waited = NOTICE_AFTER;
            loop {
                eprintln!(
                    "waiting on {url}: no answer for {:.0} s (timeout {:.0} s, attempt {} of {})",
                    waited.as_secs_f64(),
                    limit.as_secs_f64(),
                    attempt + 1,
                    retries + 1
                );
                tokio::time::sleep(NOTICE_EVERY).await;
                waited += NOTICE_EVERY;
            }
        });
        let failed = |why: String| object_store::Error::Generic {
            store: "remote",
            source: why.into(),
        };
        let cancel = async {
            while !cancelled() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let result = self.runtime.block_on(async {
            tokio::select! {
                r = tokio::time::timeout(limit, request) => r.unwrap_or_else(|_| Err(failed(format!(
                    "no answer within {:.0} s (download_timeout)",
                    limit.as_secs_f64()
                )))),
                () = cancel => Err(failed(
                    "cancelled: the run was declared stalled while waiting for this".into(),
                )),
            }
        });
        notice.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_not_opened_as_a_remote() {
        assert!(RemoteDir::open("data/train").is_err());
    }

    /// A server that accepts connections and never answers; dropped, it stops accepting.
    fn silent_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let handle = std::thread::spawn(move || {
            let mut held = Vec::new();
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < until {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        (addr, handle)
    }

    #[test]
    fn a_server_that_never_answers_times_out_naming_the_url() {
        let (addr, _server) = silent_server();
        let url = format!("http://{addr}/data");
        let r = RemoteDir::open_with(
            &url,
            RemoteOptions {
                timeout: Duration::from_millis(400),
                retries: 1,
            },
        )
        .unwrap();
        let t = std::time::Instant::now();
        let err = r.fetch("index.json", r.options().retries).unwrap_err();
        let took = t.elapsed();
        // Two attempts of 0.4 s plus a 0.2 s backoff, with slack for a loaded machine.
        assert!(took < Duration::from_secs(8), "took {took:?}");
        assert!(took >= Duration::from_millis(800), "took {took:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("{url}/index.json")), "{text}");
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
