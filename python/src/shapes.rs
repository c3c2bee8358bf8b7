//! The result dicts llama-cpp-python returns (OpenAI's shapes): whole completions and stream
//! chunks, built from the scheduler's events.

use lowbit_runtime::batch::outcome::{chat_logprobs, completion_logprobs};
use lowbit_runtime::batch::{Event, Outcome, Usage};
use lowbit_runtime::TextCodec;
use serde_json::{json, Value};

/// Which call a result answers.
pub enum Kind {
    /// `create_completion`: the prompt text when echoed, its ids, whether logprobs were asked.
    Completion { echo: Option<String>, prompt_ids: Vec<u32>, logprobs: bool },
    /// `create_chat_completion`.
    Chat { logprobs: bool },
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// The whole result of a finished request.
pub fn whole(kind: &Kind, id: &str, model: &str, c: &Outcome, codec: Option<&TextCodec>) -> Value {
    let choices: Vec<Value> = c
        .choices
        .iter()
        .enumerate()
        .map(|(i, ch)| match kind {
            Kind::Completion { echo, prompt_ids, logprobs } => {
                let text = echo.as_deref().unwrap_or_default().to_string() + &ch.text;
                let lp = logprobs.then(|| {
                    let prompt = echo.as_ref().map(|_| (&prompt_ids[..], &c.prompt_logprobs[..]));
                    completion_logprobs(codec, prompt, &ch.ids, &ch.logprobs)
                });
                json!({ "text": text, "index": i, "logprobs": lp, "finish_reason": ch.reason.map(|r| r.as_str()) })
            }
            Kind::Chat { logprobs } => json!({
                "index": i,
                "message": { "role": "assistant", "content": ch.text },
                "logprobs": logprobs.then(|| chat_logprobs(codec, &ch.ids, &ch.logprobs)),
                "finish_reason": ch.reason.map(|r| r.as_str()),
            }),
        })
        .collect();
    let object = match kind {
        Kind::Completion { .. } => "text_completion",
        Kind::Chat { .. } => "chat.completion",
    };
    json!({ "id": id, "object": object, "created": now(), "model": model, "choices": choices, "usage": usage(&c.usage) })
}

/// The chunks one event becomes in a stream, and whether the stream ends after them.
pub fn chunks(
    kind: &Kind,
    id: &str,
    model: &str,
    e: Event,
    first: bool,
    codec: Option<&TextCodec>,
) -> (Vec<Value>, bool) {
    let created = now();
    let chunk = |choice: Value| match kind {
        Kind::Completion { .. } => {
            json!({ "id": id, "object": "text_completion", "created": created, "model": model, "choices": [choice] })
        }
        Kind::Chat { .. } => {
            json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice] })
        }
    };
    let mut out = Vec::new();
    if first {
        match kind {
            Kind::Chat { .. } => out.push(chunk(
                json!({ "index": 0, "delta": { "role": "assistant" }, "logprobs": null, "finish_reason": null }),
            )),
            Kind::Completion { echo: Some(text), .. } => {
                out.push(chunk(json!({ "text": text, "index": 0, "logprobs": null, "finish_reason": null })))
            }
            Kind::Completion { .. } => {}
        }
    }
    let piece = |choice: usize, text: String, lp: Value, reason: Value| match kind {
        Kind::Completion { .. } => {
            chunk(json!({ "text": text, "index": choice, "logprobs": lp, "finish_reason": reason }))
        }
        Kind::Chat { .. } => {
            let delta = if text.is_empty() { json!({}) } else { json!({ "content": text }) };
            chunk(json!({ "index": choice, "delta": delta, "logprobs": lp, "finish_reason": reason }))
        }
    };
    match e {
        Event::Token { choice, id: tok, text, logprob } => {
            let lp = match (kind, logprob) {
                (Kind::Completion { logprobs: true, .. }, Some(l)) => completion_logprobs(codec, None, &[tok], &[l]),
                (Kind::Chat { logprobs: true }, Some(l)) => chat_logprobs(codec, &[tok], &[l]),
                _ => Value::Null,
            };
            if !text.is_empty() || !lp.is_null() {
                out.push(piece(choice, text, lp, Value::Null));
            }
            (out, false)
        }
        Event::PromptLogprobs { .. } => (out, false),
        Event::Done { choice, reason, text } => {
            out.push(piece(choice, text, Value::Null, json!(reason.as_str())));
            (out, false)
        }
        Event::Finished(_) | Event::Failed(_) => (out, true),
    }
}
