//! Where tensors come from: a Hugging Face safetensors folder or a GGUF file. Both present the
//! same view — tensor names in Hugging Face naming, shapes outermost first — and read any range of
//! a tensor's (flattened) elements, so the pipeline never holds more than a chunk of a tensor it
//! converts.

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
    /// Bytes per element (1 for [`SrcDtype::Other`], which is never read).
    pub fn size(self) -> usize {
        match self {
            SrcDtype::F32 => 4,
            SrcDtype::F16 | SrcDtype::Bf16 => 2,
            SrcDtype::U8 | SrcDtype::I8 | SrcDtype::Other => 1,
        }
    }

    /// Whether the pipeline converts tensors of this type as weights.
    pub fn is_float(self) -> bool {
        matches!(self, SrcDtype::F32 | SrcDtype::F16 | SrcDtype::Bf16)
    }

    /// The name PyTorch uses (bitsandbytes quant states record it as the original dtype).
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

/// Decodes little-endian f32/f16/bf16 bytes (any alignment) into `out` (replacing its contents).
/// Other dtypes decode to nothing; callers check the dtype first.
pub fn decode_f32(dtype: SrcDtype, bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        SrcDtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        SrcDtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        SrcDtype::Bf16 => out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => {}
    }
}

/// One tensor of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrcTensor {
    /// Hugging Face name.
    pub name: String,
    /// Element type as [`TensorSource::read_raw`] returns it.
    pub dtype: SrcDtype,
    /// The dtype as the file spells it (for messages: `I64`, `F8_E4M3`, `Q4_K`, …).
    pub dtype_name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Bytes the tensor occupies in the source file (its share of the progress bar).
    pub bytes: u64,
}

impl SrcTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reads tensors out of a source. `Sync`: the pipeline reads different tensors from several
/// threads at once.
pub trait TensorSource: Sync {
    /// Every tensor, sorted by name.
    fn list(&self) -> &[SrcTensor];
    /// The tensor named `name`.
    fn get(&self, name: &str) -> Option<&SrcTensor> {
        let list = self.list();
        list.binary_search_by(|t| t.name.as_str().cmp(name)).ok().map(|i| &list[i])
    }
    /// Raw little-endian bytes (in the listed dtype) of elements `start .. start + len` of `name`.
    fn read_raw(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>>;
    /// Elements `start .. start + len` of float tensor `name` as f32, into `out`.
    fn read_f32(&self, name: &str, start: usize, len: usize, out: &mut Vec<f32>) -> Result<()>;
}
