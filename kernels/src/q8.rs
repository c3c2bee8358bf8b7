//! Block int8 ("q8"): every row cut into blocks of 32 (or 64) weights, each block stored as int8
//! values with one f16 scale — the 8-bit scheme that loses least (LLM.int8's one scale per row
//! lets a single large weight coarsen its whole row). `scale = f16(absmax / 127)` and
//! `q = round(w / scale)` against that stored scale, clamped to ±127, so a weight reads back as
//! `q · scale`. Decode quantizes each activation block the same way (an f32 scale) and sums
//! `q_w · q_x` exactly in i32 per block: `y = Σ_b isum_b · (scale_b · d_b)`.

use crate::error::{KernelError, Result};
use half::f16;

/// Block sizes of the scheme.
pub const BLOCKSIZES: [usize; 2] = [32, 64];

/// An owned block int8 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Tensor {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Elements per block.
    pub blocksize: usize,
    /// Row-major values.
    pub qs: Vec<i8>,
    /// Block scales, row-major.
    pub scales: Vec<f16>,
}

/// Quantizes a `rows × cols` matrix into blocks of `blocksize` (32 or 64, dividing `cols`).
/// NaN, infinity and values whose block scale float16 cannot hold are refused.
pub fn quantize(w: &[f32], rows: usize, cols: usize, blocksize: usize) -> Result<Q8Tensor> {
    const OP: &str = "quantize_q8_weights";
    let n = rows.checked_mul(cols).ok_or(KernelError::Overflow { op: OP, rows, cols })?;
    if !BLOCKSIZES.contains(&blocksize) || !cols.is_multiple_of(blocksize) {
        return Err(KernelError::BadBlocksize(blocksize));
    }
    if w.len() != n {
        return Err(KernelError::ShapeMismatch { op: OP, what: "w", expected: n, got: w.len() });
    }
    let mut qs = vec![0i8; n];
    let mut scales = Vec::with_capacity(n / blocksize);
    for (b, (block, out)) in w.chunks(blocksize).zip(qs.chunks_mut(blocksize)).enumerate() {
        if let Some(i) = block.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite { op: OP, index: b * blocksize + i, value: block[i] });
        }
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = f16::from_f32(am / 127.0);
        if s.is_infinite() {
            let i = block.iter().position(|v| v.abs() == am).unwrap_or(0);
            return Err(KernelError::NonFinite { op: OP, index: b * blocksize + i, value: block[i] });
        }
        let sf = s.to_f32();
        if sf > 0.0 {
            let inv = 1.0 / sf;
            for (o, &v) in out.iter_mut().zip(block) {
                *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
        }
        scales.push(s);
    }
    Ok(Q8Tensor { rows, cols, blocksize, qs, scales })
}

/// Quantizes activations `x` in blocks of `blocksize` for [`crate::Kernels::dot_q8`]:
/// `q = round_half_even(x · 127 / absmax)` in order, `d[b] = absmax / 127`. A block so small that
/// `127 / absmax` overflows counts as zero. `q` holds `x.len()` entries, `d` one per block.
pub fn quantize_activations(x: &[f32], blocksize: usize, q: &mut [i8], d: &mut [f32]) {
    for ((block, qb), d) in x.chunks(blocksize).zip(q.chunks_mut(blocksize)).zip(d.iter_mut()) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if am > 0.0 && (127.0 / am).is_finite() { 127.0 / am } else { 0.0 };
        for (o, &v) in qb.iter_mut().zip(block) {
            *o = crate::int8::round_to_i8(v * inv);
        }
        *d = if inv == 0.0 { 0.0 } else { am / 127.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_half_a_step() {
        let w: Vec<f32> = (0..256).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect();
        let t = quantize(&w, 4, 64, 32).unwrap();
        for (b, (block, q)) in w.chunks(32).zip(t.qs.chunks(32)).enumerate() {
            let s = t.scales[b].to_f32();
            for (&v, &q) in block.iter().zip(q) {
                assert!((v - q as f32 * s).abs() <= 0.5 * s * 1.0001, "{v} vs {q}·{s}");
            }
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert!(quantize(&[f32::NAN; 32], 1, 32, 32).is_err());
        assert!(quantize(&[1e9; 32], 1, 32, 32).is_err());
        assert!(quantize(&[0.0; 48], 1, 48, 32).is_err());
        assert!(quantize(&[0.0; 32], 1, 32, 16).is_err());
        let z = quantize(&[0.0; 32], 1, 32, 32).unwrap();
        assert!(z.qs.iter().all(|&q| q == 0));
    }
}
