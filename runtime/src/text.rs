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
    /// How many times longer (in bytes) normalization and pre-tokenization can make a text, at
    /// most ([`expansion`]).
    expansion: f64,
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

/// The most bytes a text may become inside the tokenizer before it is refused: a normalizer that
/// replaces a character with a long string would otherwise turn a few KiB into GiBs.
const MAX_NORMALIZED_BYTES: f64 = (256u64 << 20) as f64;

/// An upper bound on how many bytes one byte of text can become through a tokenizer.json
/// normalizer or pre-tokenizer (`part`): replacements by their length ratio, Unicode
/// normalization by its longest decomposition, sequences by the product; kinds this does not know
/// (and precompiled charsmaps, which can map to anything) count as 64.
fn expansion(part: Option<&Value>) -> f64 {
    let Some(v) = part.filter(|v| !v.is_null()) else { return 1.0 };
    let len = |k: &str| v.get(k).and_then(Value::as_str).map_or(0, str::len) as f64;
    match v.get("type").and_then(Value::as_str).unwrap_or("") {
        "Sequence" => {
            let list = v.get("normalizers").or_else(|| v.get("pretokenizers")).and_then(Value::as_array);
            list.map_or(64.0, |l| l.iter().map(|p| expansion(Some(p))).product())
        }
        "Replace" => {
            let content = len("content");
            match v.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str) {
                Some(p) if !p.is_empty() => (content / p.len() as f64).max(1.0),
                // A regex may match every position, even an empty one.
                _ => 1.0 + content,
            }
        }
        "Prepend" => 1.0 + len("prepend"),
        "Metaspace" => 3.0 + len("replacement"),
        "NFD" | "NFKD" | "NFC" | "NFKC" => 18.0,
        "Lowercase" | "BertNormalizer" | "BertPreTokenizer" => 3.0,
        "ByteLevel" => 2.0,
        "Strip" | "StripAccents" | "Whitespace" | "WhitespaceSplit" | "Split" | "Punctuation" | "Digits"
        | "UnicodeScripts" => 1.0,
        _ => 64.0,
    }
}

/// Fuel one rendering may spend: one per template instruction and one per 64 bytes of data it
/// makes (strings built by `~`, `+`, `*` and filters, and output). A chat template spends a few
/// hundred a message, so this covers conversations of thousands of messages, while a template
/// that doubles a string in a loop stops before its strings pass 64 MiB (it makes 128 MiB in
/// all by then).
const TEMPLATE_FUEL: u64 = 2_000_000;

/// A tokenizer.json read into a tokenizer. A BPE model (Llama's, Mistral's, Qwen2's, SmolLM's) is
/// read by itself: the library reads the model of a whole file through a generic JSON tree
/// first, which took most of a model's load time. The rest of the file is then read with an
/// empty model in its place, the model put in, and the added tokens added — what the library's
/// own reader does after the model, in the same order, so the tokenizer is the same.
fn parse_tokenizer(json: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let top: BTreeMap<&str, &RawValue> = match serde_json::from_str(json) {
        Ok(top) => top,
        // Not an object of that shape (escaped keys, say): the library says what is wrong.
        Err(_) => return json.parse().map_err(|e| err(&e)),
    };
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a str>,
    }
    let bpe = match top.get("model").map(|m| serde_json::from_str::<Kind>(m.get())) {
        Some(Ok(Kind { kind: Some("BPE") })) => top["model"],
        _ => return json.parse().map_err(|e| err(&e)),
    };
    let model: tokenizers::models::bpe::BPE = serde_json::from_str(bpe.get()).map_err(|e| err(&e))?;
    let added: Vec<tokenizers::AddedToken> = match top.get("added_tokens") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| err(&e))?,
        None => Vec::new(),
    };
    let mut shell = String::from("{");
    for (key, value) in &top {
        let value = match *key {
            "model" => r#"{"type":"BPE","vocab":{},"merges":[]}"#,
            "added_tokens" => "[]",
            _ => value.get(),
        };
        if shell.len() > 1 {
            shell.push(',');
        }
        shell.push_str(&serde_json::to_string(key).map_err(|e| err(&e))?);
        shell.push(':');
        shell.push_str(value);
    }
    shell.push('}');
    let mut tokenizer: tokenizers::Tokenizer = shell.parse().map_err(|e| err(&e))?;
    tokenizer.with_model(model);
    tokenizer.add_tokens(&added);
    Ok(tokenizer)
}

