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
    let o = params::object(body)?;
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
    if params::flag(&o, "stream", false)? {
        let translate: Translate = Box::new(move |e| match e {
            Event::Token { text, .. } => (vec![json!({ "content": text, "stop": false }).to_string()], false),
            Event::Done { text, .. } if !text.is_empty() => {
                (vec![json!({ "content": text, "stop": false }).to_string()], false)
            }
            Event::PromptLogprobs { .. } | Event::Done { .. } => (Vec::new(), false),
            Event::Finished(u) => {
                log_line(&rid, "completion", &u);
                let mut last = summary(&model, &u, None);
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

/// The closing fields of a reply: counts, why it stopped, timings (llama-server's names).
fn summary(model: &str, u: &Usage, reason: Option<FinishReason>) -> Value {
    let predicted_ms = u.total.saturating_sub(u.time_to_first_token).as_secs_f64() * 1e3;
    let per_second = if u.completion_tokens > 1 && predicted_ms > 0.0 {
        (u.completion_tokens - 1) as f64 / (predicted_ms / 1e3)
    } else {
        0.0
    };
    json!({
        "model": model,
        "stop": true,
        "tokens_predicted": u.completion_tokens,
        "tokens_evaluated": u.prompt_tokens,
        "stopped_limit": reason == Some(FinishReason::Length),
        "timings": {
            "prompt_n": u.prompt_tokens,
            "prompt_ms": u.time_to_first_token.saturating_sub(u.queued).as_secs_f64() * 1e3,
            "predicted_n": u.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_second": per_second,
        },
    })
}
