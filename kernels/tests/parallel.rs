//! Decode's parallel products — over the spinning team ([`lowbit_kernels::team`]) — give the
//! same bits as the same products on one thread, for every scheme and row kernel, on shapes big
//! enough to be split (the oracle tests' shapes are small enough to stay on one thread), with
//! row counts that leave a short last task; a batch of decode tokens gives each the bits of its
//! own matvec; and the team's own loops hand out every task once.

use half::{bf16, f16};
use lowbit_kernels::{
    quantize_4bit, quantize_int8, team, AbsmaxRef, FourBitKind, FourBitOptions, FourBitRef, Int8Ref, Kernels,
    MatmulOptions, Weight,
};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as u32 % 20001) as f32 / 10000.0 - 1.0
        })
        .collect()
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}

/// One-thread output against 2- and 3-thread outputs of the same matvec, bit for bit.
fn same_bits_on_any_team(k: &Kernels, weight: &Weight, x: &[f32], opts: &MatmulOptions) {
    let run = |threads| {
        in_pool(threads, || {
            let mut out = vec![0f32; weight.rows()];
            lowbit_kernels::matmul_with(k, &mut out, weight, x, 1, opts).unwrap();
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        // Several calls in a row: the team's workers are then spinning, not parked.
        for _ in 0..3 {
            assert_eq!(run(threads), one, "{} {weight:?} at {threads} threads", k.label());
        }
    }
}

/// Calls `f` with every scheme's weight (`rows × cols`) and an activation row with an LLM.int8
/// outlier column.
fn with_every_scheme(rows: usize, cols: usize, mut f: impl FnMut(&Weight, &[f32])) {
    let w = values(rows * cols, cols as u64);
    let mut x: Vec<f32> = values(cols, 7).iter().map(|v| v * 3.0).collect();
    x[3] = 9.0; // an LLM.int8 outlier column
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let q8 = quantize_int8(&w, rows, cols).unwrap();
    let mut weights = vec![
        Weight::F32 { rows, cols, data: &w },
        Weight::F16 { rows, cols, data: &w16 },
        Weight::Bf16 { rows, cols, data: &wb },
        Weight::Int8(Int8Ref { rows, cols, cb: &q8.cb, scb: &q8.scb }),
    ];
    let fourbit: Vec<_> = [FourBitKind::Nf4, FourBitKind::Fp4]
        .into_iter()
        .map(|kind| (kind, quantize_4bit(&w, &FourBitOptions { kind, ..Default::default() }).unwrap()))
        .collect();
    for (kind, q) in &fourbit {
        let lowbit_kernels::Absmax::Nested { codes, nested_absmax, nested_blocksize, offset } = &q.absmax else {
            unreachable!("double quantization is the default")
        };
        let absmax = AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize: *nested_blocksize, offset: *offset };
        weights.push(Weight::FourBit(FourBitRef { kind: *kind, rows, cols, blocksize: 64, codes: &q.codes, absmax }));
    }
    // Block int5 where the rows are whole blocks (its tasks unpack their rows to block int8).
    let q5 = cols.is_multiple_of(32).then(|| lowbit_kernels::q5::quantize(&w, rows, cols, None).unwrap());
    if let Some(q5) = &q5 {
        weights.push(Weight::Q5(lowbit_kernels::Q5Ref { rows, cols, qs: &q5.qs, qh: &q5.qh, scales: &q5.scales }));
    }
    for weight in &weights {
        f(weight, &x);
    }
}

/// For a 4-bit `weight`, another of `rows` rows with the same kind and blocks from `q` (made
/// with the default options); `None` for other schemes.
fn fourbit_like<'a>(weight: &Weight<'a>, q: &'a lowbit_kernels::FourBitTensor, rows: usize) -> Option<Weight<'a>> {
    let Weight::FourBit(w) = weight else { return None };
    let lowbit_kernels::Absmax::Nested { codes, nested_absmax, nested_blocksize, offset } = &q.absmax else {
        unreachable!("double quantization is the default")
    };
    let absmax = AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize: *nested_blocksize, offset: *offset };
    Some(Weight::FourBit(FourBitRef { rows, codes: &q.codes, absmax, ..*w }))
}

