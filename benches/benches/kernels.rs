//! Criterion benches of every kernel on every ISA this CPU has: dot products per row (bench id
//! `"{kernel}/{isa}/{k}"`, throughput in weight bytes) and matvec/matmul at Mistral-7B shapes.
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
            let mut g = c.benchmark_group(format!("{scheme}/{rows}x{cols}"));
            g.sample_size(10);
            for m in [1usize, 16, 128] {
                g.throughput(Throughput::Elements((2 * m * rows * cols) as u64));
                let mut out = vec![0f32; m * rows];
                g.bench_function(BenchmarkId::new("m", m), |b| {
                    b.iter(|| matmul(&mut out, &view, &x[..m * cols], m, &opts).expect("matmul"))
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, matvec_by_isa, mistral_shapes);
criterion_main!(benches);
