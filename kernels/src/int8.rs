//! LLM.int8 as bitsandbytes does it on CPU (FORMATS.md §D, §I): row-wise absmax int8 weights
//! (`CB`, `SCB`), per-token int8 activations, and outlier feature columns kept in floating point.

use crate::error::{KernelError, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// bitsandbytes' dequantization constant for `CB * SCB / 127` (float32 of 1/127).
pub const INV_127: f32 = 1.0 / 127.0;

/// The literal bitsandbytes' PyTorch backend multiplies `i32 · SCA · SCB` by (≈ 1/127²).
pub const MM_DEQUANT_SCALE: f32 = 6.200_124e-5;

/// `round_half_even(x)` as an i8 for |x| ≤ 127.5, without a libm call: adding 1.5·2²³ pushes
/// the fraction out of an f32 mantissa, so the hardware's default round-to-nearest-even does
/// the rounding (exact for |x| < 2²²). `f32::round_ties_even` compiles to a call to `rintf` on
/// baseline x86-64, which dominated activation quantization.
#[inline(always)]
pub fn round_to_i8(x: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    ((x + MAGIC) - MAGIC) as i8
}

/// An owned int8 weight matrix in bitsandbytes' layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Tensor {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `round(W · 127 / SCB[row])`, row-major `rows × cols`.
    pub cb: Vec<i8>,
    /// Per-row absmax of the float16-rounded weights.
    pub scb: Vec<f32>,
}

/// Quantizes one row the way `int8_vectorwise_quant` does: `round_half_even(x · (127 / absmax))`.
/// torch evaluates `127.0 / tensor` as `reciprocal(tensor) · 127`, which differs from a true
/// division in the last bit and so flips exact .5 cases; we do the same. A zero row gives zeros
/// (bitsandbytes would produce NaN and cast it).
fn quantize_row(row: &[f32], absmax: f32, out: &mut [i8]) {
    if absmax == 0.0 {
        out.fill(0);
        return;
    }
    let scale = (1.0 / absmax) * 127.0;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = round_to_i8(v * scale);
    }
}

/// Quantizes a `rows × cols` weight matrix to int8 as `Int8Params` does: the weights are first
/// rounded to float16, then quantized row-wise.
pub fn quantize_int8(w: &[f32], rows: usize, cols: usize) -> Result<Int8Tensor> {
    let n = rows.checked_mul(cols).ok_or(KernelError::Overflow { op: "quantize_int8", rows, cols })?;
    if w.len() != n {
        return Err(KernelError::ShapeMismatch { op: "quantize_int8", what: "w", expected: n, got: w.len() });
    }
    if let Some(index) = w.iter().position(|v| !v.is_finite() || f16::from_f32(*v).is_infinite()) {
        return Err(KernelError::NonFinite { op: "quantize_int8", index, value: w[index] });
    }
    let mut cb = vec![0i8; n];
    let mut scb = Vec::with_capacity(rows);
    let mut tmp = vec![0f32; cols];
    for (r, out) in cb.chunks_mut(cols.max(1)).enumerate().take(rows) {
        for (t, &v) in tmp.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
            *t = f16::from_f32(v).to_f32();
        }
        let am = tmp.iter().fold(0f32, |m, v| m.max(v.abs()));
        scb.push(am);
        quantize_row(&tmp, am, out);
    }
    Ok(Int8Tensor { rows, cols, cb, scb })
}

impl Int8Tensor {
    /// Dequantizes into `out` (`rows × cols`): `CB · SCB / 127` as bitsandbytes computes it.
    pub fn dequantize(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.cb.len() {
            return Err(KernelError::ShapeMismatch {
                op: "dequantize_int8",
                what: "out",
                expected: self.cb.len(),
                got: out.len(),
            });
        }
        for (r, row) in out.chunks_mut(self.cols.max(1)).enumerate().take(self.rows) {
            dequantize_row(&self.cb[r * self.cols..(r + 1) * self.cols], self.scb[r], row);
        }
        Ok(())
    }
}

/// Dequantizes one row: `cb · (scb · (1/127))`, the order bitsandbytes multiplies in.
#[inline]
pub fn dequantize_row(cb: &[i8], scb: f32, out: &mut [f32]) {
    let s = scb * INV_127;
    for (o, &c) in out.iter_mut().zip(cb) {
        *o = c as f32 * s;
    }
}

