//! What every handler shares: the engine, its scheduler, the options, and request ids.

use crate::error::ApiError;
use axum::http::HeaderMap;
use lowbit_runtime::batch::{Event, Handle, Request, Scheduler, SubmitError};
use lowbit_runtime::{Engine, TextCodec};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A submitted request's events; dropping it cancels the request (a no-op once it finished).
pub struct Pending {
    /// The events, in order.
    pub rx: UnboundedReceiver<Event>,
    handle: Handle,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.handle.cancel();
    }
}

/// The loaded model and its scheduler.
pub struct Ready {
    /// The engine (model, tokenizer, stop ids).
    pub engine: Arc<Engine>,
    /// Continuous batching over it.
    pub scheduler: Scheduler,
}

/// Server state: ready once the model has loaded.
pub struct App {
    /// Set when loading finishes.
    pub ready: OnceLock<Ready>,
    /// Why loading failed, if it did.
    pub failed: OnceLock<String>,
    /// The name `/v1/models` reports and responses carry.
    pub model_name: String,
    /// Required bearer key, if any.
    pub api_key: Option<String>,
    /// Positions per sequence.
    pub context: usize,
    /// Reply length of a request that gives none ([`crate::ServeOptions::max_tokens`]).
    pub max_tokens: Option<usize>,
    next_id: AtomicU64,
    /// When the server started (Unix seconds), for `created` fields.
    pub started: u64,
}

impl App {
    /// State before the model has loaded.
    pub fn new(model_name: String, api_key: Option<String>, context: usize, max_tokens: Option<usize>) -> App {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        App {
            ready: OnceLock::new(),
            failed: OnceLock::new(),
            model_name,
            api_key,
            context,
            max_tokens,
            next_id: AtomicU64::new(1),
            started,
        }
    }

    /// The loaded model, once the bearer key (if required) checks out.
    pub fn ready(&self, headers: &HeaderMap) -> Result<&Ready, ApiError> {
        self.authorize(headers)?;
        self.ready.get().ok_or_else(|| match self.failed.get() {
            Some(why) => ApiError::internal(format!("the model failed to load: {why}")),
            None => ApiError::unavailable("Loading model", Some(1)),
        })
    }

    /// Checks `Authorization: Bearer KEY` when the server has a key.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else { return Ok(()) };
        let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time: a key is a secret.
        match given {
            Some(g) if g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0 => {
                Ok(())
            }
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Unix seconds now.
    pub fn now(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(self.started, |d| d.as_secs())
    }
}

impl Ready {
    /// The tokenizer and chat template.
    pub fn codec(&self) -> Result<&TextCodec, ApiError> {
        self.engine.codec().map_err(|e| ApiError::bad(format!("this model cannot take text: {e}")))
    }

    /// Queues `req`; its events arrive on the returned [`Pending`], and dropping it (a client
    /// that went away, even before its first token) cancels the request.
    pub fn submit(&self, req: Request) -> Result<Pending, ApiError> {
        let (tx, rx) = unbounded_channel();
        match self.scheduler.submit(req, Box::new(move |e| tx.send(e).is_ok())) {
            Ok(handle) => Ok(Pending { rx, handle }),
            Err(SubmitError::QueueFull(n)) => Err(ApiError::unavailable(
                format!("the server is busy: every slot is in use and {n} requests wait"),
                Some(1),
            )),
            Err(SubmitError::Invalid(why)) => Err(ApiError::bad(why)),
            Err(SubmitError::Stopped) => Err(ApiError::unavailable("the server is shutting down", None)),
        }
    }

    /// A seed for a request that gave none: different every request.
    pub fn fresh_seed(&self, id: u64) -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(id)
    }
}
