//! Which scheme each tensor gets. Following bitsandbytes/transformers defaults: the linear
//! layers of attention and MLP are quantized; norms, biases, embeddings and lm_head stay in high
//! precision (their source dtype) unless asked otherwise.

use lowbit_format::{FourBitKind, Nested, Scheme};

/// What the linear layers become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantChoice {
    /// NF4 (4-bit NormalFloat).
    Nf4,
    /// bitsandbytes FP4.
    Fp4,
    /// LLM.int8.
    Int8,
    /// float16 everywhere.
    F16,
    /// bfloat16 everywhere.
    Bf16,
    /// float32 everywhere.
    F32,
}

impl QuantChoice {
    /// Name as stored in the file's quantization settings.
    pub fn label(self) -> &'static str {
        match self {
            QuantChoice::Nf4 => "nf4",
            QuantChoice::Fp4 => "fp4",
            QuantChoice::Int8 => "int8",
            QuantChoice::F16 => "f16",
            QuantChoice::Bf16 => "bf16",
            QuantChoice::F32 => "f32",
        }
    }
}

/// Conversion settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertOptions {
    /// Scheme of the linear layers.
    pub quant: QuantChoice,
    /// 4-bit block size.
    pub blocksize: usize,
    /// Double-quantize 4-bit block scales.
    pub double_quant: bool,
    /// LLM.int8 outlier threshold recorded for the runtime.
    pub int8_threshold: f32,
    /// Extra name fragments to keep in high precision.
    pub keep: Vec<String>,
    /// Quantize embeddings and lm_head too.
    pub quantize_all: bool,
    /// Rounding rule of double-quant codes: nearest (bitsandbytes on CUDA and its PyTorch
    /// backend; the default) or the lookup table of its CPU kernel.
    pub nested_rule: lowbit_kernels::NestedRule,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            quant: QuantChoice::Nf4,
            blocksize: 64,
            double_quant: true,
            int8_threshold: 6.0,
            keep: Vec::new(),
            quantize_all: false,
            nested_rule: lowbit_kernels::NestedRule::Nearest,
        }
    }
}

const LINEAR: [&str; 7] = [
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "o_proj.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "down_proj.weight",
];

/// Dense scheme of a given element type name.
pub fn dense(dtype: super::source::SrcDtype) -> Scheme {
    match dtype {
        super::source::SrcDtype::F16 => Scheme::F16,
        super::source::SrcDtype::Bf16 => Scheme::Bf16,
        _ => Scheme::F32,
    }
}

impl ConvertOptions {
    /// Whether `name` (of rank `rank`) is quantized with the chosen 4-bit/int8 scheme.
    pub fn quantizes(&self, name: &str, rank: usize) -> bool {
        if rank != 2 || self.keep.iter().any(|k| name.contains(k.as_str())) {
            return false;
        }
        LINEAR.iter().any(|l| name.ends_with(l))
            || (self.quantize_all && (name == "model.embed_tokens.weight" || name == "lm_head.weight"))
    }

    /// The scheme of tensor `name` stored in `kept` when not quantized.
    pub fn scheme_for(&self, name: &str, rank: usize, kept: Scheme, orig_dtype: &str) -> Scheme {
        match self.quant {
            QuantChoice::F16 => return Scheme::F16,
            QuantChoice::Bf16 => return Scheme::Bf16,
            QuantChoice::F32 => return Scheme::F32,
            _ => {}
        }
        if !self.quantizes(name, rank) {
            return kept;
        }
        match self.quant {
            QuantChoice::Int8 => Scheme::Int8,
            q => Scheme::FourBit {
                kind: if q == QuantChoice::Fp4 { FourBitKind::Fp4 } else { FourBitKind::Nf4 },
                blocksize: self.blocksize as u32,
                nested: self.double_quant.then_some(Nested { blocksize: 256 }),
                orig_dtype: orig_dtype.to_string(),
            },
        }
    }
}
