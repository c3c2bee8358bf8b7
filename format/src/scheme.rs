//! How a tensor's bytes are laid out: the storage schemes and their parts.
//!
//! A scheme and a shape fix everything about a tensor's bytes — which parts it has, how long
//! each is, where each starts — so the header stores no part offsets at all. A reader recomputes
//! them, which means a hostile header cannot point a part anywhere the scheme would not put it,
//! and the writer and reader cannot disagree about layout.

use crate::error::{FormatError, Result};
use serde::{Deserialize, Serialize};

/// Alignment of every part inside a tensor (and the minimum alignment of every tensor): one
/// cache line, and a multiple of every element size, so the in-place casts never fail.
pub const PART_ALIGN: u64 = 64;

/// Block sizes bitsandbytes uses for 4-bit and blockwise 8-bit quantization.
pub const BLOCKSIZES: [u32; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Block sizes of the block int8 scheme ([`Scheme::Q8`]).
pub const Q8_BLOCKSIZES: [u32; 2] = [32, 64];

/// Block sizes of the block int5 scheme ([`Scheme::Q5`]).
pub const Q5_BLOCKSIZES: [u32; 1] = [32];

/// Dtypes a 4-bit tensor may record as its original dtype.
pub const ORIG_DTYPES: [&str; 3] = ["float32", "float16", "bfloat16"];

/// Largest rank accepted.
pub const MAX_RANK: usize = 4;

/// Largest element count accepted. No tensor on a real machine comes near 2^48 elements;
/// refusing more keeps every later product (bytes, bits, offsets) far from overflow even in
/// code that forgets to check.
pub const MAX_ELEMENTS: u64 = 1 << 48;

/// Name used in errors from [`Scheme::parts`], which is not told the tensor's name.
const UNNAMED: &str = "<unnamed>";

/// 4-bit code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FourBitKind {
    /// NormalFloat4 (QLoRA).
    Nf4,
    /// bitsandbytes FP4.
    Fp4,
}

/// bitsandbytes double quantization of the 4-bit block scales.
///
/// The mean subtracted from the scales before quantizing them (bitsandbytes' `nested_offset`)
/// is *data*, stored as part `nested_offset`, not a header field: that way a tensor's header
/// entry is fixed before it is quantized, and the writer can lay out the file up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nested {
    /// Block scales per nested block (transformers always uses 256).
    pub blocksize: u32,
}

/// A tensor's storage scheme. Serialized with a `type` tag: `{"type": "f32"}`,
/// `{"type": "fourbit", "kind": "nf4", "blocksize": 64, "nested": {"blocksize": 256},
/// "orig_dtype": "bfloat16"}`. An unknown `type` is a header error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Scheme {
    /// float32, part `data`.
    F32,
    /// float16, part `data` (read as u16 bit patterns).
    F16,
    /// bfloat16, part `data` (read as u16 bit patterns).
    Bf16,
    /// LLM.int8 row-wise: parts `cb` (i8, rows·cols, row-major) and `scb` (f32 per row). 2-D only.
    Int8,
    /// Block int8: parts `qs` (i8, rows·cols, row-major) and `scales` (f16 per block of
    /// `blocksize` consecutive elements of a row, row-major); element = qs · scale. 2-D only,
    /// `cols` a multiple of `blocksize` (32 or 64).
    Q8 {
        /// Elements per block (32 or 64).
        blocksize: u32,
    },
    /// Block int5: parts `qs` (u8, rows·cols/2: per block of 32, element j in the low nibble of
    /// byte j and element j + 16 in its high nibble), `qh` (u8, rows·cols/8: per block a
    /// little-endian u32 whose bit j is element j's fifth bit) and `scales` (f16 per block);
    /// element = ((nibble | bit << 4) − 16) · scale. 2-D only, `cols` a multiple of 32.
    Q5 {
        /// Elements per block (32).
        blocksize: u32,
    },
    /// bitsandbytes 4-bit: parts `codes` (u8, ⌈n/2⌉, first element in the high nibble),
    /// `absmax` (f32 per block, or u8 dynamic-map codes when nested) and, when nested,
    /// `nested_absmax` (f32 per nested block) and `nested_offset` (one f32).
    #[serde(rename = "fourbit")]
    FourBit {
        /// Code table.
        kind: FourBitKind,
        /// Elements per block, over the flattened tensor.
        blocksize: u32,
        /// Double quantization of the block scales, if used.
        #[serde(default)]
        nested: Option<Nested>,
        /// Dtype of the original weights ("float32", "float16", "bfloat16").
        orig_dtype: String,
    },
}

