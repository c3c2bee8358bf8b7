//! Every SIMD level against the scalar oracle, on random shapes (including lengths that are not
//! a multiple of the block or vector width), and the scalar oracle against ideal arithmetic.

use half::{bf16, f16};
use lowbit_kernels::panel::{Panel, PANEL_TOKENS};
use lowbit_kernels::{
    fourbit::code_at, matmul_with, quantize_4bit, quantize_int8, scalar, AbsmaxRef, FourBitKind, FourBitOptions,
    FourBitRef, Grid, Int8Ref, Isa, Kernels, MatmulOptions, Q5Ref, Q8Ref, Weight,
};
use proptest::prelude::*;

/// The panels' tests' seeded generator (a 64-bit LCG's high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// `n` int8 values in -127 ..= 127.
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| ((self.next() % 255) as i32 - 127) as i8).collect()
    }
}

fn simd_levels() -> Vec<Kernels> {
    let v = Kernels::variants();
    assert!(!v.is_empty());
    v
}

/// A NaN-filled buffer for a grid of `rows` × 8 cells with gaps between them: row-major (rows 11
/// apart, tokens adjacent) or token-major (rows adjacent, tokens `rows + 3` apart); and the strides.
fn grid_buffer(rows: usize, row_major: bool) -> (Vec<f32>, usize, usize) {
    let (rs, ts) = if row_major { (11, 1) } else { (1, rows + 3) };
    let len = if rows == 0 { 0 } else { (rows - 1) * rs + 7 * ts + 1 };
    (vec![f32::NAN; len + 5], rs, ts)
}

/// Whether every value of `buf` outside the grid's cells is still NaN.
fn grid_untouched(buf: &[f32], rows: usize, rs: usize, ts: usize) -> bool {
    let cell = |j: usize| (0..rows).any(|i| (0..8).any(|t| i * rs + t * ts == j));
    buf.iter().enumerate().all(|(j, v)| cell(j) || v.is_nan())
}

/// Float dot products may differ only in summation order.
fn close(a: f32, b: f32, mag: f32) -> bool {
    (a - b).abs() <= 1e-5 * mag + 1e-6
}

/// A call of a `quantize_q8` implementation on prepared output buffers.
type QuantizeFn<'a> = dyn Fn(&mut [i8], &mut [i8], &mut [f32], &mut [i32]) + 'a;

/// Four rows of a test tile as slices.
fn four<T>(v: &[Vec<T>]) -> [&[T]; 4] {
    std::array::from_fn(|i| &v[i][..])
}

/// Random inputs of the 4-bit prefill tiles: four rows of `nb` blocks of 64 and `tokens` tokens.
struct TileInputs {
    codes: Vec<Vec<u8>>,
    wf: Vec<Vec<f32>>,
    qe: Vec<Vec<i8>>,
    qo: Vec<Vec<i8>>,
    xs: Vec<Vec<f32>>,
    qsum: Vec<Vec<i32>>,
}

fn tile_inputs(nb: usize, seed: u64, tokens: usize) -> TileInputs {
    let n = nb * 32;
    let mut rng = seed;
    let mut next = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as u32
    };
    let codes: Vec<Vec<u8>> = (0..4).map(|_| (0..n).map(|_| next() as u8).collect()).collect();
    let wf: Vec<Vec<f32>> = (0..4).map(|_| (0..nb).map(|_| (next() % 1000) as f32 / 3.1e4).collect()).collect();
    let mut q = || -> Vec<i8> { (0..n).map(|_| ((next() % 255) as i32 - 127) as i8).collect() };
    let qe: Vec<Vec<i8>> = (0..tokens).map(|_| q()).collect();
    let qo: Vec<Vec<i8>> = (0..tokens).map(|_| q()).collect();
    let xs: Vec<Vec<f32>> = (0..tokens).map(|_| (0..nb).map(|_| (next() % 1000) as f32 / 9.7e5).collect()).collect();
    let qsum = (0..tokens)
        .map(|t| (0..nb).map(|b| (b * 32..(b + 1) * 32).map(|i| qe[t][i] as i32 + qo[t][i] as i32).sum()).collect())
        .collect();
    TileInputs { codes, wf, qe, qo, xs, qsum }
}

impl TileInputs {
    /// How far a SIMD tile's (row, token) may be from the scalar one: exact block sums, float
    /// accumulation bounded by the biased lane magnitudes (|level| + 128)·|q|, doubled.
    fn tolerance(&self, lut: &[i8; 16], r: usize, t: usize) -> f32 {
        let nb = self.wf[r].len();
        let terms: f32 = (0..nb * 32)
            .map(|i| {
                let c = self.codes[r][i];
                let hi = ((lut[(c >> 4) as usize] as i32).abs() + 128) * (self.qe[t][i] as i32).abs();
                let lo = ((lut[(c & 15) as usize] as i32).abs() + 128) * (self.qo[t][i] as i32).abs();
                self.wf[r][i / 32] * self.xs[t][i / 32] * 2.0 * (hi + lo) as f32
            })
            .sum();
        (nb as f32 + 6.0) * f32::EPSILON * terms + 1e-6
    }
}

