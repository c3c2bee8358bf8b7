//! What a caller asks of the scheduler, and what it hears back.

use crate::sampler::SamplerConfig;
use std::time::Duration;

/// One generation request: a tokenized prompt and how to continue it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The prompt's token ids (the chat template already applied, if any).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most, per completion.
    pub max_tokens: usize,
    /// Sampling; completion `i` of `n` uses seed `seed + i`.
    pub sampling: SamplerConfig,
    /// Text that ends a completion where it appears (left out of the text).
    pub stop: Vec<String>,
    /// Completions of the prompt, which is prefilled once and shared.
    pub n: usize,
    /// Report each generated token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Report the log-probability of every prompt token after the first (and this many most
    /// likely alternatives), as OpenAI's `echo` with `logprobs` does: scoring a given text.
    pub prompt_logprobs: Option<usize>,
    /// Keep going past end-of-sequence tokens (benchmarks: every request runs `max_tokens`).
    pub ignore_eos: bool,
    /// A named run-time LoRA adapter to apply ([`crate::RuntimeOptions::named_adapters`]).
    pub adapter: Option<AdapterChoice>,
}

/// A named adapter a request runs with, and the multiplier of its update (1 = as loaded).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterChoice {
    /// Its name.
    pub name: String,
    /// Multiplies its update.
    pub scale: f32,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            prompt: Vec::new(),
            max_tokens: 16,
            sampling: SamplerConfig::default(),
            stop: Vec::new(),
            n: 1,
            logprobs: None,
            prompt_logprobs: None,
            ignore_eos: false,
            adapter: None,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Stop,
    /// One of the request's stop strings (OpenAI calls it `stop` too; llama-server's own
    /// endpoint tells it apart).
    StopString,
    /// `max_tokens` reached, or the context is full.
    Length,
}

impl FinishReason {
    /// The OpenAI name (`stop`, `length`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopString => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A generated token's log-probability under the model (before sampling settings), with the
/// most likely alternatives at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Counts and times of a finished request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens (prefilled once for all completions).
    pub prompt_tokens: usize,
    /// Tokens generated over all completions.
    pub completion_tokens: usize,
    /// From submission to the first generated token.
    pub time_to_first_token: Duration,
    /// From submission to the end.
    pub total: Duration,
    /// Time spent waiting for a slot.
    pub queued: Duration,
}

/// What the scheduler reports about a request, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token of completion `choice` and the text it completes (possibly empty: a
    /// character split across tokens, or text that may begin a stop string, waits).
    Token {
        /// Which completion.
        choice: usize,
        /// The token id.
        id: u32,
        /// Text released with it.
        text: String,
        /// Its log-probability, if asked for.
        logprob: Option<TokenLogprob>,
    },
    /// Log-probabilities of the prompt tokens at positions `start ..` (sent as prefill goes,
    /// before any generated token; position 0 has none).
    PromptLogprobs {
        /// Position of the first item.
        start: usize,
        /// One per prompt token.
        items: Vec<TokenLogprob>,
    },
    /// Completion `choice` ended; `text` is what was still held back (usually empty).
    Done {
        /// Which completion.
        choice: usize,
        /// Why it ended.
        reason: FinishReason,
        /// Text released at the end.
        text: String,
    },
    /// Every completion ended; the last event of a request.
    Finished(Usage),
    /// The request failed (nothing else follows).
    Failed(String),
}
