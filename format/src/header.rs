//! The JSON header: model metadata and the tensor index.
//!
//! JSON rather than a binary table because the header is small next to the weights, carries
//! free-form documents anyway (config.json, tokenizer.json), and stays readable with `head -c`.
//! Optional fields carry `#[serde(default)]` so files from older converters still open; unknown
//! fields are ignored so a newer converter's additions do not lock out an older runtime.

use crate::error::{FormatError, Result};
use crate::scheme::Scheme;
use serde::{Deserialize, Serialize};

/// How the file's weights were quantized: a record for `inspect` and for the runtime's int8
/// threshold, not a layout description (each tensor's [`Scheme`] is that).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantSettings {
    /// Scheme of the linear layers ("nf4", "fp4", "int8", "f16", "bf16", "f32").
    pub scheme: String,
    /// 4-bit block size, if the linear layers are 4-bit.
    #[serde(default)]
    pub blocksize: Option<u32>,
    /// Whether the 4-bit block scales are double-quantized.
    #[serde(default)]
    pub double_quant: bool,
    /// LLM.int8 outlier threshold the runtime applies to activations (0 = no outlier split).
    #[serde(default = "default_threshold")]
    pub int8_threshold: f32,
    /// Tensor-name patterns kept in high precision (e.g. `lm_head`, `*norm*`).
    #[serde(default)]
    pub kept: Vec<String>,
    /// What the converter read: "safetensors", "bitsandbytes-nf4", "gguf", ….
    #[serde(default)]
    pub source_format: String,
}

/// transformers' default `llm_int8_threshold`.
fn default_threshold() -> f32 {
    6.0
}

impl Default for QuantSettings {
    fn default() -> Self {
        QuantSettings {
            scheme: "f32".into(),
            blocksize: None,
            double_quant: false,
            int8_threshold: default_threshold(),
            kept: Vec::new(),
            source_format: String::new(),
        }
    }
}

/// The program that wrote the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConverterInfo {
    /// Program name ("lowbit").
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A digest of one source file, so a file can be traced back to (and re-made from) its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDigest {
    /// File name, relative to the source folder.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

/// `tokenizer_json` in the header: a tokenizer.json that is a JSON object goes in as that object,
/// its text verbatim but for surrounding whitespace — as a JSON string, its quotes and
/// backslashes escaped would add a fifth (SmolLM2's: 1.56 MB → 1.86 MB); any other text goes in
/// as a string. Both forms read back as the text, so files written either way open alike.
mod tokenizer_text {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(text: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match text {
            Some(t) if t.trim_start().starts_with('{') => match serde_json::from_str::<&RawValue>(t.trim()) {
                Ok(raw) => raw.serialize(s),
                Err(_) => t.serialize(s),
            },
            other => other.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else { return Ok(None) };
        match raw.get() {
            t if t.starts_with('"') => serde_json::from_str::<String>(t).map(Some).map_err(D::Error::custom),
            t if t.starts_with('{') => Ok(Some(t.to_string())),
            _ => Err(D::Error::custom("tokenizer_json must be a JSON object or a string")),
        }
    }
}

/// Everything about the model except its tensors: enough to run it with no other file. The
/// default is empty (no architecture, a null config): a start for building one field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Architecture, from config.json's `model_type`: "mistral", "llama", "qwen2".
    pub architecture: String,
    /// The model's config.json, verbatim (must be a JSON object).
    pub config: serde_json::Value,
    /// The full tokenizer.json text, if the source had one (kept as text: it is large, and the
    /// tokenizer library parses text anyway). In the header it is the JSON object itself when
    /// the text is one (see `tokenizer_text`).
    #[serde(default, with = "tokenizer_text")]
    pub tokenizer_json: Option<String>,
    /// tokenizer_config.json (an object), if present.
    #[serde(default)]
    pub tokenizer_config: Option<serde_json::Value>,
    /// The chat template (from tokenizer_config.json or chat_template.jinja), if any.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// generation_config.json (an object), if present.
    #[serde(default)]
    pub generation_config: Option<serde_json::Value>,
    /// How the weights were quantized.
    #[serde(default)]
    pub quantization: QuantSettings,
    /// The converter that wrote the file.
    #[serde(default)]
    pub converter: ConverterInfo,
    /// Source files and their digests.
    #[serde(default)]
    pub sources: Vec<SourceDigest>,
    /// LoRA adapters merged into the weights at conversion, in the order applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterRecord>,
}

/// The `architecture` of a file that holds a LoRA adapter on its own (low-rank pairs to apply
/// beside a base model's weights at run time) rather than a model.
pub const ADAPTER_ARCHITECTURE: &str = "lora-adapter";

/// A LoRA adapter merged into a file's weights (or, in an adapter file, the adapter it holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRecord {
    /// The adapter folder's name.
    pub name: String,
    /// SHA-256 of its `adapter_model.safetensors`, 64 lowercase hex digits.
    pub sha256: String,
    /// The user's scale on top of the adapter's own `lora_alpha / r`.
    pub scale: f32,
}

