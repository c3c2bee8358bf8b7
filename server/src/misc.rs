//! The small routes: health, models, tokenize/detokenize and Prometheus metrics.

use crate::app::App;
use crate::error::ApiError;
use crate::params;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// `GET /health`: 200 `{"status": "ok"}` once the model is loaded, 503 before (no key needed).
pub async fn health(State(app): State<Arc<App>>) -> Response {
    if app.ready.get().is_some() {
        Json(json!({ "status": "ok" })).into_response()
    } else if let Some(why) = app.failed.get() {
        ApiError::internal(format!("the model failed to load: {why}")).into_response()
    } else {
        ApiError::unavailable("Loading model", Some(1)).into_response()
    }
}

/// `GET /v1/models`: the model served and the adapters loaded with a name.
pub async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return e.into_response();
    }
    // The base model, then each adapter a request may name as its model.
    let mut data =
        vec![json!({ "id": app.model_name, "object": "model", "created": app.started, "owned_by": "lowbit" })];
    if let Some(ready) = app.ready.get() {
        data.extend(ready.scheduler.adapter_names().iter().map(|name| {
            json!({ "id": name, "object": "model", "created": app.started, "owned_by": "lowbit", "parent": app.model_name })
        }));
    }
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `POST /tokenize` `{"content": TEXT, "add_special": false}` → `{"tokens": [ids]}`.
pub async fn tokenize(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<Value, ApiError> {
        let ready = app.ready(&headers)?;
        let o = params::object(&crate::body_or_error(body)?)?;
        let text = o
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::param("content", "content must be a string"))?;
        let special = params::flag(&o, "add_special", false)?;
        let ids = ready.codec()?.encode(text, special).map_err(|e| ApiError::bad(e.to_string()))?;
        Ok(json!({ "tokens": ids }))
    };
    run().map_or_else(IntoResponse::into_response, |v| Json(v).into_response())
}

/// `POST /detokenize` `{"tokens": [ids]}` → `{"content": TEXT}`.
pub async fn detokenize(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<Value, ApiError> {
        let ready = app.ready(&headers)?;
        let o = params::object(&crate::body_or_error(body)?)?;
        let bad = || ApiError::param("tokens", "tokens must be a list of token ids");
        let list = o.get("tokens").and_then(Value::as_array).ok_or_else(bad)?;
        let vocab = ready.engine.model().config.vocab_size;
        let ids = list
            .iter()
            .map(|t| t.as_u64().filter(|&t| t < vocab as u64).map(|t| t as u32))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| {
                ApiError::param("tokens", format!("token ids must be integers below the vocabulary size {vocab}"))
            })?;
        let text = ready.codec()?.decode(&ids).map_err(|e| ApiError::bad(e.to_string()))?;
        Ok(json!({ "content": text }))
    };
    run().map_or_else(IntoResponse::into_response, |v| Json(v).into_response())
}

/// `GET /metrics`: Prometheus text exposition of the scheduler's counters.
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let ready = match app.ready(&headers) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let m = ready.scheduler.metrics();
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP lowbit_{name} {help}\n# TYPE lowbit_{name} {kind}\nlowbit_{name} {v}");
    };
    let requests = m.requests.load(Relaxed);
    put("requests_total", "counter", "Requests finished.", requests as f64);
    put(
        "requests_cancelled_total",
        "counter",
        "Requests cancelled (client gone) or failed.",
        m.cancelled.load(Relaxed) as f64,
    );
    put("prompt_tokens_total", "counter", "Prompt tokens prefilled.", m.prompt_tokens.load(Relaxed) as f64);
    put("generated_tokens_total", "counter", "Tokens generated.", m.generated_tokens.load(Relaxed) as f64);
    put("active_slots", "gauge", "Slots in use.", m.active_slots.load(Relaxed) as f64);
    put("queue_depth", "gauge", "Requests waiting for a slot.", m.queued.load(Relaxed) as f64);
    put(
        "time_to_first_token_seconds_sum",
        "counter",
        "Sum over finished requests of the time to their first token (divide by requests_total).",
        m.ttft_us.load(Relaxed) as f64 / 1e6,
    );
    let (steps, rows, us) = (m.decode_steps.load(Relaxed), m.decode_rows.load(Relaxed), m.decode_us.load(Relaxed));
    put("decode_steps_total", "counter", "Batched decode steps.", steps as f64);
    put("decode_rows_total", "counter", "Sequence-steps decoded (rows over all steps).", rows as f64);
    put("decode_seconds_total", "counter", "Time in decode steps.", us as f64 / 1e6);
    put(
        "time_per_output_token_seconds",
        "gauge",
        "Mean time of a decode step: what each running sequence waits per token.",
        if steps > 0 { us as f64 / 1e6 / steps as f64 } else { 0.0 },
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
