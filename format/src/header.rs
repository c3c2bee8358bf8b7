//! The JSON header: model metadata and the tensor index.

use crate::scheme::Scheme;
use serde::{Deserialize, Serialize};

/// Quantization settings the file was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantSettings {
    /// Scheme of the linear layers ("nf4", "fp4", "int8", "f16", "bf16", "f32").
    pub scheme: String,
    /// 4-bit block size, if any.
    #[serde(default)]
    pub blocksize: Option<u32>,
    /// 4-bit block scales double-quantized.
    #[serde(default)]
    pub double_quant: bool,
    /// LLM.int8 outlier threshold for the runtime (0 = off).
    #[serde(default = "default_threshold")]
    pub int8_threshold: f32,
    /// Tensor-name patterns kept in high precision.
    #[serde(default)]
    pub kept: Vec<String>,
    /// What the converter read ("safetensors", "bitsandbytes-nf4", "gguf", …).
    #[serde(default)]
    pub source_format: String,
}

fn default_threshold() -> f32 {
    6.0
}

impl Default for QuantSettings {
    fn default() -> Self {
        QuantSettings {
            scheme: "f32".into(),
            blocksize: None,
            double_quant: false,
            int8_threshold: 6.0,
            kept: Vec::new(),
            source_format: String::new(),
        }
    }
}

/// Who wrote the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConverterInfo {
    /// Program name.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A digest of one source file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDigest {
    /// File name, relative to the source folder.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Everything about the model except its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// `model_type` ("mistral", "llama", "qwen2").
    pub architecture: String,
    /// The model's config.json.
    pub config: serde_json::Value,
    /// tokenizer.json text, if the source had one.
    #[serde(default)]
    pub tokenizer_json: Option<String>,
    /// tokenizer_config.json.
    #[serde(default)]
    pub tokenizer_config: Option<serde_json::Value>,
    /// Chat template (from tokenizer_config.json or chat_template.jinja).
    #[serde(default)]
    pub chat_template: Option<String>,
    /// generation_config.json.
    #[serde(default)]
    pub generation_config: Option<serde_json::Value>,
    /// How the weights were stored.
    #[serde(default)]
    pub quantization: QuantSettings,
    /// The converter.
    #[serde(default)]
    pub converter: ConverterInfo,
    /// Source files and their digests.
    #[serde(default)]
    pub sources: Vec<SourceDigest>,
}

/// One entry of the tensor index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Name (Hugging Face naming).
    pub name: String,
    /// Storage scheme.
    pub scheme: Scheme,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
    /// Absolute file offset of the first byte.
    pub offset: u64,
    /// Bytes (all parts with the padding between them).
    pub length: u64,
    /// CRC-32 of the bytes, 8 lowercase hex digits.
    pub crc32: String,
}

/// The whole header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Model metadata.
    pub metadata: Metadata,
    /// Tensor index, in file order.
    pub tensors: Vec<TensorInfo>,
}