fn vecf(len: impl Into<proptest::sample::SizeRange>) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(prop_oneof![8 => -4.0f32..4.0, 1 => Just(0.0f32), 1 => -1000.0f32..1000.0], len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn dense_dots_match_scalar(pair in (0usize..700).prop_flat_map(|n| (vecf(n), vecf(n)))) {
        let (w, x) = pair;
        let mag: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        for k in simd_levels() {
            prop_assert!(close(k.dot_f32(&w, &x), scalar::dot_f32(&w, &x), mag), "{} f32", k.label());
            prop_assert!(close(k.dot_f16(&w16, &x), scalar::dot_f16(&w16, &x), mag * 1.01), "{} f16", k.label());
            prop_assert!(close(k.dot_bf16(&wb, &x), scalar::dot_bf16(&wb, &x), mag * 1.01), "{} bf16", k.label());
        }
    }

    #[test]
    fn int8_dot_is_exact(pair in (0usize..1000).prop_flat_map(|n| (prop::collection::vec(-127i8..=127, n), prop::collection::vec(-127i8..=127, n)))) {
        let (a, w) = pair;
        let want = scalar::dot_int8(&a, &w);
        for k in simd_levels() {
            prop_assert_eq!(k.dot_int8(&a, &w), want, "{}", k.label());
        }
    }

    /// Attention's row loops: scores within the dot tolerance of the scalar ones (strides wider
    /// than the rows, counts not a multiple of four, widths not a multiple of eight), the
    /// weighted sum of values bit for bit.
    #[test]
    fn attention_row_kernels_match_scalar(
        n in 0usize..40, d in 1usize..80, gap in 0usize..20, seed in any::<u64>(),
    ) {
        let stride = d + gap;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 33) % 2000) as f32 / 250.0 - 4.0 };
        let rows: Vec<f32> = (0..n.saturating_sub(1) * stride + d).map(|_| next()).collect();
        let q: Vec<f32> = (0..d).map(|_| next()).collect();
        let a: Vec<f32> = (0..n).map(|_| next()).collect();
        let y0: Vec<f32> = (0..d).map(|_| next()).collect();
        let mut want = vec![0f32; n];
        scalar::dot_f32_rows(&mut want, &q, &rows, stride);
        let mut want_y = y0.clone();
        scalar::axpy_f32_rows(&mut want_y, &a, &rows, stride);
        for k in simd_levels() {
            let mut got = vec![0f32; n];
            k.dot_f32_rows(&mut got, &q, &rows, stride);
            for j in 0..n {
                let mag: f32 = q.iter().zip(&rows[j * stride..]).map(|(a, b)| (a * b).abs()).sum();
                prop_assert!(close(got[j], want[j], mag), "{} row {j}: {} vs {}", k.label(), got[j], want[j]);
            }
            // A row's bits do not depend on the rows beside it in the call: every row alone,
            // and the rows split at an arbitrary point, give the whole call's bits.
            let cut = (seed as usize) % (n + 1);
            let mut parts = vec![0f32; n];
            k.dot_f32_rows(&mut parts[..cut], &q, &rows, stride);
            if cut < n {
                k.dot_f32_rows(&mut parts[cut..], &q, &rows[cut * stride..], stride);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&parts), bits(&got), "{} rows split at {}", k.label(), cut);
            for j in 0..n {
                let mut one = [0f32];
                k.dot_f32_rows(&mut one, &q, &rows[j * stride..], stride);
                prop_assert_eq!(one[0].to_bits(), got[j].to_bits(), "{} row {} alone", k.label(), j);
            }
            let mut y = y0.clone();
            k.axpy_f32_rows(&mut y, &a, &rows, stride);
            prop_assert_eq!(&y, &want_y, "{}", k.label());
            // bf16 rows: the bits of the f32 kernels over the widened values.
            let rows16: Vec<bf16> = rows.iter().map(|&v| bf16::from_f32(v)).collect();
            let wide: Vec<f32> = rows16.iter().map(|v| v.to_f32()).collect();
            let (mut g16, mut g32) = (vec![0f32; n], vec![0f32; n]);
            k.dot_bf16_rows(&mut g16, &q, &rows16, stride);
            k.dot_f32_rows(&mut g32, &q, &wide, stride);
            prop_assert_eq!(g16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), g32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{} bf16 dot", k.label());
            let (mut y16, mut y32) = (y0.clone(), y0.clone());
            k.axpy_bf16_rows(&mut y16, &a, &rows16, stride);
            k.axpy_f32_rows(&mut y32, &a, &wide, stride);
            prop_assert_eq!(y16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{} bf16 axpy", k.label());
            // f16 rows likewise.
            let rowsh: Vec<f16> = rows.iter().map(|&v| f16::from_f32(v)).collect();
            let wide: Vec<f32> = rowsh.iter().map(|v| v.to_f32()).collect();
            let (mut gh, mut g32) = (vec![0f32; n], vec![0f32; n]);
            k.dot_f16_rows(&mut gh, &q, &rowsh, stride);
            k.dot_f32_rows(&mut g32, &q, &wide, stride);
            prop_assert_eq!(gh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), g32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{} f16 dot", k.label());
            let (mut yh, mut y32) = (y0.clone(), y0.clone());
            k.axpy_f16_rows(&mut yh, &a, &rowsh, stride);
            k.axpy_f32_rows(&mut y32, &a, &wide, stride);
            prop_assert_eq!(yh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), y32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{} f16 axpy", k.label());
            let mut y1 = y0.clone();
            k.axpy_f32(&mut y1, 0.75, &rows[..d]);
            let mut w1 = y0.clone();
            scalar::axpy_f32(&mut w1, 0.75, &rows[..d]);
            prop_assert_eq!(y1, w1, "{} axpy", k.label());
        }
    }

    /// The multi-query row loops (a grouped-query kv head's queries at once): every query's
    /// scores and weighted sum with the bits of the one-query loops on the same level, for any
    /// number of queries, rows, widths and strides; the gaps between the outputs untouched.
    #[test]
    fn multi_query_row_kernels_match_one_query(
        nq in 1usize..9, n in 0usize..30, d in 1usize..80, gap in 0usize..12, ogap in 0usize..5, seed in any::<u64>(),
    ) {
        let stride = d + gap;
        let ostride = n + ogap;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 33) % 2000) as f32 / 250.0 - 4.0 };
        let rows: Vec<f32> = (0..n.saturating_sub(1) * stride + d).map(|_| next()).collect();
        let rowsh: Vec<f16> = rows.iter().map(|&v| f16::from_f32(v)).collect();
        let q: Vec<f32> = (0..nq * d).map(|_| next()).collect();
        let a: Vec<f32> = (0..nq * ostride).map(|_| next()).collect();
        let y0: Vec<f32> = (0..nq * d).map(|_| next()).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let olen = (nq - 1) * ostride + n;
        for k in simd_levels() {
            let (mut got, mut goth) = (vec![f32::NAN; olen], vec![f32::NAN; olen]);
            k.dot_f32_rows_multi(&mut got, ostride, n, &q, d, &rows, stride);
            k.dot_f16_rows_multi(&mut goth, ostride, n, &q, d, &rowsh, stride);
            let (mut y, mut yh) = (y0.clone(), y0.clone());
            k.axpy_f32_rows_multi(&mut y, d, &a, ostride, n, &rows, stride);
            k.axpy_f16_rows_multi(&mut yh, d, &a, ostride, n, &rowsh, stride);
            for g in 0..nq {
                let (qg, ag) = (&q[g * d..(g + 1) * d], &a[g * ostride..g * ostride + n]);
                let (mut one, mut oneh) = (vec![0f32; n], vec![0f32; n]);
                k.dot_f32_rows(&mut one, qg, &rows, stride);
                k.dot_f16_rows(&mut oneh, qg, &rowsh, stride);
                prop_assert_eq!(bits(&got[g * ostride..g * ostride + n]), bits(&one), "{} query {} of {}", k.label(), g, nq);
                prop_assert_eq!(bits(&goth[g * ostride..g * ostride + n]), bits(&oneh), "{} f16 query {}", k.label(), g);
                if g + 1 < nq {
                    prop_assert!(got[g * ostride + n..(g + 1) * ostride].iter().all(|v| v.is_nan()), "{} wrote a gap", k.label());
                }
                let (mut w, mut wh) = (y0[g * d..(g + 1) * d].to_vec(), y0[g * d..(g + 1) * d].to_vec());
                k.axpy_f32_rows(&mut w, ag, &rows, stride);
                k.axpy_f16_rows(&mut wh, ag, &rowsh, stride);
                prop_assert_eq!(bits(&y[g * d..(g + 1) * d]), bits(&w), "{} axpy query {} of {}", k.label(), g, nq);
                prop_assert_eq!(bits(&yh[g * d..(g + 1) * d]), bits(&wh), "{} f16 axpy query {}", k.label(), g);
            }
        }
    }

    /// Softmax numerators and SiLU: the same bits on every ISA, special values included.
    #[test]
    fn exp_kernels_are_bit_identical(x in prop::collection::vec(prop_oneof![
        6 => -30.0f32..30.0, 1 => -100.0f32..100.0,
        1 => prop::sample::select(vec![0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -87.4, -87.3, 88.3, 88.4]),
    ], 0..70), sub in -5.0f32..5.0) {
        let up: Vec<f32> = x.iter().map(|v| v * 0.5 + 1.0).collect();
        let mut want = x.clone();
        scalar::exp_sub(&mut want, sub);
        let mut want_g = x.clone();
        scalar::silu_mul(&mut want_g, &up);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for k in simd_levels() {
            let mut got = x.clone();
            k.exp_sub(&mut got, sub);
            prop_assert_eq!(bits(&got), bits(&want), "{} exp", k.label());
            let mut g = x.clone();
            k.silu_mul(&mut g, &up);
            prop_assert_eq!(bits(&g), bits(&want_g), "{} silu", k.label());
        }
    }

    /// Softmax (scaled, with and without the division): every level gives the scalar code's
    /// bits and the same maximum and sum, over lengths that leave every tail; the scalar code is
    /// a softmax.
    #[test]
    fn softmax_is_bit_identical(x in prop::collection::vec(prop_oneof![
        8 => -30.0f32..30.0, 1 => prop::sample::select(vec![0.0f32, -0.0, f32::NEG_INFINITY, 88.0, -120.0]),
    ], 0..90), scale in 0.01f32..2.0, normalize in any::<bool>()) {
        let mut want = x.clone();
        let (wm, ws) = scalar::softmax_parts(&mut want, scale, normalize);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        if normalize && x.iter().any(|v| v.is_finite()) {
            let total: f64 = want.iter().map(|&v| v as f64).sum();
            prop_assert!((total - 1.0).abs() < 1e-4, "sums to {}", total);
        }
        for k in simd_levels() {
            let mut got = x.clone();
            let (m, s) = k.softmax_parts(&mut got, scale, normalize);
            prop_assert_eq!(bits(&got), bits(&want), "{} values", k.label());
            prop_assert_eq!((m.to_bits(), s.to_bits()), (wm.to_bits(), ws.to_bits()), "{} max and sum", k.label());
        }
    }

    /// The transpose of every level is the scalar one, edges and strides included, and writes
    /// nothing else.
    #[test]
    fn transpose_matches_scalar(rows in 0usize..30, cols in 0usize..30, pad_src in 0usize..5, pad_dst in 0usize..5) {
        let (ss, ds) = (cols + pad_src, rows + pad_dst);
        let src: Vec<f32> = (0..rows * ss).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut want = vec![f32::NAN; cols * ds];
        scalar::transpose(&src, ss, &mut want, ds, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                prop_assert_eq!(want[c * ds + r], src[r * ss + c]);
            }
        }
        for k in simd_levels() {
            let mut got = vec![f32::NAN; cols * ds];
            k.transpose(&src, ss, &mut got, ds, rows, cols);
            prop_assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{}", k.label());
        }
    }

    /// Decode's four-row int8 kernel is exact, and the four-row 4-bit kernel gives each row
    /// exactly what the one-row kernel of the same level gives (so a row's result does not
    /// depend on which call it fell in).
    #[test]
    fn four_row_decode_kernels(blocks in 0usize..12, half in prop_oneof![Just(16usize), Just(32usize), Just(64usize)], seed in any::<u64>()) {
        let n = blocks * half;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let i8s = |next: &mut dyn FnMut() -> u32, len: usize| -> Vec<i8> { (0..len).map(|_| ((next() % 255) as i32 - 127) as i8).collect() };
        let a = i8s(&mut next, n + 7);
        let w: Vec<Vec<i8>> = (0..4).map(|_| i8s(&mut next, n + 7)).collect();
        let want = scalar::dot_int8_x4(&a, four(&w));
        for k in simd_levels() {
            if let Some(got) = k.dot_int8_x4(&a, four(&w)) {
                prop_assert_eq!(got, want, "{}", k.label());
            }
        }
        // A task's rows in one call (four-row steps and a tail): exact too.
        let rows = (seed % 11) as usize;
        let flat: Vec<i8> = (0..rows).flat_map(|r| w[r % 4][..a.len()].iter().map(move |&v| v.wrapping_add(r as i8).max(-127))).collect();
        let want: Vec<i32> = flat.chunks_exact(a.len().max(1)).take(rows).map(|wr| scalar::dot_int8(&a, wr)).collect();
        for k in simd_levels() {
            let mut got = vec![i32::MIN; rows];
            if k.dot_int8_rows(&a, &flat, &mut got) {
                prop_assert_eq!(&got, &want, "{} rows call", k.label());
            }
        }
        let codes: Vec<Vec<u8>> = (0..4).map(|_| (0..n).map(|_| next() as u8).collect()).collect();
        let factors: Vec<Vec<f32>> = (0..4).map(|_| (0..blocks).map(|_| (next() % 1000) as f32 / 9.7e5).collect()).collect();
        let (qe, qo) = (i8s(&mut next, n), i8s(&mut next, n));
        let qsum: Vec<i32> = (0..blocks).map(|b| (b * half..(b + 1) * half).map(|i| qe[i] as i32 + qo[i] as i32).sum()).collect();
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let lut = kind.int8_levels();
            for k in simd_levels() {
                let Some(got) = k.dot_fourbit_q8_x4(four(&codes), four(&factors), &lut, &qe, &qo, &qsum, half) else { continue };
                for r in 0..4 {
                    let one = k.dot_fourbit_q8_x1(&codes[r], &factors[r], &lut, &qe, &qo, &qsum, half);
                    prop_assert_eq!(got[r].to_bits(), one.to_bits(), "{} {:?} row {}", k.label(), kind, r);
                }
            }
            // A task's rows in one call: any count (four-row steps and a tail), each row the
            // one-row kernel's bits.
            let rows = (seed % 11) as usize;
            let all: Vec<Vec<u8>> = (0..rows).map(|r| codes[r % 4].iter().map(|&c| c.rotate_left(r as u32)).collect()).collect();
            let flat_codes: Vec<u8> = all.concat();
            let flat_factors: Vec<f32> = (0..rows).flat_map(|r| factors[r % 4].clone()).collect();
            for k in simd_levels().into_iter().chain([Kernels::for_isa(Isa::Scalar).unwrap()]) {
                let mut out = vec![f32::NAN; rows];
                if !k.dot_fourbit_q8_rows(&flat_codes, &flat_factors, &lut, &qe, &qo, &qsum, half, &mut out) {
                    continue;
                }
                for r in 0..rows {
                    let one = k.dot_fourbit_q8_x1(&all[r], &factors[r % 4], &lut, &qe, &qo, &qsum, half);
                    prop_assert_eq!(out[r].to_bits(), one.to_bits(), "{} {:?} rows call, row {}", k.label(), kind, r);
                }
                // Two tokens at once (the second's activations and factors reversed).
                let (qe2, qo2): (Vec<i8>, Vec<i8>) = (qo.iter().rev().copied().collect(), qe.iter().rev().copied().collect());
                let qsum2: Vec<i32> = (0..blocks).map(|b| (b * half..(b + 1) * half).map(|i| qe2[i] as i32 + qo2[i] as i32).sum()).collect();
                let factors2: Vec<f32> = flat_factors.iter().rev().copied().collect();
                let (mut o0, mut o1) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
                let (fa, fb) = (&flat_factors[..], &factors2[..]);
                if !k.dot_fourbit_q8_rows_t2(&flat_codes, [fa, fb], &lut, [&qe, &qe2], [&qo, &qo2], [&qsum, &qsum2], half, [&mut o0, &mut o1]) {
                    continue;
                }
                for r in 0..rows {
                    let nb = blocks;
                    let one0 = k.dot_fourbit_q8_x1(&all[r], &fa[r * nb..(r + 1) * nb], &lut, &qe, &qo, &qsum, half);
                    let one1 = k.dot_fourbit_q8_x1(&all[r], &fb[r * nb..(r + 1) * nb], &lut, &qe2, &qo2, &qsum2, half);
                    prop_assert_eq!(o0[r].to_bits(), one0.to_bits(), "{} {:?} two-token rows call, row {} token 0", k.label(), kind, r);
                    prop_assert_eq!(o1[r].to_bits(), one1.to_bits(), "{} {:?} two-token rows call, row {} token 1", k.label(), kind, r);
                }
                // Four tokens at once: the two above, then each with its activations rotated.
                let rot = |v: &[i8]| -> Vec<i8> { let mut v = v.to_vec(); let k = 5 % v.len().max(1); v.rotate_left(k); v };
                let (qe3, qo3, qe4, qo4) = (rot(&qe), rot(&qo), rot(&qe2), rot(&qo2));
                let sums = |e: &[i8], o: &[i8]| -> Vec<i32> { (0..blocks).map(|b| (b * half..(b + 1) * half).map(|i| e[i] as i32 + o[i] as i32).sum()).collect() };
                let (qsum3, qsum4) = (sums(&qe3, &qo3), sums(&qe4, &qo4));
                let factors3: Vec<f32> = flat_factors.iter().map(|f| f * 1.5).collect();
                let factors4: Vec<f32> = factors2.iter().map(|f| f * 0.75).collect();
                let fs = [&flat_factors[..], &factors2[..], &factors3[..], &factors4[..]];
                let (qes, qos, qss) = ([&qe[..], &qe2, &qe3, &qe4], [&qo[..], &qo2, &qo3, &qo4], [&qsum[..], &qsum2, &qsum3, &qsum4]);
                let mut outs: [Vec<f32>; 4] = std::array::from_fn(|_| vec![f32::NAN; rows]);
                let [o0, o1, o2, o3] = outs.each_mut().map(|o| &mut o[..]);
                if !k.dot_fourbit_q8_rows_t4(&flat_codes, fs, &lut, qes, qos, half, [o0, o1, o2, o3]) {
                    continue;
                }
                for r in 0..rows {
                    let nb = blocks;
                    for t in 0..4 {
                        let one = k.dot_fourbit_q8_x1(&all[r], &fs[t][r * nb..(r + 1) * nb], &lut, qes[t], qos[t], qss[t], half);
                        prop_assert_eq!(outs[t][r].to_bits(), one.to_bits(), "{} {:?} four-token rows call, row {} token {}", k.label(), kind, r, t);
                    }
                }
            }
        }
    }

    /// The 256-bit VNNI decode kernels keep each lane's sums exact and then do what the AVX2 ones
    /// do, so both levels give the same bits (the prefill tile is held to the scalar oracle like
    /// every other level's).
    #[test]
    fn avxvnni_matches_avx2_bit_for_bit(nb in 1usize..12, hb in prop_oneof![Just(16usize), Just(32)], seed in any::<u64>()) {
        // Blocks of 32 weights (16 bytes) run two to a step, and only an even count of them.
        let nb = if hb == 16 { 2 * nb } else { nb };
        let n = nb * hb;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let codes: Vec<Vec<u8>> = (0..4).map(|_| (0..n).map(|_| next() as u8).collect()).collect();
        let wf: Vec<Vec<f32>> = (0..4).map(|_| (0..nb).map(|_| (next() % 1000) as f32 / 3.1e4).collect()).collect();
        let mut q = || -> Vec<i8> { (0..n).map(|_| ((next() % 255) as i32 - 127) as i8).collect() };
        let qe: Vec<Vec<i8>> = (0..4).map(|_| q()).collect();
        let qo: Vec<Vec<i8>> = (0..4).map(|_| q()).collect();
        let qsum: Vec<Vec<i32>> = (0..4)
            .map(|t| (0..nb).map(|b| (b * hb..(b + 1) * hb).map(|i| qe[t][i] as i32 + qo[t][i] as i32).sum()).collect())
            .collect();
        let levels = simd_levels();
        let Some(avx2) = levels.iter().find(|k| k.isa() == Isa::Avx2) else { return Ok(()) };
        let lut = FourBitKind::Nf4.int8_levels();
        let bits = |v: [f32; 4]| v.map(f32::to_bits);
        for k in levels.iter().filter(|k| k.isa() == Isa::AvxVnni) {
            let args = (four(&codes), four(&wf), &lut, &qe[0][..], &qo[0][..], &qsum[0][..], hb);
            let want = avx2.dot_fourbit_q8_x4(args.0, args.1, args.2, args.3, args.4, args.5, args.6).unwrap();
            let got = k.dot_fourbit_q8_x4(args.0, args.1, args.2, args.3, args.4, args.5, args.6).unwrap();
            prop_assert_eq!(bits(got), bits(want), "{} rows hb={}", k.label(), hb);
            let one = k.dot_fourbit_q8(&codes[1], &wf[1], &lut, &qe[0], &qo[0], &qsum[0], hb);
            prop_assert_eq!(one.to_bits(), want[1].to_bits(), "{} one row", k.label());
        }
    }

    /// The eight-token rows kernel (weights in blocks of 64, tokens as `TokenPairs`) gives each
    /// (row, token) the one-token kernel's bits with the factors `scale · xs`; so does its
    /// scalar twin against the scalar kernel.
    #[test]
    fn eight_token_rows_match_one_token_rows(rows in 0usize..11, nb in 1usize..12, row_major in any::<bool>(), seed in any::<u64>()) {
        let n = nb * 32;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let codes: Vec<u8> = (0..rows * n).map(|_| next() as u8).collect();
        let scales: Vec<f32> = (0..rows * nb).map(|_| (next() % 1000) as f32 / 3.1e2 + 0.01).collect();
        let mut q = || -> Vec<i8> { (0..n).map(|_| ((next() % 256) as i32 - 128).max(-127) as i8).collect() };
        let (qe, qo): (Vec<Vec<i8>>, Vec<Vec<i8>>) = ((0..8).map(|_| q()).collect(), (0..8).map(|_| q()).collect());
        let xs: Vec<Vec<f32>> = (0..8).map(|_| (0..nb).map(|_| (next() % 997) as f32 / 7.3e4).collect()).collect();
        let qsum: Vec<Vec<i32>> = (0..8)
            .map(|t| (0..nb).map(|b| (b * 32..(b + 1) * 32).map(|i| qe[t][i] as i32 + qo[t][i] as i32).sum()).collect())
            .collect();
        let (qer, qor): (Vec<&[i8]>, Vec<&[i8]>) = (qe.iter().map(|x| &x[..]).collect(), qo.iter().map(|x| &x[..]).collect());
        let xrefs: Vec<&[f32]> = xs.iter().map(|x| &x[..]).collect();
        let pairs = lowbit_kernels::pairs::TokenPairs::new(&qer, &qor, &xrefs, nb);
        prop_assert_eq!(pairs.groups(), 1);
        let lut = FourBitKind::Nf4.int8_levels();
        let factors = |t: usize| -> Vec<f32> { (0..rows * nb).map(|j| xs[t][j % nb] * scales[j]).collect() };
        let scalar_k = Kernels::for_isa(Isa::Scalar).unwrap();
        for k in simd_levels().into_iter().chain([scalar_k]) {
            let (mut buf, rs, ts) = grid_buffer(rows, row_major);
            let out = Grid::new(&mut buf, rows, rs, ts);
            let ran = if k.isa() == Isa::Scalar {
                lowbit_kernels::scalar::dot_fourbit_q8_rows_t8(&codes, &scales, &lut, pairs.group(0), out);
                true
            } else {
                k.dot_fourbit_q8_rows_t8(&codes, &scales, &lut, pairs.group(0), out)
            };
            if !ran {
                continue;
            }
            let out = Grid::new(&mut buf, rows, rs, ts);
            for t in 0..8 {
                let f = factors(t);
                for r in 0..rows {
                    let one = k.dot_fourbit_q8_x1(&codes[r * n..(r + 1) * n], &f[r * nb..(r + 1) * nb], &lut, &qe[t], &qo[t], &qsum[t], 32);
                    prop_assert_eq!(out.get(r, t).to_bits(), one.to_bits(), "{} row {} token {}", k.label(), r, t);
                }
            }
            prop_assert!(grid_untouched(&buf, rows, rs, ts), "{} wrote outside its cells", k.label());
        }
    }

    /// The eight-token block int8 rows kernel gives each (row, token) the bits of the level's
    /// four-row one-token kernel; its scalar twin is the scalar kernel per token.
    #[test]
    fn eight_token_q8_rows_match_one_token_rows(quads in 0usize..4, nb in 1usize..20, bs in prop_oneof![Just(32usize), Just(64)], row_major in any::<bool>(), seed in any::<u64>()) {
        let (rows, cols) = (4 * quads, nb * bs);
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        // Weights over the whole int8 range, -128 included (a GGUF Q8_0 may hold it).
        let w: Vec<i8> = (0..rows * cols).map(|_| next() as u8 as i8).collect();
        let scale: Vec<f16> = (0..rows * nb).map(|_| f16::from_f32((next() % 1000) as f32 / 3.1e4 + 1e-4)).collect();
        let q: Vec<Vec<i8>> = (0..8).map(|_| (0..cols).map(|_| ((next() % 255) as i32 - 127) as i8).collect()).collect();
        let d: Vec<Vec<f32>> = (0..8).map(|_| (0..nb).map(|_| (next() % 997) as f32 / 7.3e2).collect()).collect();
        let (qr, dr): (Vec<&[i8]>, Vec<&[f32]>) = (q.iter().map(|x| &x[..]).collect(), d.iter().map(|x| &x[..]).collect());
        let pairs = lowbit_kernels::pairs::TokenPairs::q8(&qr, &dr, bs, nb);
        let (mut buf, rs, ts) = grid_buffer(rows, row_major);
        scalar::dot_q8_rows_t8(&w, &scale, pairs.group(0), Grid::new(&mut buf, rows, rs, ts));
        let want = Grid::new(&mut buf, rows, rs, ts);
        for t in 0..8 {
            for r in 0..rows {
                let one = scalar::dot_q8(&w[r * cols..(r + 1) * cols], &scale[r * nb..(r + 1) * nb], &q[t], &d[t], bs);
                prop_assert_eq!(want.get(r, t).to_bits(), one.to_bits(), "scalar row {} token {}", r, t);
            }
        }
        for k in simd_levels() {
            let (mut buf, rs, ts) = grid_buffer(rows, row_major);
            if !k.dot_q8_rows_t8(&w, &scale, pairs.group(0), Grid::new(&mut buf, rows, rs, ts)) {
                continue;
            }
            prop_assert!(grid_untouched(&buf, rows, rs, ts), "{} wrote outside its cells", k.label());
            let outs = Grid::new(&mut buf, rows, rs, ts);
            for i in (0..rows).step_by(4) {
                let wr: [&[i8]; 4] = std::array::from_fn(|j| &w[(i + j) * cols..(i + j + 1) * cols]);
                let sr: [&[f16]; 4] = std::array::from_fn(|j| &scale[(i + j) * nb..(i + j + 1) * nb]);
                for t in 0..8 {
                    let one = k.dot_q8_x4(wr, sr, &q[t], &d[t], bs).unwrap();
                    for (j, one) in one.iter().enumerate() {
                        prop_assert_eq!(outs.get(i + j, t).to_bits(), one.to_bits(), "{} row {} token {}", k.label(), i + j, t);
                    }
                }
            }
        }
    }

    /// The two-token four-row kernel gives every (row, token) the bits of the four-row kernel
    /// on that token alone (what makes batched decode equal to decode alone), on every level
    /// that has it; and the scalar twin is two scalar four-row calls.
    #[test]
    fn two_token_rows_match_one_token_rows(nb in 1usize..12, hb in prop_oneof![Just(16usize), Just(32), Just(64)], seed in any::<u64>()) {
        let n = nb * hb;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let codes: Vec<Vec<u8>> = (0..4).map(|_| (0..n).map(|_| next() as u8).collect()).collect();
        let mut f = || -> Vec<Vec<f32>> { (0..4).map(|_| (0..nb).map(|_| (next() % 1000) as f32 / 3.1e4).collect()).collect() };
        let (f0, f1) = (f(), f());
        let mut q = || -> Vec<i8> { (0..n).map(|_| ((next() % 255) as i32 - 127) as i8).collect() };
        let (qe, qo): (Vec<Vec<i8>>, Vec<Vec<i8>>) = ((0..2).map(|_| q()).collect(), (0..2).map(|_| q()).collect());
        let qsum: Vec<Vec<i32>> = (0..2)
            .map(|t| (0..nb).map(|b| (b * hb..(b + 1) * hb).map(|i| qe[t][i] as i32 + qo[t][i] as i32).sum()).collect())
            .collect();
        let lut = FourBitKind::Fp4.int8_levels();
        let bits = |v: [f32; 4]| v.map(f32::to_bits);
        let facs = [four(&f0), four(&f1)];
        let scalar2 = lowbit_kernels::scalar::dot_fourbit_q8_x4t2(
            four(&codes), facs, &lut, [&qe[0], &qe[1]], [&qo[0], &qo[1]], [&qsum[0], &qsum[1]], hb);
        for t in 0..2 {
            let one = lowbit_kernels::scalar::dot_fourbit_q8_x4(four(&codes), facs[t], &lut, &qe[t], &qo[t], &qsum[t], hb);
            prop_assert_eq!(bits(scalar2[t]), bits(one));
        }
        for k in simd_levels() {
            let Some(two) = k.dot_fourbit_q8_x4t2(
                four(&codes), facs, &lut, [&qe[0], &qe[1]], [&qo[0], &qo[1]], [&qsum[0], &qsum[1]], hb) else { continue };
            for t in 0..2 {
                let one = k.dot_fourbit_q8_x4(four(&codes), facs[t], &lut, &qe[t], &qo[t], &qsum[t], hb).unwrap();
                prop_assert_eq!(bits(two[t]), bits(one), "{} token {}", k.label(), t);
            }
        }
    }

    #[test]
    fn int8_tile_is_exact(n in 0usize..300, seed in any::<u64>()) {
        let mut rng = seed;
        let mut v = || -> Vec<i8> { (0..n).map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1); ((rng >> 33) % 255) as i32 as i8 }).map(|x| x.max(-127)).collect() };
        let a: Vec<Vec<i8>> = (0..4).map(|_| v()).collect();
        let w: Vec<Vec<i8>> = (0..4).map(|_| v()).collect();
        let ar = [&a[0][..], &a[1], &a[2], &a[3]];
        let wr = [&w[0][..], &w[1], &w[2], &w[3]];
        let want = scalar::dot_int8_4x4(ar, wr);
        for k in simd_levels() {
            prop_assert_eq!(k.dot_int8_4x4(ar, wr), want, "{}", k.label());
        }
    }

    #[test]
    fn fourbit_dot_matches_scalar(
        blocks in 0usize..12,
        bs_pow in 5u32..9,
        seed in any::<u64>(),
    ) {
        let bs = 1usize << bs_pow;
        let half = bs / 2;
        let n = blocks * half;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let codes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        let scales: Vec<f32> = (0..blocks).map(|_| (next() % 1000) as f32 / 97.0).collect();
        let xe: Vec<f32> = (0..n).map(|_| (next() % 2001) as f32 / 500.0 - 2.0).collect();
        let xo: Vec<f32> = (0..n).map(|_| (next() % 2001) as f32 / 500.0 - 2.0).collect();
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let levels = kind.levels();
            let want = scalar::dot_fourbit(&codes, &scales, levels, &xe, &xo, half);
            let mag: f32 = (0..n).map(|i| scales[i / half] * (xe[i].abs() + xo[i].abs())).sum();
            for k in simd_levels() {
                let got = k.dot_fourbit(&codes, &scales, levels, &xe, &xo, half);
                prop_assert!(close(got, want, mag), "{} {kind:?} bs={bs}: {got} vs {want}", k.label());
            }
        }
    }

    #[test]
    fn fourbit_q8_dot_matches_scalar(
        blocks in 0usize..12,
        // bitsandbytes' power-of-two sizes, and odd multiples of 32 bytes per half block, which
        // the public API accepts too (the 512-bit loop then ends each block on half a step).
        half in prop_oneof![(5u32..9).prop_map(|p| (1usize << p) / 2), Just(96usize), Just(160usize)],
        seed in any::<u64>(),
    ) {
        let n = blocks * half;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let codes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        let qe: Vec<i8> = (0..n).map(|_| (next() % 255) as i32 as i8 ).map(|v| v.max(-127)).collect();
        let qo: Vec<i8> = (0..n).map(|_| (next() % 255) as i32 as i8 ).map(|v| v.max(-127)).collect();
        let qsum: Vec<i32> = (0..blocks).map(|b| (b * half..(b + 1) * half).map(|i| qe[i] as i32 + qo[i] as i32).sum()).collect();
        let factors: Vec<f32> = (0..blocks).map(|_| (next() % 1000) as f32 / 9.7e5).collect();
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let lut = kind.int8_levels();
            let want = scalar::dot_fourbit_q8(&codes, &factors, &lut, &qe, &qo, &qsum, half);
            // Exact integer lane sums, then float accumulation across blocks and lanes: at most
            // blocks + 5 roundings, each ≤ ε·Σ|lane values|. The VNNI kernel biases the table by
            // +128 and takes 128·Σq off one lane, so its lanes carry up to (|level| + 128)·|q| per
            // product and cancel in the sum: that, doubled, is the magnitude to bound with (the
            // fuzz target found two tighter bounds too tight).
            let terms: f32 = (0..blocks)
                .map(|b| {
                    let r = b * half..(b + 1) * half;
                    let f = factors[b];
                    r.map(|i| f.abs() * 2.0 * (((lut[(codes[i] >> 4) as usize] as i32).abs() + 128) * (qe[i] as i32).abs() + ((lut[(codes[i] & 15) as usize] as i32).abs() + 128) * (qo[i] as i32).abs()) as f32).sum::<f32>()
                })
                .sum();
            let tol = (blocks as f32 + 5.0) * f32::EPSILON * terms + 1e-6;
            for k in simd_levels() {
                let got = k.dot_fourbit_q8(&codes, &factors, &lut, &qe, &qo, &qsum, half);
                prop_assert!((got - want).abs() <= tol, "{} {kind:?} half={half}: {got} vs {want}", k.label());
            }
        }
    }

    /// The prefill tile of the 4-bit integer route against the scalar oracle, for block counts
    /// odd and even (the odd last block runs half a 512-bit step).
    #[test]
    fn fourbit_q8_tile_matches_scalar(nb in 1usize..12, seed in any::<u64>()) {
        let d = tile_inputs(nb, seed, 4);
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let lut = kind.int8_levels();
            let args = (four(&d.codes), four(&d.wf), &lut, four(&d.qe), four(&d.qo), four(&d.xs), four(&d.qsum));
            let want = scalar::fourbit_q8_tile(args.0, args.1, args.2, args.3, args.4, args.5, args.6);
            for k in simd_levels() {
                let Some(got) = k.fourbit_q8_tile(args.0, args.1, args.2, args.3, args.4, args.5, args.6, false) else { continue };
                for r in 0..4 {
                    for t in 0..4 {
                        let tol = d.tolerance(&lut, r, t);
                        prop_assert!((got[r][t] - want[r][t]).abs() <= tol, "{} {kind:?} r={r} t={t}: {} vs {}", k.label(), got[r][t], want[r][t]);
                    }
                }
            }
        }
    }

    /// The prompt product on a matrix unit (AMX) against its scalar twin, 16–48 rows and 1–40
    /// tokens (a partial last group of 16), and the twin against the scalar tile on the same
    /// activations bit for bit (the panel's layout): every (row, token) within the tiles' float
    /// rounding of the exact block sums.
    #[test]
    fn fourbit_q8_panel_matches_scalar(nb in 1usize..12, tiles in 1usize..4, tokens in 1usize..41, seed in any::<u64>()) {
        let rows = 16 * tiles;
        let half = 32 * nb;
        let mut rng = Lcg(seed);
        let codes: Vec<u8> = (0..rows * half).map(|_| rng.next() as u8).collect();
        let wf: Vec<f32> = (0..rows * nb).map(|_| (rng.next() % 1000) as f32 / 3.1e4).collect();
        let (qe, qo) = (rng.i8s(tokens * half), rng.i8s(tokens * half));
        let xs: Vec<f32> = (0..tokens * nb).map(|_| (rng.next() % 1000) as f32 / 9.7e5).collect();
        let panel = Panel::new(&qe, &qo, half, &xs, nb, tokens);
        let padded = panel.groups() * PANEL_TOKENS;
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let lut = kind.int8_levels();
            let mut want = vec![f32::NAN; padded * rows];
            scalar::fourbit_q8_panel(&codes, &wf, &lut, &panel, rows, &mut want, false);
            // Row-major: the same values, `padded` a row.
            let mut want_rm = vec![f32::NAN; padded * rows];
            scalar::fourbit_q8_panel(&codes, &wf, &lut, &panel, rows, &mut want_rm, true);
            for t in 0..padded {
                for r in 0..rows {
                    prop_assert_eq!(want_rm[r * padded + t].to_bits(), want[t * rows + r].to_bits());
                }
            }
            for r0 in (0..rows).step_by(4) {
                for t0 in (0..tokens.saturating_sub(3)).step_by(4) {
                    let tok = |t: usize| t0 + t;
                    let tile = scalar::fourbit_q8_tile(
                        std::array::from_fn(|i| &codes[(r0 + i) * half..(r0 + i + 1) * half]),
                        std::array::from_fn(|i| &wf[(r0 + i) * nb..(r0 + i + 1) * nb]),
                        &lut,
                        std::array::from_fn(|t| &qe[tok(t) * half..(tok(t) + 1) * half]),
                        std::array::from_fn(|t| &qo[tok(t) * half..(tok(t) + 1) * half]),
                        std::array::from_fn(|t| &xs[tok(t) * nb..(tok(t) + 1) * nb]),
                        [&[]; 4],
                    );
                    for i in 0..4 {
                        for t in 0..4 {
                            prop_assert_eq!(want[tok(t) * rows + r0 + i].to_bits(), tile[i][t].to_bits());
                        }
                    }
                }
            }
            for k in simd_levels() {
                let mut scratch = vec![0i8; Kernels::panel_scratch(nb)];
                let mut got = vec![f32::NAN; padded * rows];
                if !k.fourbit_q8_panel(&codes, &wf, &lut, &panel, rows, &mut scratch, &mut got, false) {
                    continue;
                }
                let mut got_rm = vec![f32::NAN; padded * rows];
                k.fourbit_q8_panel(&codes, &wf, &lut, &panel, rows, &mut scratch, &mut got_rm, true);
                for t in 0..padded {
                    for r in 0..rows {
                        prop_assert_eq!(got_rm[r * padded + t].to_bits(), got[t * rows + r].to_bits(), "{} row-major", k.label());
                    }
                }
                // One token alone against sixteen rows: the panel's bits for it.
                let sums: Vec<i32> = (0..nb).map(|b| (0..32).map(|i| qe[32 * b + i] as i32 + qo[32 * b + i] as i32).sum()).collect();
                for r0 in (0..rows).step_by(16) {
                    let Some(one) = k.fourbit_q8_rows16(&codes[r0 * half..], half, &wf[r0 * nb..(r0 + 16) * nb], &lut, &qe[..half], &qo[..half], &xs[..nb], &sums) else { break };
                    for (i, v) in one.iter().enumerate() {
                        prop_assert_eq!(v.to_bits(), got[r0 + i].to_bits(), "{} {:?} row {} alone", k.label(), kind, r0 + i);
                    }
                }
                for t in 0..padded {
                    for r in 0..rows {
                        let terms: f32 = (0..half)
                            .map(|i| {
                                let c = codes[r * half + i];
                                let (e, o) = (panel.value(t, i / 32, i % 32), panel.value(t, i / 32, 32 + i % 32));
                                let m = (lut[(c >> 4) as usize] as i32 * e as i32).abs() + (lut[(c & 15) as usize] as i32 * o as i32).abs();
                                wf[r * nb + i / 32] * panel.scale(t, i / 32) * 2.0 * m as f32
                            })
                            .sum();
                        let tol = (nb as f32 + 6.0) * f32::EPSILON * terms + 1e-6;
                        let (g, w) = (got[t * rows + r], want[t * rows + r]);
                        prop_assert!((g - w).abs() <= tol, "{} {kind:?} row {r} token {t}: {g} vs {w}", k.label());
                    }
                }
            }
        }
    }

    /// LLM.int8's prompt product on a matrix unit (AMX): its exact sums equal the scalar twin's,
    /// which equal `dot_int8` for each row and token (zero for the padding tokens); 16–48 rows,
    /// 64–704 columns, 1–40 tokens (one group of sixteen and pairs of them).
    #[test]
    fn int8_panel_matches_scalar(nb in 1usize..12, tiles in 1usize..4, tokens in 1usize..41, seed in any::<u64>()) {
        let (rows, cols) = (16 * tiles, 64 * nb);
        let mut rng = Lcg(seed);
        let (w, x) = (rng.i8s(rows * cols), rng.i8s(tokens * cols));
        let panel = Panel::int8(&x, cols, tokens);
        let padded = panel.groups() * PANEL_TOKENS;
        let mut want = vec![i32::MIN; padded * rows];
        scalar::int8_panel(&w, &panel, rows, &mut want);
        for r in 0..rows {
            for t in 0..padded {
                let one = if t < tokens { scalar::dot_int8(&x[t * cols..(t + 1) * cols], &w[r * cols..(r + 1) * cols]) } else { 0 };
                prop_assert_eq!(want[r * padded + t], one, "row {} token {}", r, t);
            }
        }
        for k in simd_levels() {
            let mut got = vec![i32::MIN; padded * rows];
            if k.int8_panel(&w, &panel, rows, &mut got) {
                prop_assert_eq!(&got, &want, "{}", k.label());
            }
        }
    }

    /// The block int8 prompt product on a matrix unit (AMX) against its scalar twin, blocks of
    /// 32 and 64, 16–48 rows, 1–40 tokens; the twin against `dot_q8` bit for bit.
    #[test]
    fn q8_panel_matches_scalar(nb in 1usize..12, tiles in 1usize..4, tokens in 1usize..41, big in any::<bool>(), seed in any::<u64>()) {
        let (rows, bs) = (16 * tiles, if big { 64 } else { 32 });
        let cols = nb * bs;
        let mut rng = Lcg(seed);
        let (w, x) = (rng.i8s(rows * cols), rng.i8s(tokens * cols));
        let scale: Vec<f16> = (0..rows * nb).map(|_| f16::from_f32((rng.next() % 1000) as f32 / 3.1e4)).collect();
        let d: Vec<f32> = (0..tokens * nb).map(|_| (rng.next() % 1000) as f32 / 9.7e5).collect();
        let panel = Panel::q8(&x, cols, &d, bs, nb, tokens);
        let padded = panel.groups() * PANEL_TOKENS;
        let mut want = vec![f32::NAN; padded * rows];
        scalar::q8_panel(&w, &scale, &panel, rows, &mut want, false);
        let mut want_rm = vec![f32::NAN; padded * rows];
        scalar::q8_panel(&w, &scale, &panel, rows, &mut want_rm, true);
        for t in 0..padded {
            for r in 0..rows {
                prop_assert_eq!(want_rm[r * padded + t].to_bits(), want[t * rows + r].to_bits());
            }
        }
        for t in 0..tokens {
            for r in 0..rows {
                let one = scalar::dot_q8(&w[r * cols..(r + 1) * cols], &scale[r * nb..(r + 1) * nb], &x[t * cols..(t + 1) * cols], &d[t * nb..(t + 1) * nb], bs);
                prop_assert_eq!(want[t * rows + r].to_bits(), one.to_bits());
            }
        }
        for k in simd_levels() {
            let mut scratch = vec![0f32; 16 * nb];
            let mut got = vec![f32::NAN; padded * rows];
            if !k.q8_panel(&w, &scale, &panel, rows, &mut scratch, &mut got, false) {
                continue;
            }
            let mut got_rm = vec![f32::NAN; padded * rows];
            k.q8_panel(&w, &scale, &panel, rows, &mut scratch, &mut got_rm, true);
            for t in 0..padded {
                for r in 0..rows {
                    prop_assert_eq!(got_rm[r * padded + t].to_bits(), got[t * rows + r].to_bits(), "{} row-major", k.label());
                }
            }
            // One token alone against sixteen rows: the panel's bits for it.
            let sums: Vec<i32> = (0..nb).map(|b| x[b * bs..(b + 1) * bs].iter().map(|&v| v as i32).sum()).collect();
            for r0 in (0..rows).step_by(16) {
                let Some(one) = k.q8_rows16(&w[r0 * cols..], cols, bs, &scale[r0 * nb..(r0 + 16) * nb], &x[..cols], &d[..nb], &sums) else { break };
                for (i, v) in one.iter().enumerate() {
                    prop_assert_eq!(v.to_bits(), got[r0 + i].to_bits(), "{} bs={} row {} alone", k.label(), bs, r0 + i);
                }
            }
            for t in 0..padded {
                for r in 0..rows {
                    let terms: f32 = (0..cols)
                        .map(|i| {
                            let m = (w[r * cols + i] as i32 * panel.value(t, i / bs, i % bs) as i32).abs();
                            scale[r * nb + i / bs].to_f32() * panel.scale(t, i / bs) * 2.0 * m as f32
                        })
                        .sum();
                    let tol = (nb as f32 + 6.0) * f32::EPSILON * terms + 1e-6;
                    let (g, v) = (got[t * rows + r], want[t * rows + r]);
                    prop_assert!((g - v).abs() <= tol, "{} bs={bs} row {r} token {t}: {g} vs {v}", k.label());
                }
            }
        }
    }

    /// The tile over a run of tokens (rows looked up once) gives, for every (row, token), the
    /// bits of the tile on that group of four: runs of 4–16 tokens laid out `stride` apart.
    #[test]
    fn fourbit_q8_tile_run_is_the_tile(nb in prop_oneof![3 => 1usize..12, 1 => 63usize..65], groups in 1usize..5, seed in any::<u64>()) {
        let tokens = 4 * groups;
        let d = tile_inputs(nb, seed, tokens);
        let stride = (32 * nb).next_multiple_of(64) + 64;
        let flat = |v: &[Vec<i8>]| -> Vec<i8> {
            let mut out = vec![0i8; tokens * stride];
            for (t, x) in v.iter().enumerate() {
                out[t * stride..t * stride + x.len()].copy_from_slice(x);
            }
            out
        };
        let (qe, qo) = (flat(&d.qe), flat(&d.qo));
        let xs: Vec<f32> = d.xs.concat();
        let qsum: Vec<i32> = d.qsum.concat();
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let lut = kind.int8_levels();
            for k in simd_levels() {
                let mut out = vec![f32::NAN; 4 * tokens];
                if k.fourbit_q8_tile_run(four(&d.codes), four(&d.wf), &lut, &qe, &qo, stride, &xs, &qsum, tokens, &mut out, false).is_none() {
                    continue;
                }
                for g in 0..groups {
                    let qe4: [&[i8]; 4] = std::array::from_fn(|t| d.qe[4 * g + t].as_slice());
                    let qo4: [&[i8]; 4] = std::array::from_fn(|t| d.qo[4 * g + t].as_slice());
                    let xs4: [&[f32]; 4] = std::array::from_fn(|t| d.xs[4 * g + t].as_slice());
                    let qs4: [&[i32]; 4] = std::array::from_fn(|t| d.qsum[4 * g + t].as_slice());
                    let tile = k.fourbit_q8_tile(four(&d.codes), four(&d.wf), &lut, qe4, qo4, xs4, qs4, false).expect("a level with runs has the tile");
                    for r in 0..4 {
                        for t in 0..4 {
                            prop_assert_eq!(out[4 * (4 * g + t) + r].to_bits(), tile[r][t].to_bits(), "{} {:?} r={} token {}", k.label(), kind, r, 4 * g + t);
                        }
                    }
                }
            }
        }
    }

    /// The eight-token prefill tile against the scalar oracle (two 4 × 4 tiles), with the
    /// activations' absolute values alongside, -127 and 127 included.
    #[test]
    fn fourbit_q8_tile8_matches_scalar(nb in 1usize..12, seed in any::<u64>()) {
        let d = tile_inputs(nb, seed, 8);
        let abs = |v: &[Vec<i8>]| -> Vec<Vec<i8>> { v.iter().map(|t| t.iter().map(|x| x.abs()).collect()).collect() };
        let (aqe, aqo) = (abs(&d.qe), abs(&d.qo));
        fn eight<T>(v: &[Vec<T>]) -> [&[T]; 8] {
            std::array::from_fn(|t| v[t].as_slice())
        }
        fn half<T>(v: &[Vec<T>], h: usize) -> [&[T]; 4] {
            std::array::from_fn(|t| v[4 * h + t].as_slice())
        }
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let lut = kind.int8_levels();
            let want = [0, 1].map(|h| {
                scalar::fourbit_q8_tile(four(&d.codes), four(&d.wf), &lut, half(&d.qe, h), half(&d.qo, h), half(&d.xs, h), half(&d.qsum, h))
            });
            for k in simd_levels() {
                let Some(got) = k.fourbit_q8_tile8(four(&d.codes), four(&d.wf), &lut, eight(&d.qe), eight(&d.qo), eight(&aqe), eight(&aqo), eight(&d.xs), false) else { continue };
                for r in 0..4 {
                    for t in 0..8 {
                        let (w, tol) = (want[t / 4][r][t % 4], d.tolerance(&lut, r, t));
                        prop_assert!((got[r][t] - w).abs() <= tol, "{} {kind:?} r={r} t={t}: {} vs {}", k.label(), got[r][t], w);
                    }
                }
            }
        }
    }

    /// The prefill tiles for weights in blocks of 32 (two to each 32-byte step; activations in
    /// blocks of 64) against the scalar one-row kernel on blocks of 32 (factor = row factor ·
    /// the token factor of its 64-block), and the tile run against its tile bit for bit.
    #[test]
    fn split_tiles_match_scalar(steps in prop_oneof![3 => 1usize..10, 1 => 60usize..65], seed in any::<u64>()) {
        let (nb, tokens) = (2 * steps, 8);
        let n = 16 * nb;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let codes: Vec<Vec<u8>> = (0..4).map(|_| (0..n).map(|_| next() as u8).collect()).collect();
        let wf: Vec<Vec<f32>> = (0..4).map(|_| (0..nb).map(|_| (next() % 1000) as f32 / 3.1e4).collect()).collect();
        let mut q = || -> Vec<i8> { (0..n).map(|_| ((next() % 255) as i32 - 127) as i8).collect() };
        let qe: Vec<Vec<i8>> = (0..tokens).map(|_| q()).collect();
        let qo: Vec<Vec<i8>> = (0..tokens).map(|_| q()).collect();
        let xs: Vec<Vec<f32>> = (0..tokens).map(|_| (0..steps).map(|_| (next() % 1000) as f32 / 9.7e5).collect()).collect();
        // Each block of 32's sum (16 bytes of each): the scalar kernel's blocks and the VNNI
        // tiles' per-half bias corrections.
        let qsum16: Vec<Vec<i32>> = (0..tokens)
            .map(|t| (0..nb).map(|b| (b * 16..(b + 1) * 16).map(|i| qe[t][i] as i32 + qo[t][i] as i32).sum()).collect())
            .collect();
        let abs = |v: &[Vec<i8>]| -> Vec<Vec<i8>> { v.iter().map(|t| t.iter().map(|x| x.abs()).collect()).collect() };
        let (aqe, aqo) = (abs(&qe), abs(&qo));
        fn eight<T>(v: &[Vec<T>]) -> [&[T]; 8] {
            std::array::from_fn(|t| v[t].as_slice())
        }
        fn first4<T>(v: &[Vec<T>], g: usize) -> [&[T]; 4] {
            std::array::from_fn(|t| v[4 * g + t].as_slice())
        }
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let lut = kind.int8_levels();
            let want = |r: usize, t: usize| {
                let f: Vec<f32> = (0..nb).map(|b| wf[r][b] * xs[t][b / 2]).collect();
                scalar::dot_fourbit_q8(&codes[r], &f, &lut, &qe[t], &qo[t], &qsum16[t], 16)
            };
            let tol = |r: usize, t: usize| {
                let terms: f32 = (0..n).map(|i| {
                    let c = codes[r][i];
                    let hi = ((lut[(c >> 4) as usize] as i32).abs() + 128) * (qe[t][i] as i32).abs();
                    let lo = ((lut[(c & 15) as usize] as i32).abs() + 128) * (qo[t][i] as i32).abs();
                    wf[r][i / 16] * xs[t][i / 32] * 2.0 * (hi + lo) as f32
                }).sum();
                (nb as f32 + 6.0) * f32::EPSILON * terms + 1e-6
            };
            for k in simd_levels() {
                if let Some(got) = k.fourbit_q8_tile8(four(&codes), four(&wf), &lut, eight(&qe), eight(&qo), eight(&aqe), eight(&aqo), eight(&xs), true) {
                    for (r, row) in got.iter().enumerate() {
                        for (t, &g) in row.iter().enumerate() {
                            prop_assert!((g - want(r, t)).abs() <= tol(r, t), "{} {kind:?} tile8 r={r} t={t}: {} vs {}", k.label(), g, want(r, t));
                        }
                    }
                }
                let mut tiles = Vec::new();
                for g in 0..2 {
                    let Some(got) = k.fourbit_q8_tile(four(&codes), four(&wf), &lut, first4(&qe, g), first4(&qo, g), first4(&xs, g), first4(&qsum16, g), true) else { break };
                    for (r, row) in got.iter().enumerate() {
                        for (t, &v) in row.iter().enumerate() {
                            let tt = 4 * g + t;
                            prop_assert!((v - want(r, tt)).abs() <= tol(r, tt), "{} {kind:?} tile r={r} t={tt}: {} vs {}", k.label(), v, want(r, tt));
                        }
                    }
                    tiles.push(got);
                }
                let stride = n.next_multiple_of(64) + 64;
                let flat = |v: &[Vec<i8>]| -> Vec<i8> {
                    let mut out = vec![0i8; tokens * stride];
                    for (t, x) in v.iter().enumerate() {
                        out[t * stride..t * stride + x.len()].copy_from_slice(x);
                    }
                    out
                };
                let mut out = vec![f32::NAN; 4 * tokens];
                let ran = k.fourbit_q8_tile_run(four(&codes), four(&wf), &lut, &flat(&qe), &flat(&qo), stride, &xs.concat(), &qsum16.concat(), tokens, &mut out, true);
                if ran.is_some() {
                    prop_assert_eq!(tiles.len(), 2, "{} has the split run but not the split tile", k.label());
                    for t in 0..tokens {
                        for r in 0..4 {
                            prop_assert_eq!(out[4 * t + r].to_bits(), tiles[t / 4][r][t % 4].to_bits(), "{} {:?} run r={} t={}", k.label(), kind, r, t);
                        }
                    }
                }
            }
        }
    }

    /// Activation quantization for the integer route is bit-identical on every ISA, for block
    /// sizes 64 (the SIMD case) and others, whole and partial last blocks.
    #[test]
    fn quantize_q8_is_bit_identical(
        x in prop::collection::vec(prop_oneof![8 => -4.0f32..4.0, 1 => Just(0.0f32), 1 => -1e-38f32..1e-38, 1 => -3e38f32..3e38], 0usize..400),
        bs_pow in 1u32..8,
    ) {
        let bs = 1usize << bs_pow;
        let (half, nb) = (x.len().div_ceil(2), x.len().div_ceil(bs));
        let run = |f: &QuantizeFn| {
            let (mut qe, mut qo, mut xs, mut sum) = (vec![0i8; half], vec![0i8; half], vec![0f32; nb], vec![0i32; nb]);
            f(&mut qe, &mut qo, &mut xs, &mut sum);
            (qe, qo, xs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), sum)
        };
        let want = run(&|qe, qo, xs, sum| scalar::quantize_q8(&x, bs, qe, qo, xs, sum));
        // The oracle itself: q = round(x · 127 / absmax) per block, sums of those.
        for (b, block) in x.chunks(bs).enumerate() {
            let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut s = 0;
            for (j, &v) in block.iter().enumerate() {
                let q = if am > 0.0 && (127.0 / am).is_finite() { (v * (127.0 / am)).round_ties_even() as i32 } else { 0 };
                let i = (b * bs + j) / 2;
                prop_assert_eq!(q, if j % 2 == 0 { want.0[i] } else { want.1[i] } as i32);
                s += q;
            }
            prop_assert_eq!(s, want.3[b]);
        }
        for k in simd_levels() {
            let got = run(&|qe, qo, xs, sum| k.quantize_q8(&x, bs, qe, qo, xs, sum));
            prop_assert_eq!(&got, &want, "{}", k.label());
        }
        // Whole blocks of 64, the case the SIMD code takes.
        let x64: Vec<f32> = x.iter().copied().cycle().take(x.len().next_multiple_of(64).max(64)).collect();
        let (half, nb) = (x64.len() / 2, x64.len() / 64);
        let run = |f: &QuantizeFn| {
            let (mut qe, mut qo, mut xs, mut sum) = (vec![0i8; half], vec![0i8; half], vec![0f32; nb], vec![0i32; nb]);
            f(&mut qe, &mut qo, &mut xs, &mut sum);
            (qe, qo, xs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), sum)
        };
        let want = run(&|qe, qo, xs, sum| scalar::quantize_q8(&x64, 64, qe, qo, xs, sum));
        for k in simd_levels() {
            let got = run(&|qe, qo, xs, sum| k.quantize_q8(&x64, 64, qe, qo, xs, sum));
            prop_assert_eq!(&got, &want, "{} (blocks of 64)", k.label());
        }
    }

    /// Block int8's activation quantization (codes in order) is bit-identical on every ISA,
    /// for blocks of 32 and 64 (the SIMD cases, whole blocks) and other sizes and lengths.
    #[test]
    fn quantize_q8_plain_is_bit_identical(
        x in prop::collection::vec(prop_oneof![8 => -4.0f32..4.0, 1 => Just(0.0f32), 1 => -1e-38f32..1e-38, 1 => -3e38f32..3e38, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY)], 0usize..300),
        bs in prop_oneof![Just(32usize), Just(64), Just(16), Just(48)],
        whole in any::<bool>(),
    ) {
        let x: Vec<f32> = if whole { x.iter().copied().cycle().take(x.len().next_multiple_of(bs)).collect() } else { x };
        let nb = x.len().div_ceil(bs);
        let run = |f: &dyn Fn(&mut [i8], &mut [f32])| {
            let (mut q, mut d) = (vec![0i8; x.len()], vec![0f32; nb]);
            f(&mut q, &mut d);
            (q, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let want = run(&|q, d| lowbit_kernels::q8::quantize_activations(&x, bs, q, d));
        // The same codes as the 4-bit route's quantizer (which de-interleaves them).
        let (mut qe, mut qo) = (vec![0i8; x.len().div_ceil(2)], vec![0i8; x.len().div_ceil(2)]);
        scalar::quantize_q8(&x, bs, &mut qe, &mut qo, &mut vec![0f32; nb], &mut vec![0i32; nb]);
        for (i, &q) in want.0.iter().enumerate() {
            prop_assert_eq!(q, if i % 2 == 0 { qe[i / 2] } else { qo[i / 2] });
        }
        for k in simd_levels() {
            let got = run(&|q, d| k.quantize_q8_plain(&x, bs, q, d));
            prop_assert_eq!(&got, &want, "{}", k.label());
        }
    }

    /// Block int5's unpacking gives the scalar code's integers on every ISA, for any bytes and
    /// any number of blocks (odd counts leave AVX-512 a block for its AVX2 step).
    #[test]
    fn unpack_q5_matches_scalar(bytes in prop::collection::vec(any::<u8>(), 0..40 * 20)) {
        let blocks = bytes.len() / 20;
        let (qs, qh) = bytes[..blocks * 20].split_at(blocks * 16);
        let mut want = vec![0i8; blocks * 32];
        lowbit_kernels::q5::unpack(qs, qh, &mut want);
        for (b, ints) in want.chunks(32).enumerate() {
            let bits = u32::from_le_bytes(qh[4 * b..4 * b + 4].try_into().unwrap());
            for (j, &v) in ints.iter().enumerate() {
                let nib = if j < 16 { qs[16 * b + j] & 15 } else { qs[16 * b + j - 16] >> 4 };
                prop_assert_eq!(v as i32, (nib as i32 | (((bits >> j) & 1) as i32) << 4) - 16);
            }
        }
        for k in simd_levels() {
            let mut got = vec![0i8; blocks * 32];
            k.unpack_q5(qs, qh, &mut got);
            prop_assert_eq!(&got, &want, "{}", k.label());
        }
    }

    /// Sixteen block int5 rows unpacked in registers give, for one token, the bits block
    /// int8's sixteen-row kernel gives the unpacked rows, for odd and even block counts and
    /// any bytes (levels without the kernel have nothing to check).
    #[test]
    fn q5_rows16_is_q8_rows16_of_the_integers(nb in 1usize..12, pad in 0usize..2, seed in any::<u64>()) {
        let cols = 32 * (nb + pad);
        let mut rng = seed;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as u32
        };
        let qs: Vec<u8> = (0..16 * cols / 2).map(|_| next() as u8).collect();
        let qh: Vec<u8> = (0..16 * cols / 8).map(|_| next() as u8).collect();
        let scale: Vec<f16> = (0..16 * nb).map(|_| f16::from_f32((next() % 2001) as f32 / 1000.0 - 1.0)).collect();
        let x: Vec<i8> = (0..32 * nb).map(|_| next() as i8).collect();
        let d: Vec<f32> = (0..nb).map(|_| (next() % 1000 + 1) as f32 / 1e5).collect();
        let sums: Vec<i32> = (0..nb).map(|b| x[32 * b..32 * (b + 1)].iter().map(|&v| v as i32).sum()).collect();
        let mut w = vec![0i8; 16 * cols];
        lowbit_kernels::q5::unpack(&qs, &qh, &mut w);
        for k in simd_levels() {
            let Some(got) = k.q5_rows16(&qs, &qh, cols, &scale, &x, &d, &sums) else { continue };
            let want = k.q8_rows16(&w, cols, 32, &scale, &x, &d, &sums).expect("the level has both");
            for r in 0..16 {
                prop_assert_eq!(got[r].to_bits(), want[r].to_bits(), "{} nb={} row {}", k.label(), nb, r);
            }
        }
    }

    /// Double-quant block factors are bit-identical on every ISA (they feed every row's dot).
    #[test]
    fn nested_factors_are_bit_identical(
        codes in prop::collection::vec(any::<u8>(), 0..70),
        na in 1e-6f32..10.0,
        offset in -1.0f32..1.0,
        seed in any::<u64>(),
    ) {
        let mut rng = seed;
        let xs: Vec<f32> = codes.iter().map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1); (rng >> 40) as f32 / 1.3e9 }).collect();
        let map = lowbit_kernels::codebook::dynamic_map();
        let mut want = vec![0f32; codes.len()];
        scalar::nested_factors(&codes, map, na, offset, &xs, &mut want);
        for (i, &c) in codes.iter().enumerate() {
            prop_assert_eq!(want[i].to_bits(), (lowbit_kernels::fourbit::nested_scale(c, na, offset) * xs[i]).to_bits());
        }
        for k in simd_levels() {
            let mut got = vec![0f32; codes.len()];
            k.nested_factors(&codes, map, na, offset, &xs, &mut got);
            prop_assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{}", k.label());
        }
    }

    /// The public matmul on every ISA against an f64 product of the dequantized weights, for
    /// every scheme, with shapes that include one row, one column and widths that are not a
    /// multiple of the block.
    #[test]
    fn matmul_every_scheme_every_isa(
        rows in 1usize..40,
        cols in prop_oneof![1usize..10, 60usize..70, Just(128usize), Just(192usize), 250usize..260],
        m in prop_oneof![3 => Just(1usize), 3 => 2usize..6, 1 => 64usize..67],
        seed in any::<u64>(),
    ) {
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 33) as u32 % 20001) as f32 / 10000.0 - 1.0 };
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let mut x: Vec<f32> = (0..m * cols).map(|_| next() * 3.0).collect();
        if cols > 2 { x[1] = 7.5; } // an outlier column for int8
        // Rounding slack of the integer routes, from first principles: with the activation
        // rounded to a step s_x and the weight to a step s_w, each term is off by at most
        // |w|·s_x/2 + |x|·s_w/2 + s_x·s_w/4 (plus float16 rounding of activations for int8).
        // `fourbit_q8`: the 4-bit integer route ran (decode, or prefill where the ISA has its tile).
        let slack = |t: usize, r: usize, deq: &[f32], int8: bool, fourbit_q8: bool| -> f64 {
            let xr = &x[t * cols..(t + 1) * cols];
            let wr = &deq[r * cols..(r + 1) * cols];
            let mut e = 0f64;
            if int8 {
                let sx = xr.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                for (w, xv) in wr.iter().zip(xr) {
                    e += w.abs() as f64 * (sx / 2.0 + xv.abs() as f64 / 1024.0);
                }
            }
            if fourbit_q8 && cols % 64 == 0 {
                for (wb, xb) in wr.chunks(64).zip(xr.chunks(64)) {
                    let sx = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                    let sw = wb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                    for (w, xv) in wb.iter().zip(xb) {
                        e += w.abs() as f64 * sx / 2.0 + xv.abs() as f64 * sw / 2.0 + sx * sw / 4.0;
                    }
                }
            }
            e * 1.001
        };
        let check_with = |weight: &Weight, deq: &[f32], rel: f32, fourbit_exact: bool| -> Result<(), TestCaseError> {
            let int8 = matches!(weight, Weight::Int8(_));
            let q8 = matches!(weight, Weight::FourBit(_)) && !fourbit_exact;
            let split = matches!(weight, Weight::FourBit(w) if w.blocksize == 32);
            for k in simd_levels() {
                let q8 = q8 && (m == 1 || k.has_fourbit_q8_tile(split));
                let mut out = vec![0f32; m * rows];
                matmul_with(&k, &mut out, weight, &x, m, &MatmulOptions { int8_threshold: 0.0, fourbit_exact }).unwrap();
                for t in 0..m {
                    for r in 0..rows {
                        let (mut want, mut mag) = (0f64, 0f64);
                        for c in 0..cols {
                            let p = deq[r * cols + c] as f64 * x[t * cols + c] as f64;
                            want += p;
                            mag += p.abs();
                        }
                        let got = out[t * rows + r] as f64;
                        let allowed = rel as f64 * mag + 1e-5 + slack(t, r, deq, int8, q8);
                        prop_assert!((got - want).abs() <= allowed, "{} {:?} t={t} r={r}: {got} vs {want}", k.label(), std::mem::discriminant(weight));
                    }
                }
            }
            Ok(())
        };
        let check = |weight: &Weight, deq: &[f32], rel: f32| check_with(weight, deq, rel, true);
        check(&Weight::F32 { rows, cols, data: &w }, &w, 1e-5)?;
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let d16: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        check(&Weight::F16 { rows, cols, data: &w16 }, &d16, 1e-5)?;
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let db: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        check(&Weight::Bf16 { rows, cols, data: &wb }, &db, 1e-5)?;
        // Blocks of 64, and of 32 (two to each 64-weight step of the SIMD kernels).
        for (kind, blocksize) in [(FourBitKind::Nf4, 64), (FourBitKind::Fp4, 64), (FourBitKind::Nf4, 32)] {
            for double_quant in [false, true] {
                let q = quantize_4bit(&w, &FourBitOptions { kind, double_quant, blocksize, ..Default::default() }).unwrap();
                let mut deq = vec![0f32; w.len()];
                q.dequantize(&mut deq).unwrap();
                let absmax = match &q.absmax {
                    lowbit_kernels::Absmax::F32(v) => AbsmaxRef::F32(v),
                    lowbit_kernels::Absmax::Nested { codes, nested_absmax, nested_blocksize, offset } => {
                        AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize: *nested_blocksize, offset: *offset }
                    }
                };
                let weight = Weight::FourBit(FourBitRef { kind, rows, cols, blocksize, codes: &q.codes, absmax });
                // The view dequantizes to exactly what the owned tensor does.
                let mut row = vec![0f32; cols];
                weight.dequantize_row(rows - 1, &mut row);
                prop_assert_eq!(&row[..], &deq[(rows - 1) * cols..]);
                check(&weight, &deq, 1e-5)?;
                // The integer route: activations per block and levels to int8 (slack above).
                check_with(&weight, &deq, 1e-5, false)?;
            }
        }
        // int8 with the outlier threshold off: an integer product of quantized activations, so
        // compare against the dequantized product with the activation rounding allowed (slack).
        let q8 = quantize_int8(&w, rows, cols).unwrap();
        let mut deq8 = vec![0f32; w.len()];
        q8.dequantize(&mut deq8).unwrap();
        check(&Weight::Int8(Int8Ref { rows, cols, cb: &q8.cb, scb: &q8.scb }), &deq8, 1e-5)?;
    }

    /// The four-token one-row kernel (decode batches over rows too wide for the four-row
    /// kernels) gives each token the bits of the one-token kernel, for blocks of 64 (an odd
    /// last block and whole iterations of eight) and larger blocks (odd multiples of 32 bytes).
    #[test]
    fn four_token_row_matches_one_token_row(
        nb in 1usize..20, half in prop_oneof![3 => Just(32usize), 1 => Just(64usize), 1 => Just(96usize)], seed in any::<u64>(),
    ) {
        let n = nb * half;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 33) as u32 };
        let codes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        let mut q = || -> Vec<i8> { (0..n).map(|_| ((next() % 256) as i32 - 128).max(-127) as i8).collect() };
        let (qe, qo): (Vec<Vec<i8>>, Vec<Vec<i8>>) = ((0..4).map(|_| q()).collect(), (0..4).map(|_| q()).collect());
        let qsum: Vec<Vec<i32>> = (0..4)
            .map(|t| (0..nb).map(|b| (b * half..(b + 1) * half).map(|i| qe[t][i] as i32 + qo[t][i] as i32).sum()).collect())
            .collect();
        let factors: Vec<Vec<f32>> = (0..4).map(|_| (0..nb).map(|_| (next() % 1000) as f32 / 9.7e5).collect()).collect();
        let lut = FourBitKind::Nf4.int8_levels();
        let fr: [&[f32]; 4] = std::array::from_fn(|t| &factors[t][..]);
        let (er, or): ([&[i8]; 4], [&[i8]; 4]) = (std::array::from_fn(|t| &qe[t][..]), std::array::from_fn(|t| &qo[t][..]));
        let sr: [&[i32]; 4] = std::array::from_fn(|t| &qsum[t][..]);
        // The scalar twin is the scalar one-token kernel per token.
        let twin = scalar::dot_fourbit_q8_t4(&codes, fr, &lut, er, or, sr, half);
        for t in 0..4 {
            prop_assert_eq!(twin[t].to_bits(), scalar::dot_fourbit_q8(&codes, fr[t], &lut, er[t], or[t], sr[t], half).to_bits());
        }
        let mut ran = false;
        for k in simd_levels() {
            let Some(v) = k.dot_fourbit_q8_t4(&codes, fr, &lut, er, or, sr, half) else { continue };
            ran = true;
            for t in 0..4 {
                let one = k.dot_fourbit_q8(&codes, &factors[t], &lut, &qe[t], &qo[t], &qsum[t], half);
                prop_assert_eq!(v[t].to_bits(), one.to_bits(), "{} token {}", k.label(), t);
            }
        }
        // Where a level has the kernel, it ran.
        prop_assert!(ran || !simd_levels().iter().any(|k| k.isa() == Isa::Avx512));
    }

    /// Where a level's 4-bit prefill runs decode's eight-token rows kernel (AVX2: it has that
    /// kernel and no tile run), every prompt token gets the bits decode gives it alone, in
    /// groups of eight and in a short last group (padded tokens), for one weight and for q/k/v
    /// sharing the activations.
    #[test]
    fn fourbit_prefill_on_the_rows_kernel_is_decode(
        rows in 1usize..70, nb in 1usize..12, m in prop_oneof![Just(8usize), 9usize..30], seed in any::<u64>(),
    ) {
        let cols = nb * 64;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 33) as u32 % 20001) as f32 / 10000.0 - 1.0 };
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let x: Vec<f32> = (0..m * cols).map(|_| next() * 3.0).collect();
        let q = quantize_4bit(&w, &FourBitOptions { double_quant: true, ..Default::default() }).unwrap();
        let lowbit_kernels::Absmax::Nested { codes, nested_absmax, nested_blocksize, offset } = &q.absmax else { unreachable!() };
        let absmax = AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize: *nested_blocksize, offset: *offset };
        let weight = Weight::FourBit(FourBitRef { kind: FourBitKind::Nf4, rows, cols, blocksize: 64, codes: &q.codes, absmax });
        let opts = MatmulOptions::default();
        for k in simd_levels() {
            if !(k.has_rows_t8() && k.x4_for(cols) && !k.has_fourbit_q8_tile_run(nb, false)) {
                continue;
            }
            let mut out = vec![0f32; m * rows];
            matmul_with(&k, &mut out, &weight, &x, m, &opts).unwrap();
            let mut joint = vec![0f32; 2 * m * rows];
            lowbit_kernels::matmul_many_with(&k, &mut joint, &[&weight, &weight], &x, m, &opts).unwrap();
            for t in 0..m {
                let mut alone = vec![0f32; rows];
                matmul_with(&k, &mut alone, &weight, &x[t * cols..(t + 1) * cols], 1, &opts).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&out[t * rows..(t + 1) * rows]), bits(&alone), "{} token {}", k.label(), t);
                prop_assert_eq!(bits(&joint[m * rows + t * rows..m * rows + (t + 1) * rows]), bits(&alone), "{} joint token {}", k.label(), t);
            }
        }
    }

    /// Block int5 on every level gives the bits of the block int8 weight with its integers and
    /// scales: prefill's matmul (row kernels below 16 tokens, a matrix unit's panels or f32 gemm
    /// from 16) and decode's rows, alone and beside a block int8 weight in one call, for row
    /// counts in sixteens and not (a task's rows are unpacked in tiles of 16 on a matrix unit).
    #[test]
    fn q5_gives_the_bits_of_q8_with_its_integers(
        rows in prop_oneof![2 => 1usize..12, 1 => Just(16usize), 1 => Just(48usize), 1 => Just(40usize), 1 => Just(176usize)],
        nb in 1usize..8,
        m in prop_oneof![2 => Just(1usize), 1 => 2usize..5, 1 => Just(8usize), 1 => Just(33usize)], seed in any::<u64>(),
    ) {
        let cols = nb * 32;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 33) as u32 % 20001) as f32 / 10000.0 - 1.0 };
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let x: Vec<f32> = (0..m * cols).map(|_| next() * 3.0).collect();
        let t = lowbit_kernels::q5::quantize(&w, rows, cols, None).unwrap();
        let q5 = Weight::Q5(Q5Ref { rows, cols, qs: &t.qs, qh: &t.qh, scales: &t.scales });
        q5.validate().unwrap();
        let mut ints = vec![0i8; rows * cols];
        lowbit_kernels::q5::unpack(&t.qs, &t.qh, &mut ints);
        let q8 = Weight::Q8(Q8Ref { rows, cols, blocksize: 32, qs: &ints, scales: &t.scales });
        let mut deq = vec![0f32; cols];
        q5.dequantize_row(rows - 1, &mut deq);
        for (c, v) in deq.iter().enumerate() {
            prop_assert_eq!(v.to_bits(), (ints[(rows - 1) * cols + c] as f32 * t.scales[(rows - 1) * nb + c / 32].to_f32()).to_bits());
        }
        let opts = MatmulOptions::default();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for k in simd_levels() {
            for rows_route in [false, true] {
                let run = |w: &Weight, out: &mut [f32]| if rows_route {
                    lowbit_kernels::matmul_rows_with(&k, out, w, &x, m, &opts).unwrap()
                } else {
                    matmul_with(&k, out, w, &x, m, &opts).unwrap()
                };
                let (mut got, mut want) = (vec![0f32; m * rows], vec![0f32; m * rows]);
                run(&q5, &mut got);
                run(&q8, &mut want);
                prop_assert_eq!(bits(&got), bits(&want), "{} rows route {}", k.label(), rows_route);
            }
            let (mut got, mut want) = (vec![0f32; 2 * m * rows], vec![0f32; 2 * m * rows]);
            lowbit_kernels::matmul_rows_many_with(&k, &mut got, &[&q5, &q8], &x, m, &opts).unwrap();
            lowbit_kernels::matmul_rows_many_with(&k, &mut want, &[&q8, &q8], &x, m, &opts).unwrap();
            prop_assert_eq!(bits(&got), bits(&want), "{} beside q8", k.label());
        }
    }

    /// Block int8 on every level: the product (prefill's matmul and decode's rows) against an
    /// f64 product of the dequantized weights within the activation rounding, every token's
    /// decode row bit-identical to that token alone (batch invariance), the four-row kernel
    /// bit-identical to the one-row kernel, and the one-row kernel within the dot tolerance of
    /// the scalar one.
    #[test]
    fn q8_every_isa(
        rows in prop_oneof![3 => 1usize..12, 1 => Just(16usize), 1 => Just(48usize)], nb in 1usize..12,
        bs in prop_oneof![Just(32usize), Just(64usize)],
        m in prop_oneof![2 => Just(1usize), 1 => 2usize..5, 1 => Just(33usize)], seed in any::<u64>(),
    ) {
        let cols = nb * bs;
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 33) as u32 % 20001) as f32 / 10000.0 - 1.0 };
        let mut w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        w[0] = 9.0; // one large weight coarsens only its own block
        let x: Vec<f32> = (0..m * cols).map(|_| next() * 3.0).collect();
        let t = lowbit_kernels::q8::quantize(&w, rows, cols, bs).unwrap();
        let weight = Weight::Q8(Q8Ref { rows, cols, blocksize: bs, qs: &t.qs, scales: &t.scales });
        weight.validate().unwrap();
        let mut deq = vec![0f32; rows * cols];
        for (r, row) in deq.chunks_mut(cols).enumerate() {
            weight.dequantize_row(r, row);
        }
        for k in simd_levels() {
            let (mut out, mut rows_out) = (vec![0f32; m * rows], vec![0f32; m * rows]);
            matmul_with(&k, &mut out, &weight, &x, m, &MatmulOptions::default()).unwrap();
            lowbit_kernels::matmul_rows_with(&k, &mut rows_out, &weight, &x, m, &MatmulOptions::default()).unwrap();
            for tk in 0..m {
                let xt = &x[tk * cols..(tk + 1) * cols];
                let mut alone = vec![0f32; rows];
                matmul_with(&k, &mut alone, &weight, xt, 1, &MatmulOptions::default()).unwrap();
                prop_assert_eq!(&alone[..], &rows_out[tk * rows..(tk + 1) * rows], "{} token {} alone", k.label(), tk);
                for (r, &dec) in rows_out[tk * rows..(tk + 1) * rows].iter().enumerate() {
                    let (mut want, mut mag, mut slack) = (0f64, 0f64, 0f64);
                    for (wb, xb) in deq[r * cols..(r + 1) * cols].chunks(bs).zip(xt.chunks(bs)) {
                        let sx = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                        for (&wv, &xv) in wb.iter().zip(xb) {
                            let p = wv as f64 * xv as f64;
                            want += p;
                            mag += p.abs();
                            slack += wv.abs() as f64 * sx / 2.0;
                        }
                    }
                    for (what, got) in [("matmul", out[tk * rows + r] as f64), ("rows", dec as f64)] {
                        prop_assert!((got - want).abs() <= 1e-5 * mag + 1e-5 + slack * 1.001, "{} {what} t={tk} r={r}: {got} vs {want}", k.label());
                    }
                }
            }
            // The row kernels directly.
            let (mut q, mut d) = (vec![0i8; cols], vec![0f32; nb]);
            lowbit_kernels::q8::quantize_activations(&x[..cols], bs, &mut q, &mut d);
            let row = |r: usize| (&t.qs[r * cols..(r + 1) * cols], &t.scales[r * nb..(r + 1) * nb]);
            for r in 0..rows {
                let (wr, sr) = row(r);
                let want = scalar::dot_q8(wr, sr, &q, &d, bs);
                let got = k.dot_q8(wr, sr, &q, &d, bs);
                let mag: f32 = wr.iter().zip(&q).map(|(&a, &b)| (a as f32 * b as f32).abs()).sum::<f32>() * sr.iter().zip(&d).map(|(s, d)| s.to_f32() * d).fold(0f32, f32::max);
                prop_assert!(close(got, want, mag), "{} row {r}: {got} vs {want}", k.label());
            }
            if rows >= 4 {
                let (wr, sr): (Vec<_>, Vec<_>) = (0..4).map(row).unzip();
                if let Some(v) = k.dot_q8_x4([wr[0], wr[1], wr[2], wr[3]], [sr[0], sr[1], sr[2], sr[3]], &q, &d, bs) {
                    for r in 0..4 {
                        prop_assert_eq!(v[r].to_bits(), k.dot_q8(wr[r], sr[r], &q, &d, bs).to_bits(), "{} x4 row {}", k.label(), r);
                    }
                }
                if m >= 4 {
                    // Four tokens a call: each (row, token) the one-token kernel's bits.
                    let (mut qs, mut ds) = (vec![vec![0i8; cols]; 4], vec![vec![0f32; nb]; 4]);
                    for tk in 0..4 {
                        lowbit_kernels::q8::quantize_activations(&x[tk * cols..(tk + 1) * cols], bs, &mut qs[tk], &mut ds[tk]);
                    }
                    let (w4, s4) = ([wr[0], wr[1], wr[2], wr[3]], [sr[0], sr[1], sr[2], sr[3]]);
                    let q4: [&[i8]; 4] = std::array::from_fn(|tk| &qs[tk][..]);
                    let d4: [&[f32]; 4] = std::array::from_fn(|tk| &ds[tk][..]);
                    if let Some(v) = k.dot_q8_x4t4(w4, s4, q4, d4, bs) {
                        for tk in 0..4 {
                            let one = k.dot_q8_x4(w4, s4, &qs[tk], &ds[tk], bs).expect("a level with x4t4 has x4");
                            for r in 0..4 {
                                prop_assert_eq!(v[tk][r].to_bits(), one[r].to_bits(), "{} x4t4 row {} token {}", k.label(), r, tk);
                            }
                        }
                    }
                }
            }
            let mut all = vec![f32::NAN; rows];
            if k.dot_q8_rows(&t.qs[..rows * cols], &t.scales[..rows * nb], &q, &d, bs, &mut all) {
                for (r, v) in all.iter().enumerate() {
                    let (wr, sr) = row(r);
                    prop_assert_eq!(v.to_bits(), k.dot_q8(wr, sr, &q, &d, bs).to_bits(), "{} rows call, row {}", k.label(), r);
                }
            }
        }
    }

    /// Quantize → dequantize error is bounded by half the widest gap between neighbouring
    /// levels, times the block's absmax (plus the double-quant error of the scale).
    #[test]
    fn roundtrip_error_fourbit(x in vecf(1usize..600), bs_pow in 5u32..9, dq in any::<bool>()) {
        let bs = 1usize << bs_pow;
        for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
            let mut sorted = *kind.levels();
            sorted.sort_by(f32::total_cmp);
            let gap = sorted.windows(2).map(|p| p[1] - p[0]).fold(0f32, f32::max);
            let q = quantize_4bit(&x, &FourBitOptions { kind, blocksize: bs, double_quant: dq, ..Default::default() }).unwrap();
            let mut out = vec![0f32; x.len()];
            q.dequantize(&mut out).unwrap();
            let global = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (b, (xb, ob)) in x.chunks(bs).zip(out.chunks(bs)).enumerate() {
                let am = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Double quant perturbs each scale by at most half a dynamic-map step of the
                // nested absmax (≤ global absmax); allow 1% of it.
                let scale_err = if dq { 0.01 * global } else { 0.0 };
                for (i, (&a, &o)) in xb.iter().zip(ob).enumerate() {
                    let bound = (gap / 2.0) * am * 1.0001 + scale_err + 1e-6;
                    prop_assert!((a - o).abs() <= bound, "{kind:?} block {b} elem {i}: {a} -> {o} (bound {bound})");
                }
            }
        }
    }

    #[test]
    fn roundtrip_error_int8(rows in 1usize..8, cols in 1usize..300, seed in any::<u64>()) {
        let mut rng = seed;
        let w: Vec<f32> = (0..rows * cols).map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1); ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10.0 }).collect();
        let q = quantize_int8(&w, rows, cols).unwrap();
        let mut d = vec![0f32; w.len()];
        q.dequantize(&mut d).unwrap();
        for r in 0..rows {
            let am = q.scb[r];
            for c in 0..cols {
                let i = r * cols + c;
                // half a step of 1/127 of the absmax, plus float16 rounding of the weight
                prop_assert!((w[i] - d[i]).abs() <= am / 254.0 * 1.001 + w[i].abs() / 1024.0 + 1e-6);
            }
        }
    }
}

