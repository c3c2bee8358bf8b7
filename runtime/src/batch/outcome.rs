//! A request's events gathered into its result, and the log-probability objects of OpenAI's API
//! that both front ends (the HTTP server and the Python binding) return.

use super::request::{Event, FinishReason, TokenLogprob, Usage};
use crate::text::TextCodec;
use serde_json::{json, Map, Value};

/// One completion's events gathered.
#[derive(Debug, Default, Clone)]
pub struct Choice {
    /// Generated ids.
    pub ids: Vec<u32>,
    /// Generated text (stop strings left out).
    pub text: String,
    /// Per generated token, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// Why it ended.
    pub reason: Option<FinishReason>,
}

/// A request's events gathered.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Its completions.
    pub choices: Vec<Choice>,
    /// Prompt tokens' log-probabilities from position 1, when asked for.
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Counts and times, once finished.
    pub usage: Usage,
}

impl Outcome {
    /// Nothing yet, for a request with `n` completions.
    pub fn new(n: usize) -> Outcome {
        Outcome { choices: vec![Choice::default(); n], ..Outcome::default() }
    }

    /// Adds an event: `Ok(true)` once the request has finished, `Err` with the reason if it failed.
    pub fn push(&mut self, e: Event) -> Result<bool, String> {
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
                return Ok(true);
            }
            Event::Failed(why) => return Err(why),
        }
        Ok(false)
    }
}

/// The text of one token as OpenAI's logprobs list it (a piece of a multi-byte character shows
/// as U+FFFD).
pub fn token_text(codec: Option<&TextCodec>, id: u32) -> String {
    codec.and_then(|c| c.decode(&[id]).ok()).unwrap_or_default()
}

/// `{token: logprob}` of one step's alternatives.
fn top(codec: Option<&TextCodec>, l: &TokenLogprob) -> Value {
    Value::Object(l.top.iter().map(|&(t, lp)| (token_text(codec, t), json!(lp))).collect::<Map<_, _>>())
}

/// The legacy completions `logprobs` object: tokens, their log-probabilities, the top
/// alternatives and each token's character offset. With `prompt` (echo: its ids and the
/// log-probabilities of its tokens from position 1) the prompt's tokens come first, the first
/// without a log-probability.
pub fn completion_logprobs(
    codec: Option<&TextCodec>,
    prompt: Option<(&[u32], &[TokenLogprob])>,
    ids: &[u32],
    lps: &[TokenLogprob],
) -> Value {
    let (mut tokens, mut values, mut tops) = (Vec::new(), Vec::new(), Vec::new());
    if let Some((pids, plp)) = prompt {
        for (i, &id) in pids.iter().enumerate() {
            tokens.push(token_text(codec, id));
            match i.checked_sub(1).and_then(|k| plp.get(k)) {
                Some(l) => {
                    values.push(json!(l.logprob));
                    tops.push(top(codec, l));
                }
                None => {
                    values.push(Value::Null);
                    tops.push(Value::Null);
                }
            }
        }
    }
    for (&id, l) in ids.iter().zip(lps) {
        tokens.push(token_text(codec, id));
        values.push(json!(l.logprob));
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
    json!({ "tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets })
}

/// The chat `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(codec: Option<&TextCodec>, ids: &[u32], lps: &[TokenLogprob]) -> Value {
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