/// Where one part lies inside a tensor's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLayout {
    /// Part name.
    pub name: &'static str,
    /// Offset from the tensor's first byte (a multiple of [`PART_ALIGN`]).
    pub offset: u64,
    /// Length in bytes (no padding).
    pub len: u64,
}

impl Scheme {
    /// Short name ("f32", "f16", "bf16", "int8", "q8", "q5", "nf4", "fp4").
    pub fn label(&self) -> &'static str {
        match self {
            Scheme::F32 => "f32",
            Scheme::F16 => "f16",
            Scheme::Bf16 => "bf16",
            Scheme::Int8 => "int8",
            Scheme::Q8 { .. } => "q8",
            Scheme::Q5 { .. } => "q5",
            Scheme::FourBit { kind: FourBitKind::Nf4, .. } => "nf4",
            Scheme::FourBit { kind: FourBitKind::Fp4, .. } => "fp4",
        }
    }

    /// True for the unquantized schemes (f32, f16, bf16).
    pub fn is_dense(&self) -> bool {
        matches!(self, Scheme::F32 | Scheme::F16 | Scheme::Bf16)
    }

    /// The parts of a tensor of `shape` in this scheme, in storage order. Errors name the tensor
    /// `<unnamed>`; use [`Scheme::parts_for`] when there is a name.
    pub fn parts(&self, shape: &[u64]) -> Result<Vec<PartLayout>> {
        self.parts_for(UNNAMED, shape)
    }

    /// Total bytes of a tensor of `shape`: the last part's end (no trailing padding).
    pub fn byte_len(&self, shape: &[u64]) -> Result<u64> {
        self.byte_len_for(UNNAMED, shape)
    }

    /// [`Scheme::byte_len`], with errors naming `tensor`.
    pub fn byte_len_for(&self, tensor: &str, shape: &[u64]) -> Result<u64> {
        Ok(end_of(&self.parts_for(tensor, shape)?))
    }

    /// [`Scheme::parts`], with errors naming `tensor`. All arithmetic is checked: a shape whose
    /// sizes overflow is [`FormatError::ShapeOverflow`], never a wrap or a panic.
    pub fn parts_for(&self, tensor: &str, shape: &[u64]) -> Result<Vec<PartLayout>> {
        let n = numel(tensor, shape, self.is_dense())?;
        let overflow = || FormatError::ShapeOverflow { tensor: tensor.to_string(), shape: shape.to_vec() };
        let mul = |a: u64, b: u64| a.checked_mul(b).ok_or_else(overflow);
        let lens: Vec<(&'static str, u64)> = match self {
            Scheme::F32 => vec![("data", mul(n, 4)?)],
            Scheme::F16 | Scheme::Bf16 => vec![("data", mul(n, 2)?)],
            Scheme::Int8 => {
                if shape.len() != 2 {
                    return Err(FormatError::BadShape {
                        tensor: tensor.into(),
                        shape: shape.to_vec(),
                        problem: "int8 tensors must be 2-D",
                    });
                }
                vec![("cb", n), ("scb", mul(shape[0], 4)?)]
            }
            Scheme::Q8 { blocksize } => {
                let problems = ["q8 tensors must be 2-D", "q8 rows must be a whole number of blocks"];
                block_rows(tensor, shape, *blocksize, &Q8_BLOCKSIZES, problems)?;
                vec![("qs", n), ("scales", mul(n / u64::from(*blocksize), 2)?)]
            }
            Scheme::Q5 { blocksize } => {
                let problems = ["q5 tensors must be 2-D", "q5 rows must be a whole number of blocks"];
                block_rows(tensor, shape, *blocksize, &Q5_BLOCKSIZES, problems)?;
                vec![("qs", n / 2), ("qh", n / 8), ("scales", mul(n / u64::from(*blocksize), 2)?)]
            }
            Scheme::FourBit { blocksize, nested, orig_dtype, .. } => {
                check_blocksize(tensor, "blocksize", *blocksize)?;
                if !ORIG_DTYPES.contains(&orig_dtype.as_str()) {
                    return Err(FormatError::BadOrigDtype { tensor: tensor.into(), dtype: orig_dtype.clone() });
                }
                let nb = n.div_ceil(u64::from(*blocksize));
                match nested {
                    None => vec![("codes", n.div_ceil(2)), ("absmax", mul(nb, 4)?)],
                    Some(nd) => {
                        check_blocksize(tensor, "nested blocksize", nd.blocksize)?;
                        vec![
                            ("codes", n.div_ceil(2)),
                            ("absmax", nb),
                            ("nested_absmax", mul(nb.div_ceil(u64::from(nd.blocksize)), 4)?),
                            ("nested_offset", 4),
                        ]
                    }
                }
            }
        };
        let mut parts = Vec::with_capacity(lens.len());
        let mut off = 0u64;
        for (name, len) in lens {
            parts.push(PartLayout { name, offset: off, len });
            let end = off.checked_add(len).ok_or_else(overflow)?;
            off = end.checked_next_multiple_of(PART_ALIGN).ok_or_else(overflow)?;
        }
        Ok(parts)
    }
}