#[test]
fn codes_of_a_view_read_back() {
    let x: Vec<f32> = (0..130).map(|i| (i as f32 - 65.0) / 10.0).collect();
    let q = quantize_4bit(&x, &FourBitOptions { double_quant: false, ..Default::default() }).unwrap();
    // code_at walks nibbles in storage order; decoding through it equals dequantize().
    let mut out = vec![0f32; 130];
    q.dequantize(&mut out).unwrap();
    for (i, &o) in out.iter().enumerate() {
        assert_eq!(o, FourBitKind::Nf4.levels()[code_at(&q.codes, i) as usize] * q.absmax.get(i / 64));
    }
}

#[test]
fn non_finite_and_huge_values() {
    assert!(quantize_int8(&[1.0, f32::INFINITY], 1, 2).is_err());
    // 1e5 overflows float16, which int8 quantization goes through: rejected, not wrapped.
    assert!(quantize_int8(&[1.0, 1e5], 1, 2).is_err());
    let q = quantize_4bit(&[3e38, -3e38, 1.0, 0.0], &FourBitOptions::default()).unwrap();
    let mut out = [0f32; 4];
    q.dequantize(&mut out).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    assert_eq!(out[0], 3e38);
}

#[test]
fn matmul_rejects_bad_shapes() {
    let w = [1f32; 6];
    let weight = Weight::F32 { rows: 2, cols: 3, data: &w };
    let k = Kernels::for_isa(Isa::Scalar).unwrap();
    let mut out = [0f32; 2];
    assert!(matmul_with(&k, &mut out, &weight, &[1.0; 2], 1, &MatmulOptions::default()).is_err());
    let mut out3 = [0f32; 3];
    assert!(matmul_with(&k, &mut out3, &weight, &[1.0; 3], 1, &MatmulOptions::default()).is_err());
    let bad = Weight::F32 { rows: 2, cols: 3, data: &w[..5] };
    assert!(matmul_with(&k, &mut out, &bad, &[1.0; 3], 1, &MatmulOptions::default()).is_err());
}

