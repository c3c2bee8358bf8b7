//! 4-bit blockwise quantization exactly as bitsandbytes stores it (NF4 and FP4), with optional
//! double quantization of the block scales. This is the scalar, deterministic path the converter
//! uses; files it writes are byte-identical on every CPU.
//!
//! Layout (FORMATS.md §A.3): blocks run over the *flattened* tensor, so a block may straddle two
//! rows; element `2k` is the high nibble of byte `k`, element `2k+1` the low nibble.

use crate::codebook::{self, bucketize, FP4_LEVELS, NF4_LEVELS};
use crate::error::{KernelError, Result};

/// Which 4-bit code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FourBitKind {
    /// NormalFloat4 (QLoRA).
    Nf4,
    /// bitsandbytes' 4-bit float (1 sign, 2 exponent, 1 mantissa bit).
    Fp4,
}

impl FourBitKind {
    /// The 16 dequantized levels by code.
    pub fn levels(self) -> &'static [f32; 16] {
        match self {
            FourBitKind::Nf4 => &NF4_LEVELS,
            FourBitKind::Fp4 => &FP4_LEVELS,
        }
    }

    /// The levels as int8, `round(127 · level)`, for the integer route
    /// ([`crate::scalar::dot_fourbit_q8`]). Rounding moves a level by at most 0.5/127 of the
    /// block absmax (0.4 %), far below the 4-bit quantization step.
    pub fn int8_levels(self) -> [i8; 16] {
        self.levels().map(|l| (l * 127.0).round_ties_even() as i8)
    }

    fn sorted(self) -> &'static codebook::SortedTable {
        match self {
            FourBitKind::Nf4 => codebook::nf4_sorted(),
            FourBitKind::Fp4 => codebook::fp4_sorted(),
        }
    }
}

/// Block sizes bitsandbytes accepts for 4-bit and blockwise 8-bit quantization.
pub const ALLOWED_BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// The nested block size transformers always uses for double quantization.
pub const NESTED_BLOCKSIZE: usize = 256;

/// Checks a blocksize against [`ALLOWED_BLOCKSIZES`].
pub fn check_blocksize(blocksize: usize) -> Result<()> {
    if ALLOWED_BLOCKSIZES.contains(&blocksize) {
        Ok(())
    } else {
        Err(KernelError::BadBlocksize(blocksize))
    }
}

/// How the block scales of a 4-bit tensor are stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One float32 absmax per block.
    F32(Vec<f32>),
    /// Double quantization: `absmax[i] = DYNAMIC_MAP[codes[i]] * nested_absmax[i / nested_blocksize] + offset`.
    Nested {
        /// One 8-bit dynamic-map code per block.
        codes: Vec<u8>,
        /// One float32 scale per nested block.
        nested_absmax: Vec<f32>,
        /// Nested block size (256).
        nested_blocksize: usize,
        /// The mean that was subtracted before quantizing the scales.
        offset: f32,
    },
}

/// A 4-bit quantized tensor (owned), in bitsandbytes' layout.
#[derive(Debug, Clone, PartialEq)]
pub struct FourBitTensor {
    /// Code table.
    pub kind: FourBitKind,
    /// Elements per block.
    pub blocksize: usize,
    /// Number of elements (product of the shape).
    pub len: usize,
    /// `ceil(len / 2)` bytes, first element in the high nibble.
    pub codes: Vec<u8>,
    /// Block scales.
    pub absmax: Absmax,
}

/// Rule for the nested 8-bit codes of double quantization (FORMATS.md §I): bitsandbytes' CUDA and
/// pure-PyTorch paths take the nearest dynamic-map value; its CPU C++ kernel uses a 65,536-entry
/// lookup table that differs by one step on a small fraction of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NestedRule {
    /// Nearest value, ties to the lower code (CUDA, default backend). What most published
    /// checkpoints used, and our default.
    #[default]
    Nearest,
    /// The CPU C++ kernel's lookup table.
    CpuLut,
}

