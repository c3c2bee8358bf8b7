//! ggml block decoding against hand-built blocks.
//!
//! Each test *packs* known codes and scales into a block from the layout in FORMATS.md §F.2,
//! element by element ("element e keeps its low bits in byte …"), and computes the expected value
//! of every element from the block definition. That is the inverse direction of the decoder's
//! loops, so a shared misreading of the layout would not cancel out. Scales are powers of two
//! and codes small, so every expected value is exact in f32 and compared with `==`.

use lowbit_convert::gguf::{dequantize, GgmlType, GgufError};

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

fn decode(ty: GgmlType, block: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(ty, block, &mut out).unwrap();
    out
}

#[test]
fn q4_0_by_definition() {
    // Element e < 16 is the low nibble of qs[e], element e ≥ 16 the high nibble of qs[e − 16];
    // value (code − 8) · d.
    let code = |e: usize| ((e * 7 + 3) % 16) as u8;
    let mut qs = [0u8; 16];
    for e in 0..32 {
        qs[e % 16] |= if e < 16 { code(e) } else { code(e) << 4 };
    }
    let block: Vec<u8> = f16_bytes(0.5).into_iter().chain(qs).collect();
    let want: Vec<f32> = (0..32).map(|e| (f32::from(code(e)) - 8.0) * 0.5).collect();
    assert_eq!(decode(GgmlType::Q4_0, &block, 32), want);
    assert_eq!(want[0], -2.5); // code 3
}

#[test]
fn q4_1_by_definition() {
    let code = |e: usize| ((e * 11 + 5) % 16) as u8;
    let mut qs = [0u8; 16];
    for e in 0..32 {
        qs[e % 16] |= if e < 16 { code(e) } else { code(e) << 4 };
    }
    let block: Vec<u8> = f16_bytes(0.25).into_iter().chain(f16_bytes(-1.5)).chain(qs).collect();
    let want: Vec<f32> = (0..32).map(|e| f32::from(code(e)) * 0.25 - 1.5).collect();
    assert_eq!(decode(GgmlType::Q4_1, &block, 32), want);
}

#[test]
fn q8_0_by_definition() {
    let code = |e: usize| (e as i32 * 8 - 128) as i8;
    let block: Vec<u8> = f16_bytes(2.0).into_iter().chain((0..32).map(|e| code(e) as u8)).collect();
    let want: Vec<f32> = (0..32).map(|e| f32::from(code(e)) * 2.0).collect();
    let got = decode(GgmlType::Q8_0, &block, 32);
    assert_eq!(got, want);
    assert_eq!((got[0], got[31]), (-256.0, 240.0));
}

/// Packs Q4_K's 8 six-bit scales and mins into 12 bytes: sub-blocks 0–3 in the low 6 bits of
/// bytes s (scale) and s+4 (min); sub-blocks 4–7 keep their low 4 bits in byte s+4 (scale low
/// nibble, min high nibble) and their top 2 bits in the top bits of bytes s−4 (scale) and s (min).
fn pack_q4_k_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for s in 0..4 {
        b[s] = sc[s] | (sc[s + 4] >> 4) << 6;
        b[s + 4] = m[s] | (m[s + 4] >> 4) << 6;
        b[s + 8] = (sc[s + 4] & 15) | (m[s + 4] & 15) << 4;
    }
    b
}

#[test]
fn q4_k_by_definition() {
    // Large values in sub-blocks 4–7 exercise the split 6-bit fields.
    let sc = [1u8, 2, 63, 17, 40, 33, 5, 60];
    let m = [0u8, 3, 62, 9, 48, 21, 63, 7];
    let code = |e: usize| ((e * 5 + 3) % 16) as u8;
    // Element e: sub-block e/32; 64-element chunk c = e/64 uses qs[32c..32c+32], its first 32
    // elements in the low nibbles and its second 32 in the high nibbles.
    let mut qs = [0u8; 128];
    for e in 0..256 {
        let (c, i) = (e / 64, e % 64);
        if i < 32 {
            qs[32 * c + i] |= code(e);
        } else {
            qs[32 * c + i - 32] |= code(e) << 4;
        }
    }
    let (d, dmin) = (0.5f32, 0.25f32);
    let block: Vec<u8> =
        f16_bytes(d).into_iter().chain(f16_bytes(dmin)).chain(pack_q4_k_scales(sc, m)).chain(qs).collect();
    assert_eq!(block.len(), 144);
    let want: Vec<f32> =
        (0..256).map(|e| d * f32::from(sc[e / 32]) * f32::from(code(e)) - dmin * f32::from(m[e / 32])).collect();
    assert_eq!(decode(GgmlType::Q4_K, &block, 256), want);
}