/// On a pool of `threads`: the bits of every weight of `ws` (`m` tokens each) from one `joint`
/// call, and the bits of each weight's own call (`alone`) one after the other.
fn joint_and_alone(
    ws: &[&Weight],
    m: usize,
    threads: usize,
    alone: impl Fn(&mut [f32], &Weight) + Send + Sync,
    joint: impl Fn(&mut [f32]) + Send + Sync,
) -> (Vec<u32>, Vec<u32>) {
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    in_pool(threads, || {
        let each: Vec<f32> = ws
            .iter()
            .flat_map(|w| {
                let mut out = vec![0f32; m * w.rows()];
                alone(&mut out, w);
                out
            })
            .collect();
        let mut all = vec![0f32; m * ws.iter().map(|w| w.rows()).sum::<usize>()];
        joint(&mut all);
        (bits(&all), bits(&each))
    })
}

#[test]
fn parallel_matvec_equals_serial_for_every_scheme() {
    // 301 rows: not a multiple of the 32-row task; 64·300 and 330 columns: ≥ 65,536
    // multiply-adds (the parallel threshold), 330 not a multiple of the 64-block, so 4-bit rows
    // straddle blocks there (the per-element path).
    for cols in [320usize, 330] {
        with_every_scheme(301, cols, |weight, x| {
            for k in Kernels::variants() {
                for fourbit_exact in [false, true] {
                    let opts = MatmulOptions { fourbit_exact, ..Default::default() };
                    same_bits_on_any_team(&k, weight, x, &opts);
                }
            }
        });
    }
}

/// A batch of decode tokens through `matmul_rows` gives every token the bits of its own matvec,
/// whatever its neighbours (other outlier columns, other scales, 1 to 9 of them: the int8 tile's
/// four-token groups and their remainder), on one thread and on the team.
#[test]
fn batched_decode_rows_equal_their_matvecs() {
    // Rows in sixteens too (80, 48): where a level has a matrix unit, those rows go to it.
    for (cols, rows) in [(320usize, 301usize), (320, 80), (330, 301), (4096, 37), (4096, 48)] {
        with_every_scheme(rows, cols, |weight, x| {
            // Token t: the base row scaled and shifted, with an outlier of its own in column 5t.
            let tokens: Vec<Vec<f32>> = (0..17)
                .map(|t| {
                    let mut v: Vec<f32> =
                        x.iter().zip(values(cols, 100 + t as u64)).map(|(a, b)| a * 0.5 + b).collect();
                    v[(5 * t) % cols] = 7.5 + t as f32;
                    v
                })
                .collect();
            for k in Kernels::variants() {
                for fourbit_exact in [false, true] {
                    let opts = MatmulOptions { fourbit_exact, ..Default::default() };
                    let alone: Vec<Vec<u32>> = tokens
                        .iter()
                        .map(|x| {
                            let mut out = vec![0f32; rows];
                            lowbit_kernels::matmul_with(&k, &mut out, weight, x, 1, &opts).unwrap();
                            out.iter().map(|v| v.to_bits()).collect()
                        })
                        .collect();
                    for (m, threads) in [(2, 1), (5, 2), (9, 2), (4, 3), (17, 2)] {
                        let xs: Vec<f32> = tokens[..m].concat();
                        let got = in_pool(threads, || {
                            let mut out = vec![0f32; m * rows];
                            lowbit_kernels::matmul_rows_with(&k, &mut out, weight, &xs, m, &opts).unwrap();
                            out
                        });
                        for (t, row) in got.chunks(rows).enumerate() {
                            let bits: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
                            assert_eq!(
                                bits,
                                alone[t],
                                "{} {} {cols} cols m={m} token {t} exact={fourbit_exact}",
                                k.label(),
                                weight.scheme_name()
                            );
                        }
                    }
                }
            }
        });
    }
}

