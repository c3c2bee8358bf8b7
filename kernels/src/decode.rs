//! Decode products: each weight row streamed once through a dot-product kernel, for one token
//! (matvec) or for a batch of independent tokens (the rows of several sequences decoding
//! together). Every token's result is computed by the same kernel calls, with the same
//! arguments, as when it is alone — its activations are quantized on their own, its block factors
//! formed on their own — so a batch changes how often a weight row comes from memory, never a
//! bit of any result. Rows are spread over the spinning team in tasks of
//! [`DECODE_ROWS_PER_TASK`]; a task runs all tokens over its rows while they are in cache.

use crate::dispatch::Kernels;
use crate::fourbit::code_at;
use crate::int8::{quantize_activations, Int8Activations, INV_127, MM_DEQUANT_SCALE};
use crate::lined::Lined;
use crate::matmul::{
    block_factors, for_row_chunks, rows_block_aligned, transpose_into, BlockQ8, MatmulOptions, Par,
    DECODE_ROWS_PER_TASK,
};
use crate::weight::{FourBitRef, Int8Ref, Q8Ref, Weight};

/// `out (m × rows)`: row `t` is `W · x[t]`, bit-identical to `m == 1` on that row alone.
pub(crate) fn rows(
    k: &Kernels,
    out: &mut [f32],
    w: &Weight,
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
    parallel: bool,
) {
    let par = if parallel { Par::Team } else { Par::Serial };
    if m == 1 {
        return rows_t(k, out, w, x, 1, opts, par);
    }
    // Tasks own contiguous weight rows, so they write `rows × m`; transposed afterwards.
    let mut out_t = vec![0f32; out.len()];
    rows_t(k, &mut out_t, w, x, m, opts, par);
    transpose_into(out, &out_t, w.rows(), m);
}

/// [`rows`] into `out_t (rows × m)`.
fn rows_t(k: &Kernels, out_t: &mut [f32], w: &Weight, x: &[f32], m: usize, opts: &MatmulOptions, par: Par) {
    let cols = w.cols();
    let xt = |t: usize| &x[t * cols..(t + 1) * cols];
    match *w {
        Weight::F32 { data, .. } => dense_rows(out_t, m, par, |r, t| k.dot_f32(&data[r * cols..(r + 1) * cols], xt(t))),
        Weight::F16 { data, .. } => dense_rows(out_t, m, par, |r, t| k.dot_f16(&data[r * cols..(r + 1) * cols], xt(t))),
        Weight::Bf16 { data, .. } => {
            dense_rows(out_t, m, par, |r, t| k.dot_bf16(&data[r * cols..(r + 1) * cols], xt(t)))
        }
        Weight::Int8(ref w8) => int8_rows(k, out_t, w8, x, m, opts, par),
        Weight::Q8(ref w8) => q8_rows(k, out_t, w8, x, m, par),
        Weight::FourBit(ref w4) if !opts.fourbit_exact && rows_block_aligned(w4) && w4.blocksize >= 32 => {
            fourbit_q8_rows(k, out_t, w4, x, m, par)
        }
        Weight::FourBit(ref w4) => fourbit_rows(k, out_t, w4, x, m, par),
    }
}

/// `out_t[r·m + t] = dot(r, t)` for every row and token, in row chunks spread over threads.
fn dense_rows(out_t: &mut [f32], m: usize, par: Par, dot: impl Fn(usize, usize) -> f32 + Sync + Send) {
    for_row_chunks(
        out_t,
        m,
        DECODE_ROWS_PER_TASK,
        par,
        || (),
        |_, r0, o| {
            for (i, y) in o.chunks_mut(m).enumerate() {
                for (t, y) in y.iter_mut().enumerate() {
                    *y = dot(r0 + i, t);
                }
            }
        },
    );
}