#[test]
fn q6_k_by_definition() {
    let code = |e: usize| ((e * 37 + 11) % 64) as u8; // 6-bit, stored offset by 32
    let scales: [i8; 16] = [1, -2, 3, -4, 5, -6, 7, -8, 127, -128, 16, -16, 0, 2, -1, 64];
    // Element e: half h = e/128; within it i = e%128, quadrant k = i/32, l = i%32.
    // Low 4 bits: ql[64h + l + 32·(k mod 2)], low nibble for k < 2, high nibble for k ≥ 2.
    // High 2 bits: qh[32h + l] bits 2k, 2k+1. Scale: scales[8h + l/16 + 2k].
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    let scale_of = |e: usize| {
        let (h, i) = (e / 128, e % 128);
        scales[8 * h + (i % 32) / 16 + 2 * (i / 32)]
    };
    for e in 0..256 {
        let (h, i) = (e / 128, e % 128);
        let (k, l) = (i / 32, i % 32);
        let q = code(e);
        let lo = &mut ql[64 * h + l + 32 * (k % 2)];
        *lo |= if k < 2 { q & 15 } else { (q & 15) << 4 };
        qh[32 * h + l] |= (q >> 4) << (2 * k);
    }
    let d = 0.125f32;
    let block: Vec<u8> = ql.into_iter().chain(qh).chain(scales.iter().map(|&s| s as u8)).chain(f16_bytes(d)).collect();
    assert_eq!(block.len(), 210);
    let want: Vec<f32> = (0..256).map(|e| d * f32::from(scale_of(e)) * (f32::from(code(e)) - 32.0)).collect();
    assert_eq!(decode(GgmlType::Q6_K, &block, 256), want);
}

#[test]
fn plain_float_types() {
    let f32s = [1.5f32, -0.0, f32::INFINITY, 3.25e-8];
    let bytes: Vec<u8> = f32s.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(decode(GgmlType::F32, &bytes, 4), f32s);
    let halves = [1.0f32, -2.5, 65504.0, 5.960_464_5e-8];
    let bytes: Vec<u8> = halves.iter().flat_map(|&x| f16_bytes(x)).collect();
    assert_eq!(decode(GgmlType::F16, &bytes, 4), halves);
    // bf16 = the top 16 bits of an f32.
    let bf: Vec<f32> = [1.0f32, -3.0, 1.0e30].to_vec();
    let bytes: Vec<u8> = bf.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
    assert_eq!(decode(GgmlType::BF16, &bytes, 3), [1.0, -3.0, f32::from_bits(1.0e30f32.to_bits() & 0xffff_0000)]);
}

#[test]
fn several_blocks_decode_independently() {
    // Two Q8_0 blocks with different scales: the second block's scale must not leak into the first.
    let mut bytes = f16_bytes(1.0).to_vec();
    bytes.extend(std::iter::repeat_n(1u8, 32));
    bytes.extend(f16_bytes(-4.0));
    bytes.extend(std::iter::repeat_n(2u8, 32));
    let got = decode(GgmlType::Q8_0, &bytes, 64);
    assert!(got[..32].iter().all(|&x| x == 1.0));
    assert!(got[32..].iter().all(|&x| x == -8.0));
}

#[test]
fn wrong_sizes_and_types_are_errors() {
    let mut out = vec![0f32; 256];
    assert!(matches!(dequantize(GgmlType::Q4_K, &[0; 143], &mut out), Err(GgufError::SizeMismatch { .. })));
    assert!(matches!(dequantize(GgmlType::Q6_K, &[0; 210], &mut out[..255]), Err(GgufError::SizeMismatch { .. })));
    for ty in [GgmlType::Q2_K, GgmlType::Q5_K, GgmlType::IQ4_NL, GgmlType::I8] {
        let bytes = vec![0u8; 256 / ty.block_len() * ty.block_bytes()];
        assert!(matches!(dequantize(ty, &bytes, &mut out), Err(GgufError::UnsupportedType { .. })), "{ty}");
    }
    // Empty input is fine.
    assert!(dequantize(GgmlType::Q4_0, &[], &mut []).is_ok());
}

/// Random blocks decoded by gguf-py (scripts/make_gguf_dequant_ref.py): bit-exact agreement.
#[test]
fn matches_gguf_py_on_random_blocks() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/dequant_ref.json");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ty = *GgmlType::ALL.iter().find(|t| t.name() == name).unwrap();
        let hex = case["blocks_hex"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<u32> = case["f32_bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u32).collect();
        let got = decode(ty, &bytes, want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), *w, "{name} element {i}: {g} vs {}", f32::from_bits(*w));
        }
    }
}
