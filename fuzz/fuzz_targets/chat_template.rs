//! A chat template of arbitrary text rendered over a short conversation: a typed error or the
//! text, never a panic, within the template's fuel (the run's `-timeout` and `-rss_limit_mb`
//! catch a template that would run or allocate without bound).
#![no_main]
use lowbit_format::Metadata;
use lowbit_runtime::{Message, TextCodec};

/// A one-token vocabulary: the target renders templates, it does not encode.
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,
"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else { return };
    let meta = Metadata {
        architecture: "llama".into(),
        config: serde_json::json!({}),
        tokenizer_json: Some(TOKENIZER.into()),
        tokenizer_config: Some(serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"})),
        chat_template: Some(template.into()),
        generation_config: None,
        quantization: Default::default(),
        converter: Default::default(),
        sources: vec![],
        adapters: vec![],
    };
    let codec = TextCodec::from_metadata(&meta).expect("the fixed tokenizer loads");
    let msgs = [("system", "Be brief."), ("user", "Hi {{ there }}"), ("assistant", "Hello."), ("user", "2+2?")]
        .map(|(role, content)| Message { role: role.into(), content: content.into() });
    for add in [false, true] {
        let _ = codec.apply_chat_template(&msgs, add);
    }
});