/// The exact float 4-bit path: every weight dequantized to its bitsandbytes value.
fn fourbit_rows(k: &Kernels, out_t: &mut [f32], w: &FourBitRef, x: &[f32], m: usize, par: Par) {
    let levels = w.kind.levels();
    let cols = w.cols;
    if !rows_block_aligned(w) {
        // Blocks straddle rows: the plain per-element formula (small or odd-shaped models only).
        return dense_rows(out_t, m, par, |r, t| {
            let base = r * cols;
            let mut acc = 0f32;
            for (c, &xv) in x[t * cols..(t + 1) * cols].iter().enumerate() {
                let e = base + c;
                acc += levels[code_at(w.codes, e) as usize] * w.absmax.get(e / w.blocksize) * xv;
            }
            acc
        });
    }
    let half = cols / 2;
    let xe: Vec<f32> = x.iter().step_by(2).copied().collect();
    let xo: Vec<f32> = x.iter().skip(1).step_by(2).copied().collect();
    let bpr = cols / w.blocksize;
    for_row_chunks(
        out_t,
        m,
        DECODE_ROWS_PER_TASK,
        par,
        || Lined::<f32>::zeroed(bpr),
        |scales, r0, o| {
            for (i, y) in o.chunks_mut(m).enumerate() {
                let r = r0 + i;
                w.absmax.decode(r * bpr, scales);
                for (t, y) in y.iter_mut().enumerate() {
                    let (xe, xo) = (&xe[t * half..(t + 1) * half], &xo[t * half..(t + 1) * half]);
                    *y = k.dot_fourbit(&w.codes[r * half..(r + 1) * half], scales, levels, xe, xo, w.blocksize / 2);
                }
            }
        },
    );
}

