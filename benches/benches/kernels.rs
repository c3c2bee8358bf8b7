//! Criterion benches of every kernel on every ISA this CPU has: dot products per row (bench id
//! `"{kernel}/{isa}/{k}"`, throughput in weight bytes) and matvec/matmul at Mistral-7B shapes on
//! 1 and 2 threads (`"{scheme}/{rows}x{cols}/{threads}t/m/{m}"`).
//! `kernel-report` prints the same figures as ratios to a bandwidth probe and to f32 gemm.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lowbit_benches::{random_weights, Stored};
use lowbit_kernels::{matmul, matmul_with, Kernels, MatmulOptions};

fn matvec_by_isa(c: &mut Criterion) {
    let (rows, cols) = (1024, 4096);
    let w = random_weights(rows * cols, 1);
    let x = random_weights(cols, 2);
    let opts = MatmulOptions::default();
    for scheme in ["nf4", "int8", "f16", "bf16", "f32"] {
        let s = Stored::new(scheme, &w, rows, cols);
        let view = s.view(rows, cols);
        let mut g = c.benchmark_group(format!("matvec_{scheme}"));
        g.throughput(Throughput::Bytes(view.byte_len() as u64));
        // Every variant, so the plain AVX-512 path (VNNI CPUs without VBMI) is measured too.
        for k in Kernels::variants() {
            let mut out = vec![0f32; rows];
            g.bench_with_input(BenchmarkId::new(k.label(), cols), &(), |b, _| {
                b.iter(|| matmul_with(&k, &mut out, &view, &x, 1, &opts).expect("matvec"))
            });
        }
        g.finish();
    }
}

fn mistral_shapes(c: &mut Criterion) {
    let opts = MatmulOptions::default();
    for (rows, cols) in [(4096usize, 4096usize), (1024, 4096), (14336, 4096), (4096, 14336)] {
        let w = random_weights(rows * cols, 3);
        let x = random_weights(128 * cols, 4);
        for scheme in ["nf4", "int8", "f16", "f32"] {
            let s = Stored::new(scheme, &w, rows, cols);
            let view = s.view(rows, cols);
            for threads in [1usize, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
                let mut g = c.benchmark_group(format!("{scheme}/{rows}x{cols}/{threads}t"));
                g.sample_size(10);
                for m in [1usize, 16, 128] {
                    g.throughput(Throughput::Elements((2 * m * rows * cols) as u64));
                    let mut out = vec![0f32; m * rows];
                    // Inside the pool, as the CLI runs: decode's matvec then uses the team of
                    // the pool's size, prefill the pool itself.
                    g.bench_function(BenchmarkId::new("m", m), |b| {
                        pool.install(|| b.iter(|| matmul(&mut out, &view, &x[..m * cols], m, &opts).expect("matmul")))
                    });
                }
                g.finish();
            }
        }
    }
}

/// The 4-bit integer-route row kernel alone on one 4096-wide row, every operand in L1 and on
/// 64-byte lines (as the decode path lays them out), for every kernel variant: what the VBMI
/// lookup and the activation alignment were measured with.
fn fourbit_q8_row(c: &mut Criterion) {
    /// 64 bytes on a 64-byte boundary.
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    struct Line([u8; 64]);
    fn aligned(n: usize, seed: usize) -> Vec<Line> {
        (0..n / 64).map(|l| Line(std::array::from_fn(|i| ((l * 64 + i) * 7919 + seed) as u8))).collect()
    }
    fn as_u8(v: &[Line]) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes without padding.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 64) }
    }
    fn as_i8(v: &[Line]) -> &[i8] {
        // SAFETY: as for `as_u8`; i8 has u8's layout.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const i8, v.len() * 64) }
    }
    let (cols, half, nb) = (4096usize, 2048usize, 64usize);
    let (codes, qe, qo) = (aligned(half, 0), aligned(half, 31), aligned(half, 17));
    let factors: Vec<f32> = (0..nb).map(|i| 1.0 + i as f32 * 0.01).collect();
    let qsum: Vec<i32> = (0..nb as i32).collect();
    let lut = lowbit_kernels::FourBitKind::Nf4.int8_levels();
    let mut g = c.benchmark_group("fourbit_q8_row");
    g.throughput(Throughput::Bytes(half as u64));
    for k in Kernels::variants() {
        g.bench_with_input(BenchmarkId::new(k.label(), cols), &(), |b, _| {
            b.iter(|| k.dot_fourbit_q8(as_u8(&codes), &factors, &lut, as_i8(&qe), as_i8(&qo), &qsum, 32))
        });
    }
    g.finish();
    // Four rows a call (decode's path), all in L1: the kernel's own speed, without memory.
    let rows: Vec<Vec<Line>> = (0..4).map(|r| aligned(half, 101 * r)).collect();
    let mut g = c.benchmark_group("fourbit_q8_x4");
    g.throughput(Throughput::Bytes(4 * half as u64));
    for k in Kernels::variants() {
        let four: [&[u8]; 4] = std::array::from_fn(|r| as_u8(&rows[r]));
        if k.dot_fourbit_q8_x4(four, [&factors[..]; 4], &lut, as_i8(&qe), as_i8(&qo), &qsum, 32).is_none() {
            continue;
        }
        g.bench_with_input(BenchmarkId::new(k.label(), cols), &(), |b, _| {
            b.iter(|| k.dot_fourbit_q8_x4(four, [&factors[..]; 4], &lut, as_i8(&qe), as_i8(&qo), &qsum, 32))
        });
    }
    g.finish();
}

criterion_group!(benches, matvec_by_isa, mistral_shapes, fourbit_q8_row);
criterion_main!(benches);
