//! A Hugging Face `tokenizer.json` rebuilt from a GGUF file's `tokenizer.ggml.*` metadata, the
//! way transformers rebuilds it when loading a GGUF (so token ids agree with that reference):
//! byte-level BPE for `gpt2` vocabularies, sentencepiece-style BPE with byte fallback (merges
//! derived from the scores) for `llama` ones.

use super::reader::Value;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, HashMap};

/// Pre-tokenizer regexes of `tokenizer.ggml.pre` values whose split differs from GPT-2's (the
/// split patterns are the published ones of those tokenizers).
fn pre_split(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        _ => None,
    }
}

fn strings(meta: &BTreeMap<String, Value>, key: &str) -> Option<Vec<String>> {
    meta.get(key)?.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

/// Builds tokenizer.json text; `None` when the file has no tokenizer.
pub fn tokenizer_json(meta: &BTreeMap<String, Value>) -> Result<Option<String>, String> {
    let Some(model) = meta.get("tokenizer.ggml.model").and_then(Value::as_str) else {
        return Ok(None);
    };
    let tokens = strings(meta, "tokenizer.ggml.tokens").ok_or("tokenizer.ggml.tokens missing or not strings")?;
    let types: Vec<i64> = match meta.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|v| match v {
                Value::I(i) => *i,
                Value::U(u) => *u as i64,
                _ => 1,
            })
            .collect(),
        None => vec![1; tokens.len()],
    };
    let flag = |k: &str| meta.get(k).map(|v| matches!(v, Value::Bool(true)));
    let added: Vec<Json> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&3))
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(i));
    }
    let tok = match model {
        "gpt2" => {
            let merges =
                strings(meta, "tokenizer.ggml.merges").ok_or("tokenizer.ggml.merges missing for a gpt2 vocabulary")?;
            let pre = meta.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
            let add_prefix_space = flag("tokenizer.ggml.add_space_prefix").unwrap_or(false);
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": true});
            let pre_tokenizer = match pre_split(pre) {
                Some(re) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
                ]}),
                None => byte_level.clone(),
            };
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
                "pre_tokenizer": pre_tokenizer,
                "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                          "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
            })
        }
        "llama" => {
            let scores: Vec<f64> = meta
                .get("tokenizer.ggml.scores")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
                .unwrap_or_else(|| vec![0.0; tokens.len()]);
            let merges = match strings(meta, "tokenizer.ggml.merges") {
                Some(m) => m,
                None => derive_merges(&tokens, &scores),
            };
            let unk = meta
                .get("tokenizer.ggml.unknown_token_id")
                .and_then(Value::as_u64)
                .and_then(|i| tokens.get(i as usize))
                .cloned();
            let bos_id = meta.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64);
            let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(true);
            let post = match (add_bos, bos_id.and_then(|i| tokens.get(i as usize))) {
                (true, Some(b)) => json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {b.clone(): {"id": b, "ids": [bos_id], "tokens": [b]}}}),
                _ => Json::Null,
            };
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
                "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
                "post_processor": post,
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                          "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
            })
        }
        other => return Err(format!("tokenizer model {other:?} is not supported (gpt2, llama)")),
    };
    Ok(Some(tok.to_string()))
}

/// Sentencepiece vocabularies carry scores, not merges: every split of a token into two
/// vocabulary pieces is a merge, ranked by the merged token's score (higher first).
fn derive_merges(tokens: &[String], scores: &[f64]) -> Vec<String> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize, String)> = Vec::new();
    for (ti, t) in tokens.iter().enumerate() {
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((scores.get(ti).copied().unwrap_or(0.0), li, ri, format!("{l} {r}")));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|m| m.3).collect()
}
