//! The GGUF reader, tokenizer rebuild and block dequantization on arbitrary bytes.
#![no_main]
use lowbit_convert::source::gguf::{dequant, reader, tokenizer};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(g) = reader::parse(data) {
        let _ = tokenizer::tokenizer_json(&g.metadata);
        for t in &g.tensors {
            // The reader guarantees the range is inside `data` and a whole number of blocks.
            let (blk, bytes, _) = reader::type_layout(t.ty).expect("reader checked the type");
            let n = (t.size / bytes * blk) as usize;
            let mut out = vec![0f32; n];
            dequant::dequantize(t.ty, &data[t.offset as usize..(t.offset + t.size) as usize], &mut out);
        }
    }
});
