//! `POST /v1/completions`: plain text completion, with `echo` and `logprobs` — together with
//! `max_tokens: 0` the way to score a given text (a reference model in an RL loop).

use crate::app::{App, Ready};
use crate::chat::usage;
use crate::error::ApiError;
use crate::outcome::{collect, log_line, sse, Translate};
use crate::params::{self, Body};
use axum::response::{IntoResponse, Response};
use lowbit_runtime::batch::outcome::completion_logprobs;
use lowbit_runtime::batch::{Event, Request, Usage};
use lowbit_runtime::TextCodec;
use serde_json::{json, Value};

/// One prompt as given: its token ids and its text (for `echo`).
pub(crate) struct Prompt {
    pub(crate) ids: Vec<u32>,
    pub(crate) text: String,
}

/// Handles one completions request.
pub async fn handle(app: &App, ready: &Ready, body: &[u8]) -> Result<Response, ApiError> {
    let o = params::object(body)?;
    let codec = ready.engine.codec().ok();
    let prompts = prompts(&o, codec)?;
    let echo = params::flag(&o, "echo", false)?;
    let logprobs = match o.get("logprobs") {
        None | Some(Value::Null) => None,
        // Chat's boolean form, which some clients send here too.
        Some(Value::Bool(b)) => b.then_some(0),
        Some(_) => Some(params::top_logprobs(&o, "logprobs")?),
    };
    let n = params::count(&o, "n", 1, 256)? as usize;
    let stream = params::flag(&o, "stream", false)?;
    if stream && prompts.len() > 1 {
        return Err(ApiError::param("prompt", "stream one prompt at a time"));
    }
    let id = app.next_id();
    let sampling = params::sampling(&o, ready.fresh_seed(id))?;
    let base = Request {
        max_tokens: params::max_tokens(&o, app.max_tokens.unwrap_or(16) as u64, app.context)?,
        sampling,
        stop: params::stops(&o)?,
        n,
        logprobs,
        prompt_logprobs: if echo { logprobs } else { None },
        ignore_eos: params::flag(&o, "ignore_eos", false)?,
        adapter: params::adapter(&o, ready.scheduler.adapter_names())?,
        ..Request::default()
    };
    let rid = format!("cmpl-{id}");
    let (created, model) = (app.now(), app.model_name.clone());
    let head = json!({ "id": rid, "object": "text_completion", "created": created, "model": model });
    // Submitted together, so several prompts run side by side.
    let mut pending = Vec::new();
    for p in &prompts {
        pending.push(ready.submit(Request { prompt: p.ids.clone(), ..base.clone() })?);
    }
    if stream {
        let rx = pending.pop().expect("one prompt");
        let chunk = move |index: usize, text: String, lp: Value, reason: Value| {
            let mut c = head.clone();
            c["choices"] = json!([{ "index": index, "text": text, "logprobs": lp, "finish_reason": reason }]);
            c.to_string()
        };
        let first = if echo {
            (0..n).map(|i| chunk(i, prompts[0].text.clone(), Value::Null, Value::Null)).collect()
        } else {
            Vec::new()
        };
        let engine = ready.engine.clone();
        let translate: Translate = Box::new(move |e| match e {
            Event::Token { choice, id, text, logprob } => {
                let lp = logprob.map(|l| completion_logprobs(engine.codec().ok(), None, &[id], &[l]));
                (vec![chunk(choice, text, lp.unwrap_or(Value::Null), Value::Null)], false)
            }
            Event::PromptLogprobs { .. } => (Vec::new(), false),
            Event::Done { choice, reason, text } => {
                (vec![chunk(choice, text, Value::Null, json!(reason.as_str()))], false)
            }
            Event::Finished(u) => {
                log_line(&format!("cmpl-{id}"), "completions", &u);
                (Vec::new(), true)
            }
            Event::Failed(why) => (vec![ApiError::internal(why).body().to_string()], true),
        });
        return Ok(sse(first, rx, translate, true));
    }
    let mut choices = Vec::new();
    let mut total = Usage::default();
    for (p, rx) in prompts.iter().zip(pending) {
        let out = collect(rx, n).await?;
        for c in &out.choices {
            let text = if echo { p.text.clone() + &c.text } else { c.text.clone() };
            let prompt = echo.then_some((&p.ids[..], &out.prompt_logprobs[..]));
            let lp = logprobs.map_or(Value::Null, |_| completion_logprobs(codec, prompt, &c.ids, &c.logprobs));
            choices.push(json!({
                "index": choices.len(),
                "text": text,
                "logprobs": lp,
                "finish_reason": c.reason.map(|r| r.as_str()),
            }));
        }
        total.prompt_tokens += out.usage.prompt_tokens;
        total.completion_tokens += out.usage.completion_tokens;
        total.time_to_first_token = total.time_to_first_token.max(out.usage.time_to_first_token);
        total.total = total.total.max(out.usage.total);
        total.queued = total.queued.max(out.usage.queued);
    }
    log_line(&rid, "completions", &total);
    let mut body = head;
    body["choices"] = Value::Array(choices);
    body["usage"] = usage(&total);
    Ok(axum::Json(body).into_response())
}

/// `prompt`: a string, a list of strings, a list of token ids or a list of such lists.
pub(crate) fn prompts(o: &Body, codec: Option<&TextCodec>) -> Result<Vec<Prompt>, ApiError> {
    let bad = |m: &str| ApiError::param("prompt", m.to_string());
    let text = |s: &str| -> Result<Prompt, ApiError> {
        let codec = codec.ok_or_else(|| bad("this model has no tokenizer: give token ids"))?;
        Ok(Prompt { ids: codec.encode(s, true).map_err(|e| bad(&e.to_string()))?, text: s.to_string() })
    };
    let ids = |v: &[Value]| -> Result<Prompt, ApiError> {
        let ids = v
            .iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| bad("token ids must be non-negative integers"))?;
        let text = codec.and_then(|c| c.decode(&ids).ok()).unwrap_or_default();
        Ok(Prompt { ids, text })
    };
    let list = match o.get("prompt") {
        Some(Value::String(s)) => vec![text(s)?],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => vec![ids(a)?],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|p| match p {
                Value::String(s) => text(s),
                Value::Array(t) => ids(t),
                _ => Err(bad("prompt must be a string, a list of strings or a list of token ids")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("prompt must be a string, a list of strings or a list of token ids")),
    };
    if list.len() > 64 {
        return Err(bad("at most 64 prompts a request"));
    }
    Ok(list)
}
