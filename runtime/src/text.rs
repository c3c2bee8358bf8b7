//! Text in and out: the tokenizer embedded in the file (`tokenizers`) and the chat template
//! from `tokenizer_config.json` (rendered with `minijinja`, as transformers renders its Jinja).

use crate::error::{Result, RuntimeError};
use lowbit_format::Metadata;
use minijinja::{context, Environment, UndefinedBehavior};
use serde_json::Value;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    /// Text.
    pub content: String,
}

/// Tokenizer plus chat template.
pub struct TextCodec {
    tokenizer: tokenizers::Tokenizer,
    template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec").field("template", &self.template.is_some()).finish()
    }
}

fn special(cfg: Option<&Value>, key: &str) -> Option<String> {
    match cfg?.get(key)? {
        Value::String(s) => Some(s.clone()),
        // Older tokenizer_config files store {"content": "<s>", ...}.
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TextCodec {
    /// Loads the tokenizer and template from a model file's metadata.
    pub fn from_metadata(meta: &Metadata) -> Result<TextCodec> {
        let json = meta.tokenizer_json.as_deref().ok_or_else(|| {
            RuntimeError::Tokenizer("this model file has no tokenizer; use token ids (--tokens)".into())
        })?;
        let tokenizer = json.parse::<tokenizers::Tokenizer>().map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
        let cfg = meta.tokenizer_config.as_ref();
        let template = meta
            .chat_template
            .clone()
            .or_else(|| cfg.and_then(|c| c.get("chat_template")).and_then(Value::as_str).map(str::to_string));
        Ok(TextCodec { tokenizer, template, bos: special(cfg, "bos_token"), eos: special(cfg, "eos_token") })
    }

    /// Token ids of `text`; `special` adds the tokenizer's own BOS/EOS handling (its post-processor).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, special).map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| RuntimeError::Tokenizer(e.to_string()))
    }

    /// Text of `ids` with special tokens kept (as transformers' `decode(skip_special_tokens=False)`).
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(|e| RuntimeError::Tokenizer(e.to_string()))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The end-of-sequence token string from tokenizer_config.json.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_deref()
    }

    /// Whether the file has a chat template.
    pub fn has_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders the chat template. Undefined variables are errors (strict mode) so a template that
    /// needs something we do not provide fails loudly instead of silently dropping text.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tpl = self
            .template
            .as_deref()
            .ok_or_else(|| RuntimeError::Template("the model file has no chat template".into()))?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", tpl).map_err(|e| RuntimeError::Template(format!("{e:#}")))?;
        let t = env.get_template("chat").map_err(|e| RuntimeError::Template(format!("{e:#}")))?;
        t.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
            tools => Value::Null,
        })
        .map_err(|e| RuntimeError::Template(format!("{e:#}")))
    }
}
