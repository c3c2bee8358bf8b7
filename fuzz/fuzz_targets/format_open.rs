//! The lowbit file reader on arbitrary bytes: a typed error or a valid header, never a panic,
//! hang or outsized allocation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lowbit_format::ModelFile::parse(data);
});
