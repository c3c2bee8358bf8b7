//! Block int8 ("q8"): every row cut into blocks of 32 (or 64) weights, each block stored as int8
//! values with one f16 scale — the 8-bit scheme that loses least (LLM.int8's one scale per row
//! lets a single large weight coarsen its whole row). Each block's f16 scale is searched
//! (`f16(absmax / 127)` first, then least-squares scales for the largest magnitude at a few
//! points just below 127), with `q = round(w / scale)` against the stored scale, clamped to ±127,
//! so a weight reads back as `q · scale`. Decode quantizes each activation block with
//! `absmax / 127` (an f32 scale) and sums `q_w · q_x` exactly in i32 per block:
//! `y = Σ_b isum_b · (scale_b · d_b)`.

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
        scales.push(search_block(block, am, s, out));
    }
    Ok(Q8Tensor { rows, cols, blocksize, qs, scales })
}

/// Integers of `block` against `scale`, nearest (ties to even), clamped to ±127, as floats.
fn ints_for(block: &[f32], scale: f32, out: &mut [f32]) {
    // Adding and taking off 1.5·2²³ rounds to the nearest integer (ties to even) for magnitudes
    // below 2²², which the clamp first ensures: plain arithmetic that vectorizes on any x86-64,
    // where `round` is a library call without SSE4.1 (the search rounds each block 34 times).
    const MAGIC: f32 = 12_582_912.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(block) {
        *o = ((v * inv).clamp(-127.0, 127.0) + MAGIC) - MAGIC;
    }
}

/// The block's squared error with `ints` at `scale` (in f32: each block's error is compared
/// only with the same block's).
fn block_error(block: &[f32], scale: f32, ints: &[f32]) -> f32 {
    block.iter().zip(ints).map(|(&w, &i)| (w - i * scale).powi(2)).sum()
}

/// Divisors of the block's largest magnitude tried besides 127, in quarters below it.
const SEARCH: std::ops::RangeInclusive<i32> = 0..=16;

/// One block's scale and integers: the plain choice (largest magnitude at 127) first, then for
/// each candidate divisor the integers nearest and their least-squares scale (as f16), keeping
/// the least squared error — never worse than the plain choice by that measure ([`block_error`]).
fn search_block(block: &[f32], am: f32, plain: f16, ints: &mut [i8]) -> f16 {
    let n = block.len();
    let (mut best_ints, mut trial) = ([0f32; 64], [0f32; 64]);
    let (best_ints, trial) = (&mut best_ints[..n], &mut trial[..n]);
    ints_for(block, plain.to_f32(), best_ints);
    let mut best = (block_error(block, plain.to_f32(), best_ints), plain);
    if am > 0.0 {
        for k in SEARCH {
            ints_for(block, am / (127.0 - k as f32 / 4.0), trial);
            let (wl, ll) = block.iter().zip(&*trial).fold((0f32, 0f32), |(wl, ll), (&w, &i)| (wl + w * i, ll + i * i));
            if ll <= 0.0 {
                continue;
            }
            let fit = f16::from_f32(wl / ll);
            if !fit.is_finite() || fit.to_f32() <= 0.0 {
                continue;
            }
            ints_for(block, fit.to_f32(), trial);
            let err = block_error(block, fit.to_f32(), trial);
            if err < best.0 {
                best = (err, fit);
                best_ints.copy_from_slice(trial);
            }
        }
    }
    for (o, &i) in ints.iter_mut().zip(&*best_ints) {
        *o = i as i8;
    }
    best.1
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

    /// The search is never worse than the plain choice (largest magnitude at 127) by its own
    /// measure, its scales are finite and positive, and most blocks gain from it; a weight that
    /// is not clamped stays within half a step.
    #[test]
    fn search_is_never_worse_than_absmax() {
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for bs in BLOCKSIZES {
            let w: Vec<f32> = (0..64 * bs).map(|_| next() * next() * 8.0).collect();
            let t = quantize(&w, 8, 8 * bs, bs).unwrap();
            let mut better = 0;
            for (b, (block, q)) in w.chunks(bs).zip(t.qs.chunks(bs)).enumerate() {
                let s = t.scales[b].to_f32();
                assert!(s.is_finite() && s > 0.0);
                let ints: Vec<f32> = q.iter().map(|&v| v as f32).collect();
                let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let plain = f16::from_f32(am / 127.0).to_f32();
                let mut plain_ints = vec![0f32; bs];
                ints_for(block, plain, &mut plain_ints);
                let (got, base) = (block_error(block, s, &ints), block_error(block, plain, &plain_ints));
                assert!(got <= base, "block {b}: {got} > {base}");
                better += usize::from(got < base);
                for (&v, &q) in block.iter().zip(q) {
                    assert!((-127..=127).contains(&q));
                    if q.abs() < 127 {
                        assert!((v - q as f32 * s).abs() <= 0.5 * s * 1.0001, "{v} vs {q}·{s}");
                    }
                }
            }
            assert!(better * 2 > 64, "blocks of {bs}: the search gained in {better} of 64");
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
