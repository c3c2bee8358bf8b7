//! Dense dot products: a weight row in f32 / f16 / bf16 against f32 activations.

use half::{bf16, f16};

/// `Σ w[i]·x[i]` in f32, in index order.
pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).fold(0.0, |acc, (&a, &b)| a.mul_add(b, acc))
}

/// `Σ f32(w[i])·x[i]`.
pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    w.iter().zip(x).fold(0.0, |acc, (&a, &b)| a.to_f32().mul_add(b, acc))
}

/// `Σ f32(w[i])·x[i]`.
pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    w.iter().zip(x).fold(0.0, |acc, (&a, &b)| a.to_f32().mul_add(b, acc))
}

/// `y[i] = fma(a, x[i], y[i])`: one fused multiply-add per element, so every ISA gives the same
/// bits (attention's weighted sum of values).
pub fn axpy_f32(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = a.mul_add(x, *y));
}

/// `out[j] = Σ_i q[i] · rows[j·stride + i]` for `j < out.len()`: one query against rows laid out
/// `stride` apart (attention scores over cached keys). Each entry is [`dot_f32`] of its row.
pub fn dot_f32_rows(out: &mut [f32], q: &[f32], rows: &[f32], stride: usize) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f32(q, &rows[j * stride..j * stride + q.len()]);
    }
}

/// `y[i] = fma(a[j], rows[j·stride + i], y[i])` for `j = 0, 1, …` in order: the weighted sum of
/// rows `stride` apart (attention's values), bit-identical on every ISA.
pub fn axpy_f32_rows(y: &mut [f32], a: &[f32], rows: &[f32], stride: usize) {
    for (j, &aj) in a.iter().enumerate() {
        axpy_f32(y, aj, &rows[j * stride..j * stride + y.len()]);
    }
}

/// [`dot_f32_rows`] for several queries over the same rows (the query heads that share a
/// grouped-query kv head): query `g` (`q[g·d .. (g + 1)·d]`) against rows `0 .. n` into
/// `out[g·ostride .. g·ostride + n]`, each entry with [`dot_f32_rows`]'s bits.
pub fn dot_f32_rows_multi(out: &mut [f32], ostride: usize, n: usize, q: &[f32], d: usize, rows: &[f32], stride: usize) {
    for (g, q) in q.chunks_exact(d).enumerate() {
        dot_f32_rows(&mut out[g * ostride..g * ostride + n], q, rows, stride);
    }
}

/// [`dot_f32_rows_multi`] over f16 rows, each widened to f32 (exactly).
pub fn dot_f16_rows_multi(out: &mut [f32], ostride: usize, n: usize, q: &[f32], d: usize, rows: &[f16], stride: usize) {
    for (g, q) in q.chunks_exact(d).enumerate() {
        dot_f16_rows(&mut out[g * ostride..g * ostride + n], q, rows, stride);
    }
}

/// [`axpy_f32_rows`] for several queries over the same rows: `y[g·d .. (g + 1)·d]` takes the
/// rows `0 .. n` weighted by `a[g·astride .. g·astride + n]`, bit-identical on every ISA.
pub fn axpy_f32_rows_multi(y: &mut [f32], d: usize, a: &[f32], astride: usize, n: usize, rows: &[f32], stride: usize) {
    for (g, y) in y.chunks_exact_mut(d).enumerate() {
        axpy_f32_rows(y, &a[g * astride..g * astride + n], rows, stride);
    }
}

/// [`axpy_f32_rows_multi`] over f16 rows, each widened to f32 (exactly).
pub fn axpy_f16_rows_multi(y: &mut [f32], d: usize, a: &[f32], astride: usize, n: usize, rows: &[f16], stride: usize) {
    for (g, y) in y.chunks_exact_mut(d).enumerate() {
        axpy_f16_rows(y, &a[g * astride..g * astride + n], rows, stride);
    }
}

/// [`dot_f32_rows`] over bf16 rows, each widened to f32 (exactly): the bits of
/// [`dot_f32_rows`] over the widened rows.
pub fn dot_bf16_rows(out: &mut [f32], q: &[f32], rows: &[bf16], stride: usize) {
    let wide: Vec<f32> = rows.iter().map(|v| v.to_f32()).collect();
    dot_f32_rows(out, q, &wide, stride);
}

/// [`dot_f32_rows`] over f16 rows, each widened to f32 (exactly).
pub fn dot_f16_rows(out: &mut [f32], q: &[f32], rows: &[f16], stride: usize) {
    let wide: Vec<f32> = rows.iter().map(|v| v.to_f32()).collect();
    dot_f32_rows(out, q, &wide, stride);
}

/// [`axpy_f32_rows`] over f16 rows, each widened to f32 (exactly).
pub fn axpy_f16_rows(y: &mut [f32], a: &[f32], rows: &[f16], stride: usize) {
    let wide: Vec<f32> = rows.iter().map(|v| v.to_f32()).collect();
    axpy_f32_rows(y, a, &wide, stride);
}

/// [`axpy_f32_rows`] over bf16 rows, each widened to f32 (exactly).
pub fn axpy_bf16_rows(y: &mut [f32], a: &[f32], rows: &[bf16], stride: usize) {
    let wide: Vec<f32> = rows.iter().map(|v| v.to_f32()).collect();
    axpy_f32_rows(y, a, &wide, stride);
}
