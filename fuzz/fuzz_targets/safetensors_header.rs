//! A checkpoint folder whose model.safetensors is arbitrary bytes: conversion must end in a
//! typed error (or a valid file) and leave nothing at the output path on error.
#![no_main]
use std::path::PathBuf;

const CONFIG: &str = r#"{"model_type":"mistral","hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":16,"tie_word_embeddings":true}"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("lowbit-fuzz-st-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
    let out: PathBuf = dir.join("out.lowbit");
    let _ = std::fs::remove_file(&out);
    let opts = lowbit_convert::ConvertOptions::default();
    if lowbit_convert::convert(&dir, &out, &opts, &|_| {}).is_err() {
        assert!(!out.exists(), "a failed conversion left an output file");
    }
});
