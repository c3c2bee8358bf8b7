//! `POST /completion`: llama-server's own completion endpoint, for clients written against it
//! (`n_predict`, `content`, `stop`, `tokens_predicted`, …): translated into the same request
//! the OpenAI endpoints make, on the same scheduler.

use crate::app::{App, Ready};
use crate::completions::prompts;
use crate::error::ApiError;
use crate::outcome::{collect, log_line, sse, Translate};
use crate::params::{self, Body};
use axum::response::{IntoResponse, Response};
use lowbit_runtime::batch::{Event, FinishReason, Request, Usage};
use serde_json::{json, Value};

/// Handles one `/completion` request.
pub async fn handle(app: &App, ready: &Ready, body: &[u8]) -> Result<Response, ApiError> {
    let mut o = params::object(body)?;
    // llama-server's sampling defaults where the request leaves them out, and its seed -1 for
    // a fresh one.
    for (k, v) in [("temperature", json!(0.8)), ("top_k", json!(40)), ("top_p", json!(0.95)), ("min_p", json!(0.05))] {
        if o.get(k).is_none_or(Value::is_null) {
            o.insert(k.into(), v);
        }
    }
    if o.get("seed").and_then(Value::as_i64).is_some_and(|s| s < 0) {
        o.remove("seed");
    }
    let stream = params::flag(&o, "stream", false)?;
    let mut prompt = prompts(&o, ready.engine.codec().ok())?;
    if prompt.len() != 1 {
        return Err(ApiError::param("prompt", "give one prompt"));
    }
    let prompt = prompt.remove(0);
    let id = app.next_id();
    let req = Request {
        prompt: prompt.ids,
        max_tokens: n_predict(&o, app)?,
        sampling: params::sampling(&o, ready.fresh_seed(id))?,
        stop: params::stops(&o)?,
        ignore_eos: params::flag(&o, "ignore_eos", false)?,
        adapter: params::adapter(&o, ready.scheduler.adapter_names())?,
        ..Request::default()
    };
    let rid = format!("completion-{id}");
    let model = app.model_name.clone();
    let rx = ready.submit(req)?;
    if stream {
        let mut why = None;
        let translate: Translate = Box::new(move |e| match e {
            Event::Token { text, id, .. } => {
                (vec![json!({ "content": text, "tokens": [id], "stop": false }).to_string()], false)
            }
            Event::Done { text, reason, .. } => {
                why = Some(reason);
                let tail =
                    (!text.is_empty()).then(|| json!({ "content": text, "tokens": [], "stop": false }).to_string());
                (tail.into_iter().collect(), false)
            }
            Event::PromptLogprobs { .. } => (Vec::new(), false),
            Event::Finished(u) => {
                log_line(&rid, "completion", &u);
                let mut last = summary(&model, &u, why);
                last["content"] = json!("");
                (vec![last.to_string()], true)
            }
            Event::Failed(why) => (vec![ApiError::internal(why).body().to_string()], true),
        });
        // llama-server's own stream ends with the `"stop": true` object, without `[DONE]`.
        return Ok(sse(Vec::new(), rx, translate, false));
    }
    let out = collect(rx, 1).await?;
    log_line(&rid, "completion", &out.usage);
    let c = &out.choices[0];
    let mut body = summary(&model, &out.usage, c.reason);
    body["content"] = json!(c.text);
    body["tokens"] = json!(c.ids);
    Ok(axum::Json(body).into_response())
}

/// `n_predict` (llama-server's name; -1, the default, is no limit but the context's),
/// else `max_tokens`, else the server's `-n`.
fn n_predict(o: &Body, app: &App) -> Result<usize, ApiError> {
    match o.get("n_predict") {
        None | Some(Value::Null) => params::max_tokens(o, app.max_tokens.unwrap_or(app.context) as u64, app.context),
        Some(v) => match v.as_i64() {
            Some(n) if n < 0 => Ok(app.context),
            Some(n) => Ok((n as u64).min(app.context as u64) as usize),
            None => Err(ApiError::param("n_predict", "n_predict must be an integer (-1: no limit)")),
        },
    }
}

/// The closing fields of a reply: counts, why it stopped (`stop_type` `eos`, `word` for a stop
/// string, `limit` for a reply cut at its length or the context), timings — llama-server's
/// names.
fn summary(model: &str, u: &Usage, reason: Option<FinishReason>) -> Value {
    let predicted_ms = u.total.saturating_sub(u.time_to_first_token).as_secs_f64() * 1e3;
    let per_second = if predicted_ms > 0.0 { u.completion_tokens as f64 / (predicted_ms / 1e3) } else { 0.0 };
    let limit = reason == Some(FinishReason::Length);
    json!({
        "model": model,
        "stop": true,
        "tokens_predicted": u.completion_tokens,
        "tokens_evaluated": u.prompt_tokens,
        "stop_type": match reason {
            Some(FinishReason::Length) => "limit",
            Some(FinishReason::StopString) => "word",
            _ => "eos",
        },
        "stopped_limit": limit,
        "timings": {
            "prompt_n": u.prompt_tokens,
            "prompt_ms": u.time_to_first_token.saturating_sub(u.queued).as_secs_f64() * 1e3,
            "predicted_n": u.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_second": per_second,
        },
    })
}
