//! Differential: every SIMD kernel this CPU has against the scalar oracle on arbitrary blocks —
//! integer dot products exactly, float ones within the summation-order bound; activation
//! quantization bit for bit.
#![no_main]
use lowbit_kernels::{scalar, FourBitKind, Isa, Kernels};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let half = 16usize << (data[0] % 4); // blocks of 32..256 elements
    let body = &data[1..];
    let blocks = body.len() / (half * 3);
    let n = blocks * half;
    let codes = &body[..n];
    let scales: Vec<f32> = (0..blocks).map(|b| body[n + b] as f32 / 16.0).collect();
    let xe: Vec<f32> = body[n..2 * n].iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
    let xo: Vec<f32> = body[2 * n..3 * n].iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
    let qe: Vec<i8> = body[n..2 * n].iter().map(|&b| (b as i8).max(-127)).collect();
    let qo: Vec<i8> = body[2 * n..3 * n].iter().map(|&b| (b as i8).max(-127)).collect();
    let qsum: Vec<i32> =
        (0..blocks).map(|b| (b * half..(b + 1) * half).map(|i| qe[i] as i32 + qo[i] as i32).sum()).collect();
    for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
        let levels = kind.levels();
        let want = scalar::dot_fourbit(codes, &scales, levels, &xe, &xo, half);
        let mag: f32 = (0..n).map(|i| scales[i / half] * (xe[i].abs() + xo[i].abs())).sum();
        let lut = kind.int8_levels();
        let want_q8 = scalar::dot_fourbit_q8(codes, &scales, &lut, &qe, &qo, &qsum, half);
        // Exact integer lane sums, then float accumulation across blocks and lanes: at most
        // blocks + 5 roundings, each ≤ ε·Σ|lane values|; the VNNI kernel's lanes carry the
        // +128 bias of its table and −128·Σq, i.e. up to (|level| + 128)·|q| per product, doubled
        // for the bias lane (this target found two tighter bounds too tight).
        let terms: f32 = (0..blocks)
            .map(|b| {
                let r = b * half..(b + 1) * half;
                let f = scales[b];
                r.map(|i| {
                    f.abs()
                        * 2.0
                        * (((lut[(codes[i] >> 4) as usize] as i32).abs() + 128) * (qe[i] as i32).abs()
                            + ((lut[(codes[i] & 15) as usize] as i32).abs() + 128) * (qo[i] as i32).abs())
                            as f32
                })
                .sum::<f32>()
            })
            .sum();
        let tol_q8 = (blocks as f32 + 5.0) * f32::EPSILON * terms + 1e-6;
        for k in Kernels::variants() {
            let got = k.dot_fourbit(codes, &scales, levels, &xe, &xo, half);
            assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{} fourbit {got} vs {want}", k.label());
            let got = k.dot_fourbit_q8(codes, &scales, &lut, &qe, &qo, &qsum, half);
            assert!((got - want_q8).abs() <= tol_q8, "{} fourbit_q8 {got} vs {want_q8}", k.label());
            assert_eq!(k.dot_int8(&qe, &qo), scalar::dot_int8(&qe, &qo), "{} int8", k.label());
        }
    }
    // Activation quantization for the integer route: bit-identical on every ISA, in blocks of 64
    // (the SIMD case) and of the fuzzed size, over the body read as floats.
    let x: Vec<f32> =
        body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).filter(|v| v.is_finite()).collect();
    for bs in [64, 2 * half] {
        let (h, nb) = (x.len().div_ceil(2), x.len().div_ceil(bs));
        let run = |k: &Kernels| {
            let (mut qe, mut qo, mut xs, mut sum) = (vec![0i8; h], vec![0i8; h], vec![0f32; nb], vec![0i32; nb]);
            k.quantize_q8(&x, bs, &mut qe, &mut qo, &mut xs, &mut sum);
            (qe, qo, xs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), sum)
        };
        let want = run(&Kernels::for_isa(Isa::Scalar).expect("scalar"));
        for k in Kernels::variants() {
            assert!(run(&k) == want, "{} quantize_q8 (blocks of {bs})", k.label());
        }
    }
});
