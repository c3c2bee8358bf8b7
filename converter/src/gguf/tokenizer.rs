//! A Hugging Face `tokenizer.json` rebuilt from a GGUF file's `tokenizer.ggml.*` metadata
//! (FORMATS.md §F.5), built with the `tokenizers` crate's own types so that what we write is
//! exactly what the runtime's `tokenizers` will read back.
//!
//! Two vocabulary kinds are handled, the same way transformers' GGUF loader handles them:
//!
//! * `gpt2` — byte-level BPE. Tokens are already spelled in the byte alphabet and the merges are
//!   in the file. Text is split first by the pre-tokenizer `tokenizer.ggml.pre` names (SmolLM's
//!   single digits, Llama-3's and Qwen2's split regexes, else GPT-2's), then mapped to bytes.
//! * `llama` — SentencePiece-style BPE with byte fallback (`<0xNN>` tokens). The file has no
//!   merges, only a score per token, so merges are derived: every split of a token into two
//!   tokens is a merge, ranked by the merged token's score (best first; ties: longer left part,
//!   then longer right part, then vocabulary order). Spaces become `▁` through a Metaspace
//!   pre-tokenizer that prefixes `▁` once at the start when `add_space_prefix` says so.
//!
//! Token types (3 control, 4 user-defined, 2 unknown) decide which tokens become added tokens:
//! control and unknown ones are special (matched whole in text, skipped when decoding with
//! `skip_special_tokens`), user-defined ones are matched whole but not special. A file that
//! embeds the original `tokenizer.huggingface.json` gets that back verbatim.

use super::error::{GgufError, Result};
use super::reader::Metadata;
use super::value::Value;
use serde_json::json;
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

/// `tokenizer.ggml.token_type` values.
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Llama-3's split regex (the `llama-bpe` pre-tokenizer and its relatives).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama-3's with single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer metadata, read and checked once.
struct Vocab<'a> {
    model: &'a str,
    tokens: &'a [String],
    types: Vec<i64>,
    scores: Option<Vec<f32>>,
    merges: Option<&'a [String]>,
    add_bos: bool,
    add_eos: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
}

impl Vocab<'_> {
    fn err(&self, problem: impl Into<String>) -> GgufError {
        GgufError::Tokenizer { model: self.model.to_string(), problem: problem.into() }
    }

    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize)).map(String::as_str)
    }

    /// Token → id; where a string repeats, the last id wins (as in transformers' dict).
    fn map(&self) -> BpeVocab {
        self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect()
    }

    /// Added tokens: (content, special) for unknown/control and user-defined tokens.
    fn added(&self) -> Vec<AddedToken> {
        let mut out = Vec::new();
        for (tok, &ty) in self.tokens.iter().zip(&self.types) {
            let special = match ty {
                TYPE_CONTROL | TYPE_UNKNOWN => true,
                TYPE_USER_DEFINED => false,
                _ => continue,
            };
            // An empty added token would match nowhere and only confuse the added vocabulary.
            if !tok.is_empty() {
                out.push(AddedToken::from(tok.clone(), special).normalized(false));
            }
        }
        out
    }
}

fn bool_key(m: &Metadata, key: &str) -> Option<bool> {
    m.get(key).and_then(Value::as_bool)
}

fn id_key(m: &Metadata, key: &str) -> Option<u32> {
    m.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok())
}

/// Reads the vocabulary; `None` when the file has no tokenizer at all.
fn read_vocab(m: &Metadata) -> Result<Option<Vocab<'_>>> {
    let Some(model) = m.get("tokenizer.ggml.model") else { return Ok(None) };
    let model =
        model.as_str().ok_or(GgufError::WrongKeyType { key: "tokenizer.ggml.model".into(), expected: "a string" })?;
    let bad = |problem: &str| GgufError::Tokenizer { model: model.to_string(), problem: problem.to_string() };
    let tokens = m
        .get("tokenizer.ggml.tokens")
        .ok_or_else(|| bad("tokenizer.ggml.tokens is missing"))?
        .as_array()
        .and_then(|a| a.as_strings())
        .ok_or_else(|| bad("tokenizer.ggml.tokens is not an array of strings"))?;
    if u32::try_from(tokens.len()).is_err() {
        return Err(bad("more than 2^32 tokens"));
    }
    let types = match m.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .and_then(|a| a.to_i64s())
            .filter(|t| t.len() == tokens.len())
            .ok_or_else(|| bad("tokenizer.ggml.token_type is not an integer array as long as the tokens"))?,
    };
    let scores = match m.get("tokenizer.ggml.scores") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| a.to_f32s())
                .filter(|s| s.len() == tokens.len())
                .ok_or_else(|| bad("tokenizer.ggml.scores is not a float array as long as the tokens"))?,
        ),
    };
    let merges = match m.get("tokenizer.ggml.merges") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| a.as_strings())
                .ok_or_else(|| bad("tokenizer.ggml.merges is not a string array"))?,
        ),
    };
    let spm = model == "llama";
    let vocab = Vocab {
        model,
        tokens,
        types,
        scores,
        merges,
        // llama.cpp adds BOS to SentencePiece vocabularies unless told otherwise, never to BPE ones.
        add_bos: bool_key(m, "tokenizer.ggml.add_bos_token").unwrap_or(spm),
        add_eos: bool_key(m, "tokenizer.ggml.add_eos_token").unwrap_or(false),
        bos: id_key(m, "tokenizer.ggml.bos_token_id"),
        eos: id_key(m, "tokenizer.ggml.eos_token_id"),
        unk: id_key(m, "tokenizer.ggml.unknown_token_id"),
    };
    for (what, id) in [("bos", vocab.bos), ("eos", vocab.eos), ("unknown", vocab.unk)] {
        if let Some(id) = id.filter(|&i| i as usize >= tokens.len()) {
            return Err(vocab.err(format!("{what} token id {id} is outside the {}-token vocabulary", tokens.len())));
        }
    }
    Ok(Some(vocab))
}

