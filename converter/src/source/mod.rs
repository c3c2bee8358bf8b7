//! Where tensors come from: a Hugging Face safetensors folder or a GGUF file. Both present the
//! same view — tensor names in Hugging Face naming, shapes outermost first, and a way to read one
//! tensor (or a range of its elements) as f32 or as raw bytes.

pub mod gguf;
pub mod safetensors;

use crate::error::Result;

/// Element type of a source tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcDtype {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    Bf16,
    /// uint8 (bitsandbytes packed codes, quant-state JSON, absmax codes).
    U8,
    /// int8 (LLM.int8 CB).
    I8,
    /// Anything else (kept only to report it).
    Other,
}

impl SrcDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SrcDtype::F32 => 4,
            SrcDtype::F16 | SrcDtype::Bf16 => 2,
            SrcDtype::U8 | SrcDtype::I8 | SrcDtype::Other => 1,
        }
    }

    /// The name transformers uses (`bnb` quant states record it).
    pub fn torch_name(self) -> &'static str {
        match self {
            SrcDtype::F32 => "float32",
            SrcDtype::F16 => "float16",
            SrcDtype::Bf16 => "bfloat16",
            SrcDtype::U8 => "uint8",
            SrcDtype::I8 => "int8",
            SrcDtype::Other => "other",
        }
    }
}

/// Decodes little-endian f32/f16/bf16 bytes (any alignment) into f32.
pub fn decode_f32(dtype: SrcDtype, bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        SrcDtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        SrcDtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        SrcDtype::Bf16 => out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => {}
    }
}

/// Reads tensors out of a source.
pub trait TensorSource: Sync {
    /// Every tensor: (name, dtype, shape).
    fn list(&self) -> Vec<(String, SrcDtype, Vec<usize>)>;
    /// Raw little-endian bytes of elements `start .. start + len` of tensor `name`.
    fn read_raw(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>>;
}