/// NaN and ±∞ among the activations quantize the same way on every level (NaN skipped by the
/// block maximum and quantized to 0; an infinite maximum gives a zero scale).
#[test]
fn quantize_q8_non_finite_is_bit_identical() {
    for special in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [0usize, 5, 63] {
            let mut x: Vec<f32> = (0..128).map(|i| (i as f32 - 40.0) * 0.37).collect();
            x[at] = special;
            let run = |f: &QuantizeFn| {
                let (mut qe, mut qo, mut xs, mut sum) = (vec![0i8; 64], vec![0i8; 64], vec![0f32; 2], vec![0i32; 2]);
                f(&mut qe, &mut qo, &mut xs, &mut sum);
                (qe, qo, xs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), sum)
            };
            let want = run(&|qe, qo, xs, sum| scalar::quantize_q8(&x, 64, qe, qo, xs, sum));
            for k in simd_levels() {
                let got = run(&|qe, qo, xs, sum| k.quantize_q8(&x, 64, qe, qo, xs, sum));
                assert_eq!(got, want, "{} {special} at {at}", k.label());
            }
        }
    }
}

#[test]
fn isa_env_names() {
    assert_eq!(Isa::from_name("AVX2").unwrap(), Isa::Avx2);
    assert!(Isa::from_name("sse9").is_err());
    assert!(Isa::all_supported().contains(&Isa::Scalar));
}