/// The `tokenizer.json` text for the file's tokenizer, or `None` when it has none.
pub fn tokenizer_json(m: &Metadata) -> Result<Option<String>> {
    if let Some(embedded) = m.get("tokenizer.huggingface.json") {
        let text = embedded
            .as_str()
            .ok_or(GgufError::WrongKeyType { key: "tokenizer.huggingface.json".into(), expected: "a string" })?;
        return Ok(Some(text.to_string()));
    }
    let Some(vocab) = read_vocab(m)? else { return Ok(None) };
    let pre = m.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let add_space_prefix = bool_key(m, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let mut tokenizer = match vocab.model {
        "gpt2" => byte_level(&vocab, pre)?,
        "llama" => sentencepiece(&vocab, add_space_prefix)?,
        other => return Err(vocab.err(format!("tokenizer model {other:?} is not supported (gpt2, llama)"))),
    };
    let added = vocab.added();
    let (special, plain): (Vec<AddedToken>, Vec<AddedToken>) = added.into_iter().partition(|t| t.special);
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&plain);
    tokenizer.to_string(false).map(Some).map_err(|e| vocab.err(format!("serializing: {e}")))
}

/// BOS/EOS insertion, if the file asks for any.
fn template(vocab: &Vocab<'_>) -> Result<Option<TemplateProcessing>> {
    // A template names its special tokens by a key that may not contain ':' or ' ' (the template
    // syntax); the key maps to the real id and content, so an awkward token gets a plain key.
    let entry = |wanted: bool, id: Option<u32>, fallback: &str| -> Option<(String, SpecialToken)> {
        let (id, tok) = (id?, vocab.token(id)?);
        if !wanted {
            return None;
        }
        let key = if tok.is_empty() || tok.contains([':', ' ', '$']) { fallback.to_string() } else { tok.to_string() };
        Some((key.clone(), SpecialToken::new(key, vec![id], vec![tok.to_string()]).ok()?))
    };
    let bos = entry(vocab.add_bos, vocab.bos, "bos");
    let eos = entry(vocab.add_eos, vocab.eos, "eos");
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let seq = |name: &str, type_id: u32| -> Vec<String> {
        let mut pieces = Vec::new();
        if let Some((key, _)) = &bos {
            pieces.push(format!("{key}:{type_id}"));
        }
        pieces.push(format!("${name}:{type_id}"));
        if let Some((key, _)) = &eos {
            pieces.push(format!("{key}:{type_id}"));
        }
        pieces
    };
    let single = seq("A", 0);
    let pair = [seq("A", 0), seq("B", 1)].concat();
    let mut keys: Vec<&str> = Vec::new();
    let mut special: Vec<SpecialToken> = Vec::new();
    for (key, tok) in bos.iter().chain(eos.iter()) {
        if !keys.contains(&key.as_str()) {
            keys.push(key);
            special.push(tok.clone());
        }
    }
    let template_err = |e: String| vocab.err(format!("post-processor template: {e}"));
    let mut builder = TemplateProcessing::builder();
    builder.try_single(single).map_err(template_err)?;
    builder.try_pair(pair).map_err(template_err)?;
    builder.special_tokens(special).build().map(Some).map_err(|e| vocab.err(format!("post-processor: {e}")))
}

/// The pre-tokenizer for byte-level BPE: the split a given `tokenizer.ggml.pre` learnt its merges
/// with, then the byte mapping.
fn byte_level_pre(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let split =
            Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false).map_err(|e| {
                GgufError::Tokenizer { model: "gpt2".into(), problem: format!("split regex for {pre}: {e}") }
            })?;
        Ok(PreSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
        // "gpt-2", "default", "smollm" and anything unknown: GPT-2's own regex inside ByteLevel.
        // SmolLM2's original tokenizer splits digits first, but transformers' GGUF loader — our
        // reference — does not, and "smollm" with the plain split reproduces its ids exactly
        // (runtime/tests/smollm2.rs), including on "½" after a space, where the two differ.
        _ => Ok(ByteLevel::new(false, true, true).into()),
    }
}