/// Options for [`quantize_4bit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FourBitOptions {
    /// Code table.
    pub kind: FourBitKind,
    /// Elements per block (default 64).
    pub blocksize: usize,
    /// Quantize the block scales again (bitsandbytes' `compress_statistics`).
    pub double_quant: bool,
    /// Rounding rule of the nested codes.
    pub nested_rule: NestedRule,
    /// Choose each block's stored scale and codes to minimise its |w|-weighted squared error
    /// ([`search_block`]) instead of bitsandbytes' absmax and nearest code. The file layout and
    /// the dequantization formula are unchanged, so bitsandbytes reads the blocks as it reads its
    /// own; `false` (the default here) gives bitsandbytes' bytes exactly.
    pub scale_search: bool,
}

impl Default for FourBitOptions {
    fn default() -> Self {
        FourBitOptions {
            kind: FourBitKind::Nf4,
            blocksize: 64,
            double_quant: true,
            nested_rule: NestedRule::Nearest,
            scale_search: false,
        }
    }
}

fn check_finite(op: &'static str, x: &[f32]) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(KernelError::NonFinite { op, index, value: x[index] }),
        None => Ok(()),
    }
}

fn absmax_of(block: &[f32]) -> f32 {
    block.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// bitsandbytes' blockwise scaling: full blocks multiply by the reciprocal of the (clamped)
/// absmax, a short last block divides by it — the two differ in the last bit, so we keep both.
#[inline]
fn scale_block(block: &[f32], absmax: f32, full: bool, mut emit: impl FnMut(f32)) {
    let am = absmax.max(1e-38);
    let inv = 1.0 / am;
    for &v in block {
        let s = if full { v * inv } else { v / am };
        emit(s.clamp(-1.0, 1.0));
    }
}

/// Quantizes `x` (a flattened tensor) to 4 bits as bitsandbytes' `quantize_4bit` does.
///
/// NaN and infinities are rejected: bitsandbytes would compute a NaN or infinite scale and store
/// a block that dequantizes to garbage.
pub fn quantize_4bit(x: &[f32], opts: &FourBitOptions) -> Result<FourBitTensor> {
    quantize_4bit_weighted(x, opts, None)
}

/// The importance of each input column of a weight matrix (the mean square of the activations
/// that column multiplies, from calibration text), for [`quantize_4bit_weighted`].
#[derive(Debug, Clone, Copy)]
pub struct ColumnImportance<'a> {
    /// One non-negative value per column.
    pub per_column: &'a [f32],
    /// The column of `x[0]` (`x` may start inside a row).
    pub first_column: usize,
}

