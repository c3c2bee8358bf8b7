//! The bitsandbytes quant-state JSON parser on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(q) = lowbit_convert::bnb::parse_quant_state("w", data) {
        assert!(q.shape.len() == 2 && q.shape.iter().all(|&d| d > 0));
        assert!(q.nested_offset.is_none_or(f32::is_finite));
    }
});
