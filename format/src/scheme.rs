//! How a tensor's bytes are laid out: the storage schemes and their parts.

use crate::error::{FormatError, Result};
use serde::{Deserialize, Serialize};

/// Alignment of every part inside a tensor, and of every tensor.
pub const PART_ALIGN: u64 = 64;

/// 4-bit code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FourBitKind {
    /// NormalFloat4.
    Nf4,
    /// bitsandbytes FP4.
    Fp4,
}

/// bitsandbytes double quantization of the block scales. The mean subtracted before quantizing
/// the scales (`nested_offset`) is data — part `nested_offset` — so a tensor's header entry is
/// known before it is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nested {
    /// Scales per nested block (256).
    pub blocksize: u32,
}

/// A tensor's storage scheme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Scheme {
    /// float32, part `data`.
    F32,
    /// float16, part `data`.
    F16,
    /// bfloat16, part `data`.
    Bf16,
    /// LLM.int8 row-wise: parts `cb` (i8, rows·cols) and `scb` (f32, rows). 2-D only.
    Int8,
    /// bitsandbytes 4-bit: parts `codes` (u8, ⌈n/2⌉, first element in the high nibble),
    /// `absmax` (f32 per block, or u8 dynamic-map codes when nested) and, when nested,
    /// `nested_absmax` (f32 per nested block) and `nested_offset` (one f32).
    #[serde(rename = "fourbit")]
    FourBit {
        /// Code table.
        kind: FourBitKind,
        /// Elements per block.
        blocksize: u32,
        /// Double quantization, if used.
        nested: Option<Nested>,
        /// Dtype of the original weights ("float32", "float16", "bfloat16").
        orig_dtype: String,
    },
}

/// Where one part lies inside a tensor's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartLayout {
    /// Part name.
    pub name: &'static str,
    /// Offset from the tensor's start (a multiple of [`PART_ALIGN`]).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

const BLOCKSIZES: [u32; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

fn numel(name: &str, shape: &[u64]) -> Result<u64> {
    let bad = |problem| FormatError::BadShape { tensor: name.to_string(), shape: shape.to_vec(), problem };
    if shape.is_empty() || shape.len() > 4 {
        return Err(bad("rank must be 1 to 4"));
    }
    if shape.contains(&0) {
        return Err(bad("zero-sized dimension"));
    }
    let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("element count overflows"))?;
    // No tensor can hold more than 2^48 elements on a real machine; refusing here keeps every
    // later multiplication (×4 bytes, ×8 bits) far from overflow.
    if n > 1 << 48 {
        return Err(bad("element count is implausibly large"));
    }
    Ok(n)
}

impl Scheme {
    /// Short name ("f32", "nf4", …).
    pub fn label(&self) -> &'static str {
        match self {
            Scheme::F32 => "f32",
            Scheme::F16 => "f16",
            Scheme::Bf16 => "bf16",
            Scheme::Int8 => "int8",
            Scheme::FourBit { kind: FourBitKind::Nf4, .. } => "nf4",
            Scheme::FourBit { kind: FourBitKind::Fp4, .. } => "fp4",
        }
    }

    /// The parts of a tensor of `shape` in this scheme, in storage order.
    pub fn parts(&self, name: &str, shape: &[u64]) -> Result<Vec<PartLayout>> {
        let n = numel(name, shape)?;
        let lens: Vec<(&'static str, u64)> = match self {
            Scheme::F32 => vec![("data", n * 4)],
            Scheme::F16 | Scheme::Bf16 => vec![("data", n * 2)],
            Scheme::Int8 => {
                if shape.len() != 2 {
                    return Err(FormatError::BadShape {
                        tensor: name.into(),
                        shape: shape.to_vec(),
                        problem: "int8 tensors must be 2-D",
                    });
                }
                vec![("cb", n), ("scb", shape[0] * 4)]
            }
            Scheme::FourBit { blocksize, nested, orig_dtype, .. } => {
                let bad = |problem: String| FormatError::BadScheme { tensor: name.into(), problem };
                if !BLOCKSIZES.contains(blocksize) {
                    return Err(bad(format!("blocksize {blocksize} is not one of {BLOCKSIZES:?}")));
                }
                if !["float32", "float16", "bfloat16"].contains(&orig_dtype.as_str()) {
                    return Err(bad(format!("orig_dtype {orig_dtype:?} is not float32, float16 or bfloat16")));
                }
                let nb = n.div_ceil(*blocksize as u64);
                match nested {
                    None => vec![("codes", n.div_ceil(2)), ("absmax", nb * 4)],
                    Some(nd) => {
                        if !BLOCKSIZES.contains(&nd.blocksize) {
                            return Err(bad(format!("nested blocksize {} is not one of {BLOCKSIZES:?}", nd.blocksize)));
                        }
                        vec![
                            ("codes", n.div_ceil(2)),
                            ("absmax", nb),
                            ("nested_absmax", nb.div_ceil(nd.blocksize as u64) * 4),
                            ("nested_offset", 4),
                        ]
                    }
                }
            }
        };
        let mut off = 0u64;
        Ok(lens
            .into_iter()
            .map(|(name, len)| {
                let p = PartLayout { name, offset: off, len };
                off = (off + len).next_multiple_of(PART_ALIGN);
                p
            })
            .collect())
    }

    /// Total bytes of a tensor of `shape` (the last part's end).
    pub fn byte_len(&self, name: &str, shape: &[u64]) -> Result<u64> {
        Ok(self.parts(name, shape)?.last().map_or(0, |p| p.offset + p.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_nested_parts_are_aligned() {
        let s = Scheme::FourBit {
            kind: FourBitKind::Nf4,
            blocksize: 64,
            nested: Some(Nested { blocksize: 256 }),
            orig_dtype: "bfloat16".into(),
        };
        let p = s.parts("w", &[4096, 4096]).unwrap();
        assert_eq!(p[0].len, 8_388_608);
        assert_eq!(p[1].len, 262_144);
        assert_eq!(p[2].len, 1024 * 4);
        assert!(p.iter().all(|x| x.offset % 64 == 0));
    }

    #[test]
    fn rejects_overflow_and_bad_blocksize() {
        assert!(Scheme::F32.parts("w", &[1 << 40, 1 << 40]).is_err());
        assert!(Scheme::F32.parts("w", &[3, 0]).is_err());
        let s = Scheme::FourBit { kind: FourBitKind::Nf4, blocksize: 48, nested: None, orig_dtype: "float16".into() };
        assert!(s.parts("w", &[64]).is_err());
        assert!(Scheme::Int8.parts("w", &[64]).is_err());
    }
}