/// Several weights over the same input in one call (`matmul_rows_many`: q/k/v, gate/up) give
/// each weight the bits of its own call, where tasks straddle two weights (301 rows each) and
/// where a weight of another scheme splits the list, for one and several tokens, on one thread
/// and on the team.
#[test]
fn several_weights_in_one_loop_equal_one_call_each() {
    let (small_w, tile_w) = (values(7 * 320, 99), values(48 * 320, 98));
    let tile_q = quantize_4bit(&tile_w, &FourBitOptions::default()).unwrap();
    with_every_scheme(301, 320, |weight, x| {
        let small = Weight::F32 { rows: 7, cols: 320, data: &small_w };
        // A 4-bit weight of 48 rows after one of 301: its rows in sixteens (a matrix unit's
        // tiles), its tasks' pieces not.
        let tile = fourbit_like(weight, &tile_q, 48);
        let mut lists: Vec<Vec<&Weight>> = vec![vec![weight, weight, &small, weight]];
        if let Some(t) = &tile {
            lists.push(vec![weight, t, t]);
            // Every weight in sixteens: a panel of tokens writes token-major, and the rows
            // shared evenly among the threads put task edges inside weights (144 rows, 3 threads).
            lists.push(vec![t, t, t]);
        }
        for ws in &lists {
            let tokens: Vec<f32> = (0..3).flat_map(|t| x.iter().map(move |v| v * (1.0 + t as f32 * 0.25))).collect();
            for k in Kernels::variants() {
                for fourbit_exact in [false, true] {
                    let opts = MatmulOptions { fourbit_exact, ..Default::default() };
                    for (m, threads) in [(1, 1), (1, 2), (3, 1), (3, 2), (3, 3)] {
                        let xs = &tokens[..m * 320];
                        let (joint, alone) = joint_and_alone(
                            ws,
                            m,
                            threads,
                            |out, w| lowbit_kernels::matmul_rows_with(&k, out, w, xs, m, &opts).unwrap(),
                            |out| lowbit_kernels::matmul_rows_many_with(&k, out, ws, xs, m, &opts).unwrap(),
                        );
                        assert_eq!(
                            joint,
                            alone,
                            "{} {} m={m} threads={threads} exact={fourbit_exact}",
                            k.label(),
                            weight.scheme_name()
                        );
                    }
                }
            }
        }
    });
    // A wrong output length is an error, not a panic.
    let w = values(4 * 64, 1);
    let weight = Weight::F32 { rows: 4, cols: 64, data: &w };
    let mut out = vec![0f32; 7];
    assert!(lowbit_kernels::matmul_rows_many(
        &mut out,
        &[&weight, &weight],
        &values(64, 2),
        1,
        &MatmulOptions::default()
    )
    .is_err());
}

/// A prompt's products of several weights over the same input (`matmul_many`: q/k/v and
/// gate/up in prefill) give each weight the bits of its own `matmul`: 4-bit weights of 301 rows
/// (a short last chunk per weight) and 64 rows in one joint loop, and a list with a weight of
/// another scheme (run one by one), for prompts of 2 to 19 tokens, on one and two threads.
#[test]
fn a_prompts_products_in_one_loop_equal_one_call_each() {
    let (small_w, wide) = (values(64 * 320, 98), values(7 * 320, 99));
    with_every_scheme(301, 320, |weight, x| {
        let small_q = quantize_4bit(&small_w, &FourBitOptions::default()).unwrap();
        let small_4 = fourbit_like(weight, &small_q, 64);
        let other = Weight::F32 { rows: 7, cols: 320, data: &wide };
        let mut lists: Vec<Vec<&Weight>> = vec![vec![weight, &other, weight]];
        if let Some(s4) = &small_4 {
            lists.push(vec![weight, s4, s4, weight]);
        }
        let tokens: Vec<f32> = (0..19).flat_map(|t| x.iter().map(move |v| v * (1.0 + t as f32 * 0.125))).collect();
        for k in Kernels::variants() {
            let opts = MatmulOptions::default();
            for ws in &lists {
                for (m, threads) in [(2, 1), (9, 2), (19, 2)] {
                    let xs = &tokens[..m * 320];
                    let (joint, alone) = joint_and_alone(
                        ws,
                        m,
                        threads,
                        |out, w| lowbit_kernels::matmul_with(&k, out, w, xs, m, &opts).unwrap(),
                        |out| lowbit_kernels::matmul_many_with(&k, out, ws, xs, m, &opts).unwrap(),
                    );
                    assert_eq!(
                        joint,
                        alone,
                        "{} {} × {} m={m} threads={threads}",
                        k.label(),
                        weight.scheme_name(),
                        ws.len()
                    );
                }
            }
        }
    });
    // A wrong output length is an error, not a panic.
    let w = values(4 * 64, 1);
    let weight = Weight::F32 { rows: 4, cols: 64, data: &w };
    let mut out = vec![0f32; 7];
    assert!(lowbit_kernels::matmul_many(&mut out, &[&weight, &weight], &values(128, 2), 2, &MatmulOptions::default())
        .is_err());
}

