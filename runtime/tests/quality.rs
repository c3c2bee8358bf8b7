//! What each 8-bit scheme loses on the real SmolLM2: the KL divergence of its next-token
//! distributions from the f32 conversion's, over chunks of `data/genesis-kjv.txt` scored as
//! llama.cpp's perplexity tool scores them. Block int8 (`q8`) must lose far less than LLM.int8.

mod common;

use lowbit_convert::QuantChoice;
use lowbit_format::ModelFile;
use lowbit_runtime::score::{kl_divergence, perplexity_chunks, score_chunk};
use lowbit_runtime::{Model, TextCodec};
use std::path::PathBuf;

/// Mean KL (nats per scored token) of `quant` against f32 on the first chunks of the text.
fn mean_kl(
    gguf: &std::path::Path,
    dir: &std::path::Path,
    base: &[Vec<f32>],
    chunks: &[Vec<u32>],
    quant: QuantChoice,
) -> f64 {
    let file = ModelFile::open(&common::convert_to(gguf, quant, dir)).unwrap();
    let model = Model::new(&file).unwrap();
    let (mut kl, mut n) = (0f64, 0usize);
    for (chunk, base) in chunks.iter().zip(base) {
        let s = score_chunk(&model, chunk).unwrap();
        let vocab = s.logprobs.len() / s.targets.len();
        for (b, o) in base.chunks(vocab).zip(s.logprobs.chunks(vocab)) {
            kl += kl_divergence(b, o);
            n += 1;
        }
    }
    kl / n as f64
}

#[test]
fn q8_loses_far_less_than_llm_int8() {
    let Some(gguf) = std::env::var_os("LOWBIT_SMOLLM2").map(PathBuf::from) else {
        eprintln!("SKIPPED: LOWBIT_SMOLLM2 is not set (scripts/test.sh sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f32_file = ModelFile::open(&common::convert_to(&gguf, QuantChoice::F32, dir.path())).unwrap();
    let codec = TextCodec::from_metadata(f32_file.metadata()).unwrap();
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/genesis-kjv.txt")).unwrap();
    let tokens = codec.encode(&text[..20_000], false).unwrap();
    let model = Model::new(&f32_file).unwrap();
    let chunks = perplexity_chunks(&tokens, 128, 3, model.config.bos_token_id);
    let base: Vec<Vec<f32>> = chunks.iter().map(|c| score_chunk(&model, c).unwrap().logprobs).collect();
    let q8 = mean_kl(&gguf, dir.path(), &base, &chunks, QuantChoice::Q8);
    let int8 = mean_kl(&gguf, dir.path(), &base, &chunks, QuantChoice::Int8);
    eprintln!("KL to f32: q8 {q8:.5}, int8 {int8:.5}");
    assert!(q8 < 0.02, "q8 KL {q8}");
    assert!(q8 < int8 / 3.0, "q8 KL {q8} against int8 {int8}");
}