impl TextCodec {
    /// Loads the tokenizer and template from a model file's metadata.
    pub fn from_metadata(meta: &Metadata) -> Result<TextCodec> {
        let json = meta.tokenizer_json.as_deref().ok_or_else(|| {
            RuntimeError::Tokenizer("this model file has no tokenizer; use token ids (--tokens)".into())
        })?;
        // The tokenizers library panics on some malformed parts (a `decoder` of neither of its
        // layouts): a file that holds one gets an error, not a crash.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_tokenizer(json)));
        let tokenizer = match parsed {
            Ok(t) => t.map_err(RuntimeError::Tokenizer)?,
            Err(_) => {
                return Err(RuntimeError::Tokenizer(
                    "tokenizer.json is malformed: the tokenizers library failed on it".into(),
                ))
            }
        };
        // Only the two parts that can lengthen a text, the vocabulary and merges skipped over
        // (read into a `Value`, they took longer than the tokenizer itself).
        #[derive(serde::Deserialize)]
        struct Parts {
            normalizer: Option<Value>,
            pre_tokenizer: Option<Value>,
        }
        let parts: Parts = serde_json::from_str(json).map_err(|e| RuntimeError::Tokenizer(e.to_string()))?;
        let expansion = expansion(parts.normalizer.as_ref()) * expansion(parts.pre_tokenizer.as_ref());
        let cfg = meta.tokenizer_config.as_ref();
        let template = meta
            .chat_template
            .clone()
            .or_else(|| cfg.and_then(|c| c.get("chat_template")).and_then(Value::as_str).map(str::to_string));
        Ok(TextCodec { tokenizer, template, bos: special(cfg, "bos_token"), eos: special(cfg, "eos_token"), expansion })
    }