/// `q` (made with the default double-quantized scales) as a 4-bit weight of `rows × cols`.
fn fourbit_weight(kind: FourBitKind, rows: usize, cols: usize, q: &lowbit_kernels::FourBitTensor) -> Weight<'_> {
    let lowbit_kernels::Absmax::Nested { codes, nested_absmax, nested_blocksize, offset } = &q.absmax else {
        unreachable!("double quantization is the default")
    };
    let absmax = AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize: *nested_blocksize, offset: *offset };
    Weight::FourBit(FourBitRef { kind, rows, cols, blocksize: 64, codes: &q.codes, absmax })
}

/// A prompt's gated MLP input (`matmul_gated`: both products gated as they are made) is bit for
/// bit the two products (`matmul_segments`) followed by silu·mul, for one prompt and several,
/// on one and two threads, NF4 and FP4, on the matrix unit's panels or AVX2's eight-token rows
/// kernel (whichever the level in use has; `LOWBIT_ISA=avx2` checks the second on a CPU with
/// AMX); where it declines (a one-token prompt among the segments, or a level with neither) it
/// leaves the output alone, and a run that never took the fused path says so.
#[test]
fn gated_products_equal_products_then_silu_mul() {
    use std::io::Write;
    let (rows, cols) = (48, 320);
    let (wg, wu) = (values(rows * cols, 41), values(rows * cols, 42));
    let x: Vec<f32> = (0..73).flat_map(|t| values(cols, 50 + t).into_iter().map(move |v| v * 2.5)).collect();
    let k = lowbit_kernels::kernels();
    let opts = MatmulOptions::default();
    let mut ran = 0;
    for kind in [FourBitKind::Nf4, FourBitKind::Fp4] {
        let q = |w: &[f32]| quantize_4bit(w, &FourBitOptions { kind, ..Default::default() }).unwrap();
        let (qg, qu) = (q(&wg), q(&wu));
        let (gate, up) = (fourbit_weight(kind, rows, cols, &qg), fourbit_weight(kind, rows, cols, &qu));
        // Past 64 tokens too: the tile runs take tokens in groups of 64.
        for segs in [vec![23], vec![9, 14], vec![2, 5, 16], vec![7, 1, 15], vec![73], vec![40, 33]] {
            let m: usize = segs.iter().sum();
            let xs = &x[..m * cols];
            for threads in [1, 2] {
                let (fused, want) = in_pool(threads, || {
                    let mut both = vec![0f32; 2 * m * rows];
                    lowbit_kernels::matmul_segments(&mut both, &[&gate, &up], xs, &segs, &opts).unwrap();
                    let (g, u) = both.split_at_mut(m * rows);
                    k.silu_mul(g, u);
                    let mut fused = vec![f32::NAN; m * rows];
                    let done = lowbit_kernels::matmul_gated(&mut fused, &gate, &up, xs, &segs, &opts).unwrap();
                    assert_eq!(
                        done,
                        lowbit_kernels::gates_together(&gate, &up, &segs, &opts),
                        "the predicate says what runs"
                    );
                    (done.then_some(fused.clone()).ok_or(fused), g.to_vec())
                });
                match fused {
                    Ok(f) => {
                        ran += 1;
                        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&f), bits(&want), "{kind:?} segments {segs:?} threads {threads}");
                    }
                    Err(untouched) => {
                        assert!(untouched.iter().all(|v| v.is_nan()), "declined, yet wrote the output");
                        assert!(
                            segs.contains(&1)
                                || !(k.has_fourbit_q8_panel()
                                    || k.has_rows_t8()
                                    || k.has_fourbit_q8_tile_run(cols / 64, false)),
                            "declined on a level that pairs them"
                        );
                    }
                }
            }
        }
    }
    if ran == 0 {
        let _ = writeln!(
            std::io::stderr().lock(),
            "NOT RUN at this kernel level: the gated prompt products (they need AMX, the AVX-512 or AVX-VNNI tile runs, or AVX2's eight-token kernel)"
        );
    }
    // A wrong output length is an error where the fused path runs.
    if ran > 0 {
        let q = quantize_4bit(&wg, &FourBitOptions::default()).unwrap();
        let w = fourbit_weight(FourBitKind::Nf4, rows, cols, &q);
        let mut short = vec![0f32; 3 * rows - 1];
        assert!(lowbit_kernels::matmul_gated(&mut short, &w, &w, &x[..3 * cols], &[3], &opts).is_err());
    }
}

