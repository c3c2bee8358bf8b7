//! `POST /v1/chat/completions`: messages through the model's chat template, answered as a
//! `chat.completion` object or streamed as `chat.completion.chunk` events.

use crate::app::{App, Ready};
use crate::error::ApiError;
use crate::outcome::{collect, log_line, sse, Translate};
use crate::params::{self, Body};
use axum::response::{IntoResponse, Response};
use lowbit_runtime::batch::outcome::chat_logprobs;
use lowbit_runtime::batch::{Event, Request};
use lowbit_runtime::Message;
use serde_json::{json, Value};

/// Handles one chat request.
pub async fn handle(app: &App, ready: &Ready, body: &[u8]) -> Result<Response, ApiError> {
    let o = params::object(body)?;
    let codec = ready.codec()?;
    if !codec.has_template() {
        return Err(ApiError::bad("this model has no chat template; use /v1/completions"));
    }
    let messages = messages(&o)?;
    let text = codec.apply_chat_template(&messages, true).map_err(|e| ApiError::bad(e.to_string()))?;
    let prompt = codec.encode(&text, false).map_err(|e| ApiError::bad(e.to_string()))?;
    let id = app.next_id();
    let logprobs = params::flag(&o, "logprobs", false)?;
    let top = params::top_logprobs(&o, "top_logprobs")?;
    let n = params::count(&o, "n", 1, 256)? as usize;
    let req = Request {
        prompt,
        max_tokens: params::max_tokens(&o, app.max_tokens.unwrap_or(app.context) as u64, app.context)?,
        sampling: params::sampling(&o, ready.fresh_seed(id))?,
        stop: params::stops(&o)?,
        n,
        logprobs: logprobs.then_some(top),
        ignore_eos: params::flag(&o, "ignore_eos", false)?,
        adapter: params::adapter(&o, ready.scheduler.adapter_names())?,
        ..Request::default()
    };
    let stream = params::flag(&o, "stream", false)?;
    let include_usage = match o.get("stream_options") {
        Some(Value::Object(so)) => params::flag(so, "include_usage", false)?,
        None | Some(Value::Null) => false,
        Some(_) => return Err(ApiError::param("stream_options", "stream_options must be an object")),
    };
    let rx = ready.submit(req)?;
    let rid = format!("chatcmpl-{id}");
    let (created, model) = (app.now(), app.model_name.clone());
    if stream {
        let engine = ready.engine.clone();
        let head = json!({ "id": rid, "object": "chat.completion.chunk", "created": created, "model": model });
        let chunk = move |choices: Value| {
            let mut c = head.clone();
            c["choices"] = choices;
            c.to_string()
        };
        let first = (0..n)
            .map(|i| {
                chunk(json!([{ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }]))
            })
            .collect();
        let translate: Translate = Box::new(move |e| match e {
            Event::Token { choice, id, text, logprob } => {
                if text.is_empty() && logprob.is_none() {
                    return (Vec::new(), false);
                }
                let lp = logprob.map(|l| chat_logprobs(engine.codec().ok(), &[id], &[l]));
                let c =
                    json!([{ "index": choice, "delta": { "content": text }, "logprobs": lp, "finish_reason": null }]);
                (vec![chunk(c)], false)
            }
            Event::PromptLogprobs { .. } => (Vec::new(), false),
            Event::Done { choice, reason, text } => {
                let mut out = Vec::new();
                if !text.is_empty() {
                    out.push(chunk(json!([{ "index": choice, "delta": { "content": text }, "logprobs": null, "finish_reason": null }])));
                }
                out.push(chunk(
                    json!([{ "index": choice, "delta": {}, "logprobs": null, "finish_reason": reason.as_str() }]),
                ));
                (out, false)
            }
            Event::Finished(u) => {
                log_line(&format!("chatcmpl-{id}"), "chat", &u);
                let mut out = Vec::new();
                if include_usage {
                    let mut c: Value = serde_json::from_str(&chunk(json!([]))).expect("made above");
                    c["usage"] = usage(&u);
                    out.push(c.to_string());
                }
                (out, true)
            }
            Event::Failed(why) => (vec![ApiError::internal(why).body().to_string()], true),
        });
        return Ok(sse(first, rx, translate, true));
    }
    let out = collect(rx, n).await?;
    log_line(&rid, "chat", &out.usage);
    let choices: Vec<Value> = out
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let lp = logprobs.then(|| chat_logprobs(Some(codec), &c.ids, &c.logprobs));
            json!({
                "index": i,
                "message": { "role": "assistant", "content": c.text },
                "logprobs": lp,
                "finish_reason": c.reason.map(|r| r.as_str()),
            })
        })
        .collect();
    let body = json!({
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(&out.usage),
    });
    Ok(axum::Json(body).into_response())
}

/// OpenAI's usage object.
pub fn usage(u: &lowbit_runtime::batch::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// `messages`: a non-empty list of `{role, content}`, content a string or a list of text parts.
fn messages(o: &Body) -> Result<Vec<Message>, ApiError> {
    let bad = |m: &str| ApiError::param("messages", m.to_string());
    let Some(Value::Array(list)) = o.get("messages") else {
        return Err(bad("messages must be a list of {\"role\", \"content\"} objects"));
    };
    if list.is_empty() {
        return Err(bad("messages is empty"));
    }
    list.iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| bad("every message needs a string role"))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => Ok(t),
                        _ => Err(bad("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported")),
                    })
                    .collect::<Result<String, _>>()?,
                // An assistant message that only called tools has no content.
                None | Some(Value::Null) => String::new(),
                Some(_) => return Err(bad("message content must be a string or a list of text parts")),
            };
            Ok(Message { role: role.to_string(), content })
        })
        .collect()
}
