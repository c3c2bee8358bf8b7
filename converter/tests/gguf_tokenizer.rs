//! tokenizer.json rebuilt from crafted `tokenizer.ggml.*` metadata: a tiny SentencePiece-style
//! ("llama") vocabulary whose merges must be derived from scores, and a tiny byte-level ("gpt2")
//! one. Expected tokenizations are worked out by hand in the comments.

use lowbit_convert::gguf::tokenizer::{tokenizer_config, tokenizer_json};
use lowbit_convert::gguf::{Array, GgufError, GgufFile, GgufWriter, Metadata, Value};
use std::str::FromStr;
use tokenizers::Tokenizer;

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

fn metadata(kvs: Vec<(&str, Value)>) -> Metadata {
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        w.kv(k, v);
    }
    GgufFile::parse(&w.to_bytes()).unwrap().metadata().clone()
}

fn build(kvs: Vec<(&str, Value)>) -> Tokenizer {
    let json = tokenizer_json(&metadata(kvs)).unwrap().expect("a tokenizer");
    Tokenizer::from_str(&json).expect("tokenizer.json loads")
}

fn tokens(t: &Tokenizer, text: &str, special: bool) -> Vec<String> {
    t.encode(text, special).unwrap().get_tokens().to_vec()
}

/// `<unk> <s> </s>`, the 256 byte tokens, then pieces with scores chosen so the derived merges
/// apply in this order: l+l, h+e, ll+o, he+llo, ▁+hello, ▁+w, o+r.
fn spm(extra: Vec<(&'static str, Value)>) -> Tokenizer {
    let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        toks.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        ("▁", -1.0),
        ("h", -1.0),
        ("e", -1.0),
        ("l", -1.0),
        ("o", -1.0),
        ("w", -1.0),
        ("r", -1.0),
        ("d", -1.0),
        ("ll", -2.0),
        ("he", -3.0),
        ("llo", -4.0),
        ("hello", -5.0),
        ("▁hello", -6.0),
        ("▁w", -7.0),
        ("or", -8.0),
        ("<tool>", 0.0),
    ];
    for (p, s) in pieces {
        toks.push(p.into());
        types.push(if p == "<tool>" { 4 } else { 1 });
        scores.push(s);
    }
    let mut kvs = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(toks))),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    kvs.extend(extra);
    build(kvs)
}

#[test]
fn sentencepiece_merges_come_from_scores() {
    let t = spm(vec![]);
    // "▁hello▁world" → ll → he → llo → hello → ▁hello → ▁w → or; "l" and "d" stay single.
    assert_eq!(tokens(&t, "hello world", false), ["▁hello", "▁w", "or", "l", "d"]);
    let ids = t.encode("hello world", false).unwrap().get_ids().to_vec();
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
}

#[test]
fn sentencepiece_bos_bytes_and_specials() {
    let t = spm(vec![]);
    // No add_bos_token key: SentencePiece vocabularies get BOS (llama.cpp's default).
    assert_eq!(tokens(&t, "hello", true), ["<s>", "▁hello"]);
    // é is not a piece: byte fallback to its two UTF-8 bytes, and back.
    assert_eq!(tokens(&t, "hé", false), ["▁", "h", "<0xC3>", "<0xA9>"]);
    let ids = t.encode("hé wé", false).unwrap().get_ids().to_vec();
    assert_eq!(t.decode(&ids, false).unwrap(), "hé wé");
    // Control tokens are matched whole; user-defined ones too, but are not special.
    assert_eq!(tokens(&t, "hello</s>", false), ["▁hello", "</s>"]);
    let ids = t.encode("hello<tool>", false).unwrap().get_ids().to_vec();
    assert_eq!(ids.last(), Some(&(3 + 256 + 15)));
    assert_eq!(t.decode(&ids, true).unwrap(), "hello<tool>");
}

#[test]
fn sentencepiece_flags_are_honoured() {
    let t = spm(vec![
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
    ]);
    // No "▁" prefix, so "hello" cannot become "▁hello"; EOS appended.
    assert_eq!(tokens(&t, "hello", true), ["hello", "</s>"]);
    let ids = t.encode("hello world", false).unwrap().get_ids().to_vec();
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
}

