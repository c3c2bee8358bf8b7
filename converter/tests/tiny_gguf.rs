//! A tiny Llama GGUF written by gguf-py itself (scripts/make_tiny_gguf.py) converts with its
//! tokenizer and chat template. (Hostile GGUF bytes: tests/gguf_reader.rs.)

use lowbit_convert::{convert, ConvertOptions, QuantChoice};
use std::path::PathBuf;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/tiny.gguf")
}

#[test]
fn tiny_gguf_converts_with_tokenizer_and_template() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("t.lowbit");
    let s = convert(&tiny(), &out, &ConvertOptions { quant: QuantChoice::F32, ..Default::default() }, &|_| {}).unwrap();
    assert_eq!(s.tensors, 21);
    let f = lowbit_format::ModelFile::open(&out).unwrap();
    let m = f.metadata();
    assert_eq!(m.quantization.source_format, "gguf");
    assert_eq!(m.config["num_key_value_heads"], 2);
    assert_eq!(m.config["tie_word_embeddings"], false);
    assert!(m.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    let tok: tokenizers::Tokenizer = m.tokenizer_json.as_deref().unwrap().parse().unwrap();
    // "the" is one merged token; special tokens are recognised as such.
    let enc = tok.encode("<|im_start|> the", false).unwrap();
    assert_eq!(enc.get_tokens(), ["<|im_start|>", "Ġthe"]);
}
