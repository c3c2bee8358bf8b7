//! A multi-turn chat over one KV cache: each turn renders the whole conversation with the
//! model's chat template and prefills only the tokens that are new since the last turn (the
//! rendered prefix is unchanged), starting over when the template renders earlier text
//! differently. When the context fills up, the oldest turns are dropped (the system prompt
//! stays), as a chat user expects, instead of ending the conversation.

use crate::error::{Result, RuntimeError};
use crate::kv_cache::KvCache;
use crate::model::Model;
use crate::text::{Message, TextCodec};

/// The state of one conversation.
#[derive(Debug)]
pub struct Conversation {
    messages: Vec<Message>,
    cache: KvCache,
    /// Every token the cache holds, in order.
    fed: Vec<u32>,
    context: usize,
    dropped: usize,
}

impl Conversation {
    /// An empty conversation with an optional system prompt and a cache of `context` positions.
    pub fn new(model: &Model, system: Option<&str>, context: usize) -> Conversation {
        let messages = system.map(|s| vec![Message { role: "system".into(), content: s.into() }]).unwrap_or_default();
        Conversation { messages, cache: model.new_cache(context), fed: Vec::new(), context, dropped: 0 }
    }

    /// Adds a user message and returns the tokens to prefill for the reply (what the cache
    /// lacks of the rendered conversation; run them in [`Conversation::cache`]). `reserve` positions are
    /// kept free for the reply: when the conversation would not leave them, its oldest turns are
    /// dropped (the system prompt stays) and the cache starts over; when even the new message
    /// alone does not fit, it is an error and the conversation is as it was.
    pub fn user_turn(&mut self, model: &Model, codec: &TextCodec, text: &str, reserve: usize) -> Result<Vec<u32>> {
        // Trim a copy: a message that cannot fit leaves the conversation as it was.
        let mut messages = self.messages.clone();
        messages.push(Message { role: "user".into(), content: text.into() });
        let mut ids = codec.encode(&codec.apply_chat_template(&messages, true)?, false)?;
        let first = usize::from(messages.first().is_some_and(|m| m.role == "system"));
        let mut dropped = 0;
        while ids.len() + reserve > self.context && messages.len() > first + 1 {
            // The oldest exchange after the system prompt: a user message and its reply.
            let n = if messages.get(first + 1).is_some_and(|m| m.role == "assistant") { 2 } else { 1 };
            messages.drain(first..first + n);
            dropped += n;
            ids = codec.encode(&codec.apply_chat_template(&messages, true)?, false)?;
        }
        if ids.len() + reserve > self.context {
            return Err(RuntimeError::ContextFull { tokens: ids.len() + reserve, context: self.context });
        }
        self.messages = messages;
        self.dropped += dropped;
        let common = self.fed.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if common < self.fed.len() {
            // Turns were dropped, or the template re-rendered earlier text differently: start over.
            self.cache = model.new_cache(self.context);
            self.fed.clear();
        }
        Ok(ids[self.fed.len()..].to_vec())
    }

    /// The cache the turns run in.
    pub fn cache(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// Forgets every turn but the system prompt.
    pub fn clear(&mut self, model: &Model) {
        let keep = usize::from(self.messages.first().is_some_and(|m| m.role == "system"));
        self.messages.truncate(keep);
        self.cache = model.new_cache(self.context);
        self.fed.clear();
    }

    /// How many messages have been dropped to make room so far.
    pub fn dropped_messages(&self) -> usize {
        self.dropped
    }

    /// Records the reply generated after `prompt` (the tokens [`Conversation::user_turn`]
    /// returned, now in the cache together with `reply`).
    pub fn assistant_turn(&mut self, codec: &TextCodec, prompt: &[u32], reply: &[u32]) -> Result<()> {
        self.fed.extend_from_slice(prompt);
        self.fed.extend_from_slice(reply);
        // The last sampled token (or, with nothing generated, the prompt) may not have run
        // through the model: the cache holds what it holds, and the next turn prefills the rest.
        self.fed.truncate(self.cache.len);
        self.messages.push(Message { role: "assistant".into(), content: codec.decode(reply)? });
        Ok(())
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Tokens in the cache.
    pub fn cached_tokens(&self) -> usize {
        self.fed.len()
    }
}