impl Metadata {
    /// Checks the JSON-typed fields are objects, as their readers assume. The writer calls this
    /// too, so it cannot produce a file the reader rejects.
    pub fn validate(&self) -> Result<()> {
        let object = |field, v: Option<&serde_json::Value>| match v {
            Some(v) if !v.is_object() => Err(FormatError::BadMetadata { field, problem: "not a JSON object" }),
            _ => Ok(()),
        };
        object("config", Some(&self.config))?;
        object("tokenizer_config", self.tokenizer_config.as_ref())?;
        object("generation_config", self.generation_config.as_ref())
    }
}

/// One entry of the tensor index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Name (Hugging Face naming, e.g. `model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Storage scheme.
    pub scheme: Scheme,
    /// Shape, outermost first (a linear weight is `[out_features, in_features]`).
    pub shape: Vec<u64>,
    /// Absolute file offset of the tensor's first byte.
    pub offset: u64,
    /// Bytes: all parts with the zero padding between them, = `scheme.byte_len(shape)`.
    pub length: u64,
    /// CRC-32 (IEEE, as `crc32fast`) of the `length` bytes, 8 lowercase hex digits.
    pub crc32: String,
}

/// The whole header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Model metadata.
    pub metadata: Metadata,
    /// Tensor index, in the order the writer was given.
    pub tensors: Vec<TensorInfo>,
}

/// [`Header`] by reference, so the writer can serialize its header several times while planning
/// without cloning a multi-megabyte tokenizer each time. Serializes identically to `Header`.
#[derive(Serialize)]
pub(crate) struct HeaderRef<'a> {
    pub metadata: &'a Metadata,
    pub tensors: &'a [TensorInfo],
}

/// Whether `s` is a well-formed checksum field: 8 lowercase hex digits.
pub(crate) fn is_crc_hex(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer.json object goes into the header as itself (no escapes), other text as a
    /// string, and both read back as the text; a string written by older files reads too.
    #[test]
    fn tokenizer_text_goes_in_as_an_object() {
        let mut m = Metadata { architecture: "llama".into(), config: serde_json::json!({}), ..Default::default() };
        for (text, raw) in [
            ("{\"model\": {\"vocab\": {\"\\\"a\": 0}}, \"added\": [1, 2]}", true),
            ("  {\"x\": 1}\n", true),
            ("{\"x\": 1} trailing", false),
            ("not json \" \\", false),
        ] {
            m.tokenizer_json = Some(text.into());
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json.contains("\"tokenizer_json\":{"), raw, "{json}");
            let back: Metadata = serde_json::from_str(&json).unwrap();
            assert_eq!(back.tokenizer_json.as_deref(), Some(if raw { text.trim() } else { text }));
        }
        let old: Metadata =
            serde_json::from_str(r#"{"architecture": "a", "config": {}, "tokenizer_json": "{\"v\": 1}"}"#).unwrap();
        assert_eq!(old.tokenizer_json.as_deref(), Some("{\"v\": 1}"));
        let none: Metadata =
            serde_json::from_str(r#"{"architecture": "a", "config": {}, "tokenizer_json": null}"#).unwrap();
        assert!(none.tokenizer_json.is_none());
        assert!(
            serde_json::from_str::<Metadata>(r#"{"architecture": "a", "config": {}, "tokenizer_json": 3}"#).is_err()
        );
        // Nesting however deep inside the object is skipped over without recursion and kept as
        // text (the tokenizer library's parser, with its own depth limit, reads it later).
        let nested = format!("{{\"a\": {}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let deep = format!(r#"{{"architecture": "a", "config": {{}}, "tokenizer_json": {nested}}}"#);
        assert_eq!(serde_json::from_str::<Metadata>(&deep).unwrap().tokenizer_json, Some(nested));
    }

    #[test]
    fn old_files_with_only_required_fields_still_parse() {
        let m: Metadata = serde_json::from_str(r#"{"architecture": "mistral", "config": {}}"#).unwrap();
        assert_eq!(m.quantization, QuantSettings::default());
        assert_eq!(m.quantization.int8_threshold, 6.0);
        assert!(m.tokenizer_json.is_none() && m.sources.is_empty());
        let q: QuantSettings = serde_json::from_str(r#"{"scheme": "nf4", "future_field": 1}"#).unwrap();
        assert_eq!(q.int8_threshold, 6.0);
    }

    #[test]
    fn json_fields_must_be_objects() {
        let mut m: Metadata = serde_json::from_str(r#"{"architecture": "mistral", "config": {}}"#).unwrap();
        assert!(m.validate().is_ok());
        m.generation_config = Some(serde_json::json!([1]));
        assert!(matches!(m.validate(), Err(FormatError::BadMetadata { field: "generation_config", .. })));
        m.generation_config = None;
        m.config = serde_json::json!("x");
        assert!(matches!(m.validate(), Err(FormatError::BadMetadata { field: "config", .. })));
    }

    #[test]
    fn checksum_syntax() {
        assert!(is_crc_hex("0123abcd"));
        assert!(!is_crc_hex("0123ABCD"));
        assert!(!is_crc_hex("0123abc"));
        assert!(!is_crc_hex("0123abcg"));
        assert!(!is_crc_hex("é123abc"));
    }
}
