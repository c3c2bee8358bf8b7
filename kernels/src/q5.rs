//! Block int5 ("q5"): every row cut into blocks of 32 weights, each block stored as 5-bit
//! integers in [−16, 15] with one f16 scale (which may be negative: the block's largest weight
//! can then take the level −16) — 5.5 bits a weight, between 4-bit and block int8.
//!
//! Layout of block `b` (parts `qs`, `qh`, `scales`): `qs[16b + j]` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble; `qh[4b .. 4b + 4]` is a little-endian u32
//! whose bit `j` is element `j`'s fifth bit; the integer is `(nibble | bit << 4) − 16` and the
//! weight reads back as `integer · scale`.
//!
//! The kernels turn a task's rows into block int8 (the same integers and scales) and run the
//! block int8 route — or, for one token where block int8's row kernel is AVX2's, unpack each
//! step in registers inside that kernel — so a q5 weight gives exactly the bits of the q8
//! weight with its integers.
//!
//! The quantizer searches each block's scale: the candidates put the block's largest weight at
//! −16 + k/10 steps (k = −9 … 9, as llama.cpp's `make_qx_quants` does), each refitted by
//! weighted least squares and rounded to its stored f16 value before the integers are chosen
//! against it; the least weighted squared error wins. Each weight's error counts by its column's
//! importance when there is one, else equally: on SmolLM2 (q5 beside block int8 v_proj, KL to
//! the f32 model on genesis / python-docs) equal weights gave 0.0922 / 0.0471, `|w|` (the 4-bit
//! search's choice) 0.0924 / 0.0492.

use crate::error::{KernelError, Result};
use half::f16;

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes of `qs` per block.
pub const QS_BYTES: usize = BLOCK / 2;
/// Bytes of `qh` per block.
pub const QH_BYTES: usize = BLOCK / 8;

/// An owned block int5 matrix in its stored layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Q5Tensor {
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of [`BLOCK`]).
    pub cols: usize,
    /// Low four bits, 16 bytes a block.
    pub qs: Vec<u8>,
    /// Fifth bits, 4 bytes a block.
    pub qh: Vec<u8>,
    /// One scale a block, row-major.
    pub scales: Vec<f16>,
}

/// Packs one block's integers (each in [−16, 15]) into its `qs` and `qh` bytes.
pub fn pack_block(ints: &[i8; BLOCK], qs: &mut [u8], qh: &mut [u8]) {
    let u = ints.map(|v| (v as i16 + 16).clamp(0, 31) as u8);
    for j in 0..QS_BYTES {
        qs[j] = (u[j] & 15) | ((u[j + QS_BYTES] & 15) << 4);
    }
    let bits = u.iter().enumerate().fold(0u32, |h, (j, &v)| h | (u32::from(v >> 4) << j));
    qh[..QH_BYTES].copy_from_slice(&bits.to_le_bytes());
}

/// One block's integers from its `qs` (16 bytes) and `qh` (4 bytes): the scalar twin of the
/// SIMD unpacking.
pub fn unpack_block(qs: &[u8], qh: &[u8], out: &mut [i8]) {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for j in 0..QS_BYTES {
        let (lo, hi) = (qs[j] & 15, qs[j] >> 4);
        out[j] = ((lo | (((bits >> j) & 1) as u8) << 4) as i8) - 16;
        out[j + QS_BYTES] = ((hi | (((bits >> (j + QS_BYTES)) & 1) as u8) << 4) as i8) - 16;
    }
}

/// Unpacks whole blocks: `qs` and `qh` of `out.len() / 32` blocks into their integers.
pub fn unpack(qs: &[u8], qh: &[u8], out: &mut [i8]) {
    for ((o, qs), qh) in out.chunks_exact_mut(BLOCK).zip(qs.chunks_exact(QS_BYTES)).zip(qh.chunks_exact(QH_BYTES)) {
        unpack_block(qs, qh, o);
    }
}

/// Candidate positions of the block's largest weight, in tenths of a step around −16.
const SEARCH: std::ops::RangeInclusive<i32> = -9..=9;