/// End of the last part: a tensor's byte length.
pub(crate) fn end_of(parts: &[PartLayout]) -> u64 {
    // `parts_for` checked that offset + len does not overflow.
    parts.last().map_or(0, |p| p.offset + p.len)
}

/// A row-blocked scheme's (q8, q5) shape and block size: 2-D, a block size it takes, rows a
/// whole number of blocks. `problems`: the scheme's two shape messages.
fn block_rows(tensor: &str, shape: &[u64], blocksize: u32, allowed: &[u32], problems: [&'static str; 2]) -> Result<()> {
    let bad = |problem| FormatError::BadShape { tensor: tensor.into(), shape: shape.to_vec(), problem };
    if shape.len() != 2 {
        return Err(bad(problems[0]));
    }
    if !allowed.contains(&blocksize) {
        return Err(FormatError::BadBlocksize { tensor: tensor.into(), which: "blocksize", blocksize });
    }
    if !shape[1].is_multiple_of(u64::from(blocksize)) {
        return Err(bad(problems[1]));
    }
    Ok(())
}

fn check_blocksize(tensor: &str, which: &'static str, blocksize: u32) -> Result<()> {
    if BLOCKSIZES.contains(&blocksize) {
        Ok(())
    } else {
        Err(FormatError::BadBlocksize { tensor: tensor.into(), which, blocksize })
    }
}

/// Element count of `shape`. Empty tensors (a zero dimension) are allowed only for dense schemes:
/// a quantized tensor with no elements has no blocks and no rows, which no quantizer produces and
/// every kernel would have to special-case.
fn numel(tensor: &str, shape: &[u64], dense: bool) -> Result<u64> {
    let bad = |problem| FormatError::BadShape { tensor: tensor.to_string(), shape: shape.to_vec(), problem };
    if shape.is_empty() || shape.len() > MAX_RANK {
        return Err(bad("rank must be 1 to 4"));
    }
    if !dense && shape.contains(&0) {
        return Err(bad("zero-sized dimension (only f32/f16/bf16 tensors may be empty)"));
    }
    match shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        _ => Err(FormatError::ShapeOverflow { tensor: tensor.to_string(), shape: shape.to_vec() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nf4(blocksize: u32, nested: Option<u32>) -> Scheme {
        Scheme::FourBit {
            kind: FourBitKind::Nf4,
            blocksize,
            nested: nested.map(|blocksize| Nested { blocksize }),
            orig_dtype: "bfloat16".into(),
        }
    }

    #[test]
    fn mistral_q_proj_nested_sizes_match_bitsandbytes() {
        // FORMATS.md §B.3: q_proj 4096×4096, blocksize 64, nested 256.
        let p = nf4(64, Some(256)).parts(&[4096, 4096]).unwrap();
        let got: Vec<(&str, u64, u64)> = p.iter().map(|x| (x.name, x.offset, x.len)).collect();
        assert_eq!(
            got,
            [
                ("codes", 0, 8_388_608),
                ("absmax", 8_388_608, 262_144),
                ("nested_absmax", 8_650_752, 4096),
                ("nested_offset", 8_654_848, 4),
            ]
        );
        assert_eq!(nf4(64, Some(256)).byte_len(&[4096, 4096]).unwrap(), 8_654_852);
    }

    #[test]
    fn odd_counts_and_partial_blocks_round_up_and_pad_to_64() {
        // 3×63 = 189 elements: 95 code bytes, ⌈189/128⌉ = 2 blocks.
        let s = Scheme::FourBit { kind: FourBitKind::Fp4, blocksize: 128, nested: None, orig_dtype: "float16".into() };
        let p = s.parts(&[3, 63]).unwrap();
        assert_eq!((p[0].len, p[1].offset, p[1].len), (95, 128, 8));
        // 1000 blocks → 4 nested blocks; parts padded to 64.
        let p = nf4(32, Some(256)).parts(&[32_000]).unwrap();
        assert_eq!(
            p.iter().map(|x| (x.offset, x.len)).collect::<Vec<_>>(),
            [(0, 16_000), (16_000, 1000), (17_024, 16), (17_088, 4)]
        );
        let p = Scheme::Int8.parts(&[3, 5]).unwrap();
        assert_eq!(p.iter().map(|x| (x.name, x.offset, x.len)).collect::<Vec<_>>(), [("cb", 0, 15), ("scb", 64, 12)]);
        assert_eq!(Scheme::Bf16.byte_len(&[2, 3, 4]).unwrap(), 48);
        assert!(p.iter().all(|x| x.offset % PART_ALIGN == 0));
    }

    #[test]
    fn q5_parts_and_refusals() {
        let q5 = |blocksize| Scheme::Q5 { blocksize };
        let p = q5(32).parts(&[3, 64]).unwrap();
        assert_eq!(
            p.iter().map(|x| (x.name, x.offset, x.len)).collect::<Vec<_>>(),
            [("qs", 0, 96), ("qh", 128, 24), ("scales", 192, 12)]
        );
        assert!(matches!(q5(32).parts(&[64]), Err(FormatError::BadShape { .. })));
        assert!(matches!(q5(32).parts(&[2, 48]), Err(FormatError::BadShape { .. })));
        assert!(matches!(q5(64).parts(&[2, 64]), Err(FormatError::BadBlocksize { .. })));
        assert_eq!(q5(32).label(), "q5");
        assert_eq!(serde_json::to_string(&q5(32)).unwrap(), r#"{"type":"q5","blocksize":32}"#);
    }

    #[test]
    fn q8_parts_and_refusals() {
        let q8 = |blocksize| Scheme::Q8 { blocksize };
        let p = q8(32).parts(&[3, 64]).unwrap();
        assert_eq!(
            p.iter().map(|x| (x.name, x.offset, x.len)).collect::<Vec<_>>(),
            [("qs", 0, 192), ("scales", 192, 12)]
        );
        assert_eq!(q8(64).byte_len(&[2, 128]).unwrap(), 256 + 8);
        assert!(matches!(q8(32).parts(&[64]), Err(FormatError::BadShape { .. })));
        assert!(matches!(q8(32).parts(&[2, 48]), Err(FormatError::BadShape { .. })));
        assert!(matches!(q8(16).parts(&[2, 64]), Err(FormatError::BadBlocksize { .. })));
        assert_eq!(q8(32).label(), "q8");
        let json = serde_json::to_string(&q8(32)).unwrap();
        assert_eq!(json, r#"{"type":"q8","blocksize":32}"#);
        assert_eq!(serde_json::from_str::<Scheme>(&json).unwrap(), q8(32));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        for shape in [vec![1 << 40, 1 << 40], vec![u64::MAX, 2], vec![1 << 49]] {
            assert!(matches!(Scheme::F32.parts(&shape), Err(FormatError::ShapeOverflow { .. })), "{shape:?}");
        }
        // Int8's per-row scale array: rows × 4 stays in range because rows ≤ 2^48.
        assert!(Scheme::Int8.parts(&[1 << 47, 2]).is_ok());
        assert!(Scheme::F32.parts(&[1 << 48]).is_ok());
    }

    #[test]
    fn zero_size_only_for_dense() {
        assert_eq!(Scheme::F32.parts(&[3, 0]).unwrap(), [PartLayout { name: "data", offset: 0, len: 0 }]);
        assert_eq!(Scheme::F16.byte_len(&[0]).unwrap(), 0);
        assert!(matches!(Scheme::Int8.parts(&[0, 4]), Err(FormatError::BadShape { .. })));
        assert!(matches!(nf4(64, None).parts(&[64, 0]), Err(FormatError::BadShape { .. })));
    }

    #[test]
    fn rejects_bad_rank_blocksize_and_dtype() {
        assert!(matches!(Scheme::F32.parts(&[]), Err(FormatError::BadShape { .. })));
        assert!(matches!(Scheme::F32.parts(&[1, 1, 1, 1, 1]), Err(FormatError::BadShape { .. })));
        assert!(Scheme::F32.parts(&[1, 1, 1, 1]).is_ok());
        assert!(matches!(Scheme::Int8.parts(&[64]), Err(FormatError::BadShape { .. })));
        assert!(matches!(
            nf4(48, None).parts_for("w", &[64]),
            Err(FormatError::BadBlocksize { which: "blocksize", blocksize: 48, ref tensor }) if tensor == "w"
        ));
        assert!(matches!(
            nf4(64, Some(0)).parts(&[64]),
            Err(FormatError::BadBlocksize { which: "nested blocksize", .. })
        ));
        let s = Scheme::FourBit { kind: FourBitKind::Nf4, blocksize: 64, nested: None, orig_dtype: "int8".into() };
        assert!(matches!(s.parts(&[64]), Err(FormatError::BadOrigDtype { .. })));
    }

    #[test]
    fn serde_spelling_is_stable() {
        let s = nf4(64, Some(256));
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"type": "fourbit", "kind": "nf4", "blocksize": 64,
                               "nested": {"blocksize": 256}, "orig_dtype": "bfloat16"})
        );
        assert_eq!(serde_json::to_value(Scheme::Bf16).unwrap(), serde_json::json!({"type": "bf16"}));
        assert_eq!(serde_json::to_value(Scheme::Int8).unwrap(), serde_json::json!({"type": "int8"}));
        // `nested` may be left out.
        let back: Scheme = serde_json::from_value(
            serde_json::json!({"type": "fourbit", "kind": "fp4", "blocksize": 64, "orig_dtype": "float32"}),
        )
        .unwrap();
        assert!(matches!(back, Scheme::FourBit { nested: None, kind: FourBitKind::Fp4, .. }));
        assert!(serde_json::from_value::<Scheme>(serde_json::json!({"type": "q4_0"})).is_err());
    }
}