/// [`quantize_4bit`], with the scale search (`opts.scale_search`) weighting each weight's error
/// by its column's importance instead of by `|w|`: a column whose activations are large costs
/// more when its weights are off (what llama.cpp's importance matrix does). Without `importance`, or without
/// the search, it is [`quantize_4bit`].
pub fn quantize_4bit_weighted(
    x: &[f32],
    opts: &FourBitOptions,
    importance: Option<ColumnImportance>,
) -> Result<FourBitTensor> {
    check_blocksize(opts.blocksize)?;
    check_finite("quantize_4bit", x)?;
    if let Some(imp) = importance {
        if let Some(index) = imp.per_column.iter().position(|v| !v.is_finite() || *v < 0.0) {
            let value = imp.per_column[index];
            return Err(KernelError::NonFinite { op: "quantize_4bit importance", index, value });
        }
        if imp.per_column.is_empty() {
            return Err(KernelError::ShapeMismatch { op: "quantize_4bit", what: "importance", expected: 1, got: 0 });
        }
    }
    let n = x.len();
    let table = opts.kind.sorted();
    let mut codes = vec![0u8; n.div_ceil(2)];
    let mut absmax = Vec::with_capacity(n.div_ceil(opts.blocksize));
    let mut i = 0usize;
    let mut put = |code: u8| {
        let byte = &mut codes[i / 2];
        // First element of a pair in the high nibble.
        *byte |= if i.is_multiple_of(2) { code << 4 } else { code };
        i += 1;
    };
    let (mut block_codes, mut trial) = (Vec::with_capacity(opts.blocksize), Vec::with_capacity(opts.blocksize));
    let mut weights = Vec::with_capacity(opts.blocksize);
    for (b, block) in x.chunks(opts.blocksize).enumerate() {
        if opts.scale_search {
            let full = block.len() == opts.blocksize;
            let scale = match importance {
                Some(imp) => {
                    let cols = imp.per_column.len();
                    let c0 = (imp.first_column + b * opts.blocksize) % cols;
                    weights.clear();
                    weights.extend((0..block.len()).map(|j| imp.per_column[(c0 + j) % cols]));
                    search_block_weighted(block, opts.kind, full, Some(&weights), &mut block_codes, &mut trial)
                }
                None => search_block(block, opts.kind, full, &mut block_codes, &mut trial),
            };
            absmax.push(scale);
            block_codes.iter().for_each(|&c| put(c));
            continue;
        }
        let am = absmax_of(block);
        absmax.push(am);
        scale_block(block, am, block.len() == opts.blocksize, |s| put(table.codes[bucketize(s, &table.bounds)]));
    }
    // An odd count pads the low nibble of the last byte with the code of 0.0 (bitsandbytes
    // quantizes a zero-padded tensor: NF4 code 7).
    if n % 2 == 1 {
        codes[n / 2] |= table.codes[bucketize(0.0, &table.bounds)];
    }
    let absmax =
        if opts.double_quant { nest_absmax(&absmax, NESTED_BLOCKSIZE, opts.nested_rule) } else { Absmax::F32(absmax) };
    Ok(FourBitTensor { kind: opts.kind, blocksize: opts.blocksize, len: n, codes, absmax })
}

/// Fractions of the block absmax tried as scales by [`search_block`], besides the absmax itself.
const SEARCH_STEPS: usize = 12;
/// Spacing of those fractions: 0.98, 0.96, …, 0.76.
const SEARCH_STEP: f32 = 0.02;

/// The weighted squared error of a block quantized with `scale` and `codes`: each weight's error
/// counts `|w|` times, so the search does not trade the largest weights of a block — the ones the
/// products depend on most — for the bulk. On SmolLM2 (KL to the f32 model / perplexity):
/// unweighted 0.445 / 10.70, weighted by `w²` (llama.cpp's IQ4_NL weighting without an importance
/// matrix) 0.428 / 10.21, by `|w|` 0.417 / 10.16; bitsandbytes' absmax 0.494 / 10.45.
fn block_error(block: &[f32], q: &[f64], levels: &[f32; 16], scale: f32, codes: &[u8]) -> f64 {
    block.iter().zip(codes).zip(q).map(|((&w, &c), &q)| q * ((w - levels[c as usize] * scale) as f64).powi(2)).sum()
}

/// Each weight's share of a block's error: its column's importance (the mean x² its activations
/// bring, so the weighted error is the expected squared error of the product) when there is
/// one, else `|w|` ([`block_error`]). On SmolLM2 with an importance file from 20k tokens of
/// Python documentation, scored on Genesis (KL to the f32 model): importance alone 0.290,
/// importance × `|w|` 0.336, llama.cpp's importance × √(σ² + w²) 0.306, √importance × `|w|`
/// 0.398; no importance 0.416.
fn error_weights(block: &[f32], importance: Option<&[f32]>, out: &mut [f64]) {
    for (i, (o, &w)) in out.iter_mut().zip(block).enumerate() {
        *o = match importance {
            Some(imp) => imp[i] as f64,
            None => (w as f64).abs(),
        };
    }
}

