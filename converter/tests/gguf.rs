//! GGUF input: a tiny Llama GGUF written by gguf-py (scripts/make_tiny_gguf.py) converts with its
//! tokenizer and chat template; crafted and truncated GGUF bytes give errors, never panics or
//! huge allocations.

use lowbit_convert::source::gguf::reader;
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

/// A minimal valid GGUF: one F32 tensor of 32 elements and one string key.
fn minimal() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // kv
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    let name = b"output_norm.weight";
    b.extend_from_slice(&(name.len() as u64).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&32u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend_from_slice(&[0u8; 128]);
    b
}

#[test]
fn crafted_gguf_bytes_are_errors() {
    let good = minimal();
    assert!(reader::parse(&good).is_ok());
    for cut in 0..good.len() - 1 {
        assert!(reader::parse(&good[..cut]).is_err(), "truncated at {cut} should fail");
    }
    let bad = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        reader::parse(&b).unwrap_err()
    };
    assert!(bad(0, b"GGUG").contains("magic"));
    assert!(bad(4, &1u32.to_le_bytes()).contains("version"));
    // A string length of 2^63 and a tensor count in the billions: errors, not allocations.
    assert!(bad(24, &(1u64 << 63).to_le_bytes()).contains("truncated"));
    assert!(bad(8, &(3u64 << 30).to_le_bytes()).contains("cannot fit"));
    // Tensor offset beyond the file, 5 dimensions, unknown type.
    let info = 24 + 8 + 20 + 4 + 8 + 5 + 8 + 18;
    assert!(bad(info + 4 + 8 + 4, &(1u64 << 40).to_le_bytes()).contains("outside"));
    assert!(bad(info, &5u32.to_le_bytes()).contains("dimensions"));
    assert!(bad(info + 4 + 8, &77u32.to_le_bytes()).contains("not supported"));
}