/// Integers of `block` against `scale` (rounded to nearest, clamped to [−16, 15]).
fn ints_for(block: &[f32], scale: f32, out: &mut [i8]) {
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for (o, &w) in out.iter_mut().zip(block) {
        *o = (w * inv).round().clamp(-16.0, 15.0) as i8;
    }
}

fn block_error(block: &[f32], q: &[f64], scale: f32, ints: &[i8]) -> f64 {
    block.iter().zip(ints).zip(q).map(|((&w, &i), &q)| q * (w as f64 - i as f64 * scale as f64).powi(2)).sum()
}

/// One block's stored scale and integers by the search described in the module docs. The
/// plain choice (the largest weight at −16, no refit) is the first candidate, so the result is
/// never worse than it by the search's own measure.
pub fn search_block(block: &[f32], importance: Option<&[f32]>, ints: &mut [i8; BLOCK]) -> f16 {
    assert_eq!(block.len(), BLOCK, "a block of 32");
    let mut q = [0f64; BLOCK];
    for (i, o) in q.iter_mut().enumerate() {
        *o = importance.map_or(1.0, |imp| imp[i] as f64);
    }
    // The signed weight of largest magnitude (the first of equals).
    let max = block.iter().fold(0f32, |m, &w| if w.abs() > m.abs() { w } else { m });
    let plain = f16::from_f32(max / -16.0);
    ints_for(block, plain.to_f32(), ints);
    if max == 0.0 {
        return plain;
    }
    let q = &q;
    let mut best = (block_error(block, q, plain.to_f32(), ints), plain);
    let trial = &mut [0i8; BLOCK];
    for k in SEARCH {
        // Integers nearest to block / s with the largest weight at −16 + k/10.
        let s = max / (-16.0 + k as f32 / 10.0);
        ints_for(block, s, trial);
        // Weighted least-squares scale for those integers, stored as f16, integers again.
        let (wl, ll) =
            block.iter().zip(&*trial).zip(q).fold((0f64, 0f64), |(wl, ll), ((&w, &i), &q)| {
                (wl + q * w as f64 * i as f64, ll + q * (i as f64).powi(2))
            });
        if ll <= 0.0 {
            continue;
        }
        let fit = f16::from_f32((wl / ll) as f32);
        if !fit.is_finite() || fit.to_f32() == 0.0 {
            continue;
        }
        ints_for(block, fit.to_f32(), trial);
        let err = block_error(block, q, fit.to_f32(), trial);
        if err < best.0 {
            best = (err, fit);
            *ints = *trial;
        }
    }
    best.1
}