/// Resolution of [`nearest_lut`]: [−1, 1] in steps of 1/`LUT_HALF`.
const LUT_HALF: f32 = 2048.0;

/// The nearest code of each value of [−1, 1] in steps of 1/2048 — the search's candidate codes
/// (bitsandbytes' own candidate is always computed exactly; a candidate off by one code near a
/// boundary is still scored exactly, so the table only saves the search a binary search per
/// weight and candidate).
fn nearest_lut(kind: FourBitKind) -> &'static [u8] {
    static NF4: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    static FP4: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let cell = match kind {
        FourBitKind::Nf4 => &NF4,
        FourBitKind::Fp4 => &FP4,
    };
    cell.get_or_init(|| {
        let table = kind.sorted();
        (0..=2 * LUT_HALF as usize).map(|i| table.codes[bucketize(i as f32 / LUT_HALF - 1.0, &table.bounds)]).collect()
    })
}

/// Nearest codes of `block / scale` (clamped to [−1, 1]) into `codes`, through [`nearest_lut`].
fn nearest_codes(block: &[f32], scale: f32, lut: &[u8], codes: &mut Vec<u8>) {
    // Clamped as bitsandbytes clamps its absmax: a tinier scale would make 1/scale infinite.
    let inv = 1.0 / scale.max(1e-38);
    codes.clear();
    codes.extend(block.iter().map(|&w| lut[(((w * inv).clamp(-1.0, 1.0) + 1.0) * LUT_HALF + 0.5) as usize]));
}

/// One block's scale and codes by search: bitsandbytes' choice (absmax, nearest codes) is the
/// first candidate; then the codes nearest to `block / (f · absmax)` for f = 0.98 … 0.76, each
/// with the weighted least-squares scale for those codes; the candidate with the least weighted
/// squared error (`block_error`) wins, and a tie keeps the earlier one, so the result is never worse than
/// bitsandbytes' by this measure. A smaller scale lets the inner levels fit the bulk of the
/// weights at the cost of clipping the largest, which the least-squares scale then rebalances
/// (llama.cpp's IQ4_NL searches its scales the same way). Returns the scale; `codes` receives
/// one code per element; `trial` is scratch, kept by the caller so no block allocates.
pub fn search_block(block: &[f32], kind: FourBitKind, full: bool, codes: &mut Vec<u8>, trial: &mut Vec<u8>) -> f32 {
    search_block_weighted(block, kind, full, None, codes, trial)
}

/// [`search_block`] with each weight's error weighted by `importance` (one value per element of
/// `block`) instead of by `|w|`.
pub fn search_block_weighted(
    block: &[f32],
    kind: FourBitKind,
    full: bool,
    importance: Option<&[f32]>,
    codes: &mut Vec<u8>,
    trial: &mut Vec<u8>,
) -> f32 {
    // bitsandbytes' default block of 64 on the stack; larger blocks on the heap.
    let (mut stack, mut heap) = ([0f64; 64], Vec::new());
    let q: &mut [f64] = if block.len() <= 64 {
        &mut stack[..block.len()]
    } else {
        heap.resize(block.len(), 0.0);
        &mut heap
    };
    error_weights(block, importance, q);
    let q = &*q;
    let table = kind.sorted();
    let lut = nearest_lut(kind);
    let levels = kind.levels();
    let am = absmax_of(block);
    codes.clear();
    scale_block(block, am, full, |s| codes.push(table.codes[bucketize(s, &table.bounds)]));
    if am == 0.0 {
        return am;
    }
    let mut best = (block_error(block, q, levels, am, codes), am);
    // k = 0 re-fits bitsandbytes' own codes; k ≥ 1 tries a smaller scale first. The best codes
    // so far stay in `codes`; a better candidate is swapped in from `trial`.
    for k in 0..=SEARCH_STEPS {
        let cand: &[u8] = if k == 0 {
            codes
        } else {
            nearest_codes(block, am * (1.0 - SEARCH_STEP * k as f32), lut, trial);
            trial
        };
        let Some(scale) = weighted_ls_scale(block, q, levels, cand) else { continue };
        let err = block_error(block, q, levels, scale, cand);
        if err < best.0 {
            best = (err, scale);
            if k > 0 {
                std::mem::swap(codes, trial);
            }
        }
    }
    best.1
}

