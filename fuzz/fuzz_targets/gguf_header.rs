//! The GGUF reader, tokenizer rebuild and dequantization of every tensor, on arbitrary bytes.
#![no_main]
use lowbit_convert::gguf::{tokenizer, GgufFile};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(f) = GgufFile::parse(data) {
        let _ = tokenizer::tokenizer_json(f.metadata());
        let names: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
        for n in names {
            let _ = f.tensor_f32(&n);
        }
    }
});
