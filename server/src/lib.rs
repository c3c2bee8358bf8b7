//! # lowbit-server
//!
//! An OpenAI-compatible HTTP server over lowbit's continuous-batching engine
//! ([`lowbit_runtime::batch`]): `/v1/chat/completions` and `/v1/completions` (streaming, `n`,
//! logprobs, `echo` scoring), `/v1/models`, `/health`, `/tokenize`, `/detokenize` and
//! `/metrics`. It only translates HTTP to engine requests and back; axum on a one-thread tokio
//! runtime does the HTTP, the engine's own threads do the work.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
mod chat;
mod completions;
mod error;
mod misc;
mod native;
mod outcome;
mod params;

pub use error::ApiError;

use app::{App, Ready};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lowbit_runtime::batch::{BatchOptions, Scheduler};
use lowbit_runtime::{Engine, RuntimeOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The lowbit file to serve.
    pub model: PathBuf,
    /// Address to listen on (loopback unless told otherwise).
    pub host: String,
    /// Port; 0 picks a free one (printed).
    pub port: u16,
    /// Engine options (threads, exact 4-bit path).
    pub runtime: RuntimeOptions,
    /// Slots, context per slot, queue and prefill chunk.
    pub batch: BatchOptions,
    /// Bearer key every request but `/health` must carry.
    pub api_key: Option<String>,
    /// The name reported by `/v1/models` (default: the file's stem).
    pub model_name: Option<String>,
    /// Largest request body accepted, bytes.
    pub max_body: usize,
    /// Reply length of a request that gives no `max_tokens` (llama-server's `-n`), bounded by
    /// the context; `None`: the rest of the context for chat, 16 for completions (OpenAI's).
    pub max_tokens: Option<usize>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the address or running the HTTP loop failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The model could not be loaded or the scheduler started.
    #[error(transparent)]
    Runtime(#[from] lowbit_runtime::RuntimeError),
}

type Shared = Arc<App>;

/// Runs the server until SIGTERM or Ctrl-C: binds, loads the model (answering 503 meanwhile),
/// prints `listening on http://HOST:PORT` once it serves, and on a signal stops accepting,
/// lets running requests finish and returns.
pub fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ServeError::Io { what: "starting the HTTP runtime".into(), error })?;
    rt.block_on(run(opts))
}

async fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let addr = format!("{}:{}", opts.host, opts.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|error| ServeError::Io { what: format!("listening on {addr}"), error })?;
    let local: SocketAddr =
        listener.local_addr().map_err(|error| ServeError::Io { what: "reading the bound address".into(), error })?;
    let name = opts
        .model_name
        .clone()
        .unwrap_or_else(|| opts.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()));
    let app: Shared = Arc::new(App::new(name, opts.api_key.clone(), opts.batch.context, opts.max_tokens));
    let router = router(app.clone(), opts.max_body);
    let server =
        tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await });
    // Load in a blocking thread while the listener answers /health with 503.
    let (path, runtime, batch) = (opts.model.clone(), opts.runtime.clone(), opts.batch.clone());
    let loaded = tokio::task::spawn_blocking(move || -> Result<Ready, lowbit_runtime::RuntimeError> {
        let engine = Arc::new(Engine::open(&path, &runtime)?);
        let max = engine.model().config.max_position_embeddings;
        let batch = BatchOptions { context: batch.context.min(max), ..batch };
        let scheduler = Scheduler::start(engine.clone(), batch)?;
        Ok(Ready { engine, scheduler })
    })
    .await
    .expect("the loader does not panic");
    match loaded {
        Ok(ready) => {
            let b = ready.scheduler.options().clone();
            let _ = app.ready.set(ready);
            eprintln!(
                "model {} loaded: {} slots of {} positions, queue {}",
                app.model_name, b.parallel, b.context, b.queue
            );
            println!("listening on http://{local}");
        }
        Err(e) => {
            let _ = app.failed.set(e.to_string());
            return Err(e.into());
        }
    }
    let served = server.await.expect("the HTTP task does not panic");
    // Stopped accepting; the requests still running were waited for by the graceful shutdown.
    if let Some(app) = Arc::into_inner(app) {
        if let Some(ready) = app.ready.into_inner() {
            ready.scheduler.shutdown(true);
        }
    }
    served.map_err(|error| ServeError::Io { what: "serving".into(), error })
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
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
    eprintln!("shutting down: finishing the requests in flight");
}

fn router(app: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(misc::health))
        .route("/v1/models", get(misc::models))
        .route("/v1/chat/completions", post(chat_route))
        .route("/v1/completions", post(completions_route))
        // llama-server's spellings: the OpenAI routes without /v1, and its own /completion.
        .route("/chat/completions", post(chat_route))
        .route("/completions", post(completions_route))
        .route("/completion", post(native_route))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route("/metrics", get(misc::metrics))
        .fallback(|uri: Uri| async move { ApiError::not_found(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

/// The body, or the OpenAI-style error for one that is too large or unreadable.
pub(crate) fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError { status: StatusCode::PAYLOAD_TOO_LARGE, ..ApiError::bad("the request body is too large") }
        } else {
            ApiError::bad(format!("cannot read the request body: {r}"))
        }
    })
}

async fn chat_route(State(app): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let ready = app.ready(&headers)?;
        let body = body_or_error(body)?;
        chat::handle(&app, ready, &body).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn native_route(State(app): State<Shared>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let result = async {
        let ready = app.ready(&headers)?;
        let body = body_or_error(body)?;
        native::handle(&app, ready, &body).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions_route(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let ready = app.ready(&headers)?;
        let body = body_or_error(body)?;
        completions::handle(&app, ready, &body).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}
