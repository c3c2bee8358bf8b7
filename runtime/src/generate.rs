//! The generation loop: prefill the prompt in one batched pass, then decode token by token
//! until a stop token or the token budget, timing both phases.

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::model::{Logits, Model};
use crate::sampler::Sampler;
use crate::text::TextCodec;
use std::time::{Duration, Instant};

/// Timings of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenStats {
    /// Tokens prefilled.
    pub prompt_tokens: usize,
    /// Time spent prefilling.
    pub prefill: Duration,
    /// Tokens generated.
    pub generated: usize,
    /// Time spent decoding (after the first token).
    pub decode: Duration,
    /// Generation stopped because the context was full (before the token budget or a stop
    /// token): no position was left for the last token generated.
    pub context_full: bool,
}

impl GenStats {
    /// Prefill tokens per second.
    /// (0 when nothing was prefilled.)
    pub fn prefill_tps(&self) -> f64 {
        if self.prefill.is_zero() {
            return 0.0;
        }
        self.prompt_tokens as f64 / self.prefill.as_secs_f64()
    }

    /// Decode tokens per second (the first generated token comes from the prefill).
    /// (0 when fewer than two tokens were generated.)
    pub fn decode_tps(&self) -> f64 {
        if self.generated < 2 || self.decode.is_zero() {
            return 0.0;
        }
        (self.generated - 1) as f64 / self.decode.as_secs_f64()
    }
}

/// Generates up to `max_tokens` after `prompt` (which is appended to what `cache` holds),
/// calling `on_token` with each new token; it returns `false` to stop early. Generation also
/// stops at any id in `stop` (which is not passed on), and when the context is full
/// ([`GenStats::context_full`]; a prompt that does not fit is an error).
pub fn generate(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenStats)> {
    generate_with_progress(model, cache, prompt, max_tokens, sampler, stop, &|_, _| {}, on_token)
}

/// [`generate`], calling `on_prefill(layers done, layers)` while the prompt is read.
#[allow(clippy::too_many_arguments)]
pub fn generate_with_progress(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    stop: &[u32],
    on_prefill: &dyn Fn(usize, usize),
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenStats)> {
    let mut stats = GenStats::default();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    if max_tokens == 0 || prompt.is_empty() {
        return Ok((out, stats));
    }
    stats.prompt_tokens = prompt.len();
    let start = Instant::now();
    let mut logits = model.forward_with_progress(cache, prompt, Logits::Last, on_prefill)?;
    stats.prefill = start.elapsed();
    let start = Instant::now();
    loop {
        let timer = model.profiler().start();
        let next = sampler.sample(&logits, &history, prompt.len());
        model.profiler().stop(timer, crate::profile::Phase::Decode, || "sampling".into());
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        history.push(next);
        stats.generated += 1;
        if !on_token(next) || out.len() >= max_tokens {
            break;
        }
        if !cache.fits(1) {
            stats.context_full = true;
            break;
        }
        logits = model.forward(cache, &[next], Logits::Last)?;
    }
    stats.decode = start.elapsed();
    Ok((out, stats))
}

/// Turns a growing list of ids into text pieces as they become complete UTF-8: byte-level and
/// byte-fallback tokenizers split characters across tokens, so a piece is only released once
/// the decoded text no longer ends in a replacement character.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// Adds a token and returns newly completed text, if any.
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = codec.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}
