//! A tokenizer.json of arbitrary bytes, as a model file carries it: loading it is a typed error
//! or a tokenizer, and a loaded one encodes a short and a 4 KiB text and decodes what it made
//! without a panic (a normalizer that would blow the text up is refused before encoding).
#![no_main]
use lowbit_format::Metadata;
use lowbit_runtime::TextCodec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, even one caught; the runtime catches the tokenizers
    // library's own panics (malformed parts it `expect`s), so put the default hook back. A
    // panic that escapes the target still aborts (the macro catches and aborts on it).
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| drop(std::panic::take_hook()));
    let Ok(json) = std::str::from_utf8(data) else { return };
    let meta = Metadata {
        architecture: "llama".into(),
        config: serde_json::json!({}),
        tokenizer_json: Some(json.into()),
        ..Default::default()
    };
    let Ok(codec) = TextCodec::from_metadata(&meta) else { return };
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(91);
    for text in ["Hello, world! 123 \u{e9}\u{4e16}", long.as_str()] {
        for special in [false, true] {
            if let Ok(ids) = codec.encode(text, special) {
                let _ = codec.decode(&ids);
                let _ = codec.decode_with_special(&ids);
            }
        }
    }
});