fn byte_level(vocab: &Vocab<'_>, pre: &str) -> Result<Tokenizer> {
    let merges = vocab.merges.ok_or_else(|| vocab.err("tokenizer.ggml.merges is missing"))?;
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // Byte-level tokens never contain a raw space, so the first space separates the pair.
        let (a, b) = m.split_once(' ').ok_or_else(|| vocab.err(format!("merge #{i} {m:?} has no space")))?;
        pairs.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.map(), pairs)
        .build()
        .map_err(|e| vocab.err(format!("BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(byte_level_pre(pre)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let post: PostProcessorWrapper = match template(vocab)? {
        Some(t) => t.into(),
        // What transformers puts there: it changes nothing but offsets.
        None => ByteLevel::new(true, false, true).into(),
    };
    tokenizer.with_post_processor(Some(post));
    Ok(tokenizer)
}

/// Merges implied by a SentencePiece vocabulary: every way of writing a token as the
/// concatenation of two tokens, best merged-token score first (ties: longer left part, longer
/// right part, then token order, then (left id, right id)).
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    // (score, left chars, right chars, order, left, right)
    let mut found: Vec<(f32, usize, usize, usize, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (order, (tok, &score)) in tokens.iter().zip(scores).enumerate() {
        // A repeated token string is one dictionary entry; consider it once.
        if !seen.insert(tok.as_str()) {
            continue;
        }
        let mut local: Vec<(usize, usize, &str, &str)> = Vec::new();
        for (cut, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(cut);
            if let (Some(&il), Some(&ir)) = (ids.get(l), ids.get(r)) {
                local.push((il, ir, l, r));
            }
        }
        local.sort_by_key(|&(il, ir, _, _)| (il, ir));
        found.extend(local.into_iter().map(|(_, _, l, r)| (score, l.chars().count(), r.chars().count(), order, l, r)));
    }
    // Stable sort, so equal keys keep the (token order, id) order built above.
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    found.into_iter().map(|(_, _, _, _, l, r)| (l.to_string(), r.to_string())).collect()
}

fn sentencepiece(vocab: &Vocab<'_>, add_space_prefix: bool) -> Result<Tokenizer> {
    let merges = match (vocab.merges, &vocab.scores) {
        (Some(m), _) => m
            .iter()
            .map(|s| s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| vocab.err("a merge has no space"))?,
        (None, Some(scores)) => merges_from_scores(vocab.tokens, scores),
        (None, None) => return Err(vocab.err("neither merges nor scores to derive them from")),
    };
    let mut builder = BPE::builder().vocab_and_merges(vocab.map(), merges).fuse_unk(true).byte_fallback(true);
    if let Some(unk) = vocab.token(vocab.unk) {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder.build().map_err(|e| vocab.err(format!("BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let scheme = if add_space_prefix { PrependScheme::First } else { PrependScheme::Never };
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    let replace = Replace::new("▁", " ").map_err(|e| vocab.err(format!("decoder: {e}")))?;
    let mut steps: Vec<DecoderWrapper> = vec![replace.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        // Drop the one space the Metaspace prefix added.
        steps.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(steps)));
    tokenizer.with_post_processor(template(vocab)?);
    Ok(tokenizer)
}

/// The parts of `tokenizer_config.json` a GGUF file knows.
pub fn tokenizer_config(m: &Metadata) -> serde_json::Value {
    let tokens = m.get("tokenizer.ggml.tokens").and_then(Value::as_array).and_then(|a| a.as_strings());
    let tok = |k: &str| {
        let id = id_key(m, &format!("tokenizer.ggml.{k}"))?;
        tokens?.get(id as usize).cloned()
    };
    let spm = m.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("llama");
    json!({
        "bos_token": tok("bos_token_id"),
        "eos_token": tok("eos_token_id"),
        "unk_token": tok("unknown_token_id"),
        "pad_token": tok("padding_token_id"),
        "add_bos_token": bool_key(m, "tokenizer.ggml.add_bos_token").unwrap_or(spm),
        "add_eos_token": bool_key(m, "tokenizer.ggml.add_eos_token").unwrap_or(false),
        "chat_template": m.get("tokenizer.chat_template").and_then(Value::as_str),
        "clean_up_tokenization_spaces": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn merges_rank_by_merged_token_score() {
        let tokens = s(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let merges = merges_from_scores(&tokens, &scores);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // "ab" (score -1) before "bc" (-2) before the two ways to make "abc" (-3); of those the
        // one with the longer left part comes first.
        assert_eq!(pairs, vec![("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }
}