/// A byte-level vocabulary: single characters (Ġ is the space byte), merges h+e, l+l, he+ll,
/// hell+o, Ġ+w, 1+2; a control token and a user-defined one.
fn gpt2(pre: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens",
            strings(&[
                "<|end|>", "h", "e", "l", "o", "Ġ", "w", "r", "d", "1", "2", "he", "ll", "hell", "hello", "Ġw",
                "<think>", "12",
            ]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 1])),
        ),
        ("tokenizer.ggml.merges", strings(&["h e", "l l", "he ll", "hell o", "Ġ w", "1 2"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ]
}

#[test]
fn byte_level_bpe() {
    for pre in ["gpt-2", "smollm", "llama-bpe", "qwen2", "something-new"] {
        let t = build(gpt2(pre));
        assert_eq!(tokens(&t, "hello world", false), ["hello", "Ġw", "o", "r", "l", "d"], "{pre}");
        // No BOS for BPE vocabularies unless the file asks.
        assert_eq!(tokens(&t, "hello<|end|>", true), ["hello", "<|end|>"], "{pre}");
        let ids = t.encode("hello <think> world", false).unwrap().get_ids().to_vec();
        assert_eq!(t.decode(&ids, true).unwrap(), "hello <think> world", "{pre}");
    }
    // Qwen2 splits digits one by one, so the 1+2 merge never applies; GPT-2's regex keeps "12"
    // together, Llama-3's keeps up to three digits. "smollm" gets GPT-2's split, as transformers'
    // GGUF loader (our reference) gives it.
    for (pre, want) in [("smollm", &["12"][..]), ("qwen2", &["1", "2"]), ("gpt-2", &["12"]), ("llama-bpe", &["12"])] {
        assert_eq!(tokens(&build(gpt2(pre)), "12", false), want, "{pre}");
    }
}

#[test]
fn byte_level_with_bos() {
    let mut kvs = gpt2("llama-bpe");
    kvs.push(("tokenizer.ggml.add_bos_token", Value::Bool(true)));
    let t = build(kvs);
    assert_eq!(tokens(&t, "hello", true), ["<|end|>", "hello"]);
    assert_eq!(tokens(&t, "hello", false), ["hello"]);
}

#[test]
fn tokenizer_config_fields() {
    let mut kvs = gpt2("gpt-2");
    kvs.push(("tokenizer.chat_template", Value::String("{{ messages }}".into())));
    let c = tokenizer_config(&metadata(kvs));
    assert_eq!(c["bos_token"], "<|end|>");
    assert_eq!(c["eos_token"], "<|end|>");
    assert_eq!(c["add_bos_token"], false);
    assert_eq!(c["chat_template"], "{{ messages }}");
    assert!(c["unk_token"].is_null());
}

#[test]
fn embedded_tokenizer_json_wins() {
    let mut kvs = gpt2("gpt-2");
    kvs.push(("tokenizer.huggingface.json", Value::String("{\"original\": true}".into())));
    assert_eq!(tokenizer_json(&metadata(kvs)).unwrap().as_deref(), Some("{\"original\": true}"));
}

#[test]
fn absent_or_broken_tokenizers() {
    assert_eq!(tokenizer_json(&metadata(vec![])).unwrap(), None);
    let bad = |kvs: Vec<(&str, Value)>| match tokenizer_json(&metadata(kvs)) {
        Err(GgufError::Tokenizer { .. } | GgufError::WrongKeyType { .. }) => {}
        other => panic!("{other:?}"),
    };
    bad(vec![("tokenizer.ggml.model", Value::String("bert".into())), ("tokenizer.ggml.tokens", strings(&["a"]))]);
    bad(vec![("tokenizer.ggml.model", Value::String("gpt2".into()))]);
    bad(vec![("tokenizer.ggml.model", Value::U32(2))]);
    bad(vec![("tokenizer.ggml.model", Value::String("gpt2".into())), ("tokenizer.ggml.tokens", strings(&["a"]))]);
    let mut kvs = gpt2("gpt-2");
    kvs[3] = ("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1])));
    bad(kvs);
    let mut kvs = gpt2("gpt-2");
    kvs[5] = ("tokenizer.ggml.bos_token_id", Value::U32(999));
    bad(kvs);
    let mut kvs = gpt2("gpt-2");
    kvs[4] = ("tokenizer.ggml.merges", strings(&["nospace"]));
    bad(kvs);
    let mut kvs = gpt2("gpt-2");
    kvs[4] = ("tokenizer.ggml.merges", strings(&["x y"]));
    bad(kvs);
    bad(vec![("tokenizer.ggml.model", Value::String("llama".into())), ("tokenizer.ggml.tokens", strings(&["a"]))]);
}
