//! The real model end to end: SmolLM2-135M-Instruct's Q4_1 GGUF (fetched by
//! scripts/fetch-smollm2.sh; scripts/test.sh sets LOWBIT_SMOLLM2) converted to f32 by our GGUF
//! importer must agree with transformers loading the same file (`gguf_file=`, float32; reference
//! made by scripts/make_smollm2_ref.py): same top-1 token at every position of three prompts, the
//! top-8 logits and the last position's full logits within 2e-3, the same 32 greedy tokens, and
//! the same token ids and chat-template rendering for the tokenizer we rebuild from the GGUF.

mod common;

use common::{argmax, read};
use lowbit_convert::QuantChoice;
use lowbit_format::ModelFile;
use lowbit_runtime::{generate, Logits, Message, Model, Sampler, SamplerConfig, TextCodec};
use std::path::PathBuf;
use std::sync::OnceLock;

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2").join(p)
}

/// The f32 conversion, made once per test run.
fn model_file() -> &'static PathBuf {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let gguf = std::env::var_os("LOWBIT_SMOLLM2").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
        assert!(gguf.exists(), "{} is missing: run scripts/fetch-smollm2.sh (scripts/test.sh does)", gguf.display());
        // One folder reused by every run: a static never drops, so a folder per process would
        // leave a converted model behind each time.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("smollm2-f32");
        std::fs::create_dir_all(&dir).unwrap();
        common::convert_to(&gguf, QuantChoice::F32, &dir)
    })
}

