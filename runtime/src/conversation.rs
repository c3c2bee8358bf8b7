//! A multi-turn chat over one KV cache: each turn renders the whole conversation with the
//! model's chat template and prefills only the tokens that are new since the last turn (the
//! rendered prefix is unchanged), starting over when the template renders earlier text
//! differently.

use crate::error::Result;
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
}

impl Conversation {
    /// An empty conversation with an optional system prompt and a cache of `context` positions.
    pub fn new(model: &Model, system: Option<&str>, context: usize) -> Conversation {
        let messages = system.map(|s| vec![Message { role: "system".into(), content: s.into() }]).unwrap_or_default();
        Conversation { messages, cache: model.new_cache(context), fed: Vec::new(), context }
    }

    /// Adds a user message and returns the tokens to prefill for the reply (what the cache
    /// lacks of the rendered conversation), with the cache to run them in.
    pub fn user_turn(&mut self, model: &Model, codec: &TextCodec, text: &str) -> Result<(Vec<u32>, &mut KvCache)> {
        self.messages.push(Message { role: "user".into(), content: text.into() });
        let ids = codec.encode(&codec.apply_chat_template(&self.messages, true)?, false)?;
        let common = self.fed.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if common < self.fed.len() {
            // The template re-rendered earlier text differently: start over.
            self.cache = model.new_cache(self.context);
            self.fed.clear();
        }
        let new = ids[self.fed.len()..].to_vec();
        Ok((new, &mut self.cache))
    }

    /// Records the reply generated after `prompt` (the tokens [`Conversation::user_turn`]
    /// returned, now in the cache together with `reply`).
    pub fn assistant_turn(&mut self, codec: &TextCodec, prompt: &[u32], reply: &[u32]) -> Result<()> {
        self.fed.extend_from_slice(prompt);
        self.fed.extend_from_slice(reply);
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
