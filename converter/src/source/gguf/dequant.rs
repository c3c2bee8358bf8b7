//! ggml block formats to f32, following ggml's reference `dequantize_row_*` arithmetic
//! (FORMATS.md §F.2). Products are not fused, as in the reference C and in gguf-py.

use half::{bf16, f16};

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `bytes` of ggml type `ty` into `out` (whose length is the element count).
/// The caller has checked that `bytes` holds exactly that many elements.
pub fn dequantize(ty: u32, bytes: &[u8], out: &mut [f32]) {
    match ty {
        0 => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, c)| *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        1 => {
            out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, c)| *o = f16::from_le_bytes([c[0], c[1]]).to_f32())
        }
        30 => {
            out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, c)| *o = bf16::from_le_bytes([c[0], c[1]]).to_f32())
        }
        2 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = h(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        3 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (h(b, 0), h(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0x0F) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        8 => {
            for (y, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = h(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        12 => {
            for (y, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(144)) {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let sc = &b[4..16];
                let qs = &b[16..144];
                // 6-bit scale and min of sub-block j.
                let sm = |j: usize| -> (f32, f32) {
                    if j < 4 {
                        ((sc[j] & 63) as f32, (sc[j + 4] & 63) as f32)
                    } else {
                        (
                            ((sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4)) as f32,
                            ((sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)) as f32,
                        )
                    }
                };
                for c in 0..4 {
                    let (s1, m1) = sm(2 * c);
                    let (s2, m2) = sm(2 * c + 1);
                    let (d1, mm1, d2, mm2) = (d * s1, dmin * m1, d * s2, dmin * m2);
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        y[64 * c + l] = d1 * (q[l] & 0x0F) as f32 - mm1;
                        y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - mm2;
                    }
                }
            }
        }
        14 => {
            for (y, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(210)) {
                let d = h(b, 208);
                for half in 0..2 {
                    let ql = &b[64 * half..64 * half + 64];
                    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        _ => unreachable!("type checked by the reader"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_0_and_q4_1_blocks() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16b(0.5));
        b[2] = 0x3F; // elem 0 = (15-8)*0.5 = 3.5, elem 16 = (3-8)*0.5 = -2.5
        let mut y = [0f32; 32];
        dequantize(2, &b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (3.5, -2.5, -4.0));
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16b(0.25));
        b[2..4].copy_from_slice(&f16b(-1.0));
        b[4] = 0x52; // elem 0 = 2*0.25-1 = -0.5, elem 16 = 5*0.25-1 = 0.25
        dequantize(3, &b, &mut y);
        assert_eq!((y[0], y[16], y[1]), (-0.5, 0.25, -1.0));
    }

    #[test]
    fn q8_0_block() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16b(2.0));
        b[2] = (-3i8) as u8;
        b[33] = 7;
        let mut y = [0f32; 32];
        dequantize(8, &b, &mut y);
        assert_eq!((y[0], y[31], y[5]), (-6.0, 14.0, 0.0));
    }

    #[test]
    fn q4_k_block() {
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&f16b(1.0));
        b[2..4].copy_from_slice(&f16b(0.5));
        // sub-block 0: scale 3, min 2; sub-block 5: scale = (sc[9]&15)|((sc[1]>>6)<<4) = 1|(1<<4)=17,
        // min = (sc[9]>>4)|((sc[5]>>6)<<4) = 2|0 = 2
        b[4] = 3;
        b[8] = 2;
        b[4 + 1] = 0b0100_0000;
        b[4 + 9] = 0x21;
        b[16] = 0x0A; // chunk 0, l = 0: low nibble 10 → elem 0; high nibble 0 → elem 32 (sub-block 1)
        b[16 + 64] = 0x40; // chunk 2, l = 0: high nibble 4 → elem 64*2+32 (sub-block 5)
        let mut y = [0f32; 256];
        dequantize(12, &b, &mut y);
        assert_eq!(y[0], 3.0 * 10.0 - 0.5 * 2.0);
        assert_eq!(y[160], 17.0 * 4.0 - 0.5 * 2.0);
    }

    #[test]
    fn q6_k_block() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&f16b(0.5));
        b[192] = 2; // scale of elems 0..16 (half 0, is 0)
        b[192 + 6] = (-3i8) as u8; // scale for q4 of l < 16 (is + 6)
        b[0] = 0x75; // ql[0]: low 5 → elem 0, high 7 → elem 64
        b[128] = 0b1100_0010; // qh[0]: bits 0-1 = 2 → elem 0 high bits; bits 6-7 = 3 → elem 96
        let mut y = [0f32; 256];
        dequantize(14, &b, &mut y);
        assert_eq!(y[0], 0.5 * 2.0 * ((5 | (2 << 4)) - 32) as f32);
        assert_eq!(y[96], 0.5 * -3.0 * ((3 << 4) - 32) as f32);
    }
}