#[test]
fn logits_and_greedy_match_transformers() {
    let file = ModelFile::open(model_file()).unwrap();
    let model = Model::new(&file).unwrap();
    let vocab = model.config.vocab_size;
    let reference = data("reference.safetensors");
    let mut worst = 0f64;
    for p in 0..3 {
        let ids: Vec<u32> = read(&reference, &format!("p{p}/input_ids")).1.iter().map(|&v| v as u32).collect();
        let (_, top_ids) = read(&reference, &format!("p{p}/topk_ids"));
        let (_, top_vals) = read(&reference, &format!("p{p}/topk_values"));
        let (_, last) = read(&reference, &format!("p{p}/last_logits"));
        let mut cache = model.new_cache(256);
        let got = model.forward(&mut cache, &ids, Logits::All).unwrap();
        for (t, row) in got.chunks(vocab).enumerate() {
            assert_eq!(argmax(row) as f64, top_ids[t * 8], "prompt {p} position {t}: top-1 token");
            for k in 0..8 {
                let d = (row[top_ids[t * 8 + k] as usize] as f64 - top_vals[t * 8 + k]).abs();
                worst = worst.max(d);
            }
        }
        let last_row = &got[(ids.len() - 1) * vocab..];
        let d = last_row.iter().zip(&last).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        worst = worst.max(d);
        // Greedy continuation through the KV cache, no stop tokens (the reference ran without EOS).
        let (_, greedy) = read(&reference, &format!("p{p}/greedy_ids"));
        let greedy: Vec<u32> = greedy.iter().map(|&v| v as u32).collect();
        let mut cache = model.new_cache(256);
        let mut sampler = Sampler::new(SamplerConfig::default()).unwrap();
        let (out, _) = generate(&model, &mut cache, &ids, greedy.len(), &mut sampler, &[], |_| true).unwrap();
        assert_eq!(out, greedy, "prompt {p}: greedy continuation");
    }
    eprintln!("SmolLM2 f32 vs transformers: max |Δlogit| over top-8 and last positions = {worst:.2e}");
    assert!(worst <= 2e-3, "max |Δlogit| {worst}");
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    let file = ModelFile::open(model_file()).unwrap();
    let codec = TextCodec::from_metadata(file.metadata()).unwrap();
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("tokenizer_ids.json")).unwrap()).unwrap();
    for s in refs["strings"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let want: Vec<u32> = s["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(codec.encode(text, false).unwrap(), want, "ids of {text:?}");
        let with: Vec<u32> =
            s["ids_with_add_special_tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(codec.encode(text, true).unwrap(), with, "ids of {text:?} with special tokens");
        assert_eq!(codec.decode_with_special(&want).unwrap(), s["decoded"].as_str().unwrap(), "decode of {text:?}");
    }
    for ex in refs["chat_template_examples"].as_array().unwrap() {
        let msgs: Vec<Message> = ex["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let rendered = codec.apply_chat_template(&msgs, ex["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(rendered, ex["rendered"].as_str().unwrap());
        let want: Vec<u32> = ex["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(codec.encode(&rendered, false).unwrap(), want);
    }
}

/// A completion's per-token log-probabilities from one pass equal the log-softmax of the
/// position-by-position logits over the same tokens (the scoring an RL loop's reference model
/// needs), and a perplexity chunk's targets are scored from the same rows.
#[test]
fn completion_logprobs_match_the_full_logits() {
    use lowbit_runtime::score::{completion_logprobs, log_softmax, score_chunk};
    let file = ModelFile::open(model_file()).unwrap();
    let model = Model::new(&file).unwrap();
    let codec = TextCodec::from_metadata(file.metadata()).unwrap();
    let vocab = model.config.vocab_size;
    let prompt = codec.encode("The capital of France is", true).unwrap();
    let completion = codec.encode(" Paris, a city on the Seine.", false).unwrap();
    let got = completion_logprobs(&model, &prompt, &completion).unwrap();
    let all: Vec<u32> = prompt.iter().chain(&completion).copied().collect();
    let mut cache = model.new_cache(all.len());
    let logits = model.forward(&mut cache, &all, Logits::All).unwrap();
    assert_eq!(got.len(), completion.len());
    for (i, &t) in completion.iter().enumerate() {
        let row = prompt.len() - 1 + i;
        let want = log_softmax(&logits[row * vocab..(row + 1) * vocab])[t as usize];
        assert!((got[i] - want).abs() < 1e-4, "token {i}: {} vs {want}", got[i]);
    }
    // " Paris" after that prompt is likely.
    assert!(got[0] > -2.0, "{}", got[0]);
    let chunk: Vec<u32> = all.iter().copied().cycle().take(16).collect();
    let s = score_chunk(&model, &chunk).unwrap();
    assert_eq!(s.targets, chunk[9..].to_vec());
    assert_eq!(s.logprobs.len(), 7 * vocab);
    assert!(s.nll().is_finite() && s.nll() > 0.0);
}

/// A conversation keeps its cache and its record of fed tokens in step (a reply's last token,
/// never run through the model, is prefilled with the next turn), drops its oldest turns when
/// the context is full, and is left as it was by a message that cannot fit at all.
#[test]
fn conversation_stays_consistent_when_the_context_fills() {
    use lowbit_runtime::{Conversation, RuntimeError};
    let file = ModelFile::open(model_file()).unwrap();
    let model = Model::new(&file).unwrap();
    let codec = TextCodec::from_metadata(file.metadata()).unwrap();
    let mut conv = Conversation::new(&model, Some("Be brief."), 128);
    let reply = codec.encode("Sure, here it is.", false).unwrap();
    let mut dropped_any = false;
    for turn in 0..6 {
        let new = conv.user_turn(&model, &codec, &format!("Question number {turn}, please?"), 16).unwrap();
        assert_eq!(conv.cached_tokens(), conv.cache().len, "turn {turn}");
        model.forward(conv.cache(), &new, Logits::Last).unwrap();
        // As generation does: every reply token but the last goes through the model.
        model.forward(conv.cache(), &reply[..reply.len() - 1], Logits::Last).unwrap();
        conv.assistant_turn(&codec, &new, &reply).unwrap();
        assert_eq!(conv.cached_tokens(), conv.cache().len, "turn {turn}");
        dropped_any |= conv.dropped_messages() > 0;
    }
    assert!(dropped_any, "six turns of about 30 tokens overflow 128 positions");
    assert_eq!(conv.messages()[0].role, "system");
    let before = conv.messages().to_vec();
    let long = "word ".repeat(300);
    assert!(matches!(conv.user_turn(&model, &codec, &long, 16), Err(RuntimeError::ContextFull { .. })));
    assert_eq!(conv.messages(), &before[..], "a message that cannot fit leaves the conversation as it was");
    // A completion token outside the vocabulary is an error, not a panic.
    let bad = lowbit_runtime::score::completion_logprobs(&model, &[1, 2], &[3, 1_000_000]);
    assert!(matches!(bad, Err(RuntimeError::BadToken { .. })));
}