/// Per-token int8 activations, with the outlier columns split off (LLM.int8 decomposition).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Int8Activations {
    /// Tokens.
    pub rows: usize,
    /// Features.
    pub cols: usize,
    /// `round(x · 127 / SCA[t])`, zero in outlier columns.
    pub ca: Vec<i8>,
    /// Per-token absmax over the non-outlier entries.
    pub sca: Vec<f32>,
    /// Feature columns where some token has |x| ≥ threshold, ascending.
    pub outlier_cols: Vec<usize>,
}

/// Quantizes activations `x` (`rows × cols`) as bitsandbytes' `int8_vectorwise_quant` does after
/// casting them to float16: outlier entries (|x| ≥ threshold, if threshold > 0) are left out of
/// each row's absmax, and whole outlier columns are zeroed in `CA`.
pub fn quantize_activations(x: &[f32], rows: usize, cols: usize, threshold: f32, out: &mut Int8Activations) {
    debug_assert_eq!(x.len(), rows * cols);
    out.rows = rows;
    out.cols = cols;
    out.ca.clear();
    out.ca.resize(rows * cols, 0);
    out.sca.clear();
    out.outlier_cols.clear();
    // The float16 cast, once for the whole matrix through half's slice conversions (F16C where
    // the CPU has it; one call per element dominated this function).
    let mut halfs = vec![f16::ZERO; rows * cols];
    halfs.convert_from_f32_slice(&x[..rows * cols]);
    let mut hx = vec![0f32; rows * cols];
    halfs.convert_to_f32_slice(&mut hx);
    let is_outlier = |v: f32| threshold > 0.0 && v.abs() >= threshold;
    if threshold > 0.0 {
        let mut flag = vec![false; cols];
        for row in hx.chunks(cols.max(1)).take(rows) {
            for (f, &v) in flag.iter_mut().zip(row) {
                *f |= is_outlier(v);
            }
        }
        out.outlier_cols.extend(flag.iter().enumerate().filter(|(_, &f)| f).map(|(c, _)| c));
    }
    for tmp in hx.chunks_mut(cols.max(1)).take(rows) {
        if threshold > 0.0 {
            for t in tmp.iter_mut() {
                if is_outlier(*t) {
                    *t = 0.0;
                }
            }
        }
        out.sca.push(tmp.iter().fold(0f32, |m, v| m.max(v.abs())));
    }
    // The rows' codes on the team (a prompt's tokens; serially for one): the rounding is most
    // of this function, and a prompt's product waited for it on one thread.
    let (hx, sca, outliers) = (&hx, &out.sca, &out.outlier_cols);
    crate::team::for_each_chunk_mut(
        &mut out.ca,
        cols.max(1),
        || (),
        |_, r, dst| {
            quantize_row(&hx[r * cols..(r + 1) * cols], sca[r], dst);
            // bitsandbytes zeroes outlier columns only when there is more than one row; with one row
            // the outlier entries were already zeroed before quantizing, which gives the same codes.
            for &c in outliers {
                dst[c] = 0;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_rounding_is_ties_to_even() {
        for i in -2540..=2540 {
            let x = i as f32 * 0.05;
            assert_eq!(round_to_i8(x), x.round_ties_even() as i8, "{x}");
        }
        for x in [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -126.5, 127.0, 0.49999997] {
            assert_eq!(round_to_i8(x), x.round_ties_even() as i8, "{x}");
        }
    }

    #[test]
    fn zero_row_gives_zero_codes_and_scale() {
        let q = quantize_int8(&[0.0, 0.0, 1.0, -2.0], 2, 2).unwrap();
        assert_eq!(q.cb, vec![0, 0, 64, -127]);
        assert_eq!(q.scb, vec![0.0, 2.0]);
    }

    #[test]
    fn outlier_columns_are_split_off() {
        let x = [1.0, 7.0, 0.5, 0.25, -1.0, 0.5];
        let mut a = Int8Activations::default();
        quantize_activations(&x, 2, 3, 6.0, &mut a);
        assert_eq!(a.outlier_cols, vec![1]);
        assert_eq!(a.sca, vec![1.0, 1.0]);
        assert_eq!(a.ca, vec![127, 0, 64, 32, 0, 64]);
    }
}
