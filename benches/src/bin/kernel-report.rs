//! Prints matvec and matmul speed at Mistral-7B shapes next to what bounds them, measured in the
//! same run: a streaming read of a buffer the size of the weights (matvec is memory-bound), and
//! f32 `gemm` on the same shape (matmul is compute-bound).
//!
//! Matvec is measured twice. "hot": one matrix again and again, which a large last-level cache
//! partly or wholly holds (a 29 MB nf4 matrix fits the 480 MiB L3 of our Xeon VM). "cold": a
//! pass over distinct copies of the matrix adding up to `--cold-mib` (default 2048), each copy
//! multiplied once, against a probe streaming the same total — what decode of a model larger
//! than the cache sees, layer after layer.
//!
//! `cargo run --release -p lowbit-benches --bin kernel-report [-- --quick] [--cold-mib N]
//! [--schemes nf4,int8] [--matvec-only] [--shape ROWSxCOLS]`

use lowbit_benches::{random_weights, Stored};
use lowbit_kernels::{bandwidth_probe, matmul, matmul_rows, MatmulOptions};
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

/// `reps` timed pairs (seconds) of `a` then `b`, after one untimed run of each.
fn alternate<A, B>(reps: usize, mut a: impl FnMut() -> A, mut b: impl FnMut() -> B) -> Vec<(f64, f64)> {
    a();
    b();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            a();
            let ta = t.elapsed().as_secs_f64();
            let t = Instant::now();
            b();
            (ta, t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Memory-bound matvec and compute-bound matmul figures at Mistral-7B shapes.
#[derive(clap::Parser)]
struct Args {
    /// 14336×4096 only, five pairs instead of seven.
    #[arg(long)]
    quick: bool,
    /// Total size of the distinct copies of the "cold" pass, in MiB.
    #[arg(long, default_value_t = 2048)]
    cold_mib: usize,
    /// Comma-separated schemes (nf4, int8, f16, f32); matmul figures need f32.
    #[arg(long, value_delimiter = ',', default_values_t = ["nf4", "int8", "f16", "f32"].map(String::from))]
    schemes: Vec<String>,
    /// Skip the matmul figures.
    #[arg(long)]
    matvec_only: bool,
    /// One shape `ROWSxCOLS` instead of the Mistral-7B four (e.g. an L2-sized 512x4096).
    #[arg(long, value_parser = parse_shape)]
    shape: Option<(usize, usize)>,
}

fn parse_shape(v: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{v:?} is not ROWSxCOLS");
    let (r, c) = v.split_once('x').ok_or_else(bad)?;
    Ok((r.parse().map_err(|_| bad())?, c.parse().map_err(|_| bad())?))
}

fn main() {
    let Args { quick, cold_mib, schemes: chosen, matvec_only, shape } = clap::Parser::parse();
    let shapes: Vec<(usize, usize)> = match shape {
        Some(s) => vec![s],
        None if quick => vec![(14336, 4096)],
        None => vec![(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)],
    };
    let all_schemes = ["nf4", "int8", "f16", "f32"];
    if let Some(bad) = chosen.iter().find(|c| !all_schemes.contains(&c.as_str())) {
        eprintln!("unknown scheme {bad:?} in --schemes (known: {})", all_schemes.join(","));
        std::process::exit(2);
    }
    let schemes: Vec<&str> = all_schemes.into_iter().filter(|s| chosen.iter().any(|c| c == s)).collect();
    // The matmul ratios need f32 gemm as their reference.
    if !matvec_only && !schemes.contains(&"f32") {
        eprintln!("matmul figures need f32 in --schemes (or --matvec-only)");
        std::process::exit(2);
    }
    let opts = MatmulOptions::default();
    println!("isa: {}", lowbit_kernels::kernels().label());
    for &(rows, cols) in &shapes {
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
                    // same cache effects (a last-level cache may hold part or all of a 58 MB int8
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
                        "matvec {name:>5} hot : {:8.3} ms  {:6.2} GB/s  probe {:6.2} GB/s  {:5.1}% of probe",
                        t * 1e3,
                        bw / 1e9,
                        probe_bw / 1e9,
                        100.0 * bw / probe_bw
                    );
                }
                for (name, s) in &stored {
                    let bytes = s.view(rows, cols).byte_len();
                    let copies = (cold_mib << 20).div_ceil(bytes).max(2);
                    let all: Vec<Stored> = (0..copies).map(|_| s.clone()).collect();
                    let probe_buf = vec![1f32; copies * bytes / 4];
                    let mut out = vec![0f32; rows];
                    let pass = || {
                        for c in &all {
                            matmul(&mut out, &c.view(rows, cols), &x[..cols], 1, &opts).expect("matvec");
                        }
                    };
                    // Probe and kernel alternate, and each pair gives one ratio: on a shared
                    // host the bandwidth drifts by a quarter between seconds, which separate
                    // best-ofs would fold into the ratio.
                    let reps = if quick { 5 } else { 7 };
                    let pairs = alternate(reps, || std::hint::black_box(bandwidth_probe(&probe_buf)), pass);
                    drop(probe_buf);
                    let total = (copies * bytes) as f64;
                    // The median pair by ratio, and its own figures, so the line adds up.
                    let mut by_ratio = pairs.clone();
                    by_ratio.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
                    let (tp, t) = by_ratio[reps / 2];
                    let (lo, hi) = (by_ratio[0].0 / by_ratio[0].1, by_ratio[reps - 1].0 / by_ratio[reps - 1].1);
                    println!(
                        "matvec {name:>5} cold: {:8.3} ms  {:6.2} GB/s  probe {:6.2} GB/s  {:5.1}% of probe (median of {reps} alternated pairs; range {:.1}–{:.1}%)  ({copies} copies)",
                        t / copies as f64 * 1e3,
                        total / t / 1e9,
                        total / tp / 1e9,
                        100.0 * tp / t,
                        100.0 * lo,
                        100.0 * hi
                    );
                }
                // A decode step of m sequences (`matmul_rows`: each token as if alone, the weights
                // read once for all): the batched engine's product.
                for &m in if matvec_only { &[][..] } else { &[16usize][..] } {
                    for (name, s) in stored.iter().filter(|(n, _)| *n != "f32") {
                        let view = s.view(rows, cols);
                        let mut out = vec![0f32; m * rows];
                        let t = best(3, || matmul_rows(&mut out, &view, &x[..m * cols], m, &opts).expect("rows"));
                        println!(
                            "rows   m={m:<3} {name:>5}: {:8.2} ms  {:7.1} GFLOP/s  {:6.2} GB/s of weights",
                            t * 1e3,
                            2.0 * (m * rows * cols) as f64 / t / 1e9,
                            view.byte_len() as f64 / t / 1e9
                        );
                    }
                }
                for &m in if matvec_only { &[][..] } else { &[16usize, 128][..] } {
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
