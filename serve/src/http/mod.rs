//! The HTTP side: axum routes, API-key checks, the small endpoints, and serving with graceful
//! shutdown. Generation requests live in [`generate`]. Nothing here touches burn: handlers
//! reach the model only through [`Engine::submit`].

mod generate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tessera_data::tokenizer::Tokenizer;

use crate::api::{ApiError, ModelCard, ModelList};
use crate::chat_template::ChatTemplate;
use crate::engine::Engine;
use crate::error::ServeError;
use crate::metrics::{self, Metrics};
use crate::validation::{Context, ServedModels};

/// Server settings beyond the engine's.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// With a key, every route but `/health` needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// A generation request still running after this long is ended (408, or an error event
    /// in a stream) and its sequences leave the batch.
    pub request_timeout: Duration,
    /// Request bodies larger than this get a 413.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            request_timeout: Duration::from_secs(600),
            max_body_bytes: 4 << 20,
        }
    }
}

/// What the model looks like to validation.
#[derive(Clone, Copy, Debug)]
pub struct ModelLimits {
    /// Prompt plus completion, in tokens.
    pub max_seq_len: usize,
    /// Token ids are below this.
    pub vocab_size: usize,
}

/// Everything a handler needs, shared.
pub(crate) struct AppState {
    engine: Engine,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    models: ServedModels,
    limits: ModelLimits,
    config: ServerConfig,
    metrics: Metrics,
    /// Unix seconds at start (`created` of `/v1/models`).
    started: u64,
}

impl AppState {
    fn context(&self) -> Context<'_> {
        Context {
            models: &self.models,
            tokenizer: &self.tokenizer,
            chat_template: self.chat_template.as_ref(),
            max_seq_len: self.limits.max_seq_len,
            vocab_size: self.limits.vocab_size,
            max_sequences: self.engine.config().max_queue,
        }
    }
}

/// An OpenAI-compatible server around a started [`Engine`].
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Assembles the server; nothing listens yet.
    pub fn new(
        engine: Engine,
        tokenizer: Tokenizer,
        chat_template: Option<ChatTemplate>,
        models: ServedModels,
        limits: ModelLimits,
        config: ServerConfig,
    ) -> Self {
        Self {
            state: Arc::new(AppState {
                engine,
                tokenizer,
                chat_template,
                models,
                limits,
                config,
                metrics: Metrics::new(),
                started: unix_now(),
            }),
        }
    }

    /// The routes (for serving, or for driving in tests).
    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let protected = Router::new()
            .route("/v1/completions", post(generate::completions))
            .route("/v1/chat/completions", post(generate::chat))
            .route("/v1/models", get(models))
            .route("/metrics", get(metrics_text))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
        Router::new()
            .merge(protected)
            .route("/health", get(health))
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
            .with_state(state)
    }

    /// Serves on `listener` until `shutdown` resolves; then stops accepting connections,
    /// lets in-flight requests finish, stops the engine and returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        let state = self.state.clone();
        // Joining the model thread blocks; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || state.engine.shutdown()).await;
        result.map_err(|source| ServeError::Io { addr, source })
    }

    /// Binds `host:port` and serves on a tokio runtime of `threads` workers until SIGTERM or
    /// SIGINT; `on_listening` gets the bound address first (port 0 picks a free port).
    pub fn run(
        self,
        host: &str,
        port: u16,
        threads: usize,
        on_listening: impl FnOnce(SocketAddr),
    ) -> Result<(), ServeError> {
        let addr = format!("{host}:{port}");
        let io = |source| ServeError::Io {
            addr: addr.clone(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tessera-http")
            .enable_all()
            .build()
            .map_err(io)?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(&addr).await.map_err(io)?;
            on_listening(listener.local_addr().map_err(io)?);
            self.serve(listener, shutdown_signal()).await
        })
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// 401 unless the request carries the key (when the server has one).
async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = bearer(request.headers());
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            let why = match given {
                None => "missing API key: send the header `Authorization: Bearer <key>`",
                Some(_) => "incorrect API key provided",
            };
            state.metrics.request(endpoint(request.uri()), 401);
            return ApiError::unauthorized(why).into_response();
        }
    }
    next.run(request).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `endpoint` label of a path.
fn endpoint(uri: &Uri) -> &'static str {
    match uri.path() {
        "/v1/completions" => "completions",
        "/v1/chat/completions" => "chat_completions",
        "/v1/models" => "models",
        "/metrics" => "metrics",
        _ => "other",
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_alive() {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response()
    } else {
        ApiError::unavailable("the model thread has stopped").into_response()
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let card = |id: &str, parent: Option<&str>| ModelCard {
        id: id.to_string(),
        object: "model".into(),
        created: state.started,
        owned_by: "tessera".into(),
        parent: parent.map(str::to_string),
        max_model_len: state.limits.max_seq_len,
    };
    let base = &state.models.base;
    let data = std::iter::once(card(base, None))
        .chain(state.models.adapters.iter().map(|a| card(a, Some(base))))
        .collect();
    state.metrics.request("models", 200);
    axum::Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request("metrics", 200);
    let text = state.metrics.render(state.engine.stats());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn no_route(method: Method, uri: Uri) -> Response {
    ApiError::no_route(StatusCode::NOT_FOUND, method.as_str(), uri.path()).into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    ApiError::no_route(StatusCode::METHOD_NOT_ALLOWED, method.as_str(), uri.path()).into_response()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(bearer(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
