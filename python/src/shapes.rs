//! The result dicts llama-cpp-python returns (OpenAI's shapes): whole completions and stream
//! chunks, built from the scheduler's events.

use lowbit_runtime::batch::{Event, FinishReason, TokenLogprob, Usage};
use lowbit_runtime::TextCodec;
use serde_json::{json, Map, Value};

/// Which call a result answers.
pub enum Kind {
    /// `create_completion`: the prompt text when echoed, its ids, whether logprobs were asked.
    Completion { echo: Option<String>, prompt_ids: Vec<u32>, logprobs: bool },
    /// `create_chat_completion`.
    Chat { logprobs: bool },
}

/// One completion's events gathered.
#[derive(Default, Clone)]
pub struct ChoiceOut {
    pub ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub reason: Option<FinishReason>,
}

/// A request's events gathered.
pub struct Collected {
    pub choices: Vec<ChoiceOut>,
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub usage: Usage,
}

impl Collected {
    pub fn new(n: usize) -> Collected {
        Collected { choices: vec![ChoiceOut::default(); n], prompt_logprobs: Vec::new(), usage: Usage::default() }
    }

    /// Adds an event; true once the request has finished.
    pub fn push(&mut self, e: Event) -> bool {
        match e {
            Event::Token { choice, id, text, logprob } => {
                let c = &mut self.choices[choice];
                c.ids.push(id);
                c.text += &text;
                c.logprobs.extend(logprob);
            }
            Event::PromptLogprobs { items, .. } => self.prompt_logprobs.extend(items),
            Event::Done { choice, reason, text } => {
                self.choices[choice].text += &text;
                self.choices[choice].reason = Some(reason);
            }
            Event::Finished(u) => {
                self.usage = u;
                return true;
            }
            Event::Failed(_) => return true,
        }
        false
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn token_text(codec: Option<&TextCodec>, id: u32) -> String {
    codec.and_then(|c| c.decode(&[id]).ok()).unwrap_or_default()
}

fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn top(codec: Option<&TextCodec>, l: &TokenLogprob) -> Value {
    Value::Object(l.top.iter().map(|&(t, lp)| (token_text(codec, t), json!(lp))).collect::<Map<_, _>>())
}

/// llama-cpp-python's completion `logprobs`: tokens, their log-probabilities, the top
/// alternatives and character offsets (with `echo`, the prompt's first; its first token has none).
fn completion_logprobs(codec: Option<&TextCodec>, prompt: Option<(&[u32], &[TokenLogprob])>, c: &ChoiceOut) -> Value {
    let (mut tokens, mut lps, mut tops) = (Vec::new(), Vec::new(), Vec::new());
    if let Some((ids, plp)) = prompt {
        for (i, &id) in ids.iter().enumerate() {
            tokens.push(token_text(codec, id));
            match i.checked_sub(1).and_then(|k| plp.get(k)) {
                Some(l) => {
                    lps.push(json!(l.logprob));
                    tops.push(top(codec, l));
                }
                None => {
                    lps.push(Value::Null);
                    tops.push(Value::Null);
                }
            }
        }
    }
    for (&id, l) in c.ids.iter().zip(&c.logprobs) {
        tokens.push(token_text(codec, id));
        lps.push(json!(l.logprob));
        tops.push(top(codec, l));
    }
    let mut at = 0usize;
    let offsets: Vec<usize> = tokens
        .iter()
        .map(|t| {
            let o = at;
            at += t.chars().count();
            o
        })
        .collect();
    json!({ "tokens": tokens, "text_offset": offsets, "token_logprobs": lps, "top_logprobs": tops })
}

fn chat_logprobs(codec: Option<&TextCodec>, ids: &[u32], lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(codec, id);
        json!({ "token": t, "logprob": lp, "bytes": t.as_bytes() })
    };
    let content: Vec<Value> = ids
        .iter()
        .zip(lps)
        .map(|(&id, l)| {
            let mut v = entry(id, l.logprob);
            v["top_logprobs"] = Value::Array(l.top.iter().map(|&(t, lp)| entry(t, lp)).collect());
            v
        })
        .collect();
    json!({ "content": content })
}

/// The whole result of a finished request.
pub fn whole(kind: &Kind, id: &str, model: &str, c: &Collected, codec: Option<&TextCodec>) -> Value {
    let choices: Vec<Value> = c
        .choices
        .iter()
        .enumerate()
        .map(|(i, ch)| match kind {
            Kind::Completion { echo, prompt_ids, logprobs } => {
                let text = echo.as_deref().unwrap_or_default().to_string() + &ch.text;
                let lp = logprobs.then(|| {
                    let prompt = echo.as_ref().map(|_| (&prompt_ids[..], &c.prompt_logprobs[..]));
                    completion_logprobs(codec, prompt, ch)
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
                (Kind::Completion { logprobs: true, .. }, Some(l)) => completion_logprobs(
                    codec,
                    None,
                    &ChoiceOut { ids: vec![tok], logprobs: vec![l], ..Default::default() },
                ),
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