/// Several prompts in one call (`matmul_segments`) give each prompt the bits of its own
/// `matmul_many`, for every scheme (block int8 too, whose route changes at 16 tokens), alone and
/// beside a weight of another scheme, with one-token prompts among them or only those, on one and
/// two threads.
#[test]
fn several_prompts_in_one_call_equal_one_call_each() {
    let (q8w, other) = (values(301 * 320, 5), values(7 * 320, 99));
    let q8s: Vec<_> =
        [32, 64].into_iter().map(|bs| lowbit_kernels::q8::quantize(&q8w, 301, 320, bs).unwrap()).collect();
    let q8_weights: Vec<Weight> = q8s
        .iter()
        .map(|q| {
            Weight::Q8(lowbit_kernels::Q8Ref {
                rows: 301,
                cols: 320,
                blocksize: q.blocksize,
                qs: &q.qs,
                scales: &q.scales,
            })
        })
        .collect();
    let other = Weight::F32 { rows: 7, cols: 320, data: &other };
    let check = |weight: &Weight, x: &[f32]| {
        // Tokens of different sizes, each with the outlier column LLM.int8 splits off.
        let tokens: Vec<f32> = (0..40).flat_map(|t| x.iter().map(move |v| v * (1.0 + t as f32 * 0.125))).collect();
        let lists: [Vec<&Weight>; 3] = [vec![weight], vec![weight, &other, weight], vec![weight, weight]];
        for k in Kernels::variants() {
            let opts = MatmulOptions::default();
            for ws in &lists {
                for (segs, threads) in
                    [(&[3usize, 5, 17, 2][..], 1), (&[2, 19, 0, 6][..], 2), (&[1, 1, 1][..], 2), (&[4, 1, 6][..], 2)]
                {
                    let m: usize = segs.iter().sum();
                    let xs = &tokens[..m * 320];
                    let (alone, joint) = in_pool(threads, || {
                        let rows: usize = ws.iter().map(|w| w.rows()).sum();
                        let mut alone = vec![0f32; m * rows];
                        let mut t0 = 0;
                        for &s in segs {
                            let mut out = vec![0f32; s * rows];
                            lowbit_kernels::matmul_many_with(&k, &mut out, ws, &xs[t0 * 320..(t0 + s) * 320], s, &opts)
                                .unwrap();
                            // Into each weight's part, at this prompt's tokens.
                            let (mut from, mut at) = (0, 0);
                            for w in ws {
                                let r = w.rows();
                                alone[from + t0 * r..from + (t0 + s) * r].copy_from_slice(&out[at..at + s * r]);
                                from += m * r;
                                at += s * r;
                            }
                            t0 += s;
                        }
                        let mut joint = vec![0f32; m * rows];
                        lowbit_kernels::matmul_segments_with(&k, &mut joint, ws, xs, segs, &opts).unwrap();
                        (alone, joint)
                    });
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&joint),
                        bits(&alone),
                        "{} {} × {} segments {segs:?} threads={threads}",
                        k.label(),
                        weight.scheme_name(),
                        ws.len()
                    );
                }
            }
        }
    };
    with_every_scheme(301, 320, |w, x| check(w, x));
    let x: Vec<f32> = values(320, 7).iter().map(|v| v * 3.0).collect();
    for w in &q8_weights {
        check(w, &x);
    }
    // A wrong output length is an error, not a panic.
    let w = values(4 * 64, 1);
    let weight = Weight::F32 { rows: 4, cols: 64, data: &w };
    let mut out = vec![0f32; 7];
    let x = values(3 * 64, 2);
    assert!(lowbit_kernels::matmul_segments(&mut out, &[&weight], &x, &[1, 2], &MatmulOptions::default()).is_err());
}