/// Regression inputs from `fuzz/dot_differential` (crash-abfd273c, crash-bc40a210): large
/// factors and saturated codes, where the SIMD sum differs from the scalar one by several ulps —
/// inside the float-accumulation bound of the biased VNNI lanes, outside the tighter bounds the
/// fuzz target first used.
#[test]
fn fourbit_q8_fuzz_regression() {
    for data in [
        &include_bytes!("data/fuzz/dot_differential-abfd273c")[..],
        &include_bytes!("data/fuzz/dot_differential-bc40a210")[..],
    ] {
        fourbit_q8_regression_case(data);
    }
}

fn fourbit_q8_regression_case(data: &[u8]) {
    let half = 16usize << (data[0] % 4);
    let body = &data[1..];
    let blocks = body.len() / (half * 3);
    let n = blocks * half;
    let codes = &body[..n];
    let factors: Vec<f32> = (0..blocks).map(|b| body[n + b] as f32 / 16.0).collect();
    let qe: Vec<i8> = body[n..2 * n].iter().map(|&b| (b as i8).max(-127)).collect();
    let qo: Vec<i8> = body[2 * n..3 * n].iter().map(|&b| (b as i8).max(-127)).collect();
    let qsum: Vec<i32> =
        (0..blocks).map(|b| (b * half..(b + 1) * half).map(|i| qe[i] as i32 + qo[i] as i32).sum()).collect();
    let lut = FourBitKind::Nf4.int8_levels();
    let want = scalar::dot_fourbit_q8(codes, &factors, &lut, &qe, &qo, &qsum, half);
    // The same bound as `fourbit_q8_dot_matches_scalar`: biased VNNI lane magnitudes.
    let terms: f32 = (0..n)
        .map(|i| {
            let hi = ((lut[(codes[i] >> 4) as usize] as i32).abs() + 128) * (qe[i] as i32).abs();
            let lo = ((lut[(codes[i] & 15) as usize] as i32).abs() + 128) * (qo[i] as i32).abs();
            factors[i / half].abs() * 2.0 * (hi + lo) as f32
        })
        .sum();
    for k in simd_levels() {
        let got = k.dot_fourbit_q8(codes, &factors, &lut, &qe, &qo, &qsum, half);
        let tol = (blocks as f32 + 5.0) * f32::EPSILON * terms + 1e-6;
        assert!((got - want).abs() <= tol, "{}: {got} vs {want} (tolerance {tol})", k.label());
    }
}

