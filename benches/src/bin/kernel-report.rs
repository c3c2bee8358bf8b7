//! Prints matvec and matmul speed at Mistral-7B shapes next to what bounds them, measured in the
//! same run: a streaming read of a buffer the size of the weights (matvec is memory-bound), and
//! f32 `gemm` on the same shape (matmul is compute-bound).
//!
//! `cargo run --release -p lowbit-benches --bin kernel-report [-- --quick]`

use lowbit_benches::{bandwidth_probe, random_weights, Stored};
use lowbit_kernels::{matmul, MatmulOptions};
use std::time::Instant;

/// Best of `reps` runs of `f`, in seconds: the least disturbed run.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let shapes: &[(usize, usize)] =
        if quick { &[(14336, 4096)] } else { &[(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)] };
    let schemes = ["nf4", "int8", "f16", "f32"];
    let opts = MatmulOptions::default();
    println!("isa: {}", lowbit_kernels::kernels().isa());
    for &(rows, cols) in shapes {
        let w = random_weights(rows * cols, 42);
        let stored: Vec<(&str, Stored)> = schemes.iter().map(|&s| (s, Stored::new(s, &w, rows, cols))).collect();
        drop(w);
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            pool.install(|| {
                println!("\n== {rows}x{cols}, {threads} thread(s) ==");
                let x: Vec<f32> = random_weights(128 * cols, 7).iter().map(|v| v * 40.0).collect();
                for (name, s) in &stored {
                    let view = s.view(rows, cols);
                    // The probe streams as many bytes as this weight occupies, so both see the
                    // same cache effects (the 32 MiB L3 of this machine holds part of a 58 MB int8
                    // matrix between repetitions).
                    let probe_buf = vec![1f32; view.byte_len() / 4];
                    let tp = best(if quick { 5 } else { 10 }, || {
                        std::hint::black_box(bandwidth_probe(&probe_buf));
                    });
                    drop(probe_buf);
                    let probe_bw = view.byte_len() as f64 / tp;
                    let mut out = vec![0f32; rows];
                    let t = best(if quick { 5 } else { 10 }, || {
                        matmul(&mut out, &view, &x[..cols], 1, &opts).expect("matvec")
                    });
                    let bw = view.byte_len() as f64 / t;
                    println!(
                        "matvec {name:>5}: {:8.3} ms  {:6.2} GB/s  probe {:6.2} GB/s  {:5.1}% of probe",
                        t * 1e3,
                        bw / 1e9,
                        probe_bw / 1e9,
                        100.0 * bw / probe_bw
                    );
                }
                for m in [16usize, 128] {
                    let mut gf32 = 0.0;
                    for (name, s) in stored.iter().rev() {
                        let view = s.view(rows, cols);
                        let mut out = vec![0f32; m * rows];
                        let t = best(3, || matmul(&mut out, &view, &x[..m * cols], m, &opts).expect("matmul"));
                        let gflops = 2.0 * (m * rows * cols) as f64 / t / 1e9;
                        if *name == "f32" {
                            gf32 = gflops;
                        }
                        println!(
                            "matmul m={m:<3} {name:>5}: {:8.2} ms  {:7.1} GFLOP/s  {:4.2}x f32 gemm",
                            t * 1e3,
                            gflops,
                            gflops / gf32
                        );
                    }
                }
            });
        }
    }
}
