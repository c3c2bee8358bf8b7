//! ggml blocks to f32, computed exactly as ggml's reference `dequantize_row_*` functions do
//! (FORMATS.md §F.2), so a GGUF tensor converts to the same floats that llama.cpp — and
//! transformers, through gguf-py — see.
//!
//! "Exactly" covers the order of float operations: Q4_1 is `q·d + m` and Q4_K is
//! `(d·sc)·q − dmin·m`, each product and sum rounded to f32 separately. Rust never fuses a
//! multiply and an add behind our back, so these are the reference's values bit for bit
//! (a C compiler allowed to contract `a*b + c` into an FMA could differ in the last bit; gguf-py's
//! numpy code, which transformers uses, does not contract either).
//!
//! [`dequantize`] checks the buffer sizes once; the per-type loops below are then infallible and
//! walk the blocks with `chunks_exact`, reading the (unaligned) f16 fields byte-wise.

use super::error::{GgufError, Result};
use super::types::GgmlType;

/// Dequantizes `out.len()` elements of type `ty` from `bytes`.
///
/// `out.len()` must be a whole number of blocks and `bytes` exactly that many blocks. Types other
/// than F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K give [`GgufError::UnsupportedType`] (with
/// `tensor` set to `"<buffer>"`; the per-tensor helpers fill in the name).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let decode: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => f32_,
        GgmlType::F16 => f16_,
        GgmlType::BF16 => bf16_,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q6_K => q6_k,
        _ => {
            return Err(GgufError::UnsupportedType {
                tensor: "<buffer>".into(),
                type_id: ty.to_u32(),
                type_name: ty.name(),
            })
        }
    };
    let (block_len, block_bytes) = (ty.block_len(), ty.block_bytes());
    if !out.len().is_multiple_of(block_len) {
        return Err(GgufError::SizeMismatch {
            what: format!("{ty} output length (a multiple of {block_len})"),
            expected: out.len().next_multiple_of(block_len),
            got: out.len(),
        });
    }
    let expected = out.len() / block_len * block_bytes;
    if bytes.len() != expected {
        return Err(GgufError::SizeMismatch { what: format!("{ty} input bytes"), expected, got: bytes.len() });
    }
    decode(bytes, out);
    Ok(())
}

/// An IEEE half at `b[0..2]`, little-endian.
fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

fn f32_(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn f16_(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16_at(c);
    }
}

/// bfloat16 is the top half of an f32; ggml widens it with a plain shift (NaN payloads included),
/// so this does too rather than going through a conversion routine that might quiet NaNs.
fn bf16_(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    }
}

/// Q4_0 (18 bytes / 32): `d: f16`, `qs[16]`; element j is the low nibble of `qs[j]`, element
/// j+16 the high nibble, both offset by 8: `(q − 8)·d`.
fn q4_0(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(&block[0..2]);
        let qs = &block[2..18];
        for (j, &q) in qs.iter().enumerate() {
            y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
            y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

/// Q4_1 (20 bytes / 32): `d: f16`, `m: f16`, `qs[16]`; `q·d + m`, same nibble order as Q4_0.
fn q4_1(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(&block[0..2]);
        let m = f16_at(&block[2..4]);
        let qs = &block[4..20];
        for (j, &q) in qs.iter().enumerate() {
            y[j] = f32::from(q & 0x0F) * d + m;
            y[j + 16] = f32::from(q >> 4) * d + m;
        }
    }
}

/// Q8_0 (34 bytes / 32): `d: f16`, `qs: i8[32]`; `q·d`.
fn q8_0(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(&block[0..2]);
        for (o, &q) in y.iter_mut().zip(&block[2..34]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// The 6-bit scale and min of Q4_K sub-block `s` (0..8) from the 12 packed bytes: sub-blocks
/// 0–3 keep theirs in the low 6 bits of bytes s and s+4; sub-blocks 4–7 put the low 4 bits in
/// byte s+4 (scale low nibble, min high nibble) and the top 2 bits in the spare top bits of
/// bytes s−4 (scale) and s (min).
fn q4_k_scale_min(scales: &[u8], s: usize) -> (u8, u8) {
    if s < 4 {
        (scales[s] & 63, scales[s + 4] & 63)
    } else {
        let sc = (scales[s + 4] & 0x0F) | ((scales[s - 4] >> 6) << 4);
        let m = (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4);
        (sc, m)
    }
}

/// Q4_K (144 bytes / 256): `d, dmin: f16`, `scales[12]`, `qs[128]`. Four chunks of 64 elements
/// share 32 code bytes: low nibbles are the chunk's first sub-block, high nibbles its second.
/// Element = `(d·sc)·q − (dmin·m)`.
fn q4_k(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(&block[0..2]);
        let dmin = f16_at(&block[2..4]);
        let scales = &block[4..16];
        let qs = &block[16..144];
        for c in 0..4 {
            let (sc_lo, m_lo) = q4_k_scale_min(scales, 2 * c);
            let (sc_hi, m_hi) = q4_k_scale_min(scales, 2 * c + 1);
            let (d_lo, min_lo) = (d * f32::from(sc_lo), dmin * f32::from(m_lo));
            let (d_hi, min_hi) = (d * f32::from(sc_hi), dmin * f32::from(m_hi));
            let q = &qs[32 * c..32 * c + 32];
            let y = &mut y[64 * c..64 * c + 64];
            for l in 0..32 {
                y[l] = d_lo * f32::from(q[l] & 0x0F) - min_lo;
                y[l + 32] = d_hi * f32::from(q[l] >> 4) - min_hi;
            }
        }
    }
}

/// Q6_K (210 bytes / 256): `ql[128]` low 4 bits, `qh[64]` high 2 bits, `scales: i8[16]`, then
/// `d: f16`. Each half of 128 elements uses 64 ql bytes, 32 qh bytes and 8 scales; within it,
/// element l (0..32) and its siblings l+32, l+64, l+96 take ql[l] low, ql[l+32] low, ql[l] high,
/// ql[l+32] high nibbles and qh[l] bit pairs 0, 1, 2, 3, with scales is, is+2, is+4, is+6
/// (is = l/16). Element = `(d·scale)·(q − 32)`.
fn q6_k(bytes: &[u8], out: &mut [f32]) {
    for (block, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
        let d = f16_at(&block[208..210]);
        for h in 0..2 {
            let ql = &block[64 * h..64 * h + 64];
            let qh = &block[128 + 32 * h..128 + 32 * h + 32];
            let sc = &block[192 + 8 * h..192 + 8 * h + 8];
            let y = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q = [
                    (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                    (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                    (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                    (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                ];
                for (k, &qk) in q.iter().enumerate() {
                    let scale = f32::from(sc[is + 2 * k] as i8);
                    y[l + 32 * k] = d * scale * f32::from(qk as i8 - 32);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        let mut out = [0f32; 32];
        assert!(dequantize(GgmlType::Q4_0, &[0; 17], &mut out).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut out[..31]).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0; 18], &mut out).is_ok());
        assert!(matches!(
            dequantize(GgmlType::Q5_0, &[0; 22], &mut out),
            Err(GgufError::UnsupportedType { type_id: 6, .. })
        ));
    }

    #[test]
    fn bf16_is_a_shift() {
        let mut out = [0f32; 2];
        dequantize(GgmlType::BF16, &[0x80, 0x3f, 0xc0, 0x7f], &mut out).unwrap();
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1].to_bits(), 0x7fc0_0000);
    }
}