/// The 4-bit integer route: activations quantized per block of the weights, levels as int8.
fn fourbit_q8_rows(k: &Kernels, out_t: &mut [f32], w: &FourBitRef, x: &[f32], m: usize, par: Par) {
    let lut = w.kind.int8_levels();
    let half = w.cols / 2;
    let bpr = w.cols / w.blocksize;
    let task = DECODE_ROWS_PER_TASK * bpr;
    // weight ≈ lut/127 · absmax, activation ≈ q · xs·127: one factor absmax · xs per block.
    let q = BlockQ8::new(k, x, m, w.cols, w.blocksize, m);
    let q = &q;
    // Each token's activation scales repeated once per row of a task, so one `block_factors`
    // call covers a task's rows (their blocks are consecutive): per-row calls cost more than the
    // factors themselves on narrow rows (576 columns are 9 blocks).
    let mut xs_rows = Lined::<f32>::zeroed(m * task);
    for (t, rows) in xs_rows.chunks_mut(task).enumerate() {
        rows.chunks_mut(bpr).for_each(|c| c.copy_from_slice(q.xs(t)));
    }
    let xs_rows = &xs_rows;
    let x4 = k.x4_for(w.cols);
    for_row_chunks(
        out_t,
        m,
        DECODE_ROWS_PER_TASK,
        par,
        || (Lined::<f32>::zeroed(task), Lined::<f32>::zeroed(m * task)),
        |(scales, factors), r0, o| {
            let n = o.len() / m;
            let nf = n * bpr;
            if m == 1 {
                block_factors(k, &w.absmax, r0 * bpr, &xs_rows[..nf], &mut factors[..nf]);
            } else {
                // The block scales decoded once for every token, then multiplied by each token's:
                // the same bits as `block_factors` (decode, then multiply).
                w.absmax.decode(r0 * bpr, &mut scales[..nf]);
                for t in 0..m {
                    let (f, xs) = (&mut factors[t * task..t * task + nf], &xs_rows[t * task..t * task + nf]);
                    for ((f, &a), &s) in f.iter_mut().zip(&scales[..nf]).zip(xs) {
                        *f = a * s;
                    }
                }
            }
            let factors = &factors[..];
            let row = |i: usize| &w.codes[(r0 + i) * half..(r0 + i + 1) * half];
            let fac = |t: usize, i: usize| &factors[t * task + i * bpr..t * task + (i + 1) * bpr];
            let (lut, hb) = (&lut, w.blocksize / 2);
            let mut i = 0;
            // Four rows a call where the level has that kernel for rows this wide (the
            // activations are loaded once for the four; narrow rows spend as much on a call as
            // on its arithmetic), two tokens a call where there are two (the rows' codes looked
            // up once for both); the rest through the one-row twin, so no row's bits depend on
            // which call it fell in.
            while x4 && i + 4 <= n {
                let codes: [&[u8]; 4] = std::array::from_fn(|j| row(i + j));
                let mut t = 0;
                while t + 2 <= m {
                    let facs = [0, 1].map(|u| std::array::from_fn(|j| fac(t + u, i + j)));
                    let (qe, qo, qs) = ([q.qe(t), q.qe(t + 1)], [q.qo(t), q.qo(t + 1)], [q.sum(t), q.sum(t + 1)]);
                    let Some(v) = k.dot_fourbit_q8_x4t2(codes, facs, lut, qe, qo, qs, hb) else { break };
                    for (u, v) in v.iter().enumerate() {
                        for (j, &v) in v.iter().enumerate() {
                            o[(i + j) * m + t + u] = v;
                        }
                    }
                    t += 2;
                }
                for t in t..m {
                    let facs = std::array::from_fn(|j| fac(t, i + j));
                    let v = k.dot_fourbit_q8_x4(codes, facs, lut, q.qe(t), q.qo(t), q.sum(t), hb);
                    let v = v.unwrap_or_else(|| {
                        std::array::from_fn(|j| {
                            k.dot_fourbit_q8_x1(codes[j], facs[j], lut, q.qe(t), q.qo(t), q.sum(t), hb)
                        })
                    });
                    for (j, &v) in v.iter().enumerate() {
                        o[(i + j) * m + t] = v;
                    }
                }
                i += 4;
            }
            for i in i..n {
                for t in 0..m {
                    let (qe, qo, qs) = (q.qe(t), q.qo(t), q.sum(t));
                    o[i * m + t] = if x4 {
                        k.dot_fourbit_q8_x1(row(i), fac(t, i), lut, qe, qo, qs, hb)
                    } else {
                        k.dot_fourbit_q8(row(i), fac(t, i), lut, qe, qo, qs, hb)
                    };
                }
            }
        },
    );
}