/// The scale minimising the weighted error for fixed codes, `Σ q·w·l / Σ q·l²` with q each
/// weight's share ([`error_weights`]); `None` when it is not a finite positive number.
fn weighted_ls_scale(block: &[f32], q: &[f64], levels: &[f32; 16], codes: &[u8]) -> Option<f32> {
    let (wl, ll) = block.iter().zip(codes).zip(q).fold((0f64, 0f64), |(wl, ll), ((&w, &c), &q)| {
        let l = levels[c as usize] as f64;
        (wl + q * w as f64 * l, ll + q * l * l)
    });
    let scale = (wl / ll) as f32;
    (ll > 0.0 && wl > 0.0 && scale.is_finite() && scale > 0.0).then_some(scale)
}

/// Mean of float32 values as a float32. torch sums in float32 with a cascade; summing in f64 and
/// rounding once gives the correctly rounded mean, which equals torch's result except in rare
/// last-bit cases (the golden tests measure this).
fn mean_f32(v: &[f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
}

/// Double quantization of block scales: subtract their mean, then 8-bit blockwise-quantize with
/// the dynamic map in nested blocks.
pub fn nest_absmax(absmax: &[f32], nested_blocksize: usize, rule: NestedRule) -> Absmax {
    let offset = mean_f32(absmax);
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (codes, nested_absmax) = quantize_blockwise_8bit(&centered, nested_blocksize, rule);
    Absmax::Nested { codes, nested_absmax, nested_blocksize, offset }
}

/// bitsandbytes' blockwise 8-bit quantization with the signed dynamic map.
pub fn quantize_blockwise_8bit(x: &[f32], blocksize: usize, rule: NestedRule) -> (Vec<u8>, Vec<f32>) {
    let bounds = codebook::dynamic_bounds();
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        let am = absmax_of(block);
        // bitsandbytes' PyTorch kernel clamps the scale of a short last block to 1e-38 and
        // stores the clamped value; its C++ kernel stores the zero.
        let short = block.len() < blocksize;
        scales.push(if am == 0.0 && short && rule == NestedRule::Nearest { 1e-38 } else { am });
        match rule {
            NestedRule::Nearest => {
                scale_block(block, am, block.len() == blocksize, |s| codes.push(bucketize(s, bounds) as u8))
            }
            NestedRule::CpuLut => {
                // The C++ kernel scales by division and reads a table indexed by the value mapped
                // to 0..65535; entry i counts the boundaries below -1 + 2i/65535.
                if am == 0.0 {
                    // The C++ kernel's lookup of an all-zero block yields code 0.
                    codes.extend(std::iter::repeat_n(0u8, block.len()));
                    continue;
                }
                for &v in block {
                    let s = (v / am).clamp(-1.0, 1.0);
                    let idx = (((s + 1.0) * 0.5) * 65535.0 + 0.5) as u32;
                    let probe = -1.0 + 2.0 * idx as f32 / 65535.0;
                    codes.push(bounds.partition_point(|&b| b < probe) as u8);
                }
            }
        }
    }
    (codes, scales)
}

impl Absmax {
    /// The float32 scale of block `b`.
    #[inline]
    pub fn get(&self, b: usize) -> f32 {
        match self {
            Absmax::F32(v) => v[b],
            Absmax::Nested { codes, nested_absmax, nested_blocksize, offset } => {
                nested_scale(codes[b], nested_absmax[b / nested_blocksize], *offset)
            }
        }
    }
}