/// Every product writes every element of its output: an output full of NaN comes back with
/// none, for every scheme and level, prompt and decode routes, one and two threads (the forward
/// pass reuses its buffers without clearing them).
#[test]
fn products_write_every_output_element() {
    let q8w = values(301 * 320, 5);
    let q8 = lowbit_kernels::q8::quantize(&q8w, 301, 320, 32).unwrap();
    let q8 = Weight::Q8(lowbit_kernels::Q8Ref { rows: 301, cols: 320, blocksize: 32, qs: &q8.qs, scales: &q8.scales });
    let check = |weight: &Weight, x: &[f32]| {
        let tokens: Vec<f32> = (0..20).flat_map(|t| x.iter().map(move |v| v * (1.0 + t as f32 * 0.125))).collect();
        for k in Kernels::variants() {
            for fourbit_exact in [false, true] {
                let opts = MatmulOptions { fourbit_exact, ..Default::default() };
                for (m, threads) in [(1, 1), (3, 2), (8, 2), (17, 1), (20, 2)] {
                    let xs = &tokens[..m * 320];
                    in_pool(threads, || {
                        let mut out = vec![f32::NAN; m * weight.rows()];
                        lowbit_kernels::matmul_segments_with(&k, &mut out, &[weight], xs, &[m], &opts).unwrap();
                        assert!(
                            out.iter().all(|v| v.is_finite()),
                            "{} {} prompt m={m}",
                            k.label(),
                            weight.scheme_name()
                        );
                        out.fill(f32::NAN);
                        lowbit_kernels::matmul_rows_many_with(&k, &mut out, &[weight], xs, m, &opts).unwrap();
                        assert!(
                            out.iter().all(|v| v.is_finite()),
                            "{} {} decode m={m}",
                            k.label(),
                            weight.scheme_name()
                        );
                    });
                }
            }
        }
    };
    with_every_scheme(301, 320, |w, x| check(w, x));
    let x: Vec<f32> = values(320, 7).iter().map(|v| v * 3.0).collect();
    check(&q8, &x);
}

#[test]
fn team_loops_hand_out_every_task_once() {
    for threads in [1, 2, 3] {
        in_pool(threads, || {
            for n in [0usize, 1, 2, 3, 17, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                team::for_each_task(
                    n,
                    || (),
                    |_, i| {
                        hits[i].fetch_add(1, Relaxed);
                    },
                );
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "{threads} threads, {n} tasks");
                // Pieces cover the slice in order, the last one short.
                let mut data: Vec<usize> = vec![0; n];
                team::for_each_chunk_mut(
                    &mut data,
                    7,
                    || (),
                    |_, i, piece| {
                        assert!(piece.len() == 7 || (i + 1) * 7 >= n);
                        for (j, v) in piece.iter_mut().enumerate() {
                            *v = i * 7 + j;
                        }
                    },
                );
                assert!(data.iter().enumerate().all(|(i, &v)| v == i));
            }
        });
    }
}