/// LLM.int8 rows, each token with its own activation scale and outlier columns (as alone).
/// Integer sums are exact, so the 4 × 4 tile may serve several tokens at once; the float parts
/// (scaling, then the outlier columns in column order) follow the one-token order.
fn int8_rows(k: &Kernels, out_t: &mut [f32], w: &Int8Ref, x: &[f32], m: usize, opts: &MatmulOptions, par: Par) {
    let cols = w.cols;
    let acts: Vec<Int8Activations> = (0..m)
        .map(|t| {
            let mut a = Int8Activations::default();
            quantize_activations(&x[t * cols..(t + 1) * cols], 1, cols, opts.int8_threshold, &mut a);
            a
        })
        .collect();
    let acts = &acts;
    let ca = |t: usize| acts[t].ca.as_slice();
    let cb = |r: usize| &w.cb[r * cols..(r + 1) * cols];
    let finish = |r: usize, t: usize, isum: i32| isum as f32 * (acts[t].sca[0] * w.scb[r]) * MM_DEQUANT_SCALE;
    let x4 = k.x4_for(cols);
    for_row_chunks(
        out_t,
        m,
        DECODE_ROWS_PER_TASK,
        par,
        || (),
        |_, r0, o| {
            let n = o.len() / m;
            let mut r = 0;
            while r + 4 <= n {
                let wr: [&[i8]; 4] = std::array::from_fn(|i| cb(r0 + r + i));
                let mut t = 0;
                while t + 4 <= m {
                    let tile = k.dot_int8_4x4(std::array::from_fn(|j| ca(t + j)), wr);
                    for (i, row) in tile.iter().enumerate() {
                        for (j, &isum) in row.iter().enumerate() {
                            o[(r + i) * m + t + j] = finish(r0 + r + i, t + j, isum);
                        }
                    }
                    t += 4;
                }
                for t in t..m {
                    let sums = if x4 { k.dot_int8_x4(ca(t), wr) } else { None };
                    let sums = sums.unwrap_or_else(|| wr.map(|w| k.dot_int8(ca(t), w)));
                    for (i, &isum) in sums.iter().enumerate() {
                        o[(r + i) * m + t] = finish(r0 + r + i, t, isum);
                    }
                }
                r += 4;
            }
            for r in r..n {
                for t in 0..m {
                    o[r * m + t] = finish(r0 + r, t, k.dot_int8(ca(t), cb(r0 + r)));
                }
            }
            // Each token's outlier columns in floating point, against the dequantized weights,
            // in column order per (row, token). Columns outside, rows inside: the adds into one
            // output form a chain, and with a chain per row in flight at once no add waits for
            // the one before it (docs/PERFORMANCE.md).
            for t in 0..m {
                let xt = &x[t * cols..(t + 1) * cols];
                for &c in &acts[t].outlier_cols {
                    let xc = xt[c];
                    for (i, orow) in o.chunks_mut(m).enumerate() {
                        let rr = r0 + i;
                        orow[t] += xc * (w.cb[rr * cols + c] as f32 * (w.scb[rr] * INV_127));
                    }
                }
            }
        },
    );
}

/// Block int8 rows: each token's activations quantized on their own in the weight's blocks, then
/// four rows a call where the level has that kernel (each row's bits those of the one-row
/// kernel, so which call a row falls in changes nothing).
fn q8_rows(k: &Kernels, out_t: &mut [f32], w: &Q8Ref, x: &[f32], m: usize, par: Par) {
    let (cols, bs) = (w.cols, w.blocksize);
    let nb = cols / bs;
    let mut q = Lined::<i8>::zeroed(m * cols);
    let mut d = Lined::<f32>::zeroed(m * nb);
    for t in 0..m {
        crate::q8::quantize_activations(
            &x[t * cols..(t + 1) * cols],
            bs,
            &mut q[t * cols..(t + 1) * cols],
            &mut d[t * nb..(t + 1) * nb],
        );
    }
    let (q, d) = (&q, &d);
    let qt = |t: usize| &q[t * cols..(t + 1) * cols];
    let dt = |t: usize| &d[t * nb..(t + 1) * nb];
    let row = |r: usize| (&w.qs[r * cols..(r + 1) * cols], &w.scales[r * nb..(r + 1) * nb]);
    for_row_chunks(
        out_t,
        m,
        DECODE_ROWS_PER_TASK,
        par,
        || (),
        |_, r0, o| {
            let n = o.len() / m;
            let mut i = 0;
            while i + 4 <= n {
                let rows: [_; 4] = std::array::from_fn(|j| row(r0 + i + j));
                let (wr, sr) = (rows.map(|r| r.0), rows.map(|r| r.1));
                for t in 0..m {
                    let v = k
                        .dot_q8_x4(wr, sr, qt(t), dt(t), bs)
                        .unwrap_or_else(|| rows.map(|(w, s)| k.dot_q8(w, s, qt(t), dt(t), bs)));
                    for (j, &v) in v.iter().enumerate() {
                        o[(i + j) * m + t] = v;
                    }
                }
                i += 4;
            }
            for i in i..n {
                let (w, s) = row(r0 + i);
                for t in 0..m {
                    o[i * m + t] = k.dot_q8(w, s, qt(t), dt(t), bs);
                }
            }
        },
    );
}