/// One reconstructed block scale of a double-quantized tensor (FORMATS.md §B.3): multiply, then
/// add the offset, each rounded to float32.
#[inline]
pub fn nested_scale(code: u8, nested_absmax: f32, offset: f32) -> f32 {
    codebook::dynamic_map()[code as usize] * nested_absmax + offset
}

/// Dequantizes element `i` given its code and block scale — the one formula every path uses.
#[inline]
pub fn dequantize_code(levels: &[f32; 16], code: u8, scale: f32) -> f32 {
    levels[code as usize] * scale
}

/// The 4-bit code of flat element `i`.
#[inline]
pub fn code_at(codes: &[u8], i: usize) -> u8 {
    let byte = codes[i / 2];
    if i.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0F
    }
}

impl FourBitTensor {
    /// Dequantizes the whole tensor into `out` (length `self.len`), bit-exact with
    /// bitsandbytes' float32 result.
    pub fn dequantize(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.len {
            return Err(KernelError::ShapeMismatch {
                op: "dequantize_4bit",
                what: "out",
                expected: self.len,
                got: out.len(),
            });
        }
        let levels = self.kind.levels();
        for (b, chunk) in out.chunks_mut(self.blocksize).enumerate() {
            let scale = self.absmax.get(b);
            let base = b * self.blocksize;
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = dequantize_code(levels, code_at(&self.codes, base + j), scale);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With an importance file the search spends its accuracy where the activations are large:
    /// on a row whose first column carries nearly all the importance, that column's weights come
    /// out closer than without it, and a block whose importance is all zero keeps bitsandbytes'
    /// own codes (nothing to gain).
    #[test]
    fn importance_steers_the_search() {
        let cols = 64;
        let x: Vec<f32> = (0..4 * cols).map(|i| ((i * 7919 % 263) as f32 / 131.0 - 1.0) * 0.1).collect();
        let opts = FourBitOptions { scale_search: true, double_quant: false, ..Default::default() };
        let mut imp = vec![1e-4f32; cols];
        imp[0] = 100.0;
        imp[1] = 100.0;
        let plain = quantize_4bit(&x, &opts).unwrap();
        let weighted =
            quantize_4bit_weighted(&x, &opts, Some(ColumnImportance { per_column: &imp, first_column: 0 })).unwrap();
        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        plain.dequantize(&mut a).unwrap();
        weighted.dequantize(&mut b).unwrap();
        let err = |d: &[f32]| -> f64 {
            (0..4).flat_map(|r| [r * cols, r * cols + 1]).map(|i| ((x[i] - d[i]) as f64).powi(2)).sum()
        };
        assert!(err(&b) <= err(&a), "weighted {} against {}", err(&b), err(&a));
        assert!(err(&b) < err(&a) || a == b);
        // All-zero importance: bitsandbytes' block.
        let zero = vec![0f32; cols];
        let z =
            quantize_4bit_weighted(&x, &opts, Some(ColumnImportance { per_column: &zero, first_column: 0 })).unwrap();
        let bnb = quantize_4bit(&x, &FourBitOptions { scale_search: false, ..opts }).unwrap();
        assert_eq!(z.codes, bnb.codes);
        // A negative or NaN importance is refused.
        let neg = vec![-1f32; cols];
        assert!(
            quantize_4bit_weighted(&x, &opts, Some(ColumnImportance { per_column: &neg, first_column: 0 })).is_err()
        );
    }

    proptest::proptest! {
        /// The search never does worse than bitsandbytes' absmax and nearest codes on the same
        /// block by its own measure; its scale is finite and positive (zero for an all-zero
        /// block) and its codes are 4-bit; the quantized tensor reads back through the same
        /// formula as bitsandbytes' blocks.
        #[test]
        fn search_is_never_worse_than_absmax(
            x in proptest::collection::vec(proptest::prop_oneof![8 => -2.0f32..2.0, 1 => proptest::strategy::Just(0.0f32), 1 => -50.0f32..50.0], 1..200),
            fp4 in proptest::bool::ANY,
        ) {
            let kind = if fp4 { FourBitKind::Fp4 } else { FourBitKind::Nf4 };
            let levels = kind.levels();
            for block in x.chunks(64) {
                let (mut codes, mut trial) = (Vec::new(), Vec::new());
                let s = search_block(block, kind, block.len() == 64, &mut codes, &mut trial);
                let am = absmax_of(block);
                proptest::prop_assert!(s.is_finite() && (s > 0.0 || am == 0.0), "scale {s}");
                proptest::prop_assert_eq!(codes.len(), block.len());
                proptest::prop_assert!(codes.iter().all(|&c| c < 16));
                let bnb = quantize_4bit(block, &FourBitOptions { kind, blocksize: 64, double_quant: false, ..Default::default() }).unwrap();
                let bnb_codes: Vec<u8> = (0..block.len()).map(|i| code_at(&bnb.codes, i)).collect();
                let mut q = vec![0f64; block.len()];
                error_weights(block, None, &mut q);
                let (ours, theirs) = (block_error(block, &q, levels, s, &codes), block_error(block, &q, levels, am, &bnb_codes));
                proptest::prop_assert!(ours <= theirs, "search {ours} > absmax {theirs}");
            }
            let q = quantize_4bit(&x, &FourBitOptions { kind, double_quant: false, scale_search: true, ..Default::default() }).unwrap();
            let deq = |q: &FourBitTensor| { let mut v = vec![0f32; q.len]; q.dequantize(&mut v).unwrap(); v };
            let back = deq(&q);
            let err: f64 = x.iter().zip(&back).map(|(a, b)| (*a as f64).abs() * ((a - b) as f64).powi(2)).sum();
            let bnb = deq(&quantize_4bit(&x, &FourBitOptions { kind, double_quant: false, ..Default::default() }).unwrap());
            let err_bnb: f64 = x.iter().zip(&bnb).map(|(a, b)| (*a as f64).abs() * ((a - b) as f64).powi(2)).sum();
            proptest::prop_assert!(err <= err_bnb * (1.0 + 1e-6) + 1e-12, "{err} > {err_bnb}");
        }
    }

    #[test]
    fn first_element_goes_in_the_high_nibble() {
        let mut x = vec![0f32; 64];
        x[0] = -1.0;
        x[1] = 1.0;
        let q = quantize_4bit(&x, &FourBitOptions { double_quant: false, ..Default::default() }).unwrap();
        assert_eq!(q.codes[0], 0x0F);
        assert_eq!(q.codes[1], 0x77);
    }

    #[test]
    fn odd_length_pads_low_nibble_with_the_zero_code() {
        let x = [0.5f32, -0.25, 1.0];
        let q = quantize_4bit(&x, &FourBitOptions { double_quant: false, ..Default::default() }).unwrap();
        assert_eq!(q.codes.len(), 2);
        assert_eq!(q.codes[1] & 0x0F, 7);
    }

    #[test]
    fn rejects_non_finite_and_bad_blocksize() {
        assert!(matches!(
            quantize_4bit(&[1.0, f32::NAN], &FourBitOptions::default()),
            Err(KernelError::NonFinite { index: 1, .. })
        ));
        assert_eq!(
            quantize_4bit(&[1.0], &FourBitOptions { blocksize: 48, ..Default::default() }),
            Err(KernelError::BadBlocksize(48))
        );
    }

    #[test]
    fn all_zero_block_dequantizes_to_zero() {
        let x = vec![0f32; 130];
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            for double_quant in [false, true] {
                let q = quantize_4bit(&x, &FourBitOptions { kind, double_quant, ..Default::default() }).unwrap();
                let mut out = vec![1f32; 130];
                q.dequantize(&mut out).unwrap();
                assert!(out.iter().all(|&v| v == 0.0), "{kind:?} dq={double_quant}");
            }
        }
    }
}