/// LLM.int8 prompts (outlier columns in float beside the int8 part) give the scalar level's bits
/// at every level: the int8 sums are exact wherever they are made — the vector tiles, or a
/// matrix unit's from sixteen tokens on — and the float steps after them are the same code.
#[test]
fn int8_prompts_have_the_scalar_bits_at_every_level() {
    let (rows, cols) = (48, 192);
    let mut rng = 5u64;
    let mut next = || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
    };
    let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
    let q = quantize_int8(&w, rows, cols).unwrap();
    let weight = Weight::Int8(Int8Ref { rows, cols, cb: &q.cb, scb: &q.scb });
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    for m in [3usize, 16, 23, 40] {
        // Columns 7 and 100 carry outliers (|x| ≥ 6) in some tokens.
        let x: Vec<f32> = (0..m * cols)
            .map(|i| if (i % cols == 7 || i % cols == 100) && (i / cols) % 3 == 0 { 9.5 } else { next() * 3.0 })
            .collect();
        let opts = MatmulOptions { int8_threshold: 6.0, ..Default::default() };
        let mut want = vec![0f32; m * rows];
        matmul_with(&scalar, &mut want, &weight, &x, m, &opts).unwrap();
        for k in simd_levels() {
            let mut got = vec![f32::NAN; m * rows];
            matmul_with(&k, &mut got, &weight, &x, m, &opts).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} with {m} tokens", k.label());
        }
    }
}

/// Says which kernel tables this CPU could not run, so a passing run on a machine without
/// AVX-512 (or AVX-VNNI) does not read as having checked them. Written straight to stderr,
/// which the test harness does not capture.
#[test]
fn report_levels_not_run() {
    use std::io::Write;
    let ran: Vec<&str> = simd_levels().iter().map(|k| k.label()).collect();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "kernel levels checked here: {}", ran.join(", "));
    for (label, needs) in Kernels::not_run() {
        assert!(!ran.contains(&label), "{label} both ran and was reported as not run");
        let _ = writeln!(err, "NOT RUN on this CPU: {label} kernels (needs {needs})");
    }
}