/// Quantizes a `rows × cols` matrix (`cols` a multiple of 32) by [`search_block`], each weight's
/// error counted by `importance[col]` when given (one value per column). NaN, infinity and
/// blocks whose scale float16 cannot hold are refused.
pub fn quantize(w: &[f32], rows: usize, cols: usize, importance: Option<&[f32]>) -> Result<Q5Tensor> {
    const OP: &str = "quantize_q5";
    let n = rows.checked_mul(cols).ok_or(KernelError::Overflow { op: OP, rows, cols })?;
    if !cols.is_multiple_of(BLOCK) {
        return Err(KernelError::BadBlocksize(BLOCK));
    }
    if w.len() != n {
        return Err(KernelError::ShapeMismatch { op: OP, what: "w", expected: n, got: w.len() });
    }
    if let Some(imp) = importance {
        if imp.len() != cols {
            return Err(KernelError::ShapeMismatch { op: OP, what: "importance", expected: cols, got: imp.len() });
        }
        if let Some(index) = imp.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(KernelError::NonFinite { op: OP, index, value: imp[index] });
        }
    }
    let nb = n / BLOCK;
    let (mut qs, mut qh, mut scales) = (vec![0u8; nb * QS_BYTES], vec![0u8; nb * QH_BYTES], Vec::with_capacity(nb));
    let mut ints = [0i8; BLOCK];
    for (b, block) in w.chunks_exact(BLOCK).enumerate() {
        if let Some(i) = block.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite { op: OP, index: b * BLOCK + i, value: block[i] });
        }
        let c0 = b * BLOCK % cols;
        let scale = search_block(block, importance.map(|imp| &imp[c0..c0 + BLOCK]), &mut ints);
        if scale.is_infinite() {
            let i = block.iter().position(|v| v.abs() > 65504.0 * 16.0).unwrap_or(0);
            return Err(KernelError::NonFinite { op: OP, index: b * BLOCK + i, value: block[i] });
        }
        pack_block(&ints, &mut qs[b * QS_BYTES..(b + 1) * QS_BYTES], &mut qh[b * QH_BYTES..(b + 1) * QH_BYTES]);
        scales.push(scale);
    }
    Ok(Q5Tensor { rows, cols, qs, qh, scales })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn packing_round_trips_every_integer() {
        let mut ints = [0i8; BLOCK];
        for start in -16..=15 {
            for (j, v) in ints.iter_mut().enumerate() {
                *v = ((start + j as i32 * 7).rem_euclid(32) - 16) as i8;
            }
            let (mut qs, mut qh, mut back) = ([0u8; QS_BYTES], [0u8; QH_BYTES], [0i8; BLOCK]);
            pack_block(&ints, &mut qs, &mut qh);
            unpack_block(&qs, &qh, &mut back);
            assert_eq!(back, ints);
        }
    }

    /// The search is never worse than the plain choice by its own measure, its scales are
    /// finite, and the integers read back from the packed bytes are the ones it chose.
    #[test]
    fn search_never_loses_to_the_plain_choice() {
        let mut seed = 5u64;
        for round in 0..200 {
            let block: Vec<f32> =
                (0..BLOCK).map(|j| lcg(&mut seed) * if j == round % BLOCK { 6.0 } else { 1.0 }).collect();
            let imp: Vec<f32> = (0..BLOCK).map(|_| lcg(&mut seed) + 0.5).collect();
            for importance in [None, Some(&imp[..])] {
                let q: Vec<f64> = (0..BLOCK).map(|i| importance.map_or(1.0, |v| v[i] as f64)).collect();
                let mut ints = [0i8; BLOCK];
                let s = search_block(&block, importance, &mut ints);
                assert!(s.is_finite() && s.to_f32() != 0.0);
                let max = block.iter().fold(0f32, |m, &w| if w.abs() > m.abs() { w } else { m });
                let plain = f16::from_f32(max / -16.0).to_f32();
                let mut pi = [0i8; BLOCK];
                ints_for(&block, plain, &mut pi);
                assert!(block_error(&block, &q, s.to_f32(), &ints) <= block_error(&block, &q, plain, &pi));
                assert!(ints.iter().all(|&i| (-16..=15).contains(&i)));
            }
        }
        // The packed tensor reads back as each block's search result.
        let w: Vec<f32> = (0..4 * 64).map(|_| lcg(&mut seed)).collect();
        let t = quantize(&w, 4, 64, None).unwrap();
        let mut ints = vec![0i8; w.len()];
        unpack(&t.qs, &t.qh, &mut ints);
        for (b, (block, got)) in w.chunks(BLOCK).zip(ints.chunks(BLOCK)).enumerate() {
            let mut want = [0i8; BLOCK];
            assert_eq!(search_block(block, None, &mut want), t.scales[b]);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert!(quantize(&[f32::NAN; 32], 1, 32, None).is_err());
        assert!(quantize(&[1e9; 32], 1, 32, None).is_err());
        assert!(quantize(&[0.0; 48], 1, 48, None).is_err());
        assert!(quantize(&[0.0; 32], 1, 32, Some(&[1.0; 16])).is_err());
        let z = quantize(&[0.0; 32], 1, 32, None).unwrap();
        let mut ints = [1i8; 32];
        unpack(&z.qs, &z.qh, &mut ints);
        assert!(ints.iter().all(|&i| i == 0) && z.scales[0].to_f32() == 0.0);
    }
}