    /// Token ids of `text`; `special` adds the tokenizer's own BOS/EOS handling (its post-processor).
    /// A text this tokenizer could blow up past `MAX_NORMALIZED_BYTES` is refused first.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        if text.len() as f64 * self.expansion > MAX_NORMALIZED_BYTES {
            return Err(RuntimeError::Tokenizer(format!(
                "this tokenizer's normalizer can make text up to {:.0} times longer, and {} bytes of it could become more than the {} MiB it may take: use a shorter text",
                self.expansion,
                text.len(),
                MAX_NORMALIZED_BYTES as u64 >> 20
            )));
        }
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

    /// The beginning-of-sequence token string from tokenizer_config.json.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_deref()
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
        // A template is a program from the model file: bound its work, so one with runaway
        // loops fails in well under a second instead of running for minutes.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", tpl).map_err(|e| RuntimeError::Template(format!("{e:#}")))?;
        let t = env.get_template("chat").map_err(|e| RuntimeError::Template(format!("{e:#}")))?;
        t.render(context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
            tools => minijinja::Value::from(()),
        })
        .map_err(|e| RuntimeError::Template(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(template: &str, bos: &str, eos: &str) -> TextCodec {
        // A one-token vocabulary is enough: these tests render templates, they do not encode.
        let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,
            "post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
        TextCodec {
            tokenizer: tok.parse().unwrap(),
            template: Some(template.into()),
            bos: Some(bos.into()),
            eos: Some(eos.into()),
            expansion: 1.0,
        }
    }

    /// A normalizer that replaces a character with 256 KiB: a 4 KiB prompt would need 1 GiB, so it
    /// is refused before encoding; a short one still encodes.
    #[test]
    fn expanding_normalizers_are_bounded() {
        let content = "x".repeat(256 << 10);
        let tok = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":{{"type":"Sequence","normalizers":[{{"type":"Replace","pattern":{{"String":"a"}},"content":"{content}"}},{{"type":"Lowercase"}}]}},"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{{"type":"WordLevel","vocab":{{"<unk>":0}},"unk_token":"<unk>"}}}}"#
        );
        let meta = Metadata {
            architecture: "llama".into(),
            config: serde_json::json!({}),
            tokenizer_json: Some(tok),
            ..Default::default()
        };
        let c = TextCodec::from_metadata(&meta).unwrap();
        assert_eq!(c.expansion, 3.0 * (256 << 10) as f64);
        let start = std::time::Instant::now();
        let e = c.encode(&"a".repeat(4096), false).unwrap_err().to_string();
        assert!(e.contains("times longer"), "{e}");
        assert!(start.elapsed().as_millis() < 500);
        assert!(c.encode("a", false).is_ok());
        assert_eq!(expansion(None), 1.0);
        assert_eq!(
            expansion(Some(&serde_json::json!({"type": "Replace", "pattern": {"Regex": "."}, "content": "abc"}))),
            4.0
        );
        assert_eq!(expansion(Some(&serde_json::json!({"type": "Precompiled"}))), 64.0);
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let c = codec("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "", "");
        let start = std::time::Instant::now();
        let e = c.apply_chat_template(&msgs(&[("user", "hi")]), true).unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
        assert!(start.elapsed().as_secs() < 10);
        // A long but ordinary conversation still renders.
        let c = codec("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}", "", "");
        let many: Vec<(&str, &str)> = (0..5000).map(|_| ("user", "a message")).collect();
        assert!(c.apply_chat_template(&msgs(&many), true).is_ok());
    }

    /// The BPE reader gives the tokenizer the library's own reader gives: the same file when
    /// written back, the same ids and texts — with added tokens inside the vocabulary and past
    /// it, special and not, a normalizer they go through, and byte-level parts around them.
    #[test]
    fn bpe_read_by_itself_is_the_librarys_tokenizer() {
        let tok = r#"{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[
              {"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
              {"id":9,"content":"<|im_end|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
              {"id":10,"content":"ab c","single_word":true,"lstrip":true,"rstrip":false,"normalized":true,"special":false}],
            "normalizer":{"type":"Lowercase"},
            "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
            "post_processor":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},
            "decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
            "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,
              "fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
              "vocab":{"<s>":0,"a":1,"b":2,"c":3,"Ġ":4,"ab":5,"Ġc":6,"abc":7,"Ġab":8},
              "merges":["a b","Ġ c","ab c","Ġ ab"]}}"#;
        let ours = parse_tokenizer(tok).unwrap();
        let theirs: tokenizers::Tokenizer = tok.parse().unwrap();
        assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&theirs).unwrap());
        for text in ["abc ab c <|im_end|>AB C", "<s>cab ABC", ""] {
            let (a, b) = (ours.encode(text, true).unwrap(), theirs.encode(text, true).unwrap());
            assert_eq!(a.get_ids(), b.get_ids(), "{text}");
            assert_eq!(ours.decode(a.get_ids(), false).unwrap(), theirs.decode(b.get_ids(), false).unwrap());
        }
        // Other models, and files the shortcut does not read, go to the library as they are.
        let word_level = r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
        assert!(parse_tokenizer(word_level).is_ok());
        assert!(parse_tokenizer("[1, 2]").is_err());
        assert!(parse_tokenizer(r#"{"version":"2.0","model":{"type":"BPE","vocab":{},"merges":[]}}"#).is_err());
    }

    /// A decoder of neither layout makes the tokenizers library panic (found by the
    /// `tokenizer_json` fuzz target): loading the file is an error instead.
    #[test]
    fn a_tokenizer_that_panics_the_library_is_an_error() {
        let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,
            "post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offset, "content"s":true},
            "model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
        let meta = Metadata {
            architecture: "llama".into(),
            config: serde_json::json!({}),
            tokenizer_json: Some(tok.into()),
            ..Default::default()
        };
        let e = TextCodec::from_metadata(&meta).unwrap_err();
        assert!(e.to_string().contains("tokenizer"), "{e}");
    }

    /// Strings built up in a loop pay for their bytes: doubling one 40 times (a terabyte) stops
    /// on fuel at tens of megabytes, by `~`, `+` or a filter alike.
    #[test]
    fn growing_strings_run_out_of_fuel() {
        for grow in ["ns.s ~ ns.s", "ns.s + ns.s", "[ns.s, ns.s]|join", "ns.s * 2"] {
            let tpl = format!(
                "{{% set ns = namespace(s='x') %}}{{% for i in range(40) %}}{{% set ns.s = {grow} %}}{{% endfor %}}{{{{ ns.s|length }}}}"
            );
            let c = codec(&tpl, "", "");
            let start = std::time::Instant::now();
            let e = c.apply_chat_template(&msgs(&[("user", "hi")]), true).unwrap_err();
            assert!(e.to_string().contains("fuel"), "{grow}: {e}");
            assert!(start.elapsed().as_secs() < 10, "{grow}");
        }
    }

    fn msgs(turns: &[(&str, &str)]) -> Vec<Message> {
        turns.iter().map(|(r, c)| Message { role: r.to_string(), content: c.to_string() }).collect()
    }

    /// Mistral-7B-Instruct-v0.1's template (from its tokenizer_config.json), which relies on
    /// `raise_exception`, `loop.index0` and string concatenation.
    const MISTRAL_V01: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    #[test]
    fn mistral_inst_template() {
        let c = codec(MISTRAL_V01, "<s>", "</s>");
        let out =
            c.apply_chat_template(&msgs(&[("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?")]), true).unwrap();
        assert_eq!(out, "<s>[INST] Hi [/INST]Hello</s> [INST] 2+2? [/INST]");
        // The template's own error surfaces as ours.
        let err = c.apply_chat_template(&msgs(&[("assistant", "x")]), true).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn chatml_template() {
        let t = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let c = codec(t, "<|im_start|>", "<|im_end|>");
        let out = c.apply_chat_template(&msgs(&[("system", "Be brief."), ("user", "Hi")]), true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn unknown_variable_is_an_error() {
        let c = codec("{{ messages[0]['content'] }}{{ undefined_thing }}", "", "");
        assert!(c.apply_chat_template(&msgs(&[("user", "x")]), false).is_err());
    }
}
