//! AVX2 + FMA + F16C kernels. The 4-bit lookup uses two 8-entry `vpermps` halves and a blend on
//! bit 3 of the code; int8 products use `vpmaddubsw` on |a| and sign-adjusted w.
//!
//! # Safety (for every function here)
//! The caller must ensure the CPU supports AVX2, FMA and F16C, which `crate::dispatch::Kernels`
//! guarantees by construction, and must pass slices with the lengths documented on the matching
//! `crate::scalar` function.

use core::arch::x86_64::*;
use half::{bf16, f16};

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: plain register arithmetic; AVX is enabled by the caller.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[inline(always)]
pub(super) unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: plain register arithmetic; AVX2 is enabled by the caller.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

/// Elements the row loops read: f32, or bf16 widened to f32 on load (exactly, so a bf16 row
/// gives the bits its f32 copy gives).
pub(super) trait RowElem: Copy {
    /// Eight elements at `p` as f32.
    ///
    /// # Safety
    /// AVX2 enabled (inlined into `#[target_feature]` callers); eight elements readable at `p`.
    unsafe fn load8(p: *const Self) -> __m256;
    /// One element as f32.
    fn widen(self) -> f32;
}

impl RowElem for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl RowElem for bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        // SAFETY: the caller's contract; a bf16 is the top half of the f32 it widens to.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i))))
        }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl RowElem for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the caller's contract; F16C is enabled wherever f16 rows are read.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// See [`crate::scalar::dot_f32`].
///
/// # Safety
/// AVX2 and FMA must be available; `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // SAFETY: both hold n elements.
    unsafe { dot_body(w.as_ptr(), x.as_ptr(), w.len().min(x.len())) }
}

/// `Σ w·x` over `n` elements, `x` widened from `E`.
///
/// # Safety
/// AVX2 and FMA enabled (callers are `#[target_feature]` functions); `n` elements at each.
#[inline(always)]
unsafe fn dot_body<E: RowElem>(wp: *const f32, xp: *const E, n: usize) -> f32 {
    let mut i = 0;
    // SAFETY: every load stays below n.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i + 8 * j)), E::load8(xp.add(i + 8 * j)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), E::load8(xp.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        while i < n {
            s = (*wp.add(i)).mul_add((*xp.add(i)).widen(), s);
            i += 1;
        }
        s
    }
}

/// See [`crate::scalar::axpy_f32`]; one FMA per element, so bit-identical to it.
///
/// # Safety
/// AVX2 and FMA must be available; `y.len() == x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    // SAFETY: every access stays below n, which bounds both slices.
    unsafe {
        let av = _mm256_set1_ps(a);
        while i + 8 <= n {
            _mm256_storeu_ps(yp.add(i), _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(yp.add(i))));
            i += 8;
        }
        while i < n {
            *yp.add(i) = a.mul_add(*xp.add(i), *yp.add(i));
            i += 1;
        }
    }
}

/// Lane `r` of the result = the sum of `v[r]`'s eight lanes.
#[inline(always)]
pub(super) unsafe fn hsum4(v: [__m256; 4]) -> __m128 {
    // SAFETY: plain register arithmetic; AVX is enabled by the caller.
    unsafe {
        let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))
    }
}

/// See [`crate::scalar::dot_f32_rows`]: eight rows at a time (then four, then the rest), each
/// query vector loaded once for the group, every row with the same reduction.
///
/// # Safety
/// AVX2 and FMA must be available; `rows` holds `(out.len() − 1)·stride + q.len()` elements
/// (when `out` is not empty).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_rows(out: &mut [f32], q: &[f32], rows: &[f32], stride: usize) {
    // SAFETY: the caller's contract is the body's.
    unsafe { dot_rows_body(out, q, rows.as_ptr(), stride) }
}

/// See [`crate::scalar::dot_bf16_rows`]: [`dot_f32_rows`] over bf16 rows widened on load, with
/// the bits of [`dot_f32_rows`] over the widened values.
///
/// # Safety
/// As [`dot_f32_rows`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_bf16_rows(out: &mut [f32], q: &[f32], rows: &[bf16], stride: usize) {
    // SAFETY: the caller's contract is the body's.
    unsafe { dot_rows_body(out, q, rows.as_ptr(), stride) }
}

/// See [`crate::scalar::dot_f16_rows`]: [`dot_f32_rows`] over f16 rows widened on load (F16C),
/// with the bits of [`dot_f32_rows`] over the widened values.
///
/// # Safety
/// As [`dot_f32_rows`], and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_rows(out: &mut [f32], q: &[f32], rows: &[f16], stride: usize) {
    // SAFETY: the caller's contract is the body's.
    unsafe { dot_rows_body(out, q, rows.as_ptr(), stride) }
}

/// The body of [`dot_f32_rows`] for rows of `E`.
///
/// # Safety
/// As [`dot_f32_rows`], with AVX2 and FMA enabled by the caller.
#[inline(always)]
unsafe fn dot_rows_body<E: RowElem>(out: &mut [f32], q: &[f32], rp: *const E, stride: usize) {
    let n = out.len();
    let mut j = 0;
    // SAFETY: the groups read rows j .. j + G, inside the rows by the caller's contract.
    unsafe {
        // Eight rows a pass keep eight independent FMA chains in flight (four leave the chains'
        // latency exposed: attention's 64-wide heads and a low-rank A are all chain); each row
        // keeps the four-row group's bits, so results do not depend on the grouping.
        while j + 8 <= n {
            let s = dot_rows_group::<E, 8>(q, rp.add(j * stride), stride);
            out[j..j + 8].copy_from_slice(&s);
            j += 8;
        }
        while j + 4 <= n {
            let s = dot_rows_group::<E, 4>(q, rp.add(j * stride), stride);
            out[j..j + 4].copy_from_slice(&s);
            j += 4;
        }
        // The last rows with the groups' reduction too, so a row's bits do not depend on how
        // many rows share the call (a low-rank B is read in pieces of any length).
        let rest = &mut out[j..];
        match rest.len() {
            3 => rest.copy_from_slice(&dot_rows_group::<E, 3>(q, rp.add(j * stride), stride)),
            2 => rest.copy_from_slice(&dot_rows_group::<E, 2>(q, rp.add(j * stride), stride)),
            1 => rest.copy_from_slice(&dot_rows_group::<E, 1>(q, rp.add(j * stride), stride)),
            _ => {}
        }
    }
}

/// `G` rows against `q`: one eight-lane chain per row, summed four rows at a time by [`hsum4`],
/// then the elements past the last multiple of eight in order.
///
/// # Safety
/// AVX2 and FMA enabled by the caller; rows `0 .. G` (`stride` apart) readable for `q.len()`.
#[inline(always)]
unsafe fn dot_rows_group<E: RowElem, const G: usize>(q: &[f32], rp: *const E, stride: usize) -> [f32; G] {
    let (d, qp) = (q.len(), q.as_ptr());
    // SAFETY: loads stay inside rows 0 .. G by the caller's contract.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); G];
        let mut i = 0;
        while i + 8 <= d {
            let qv = _mm256_loadu_ps(qp.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(E::load8(rp.add(r * stride + i)), qv, *a);
            }
            i += 8;
        }
        let mut s = [0f32; G];
        // Four rows a `hsum4`, indexed by constants (chunk iterators left a call and a
        // `memcpy` per four rows out of line).
        for c in (0..G).step_by(4) {
            // Fewer than four rows are padded with zero vectors: a row's lane of `hsum4` only
            // ever adds that row's own lanes, so padding leaves its bits as they are.
            let v: [__m256; 4] = std::array::from_fn(|k| if c + k < G { acc[c + k] } else { _mm256_setzero_ps() });
            let mut lanes = [0f32; 4];
            _mm_storeu_ps(lanes.as_mut_ptr(), hsum4(v));
            for (k, &l) in lanes.iter().enumerate().take(G - c) {
                s[c + k] = l;
            }
        }
        for (r, sr) in s.iter_mut().enumerate() {
            for ii in i..d {
                *sr = (*qp.add(ii)).mul_add((*rp.add(r * stride + ii)).widen(), *sr);
            }
        }
        s
    }
}

/// See [`crate::scalar::axpy_f32_rows`]: 32 columns at a time stay in registers across all the
/// rows (one FMA per element and row, in row order, so bit-identical to the scalar code).
///
/// # Safety
/// AVX2 and FMA must be available; `rows` holds `(a.len() − 1)·stride + y.len()` elements (when
/// `a` is not empty).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32_rows(y: &mut [f32], a: &[f32], rows: &[f32], stride: usize) {
    // SAFETY: the caller's contract is the body's.
    unsafe { axpy_rows_body(y, a, rows.as_ptr(), stride) }
}

/// See [`crate::scalar::axpy_bf16_rows`]: [`axpy_f32_rows`] over bf16 rows widened on load, with
/// its bits over the widened values.
///
/// # Safety
/// As [`axpy_f32_rows`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_bf16_rows(y: &mut [f32], a: &[f32], rows: &[bf16], stride: usize) {
    // SAFETY: the caller's contract is the body's.
    unsafe { axpy_rows_body(y, a, rows.as_ptr(), stride) }
}

/// See [`crate::scalar::axpy_f16_rows`]: [`axpy_f32_rows`] over f16 rows widened on load (F16C),
/// with its bits over the widened values.
///
/// # Safety
/// As [`axpy_f32_rows`], and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_f16_rows(y: &mut [f32], a: &[f32], rows: &[f16], stride: usize) {
    // SAFETY: the caller's contract is the body's.
    unsafe { axpy_rows_body(y, a, rows.as_ptr(), stride) }
}

/// The body of [`axpy_f32_rows`] for rows of `E`.
///
/// # Safety
/// As [`axpy_f32_rows`], with AVX2 and FMA enabled by the caller.
#[inline(always)]
unsafe fn axpy_rows_body<E: RowElem>(y: &mut [f32], a: &[f32], rp: *const E, stride: usize) {
    let d = y.len();
    let yp = y.as_mut_ptr();
    let mut c = 0;
    // SAFETY: row j reads rp[j·stride + c ..] below j·stride + d, inside the rows by the caller's
    // contract; y accesses stay below d.
    unsafe {
        // 64 columns a pass where they fit: eight independent chains (each column's FMAs stay in
        // row order, so the bits do not change), where 32 leave the FMA latency exposed.
        while c + 64 <= d {
            axpy_cols::<E, 8>(yp.add(c), a, rp.wrapping_add(c), stride);
            c += 64;
        }
        while c + 32 <= d {
            axpy_cols::<E, 4>(yp.add(c), a, rp.wrapping_add(c), stride);
            c += 32;
        }
        while c + 8 <= d {
            axpy_cols::<E, 1>(yp.add(c), a, rp.wrapping_add(c), stride);
            c += 8;
        }
        for i in c..d {
            let mut v = *yp.add(i);
            for (j, &aj) in a.iter().enumerate() {
                v = aj.mul_add((*rp.add(j * stride + i)).widen(), v);
            }
            *yp.add(i) = v;
        }
    }
}

/// `8·U` columns of [`axpy_rows_body`] at `yp`, held in registers across all the rows.
///
/// # Safety
/// AVX2 and FMA enabled by the caller; `8·U` floats at `yp`, and at `rp + j·stride` for every
/// row `j < a.len()`.
#[inline(always)]
unsafe fn axpy_cols<E: RowElem, const U: usize>(yp: *mut f32, a: &[f32], rp: *const E, stride: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc: [__m256; U] = std::array::from_fn(|u| _mm256_loadu_ps(yp.add(8 * u)));
        for (j, &aj) in a.iter().enumerate() {
            let (av, p) = (_mm256_set1_ps(aj), rp.add(j * stride));
            for (u, v) in acc.iter_mut().enumerate() {
                *v = _mm256_fmadd_ps(av, E::load8(p.add(8 * u)), *v);
            }
        }
        for (u, v) in acc.iter().enumerate() {
            _mm256_storeu_ps(yp.add(8 * u), *v);
        }
    }
}

/// See [`crate::scalar::dot_f32_rows_multi`]: every query's scores with [`dot_f32_rows`]'s
/// bits, each row's vectors loaded once for up to three queries (the query heads of a
/// grouped-query kv head read its cached keys once instead of once each).
///
/// # Safety
/// AVX2 and FMA must be available; `d > 0` divides `q.len()`; for every query `g`, `out` holds
/// `g·ostride + n` elements and `rows` `(n − 1)·stride + d` (when `n > 0`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_rows_multi(
    out: &mut [f32],
    ostride: usize,
    n: usize,
    q: &[f32],
    d: usize,
    rows: &[f32],
    stride: usize,
) {
    // SAFETY: the caller's contract is the body's.
    unsafe { dot_rows_multi_body(out, ostride, n, q, d, rows.as_ptr(), stride) }
}

/// [`dot_f32_rows_multi`] over f16 rows widened on load (F16C): the bits of
/// [`dot_f16_rows`] per query.
///
/// # Safety
/// As [`dot_f32_rows_multi`], and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_rows_multi(
    out: &mut [f32],
    ostride: usize,
    n: usize,
    q: &[f32],
    d: usize,
    rows: &[f16],
    stride: usize,
) {
    // SAFETY: the caller's contract is the body's.
    unsafe { dot_rows_multi_body(out, ostride, n, q, d, rows.as_ptr(), stride) }
}

/// The body of [`dot_f32_rows_multi`] for rows of `E`: queries three at a time (then two, then
/// one through [`dot_rows_body`]), rows in groups whose accumulators fit the sixteen registers.
///
/// # Safety
/// As [`dot_f32_rows_multi`], with AVX2 and FMA enabled by the caller.
#[inline(always)]
unsafe fn dot_rows_multi_body<E: RowElem>(
    out: &mut [f32],
    ostride: usize,
    n: usize,
    q: &[f32],
    d: usize,
    rp: *const E,
    stride: usize,
) {
    let nq = q.len() / d;
    let mut g = 0;
    // SAFETY: the caller's contract, query by query.
    unsafe {
        while g + 3 <= nq {
            dot_rows_queries::<E, 3, 3>(out, ostride, n, q, d, g, rp, stride);
            g += 3;
        }
        if g + 2 <= nq {
            dot_rows_queries::<E, 2, 4>(out, ostride, n, q, d, g, rp, stride);
            g += 2;
        }
        if g < nq {
            dot_rows_body(&mut out[g * ostride..g * ostride + n], &q[g * d..(g + 1) * d], rp, stride);
        }
    }
}

/// Queries `g .. g + Q` of [`dot_rows_multi_body`] over all `n` rows, `G` rows a pass (the last
/// rows one pass of fewer).
///
/// # Safety
/// As [`dot_f32_rows_multi`] for those queries, with AVX2 and FMA enabled by the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_rows_queries<E: RowElem, const Q: usize, const G: usize>(
    out: &mut [f32],
    ostride: usize,
    n: usize,
    q: &[f32],
    d: usize,
    g: usize,
    rp: *const E,
    stride: usize,
) {
    let mut qp = [q.as_ptr(); Q];
    for (u, p) in qp.iter_mut().enumerate() {
        *p = q[(g + u) * d..].as_ptr();
    }
    let mut j = 0;
    // SAFETY: each pass reads rows j .. j + G (or the last ones), inside the caller's rows.
    unsafe {
        while j + G <= n {
            put_scores::<Q, G>(out, ostride, g, j, &dot_rows_group_multi::<E, Q, G>(qp, d, rp.add(j * stride), stride));
            j += G;
        }
        match n - j {
            0 => {}
            1 => put_scores::<Q, 1>(
                out,
                ostride,
                g,
                j,
                &dot_rows_group_multi::<E, Q, 1>(qp, d, rp.add(j * stride), stride),
            ),
            2 => put_scores::<Q, 2>(
                out,
                ostride,
                g,
                j,
                &dot_rows_group_multi::<E, Q, 2>(qp, d, rp.add(j * stride), stride),
            ),
            _ => put_scores::<Q, 3>(
                out,
                ostride,
                g,
                j,
                &dot_rows_group_multi::<E, Q, 3>(qp, d, rp.add(j * stride), stride),
            ),
        }
    }
}

/// Rows `j .. j + R` of queries `g .. g + Q` from one pass of [`dot_rows_queries`]. `R` a
/// constant, so each query's store is a fixed move: a closure taking the count at run time
/// stayed out of line, a call and a `memcpy` call for every three keys of attention.
#[inline(always)]
fn put_scores<const Q: usize, const R: usize>(out: &mut [f32], ostride: usize, g: usize, j: usize, s: &[[f32; 4]; Q]) {
    for (u, s) in s.iter().enumerate() {
        out[(g + u) * ostride + j..][..R].copy_from_slice(&s[..R]);
    }
}

/// [`dot_rows_group`] for `Q` queries at once (`G ≤ 4` rows): each row vector is loaded once
/// for the `Q` queries; every (query, row) keeps its own eight-lane chain, its lane of
/// [`hsum4`] and its tail, so its bits are [`dot_rows_group`]'s.
///
/// # Safety
/// AVX2 and FMA enabled by the caller; `d` floats at every `qp[u]`, rows `0 .. G` (`stride`
/// apart) readable for `d`.
#[inline(always)]
unsafe fn dot_rows_group_multi<E: RowElem, const Q: usize, const G: usize>(
    qp: [*const f32; Q],
    d: usize,
    rp: *const E,
    stride: usize,
) -> [[f32; 4]; Q] {
    // SAFETY: loads stay inside rows 0 .. G and the queries by the caller's contract.
    unsafe {
        let z = _mm256_setzero_ps();
        let mut acc = [[z; G]; Q];
        let mut i = 0;
        while i + 8 <= d {
            let mut rv = [z; G];
            for (r, v) in rv.iter_mut().enumerate() {
                *v = E::load8(rp.add(r * stride + i));
            }
            for (u, acc) in acc.iter_mut().enumerate() {
                let qv = _mm256_loadu_ps(qp[u].add(i));
                for (a, &v) in acc.iter_mut().zip(&rv) {
                    *a = _mm256_fmadd_ps(v, qv, *a);
                }
            }
            i += 8;
        }
        let mut s = [[0f32; 4]; Q];
        for (u, (acc, s)) in acc.iter().zip(s.iter_mut()).enumerate() {
            // Rows past G padded with zero vectors, as `dot_rows_group` pads.
            let mut v = [z; 4];
            v[..G].copy_from_slice(acc);
            _mm_storeu_ps(s.as_mut_ptr(), hsum4(v));
            for (r, sr) in s.iter_mut().enumerate().take(G) {
                for ii in i..d {
                    *sr = (*qp[u].add(ii)).mul_add((*rp.add(r * stride + ii)).widen(), *sr);
                }
            }
        }
        s
    }
}

/// See [`crate::scalar::axpy_f32_rows_multi`]: every query's weighted sum with
/// [`axpy_f32_rows`]'s bits, each row's vectors loaded once for up to three queries.
///
/// # Safety
/// AVX2 and FMA must be available; `d > 0` divides `y.len()`; for every query `g`, `a` holds
/// `g·astride + n` elements; `rows` holds `(n − 1)·stride + d` (when `n > 0`), `stride ≥ d`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_f32_rows_multi(
    y: &mut [f32],
    d: usize,
    a: &[f32],
    astride: usize,
    n: usize,
    rows: &[f32],
    stride: usize,
) {
    // SAFETY: the caller's contract is the body's.
    unsafe { axpy_rows_multi_body(y, d, a, astride, n, rows.as_ptr(), stride) }
}

/// [`axpy_f32_rows_multi`] over f16 rows widened on load (F16C).
///
/// # Safety
/// As [`axpy_f32_rows_multi`], and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_f16_rows_multi(
    y: &mut [f32],
    d: usize,
    a: &[f32],
    astride: usize,
    n: usize,
    rows: &[f16],
    stride: usize,
) {
    // SAFETY: the caller's contract is the body's.
    unsafe { axpy_rows_multi_body(y, d, a, astride, n, rows.as_ptr(), stride) }
}

/// The body of [`axpy_f32_rows_multi`] for rows of `E`: queries three at a time over 16 columns
/// a pass, then two over 32, then one through [`axpy_rows_body`]; columns a pass does not cover
/// go through [`axpy_rows_body`] query by query. Every column keeps its FMAs in row order.
///
/// # Safety
/// As [`axpy_f32_rows_multi`], with AVX2 and FMA enabled by the caller.
#[inline(always)]
unsafe fn axpy_rows_multi_body<E: RowElem>(
    y: &mut [f32],
    d: usize,
    a: &[f32],
    astride: usize,
    n: usize,
    rp: *const E,
    stride: usize,
) {
    let nq = y.len() / d;
    let mut g = 0;
    // SAFETY: the caller's contract, query by query and column by column.
    unsafe {
        while g + 3 <= nq {
            axpy_rows_queries::<E, 3, 2>(y, d, a, astride, n, g, rp, stride);
            g += 3;
        }
        if g + 2 <= nq {
            axpy_rows_queries::<E, 2, 4>(y, d, a, astride, n, g, rp, stride);
            g += 2;
        }
        if g < nq {
            axpy_rows_body(&mut y[g * d..(g + 1) * d], &a[g * astride..g * astride + n], rp, stride);
        }
    }
}

/// Queries `g .. g + Q` of [`axpy_rows_multi_body`]: `8·U` columns a pass held in registers
/// for all `Q` across the rows, the columns past the last whole pass query by query.
///
/// # Safety
/// As [`axpy_f32_rows_multi`] for those queries, with AVX2 and FMA enabled by the caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn axpy_rows_queries<E: RowElem, const Q: usize, const U: usize>(
    y: &mut [f32],
    d: usize,
    a: &[f32],
    astride: usize,
    n: usize,
    g: usize,
    rp: *const E,
    stride: usize,
) {
    let mut yp = [y.as_mut_ptr(); Q];
    let mut ap = [a.as_ptr(); Q];
    for u in 0..Q {
        yp[u] = y[(g + u) * d..].as_mut_ptr();
        ap[u] = a[(g + u) * astride..].as_ptr();
    }
    let mut c = 0;
    // SAFETY: pass c reads columns c .. c + 8U < d of rows 0 .. n and writes those of each
    // query's y (caller's contract).
    unsafe {
        let z = _mm256_setzero_ps();
        while c + 8 * U <= d {
            let mut acc = [[z; U]; Q];
            for (acc, &p) in acc.iter_mut().zip(&yp) {
                for (w, v) in acc.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(p.add(c + 8 * w));
                }
            }
            for j in 0..n {
                let p = rp.add(j * stride + c);
                let mut rv = [z; U];
                for (w, v) in rv.iter_mut().enumerate() {
                    *v = E::load8(p.add(8 * w));
                }
                for (acc, &aq) in acc.iter_mut().zip(&ap) {
                    let av = _mm256_set1_ps(*aq.add(j));
                    for (v, &r) in acc.iter_mut().zip(&rv) {
                        *v = _mm256_fmadd_ps(av, r, *v);
                    }
                }
            }
            for (acc, &p) in acc.iter().zip(&yp) {
                for (w, v) in acc.iter().enumerate() {
                    _mm256_storeu_ps(p.add(c + 8 * w), *v);
                }
            }
            c += 8 * U;
        }
        if c < d {
            for u in 0..Q {
                let row = (g + u) * d;
                let au = &a[(g + u) * astride..(g + u) * astride + n];
                axpy_rows_body(&mut y[row + c..row + d], au, rp.add(c), stride);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_half(w: *const u16, x: &[f32], n: usize, bf: bool) -> f32 {
    let xp = x.as_ptr();
    let mut i = 0;
    // SAFETY: loads stay below n; features are enabled by the caller.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 2];
        let load = |p: *const u16| -> __m256 {
            let raw = _mm_loadu_si128(p as *const __m128i);
            if bf {
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
            } else {
                _mm256_cvtph_ps(raw)
            }
        };
        while i + 16 <= n {
            acc[0] = _mm256_fmadd_ps(load(w.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
            acc[1] = _mm256_fmadd_ps(load(w.add(i + 8)), _mm256_loadu_ps(xp.add(i + 8)), acc[1]);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
        while i < n {
            let bits = *w.add(i);
            let v = if bf { bf16::from_bits(bits).to_f32() } else { f16::from_bits(bits).to_f32() };
            s = v.mul_add(*xp.add(i), s);
            i += 1;
        }
        s
    }
}

/// See [`crate::scalar::dot_f16`].
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    // SAFETY: f16 is a u16 bit pattern; lengths are the caller's contract.
    unsafe { dot_half(w.as_ptr() as *const u16, x, w.len().min(x.len()), false) }
}

/// See [`crate::scalar::dot_bf16`].
///
/// # Safety
/// AVX2 and FMA must be available; `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    // SAFETY: bf16 is a u16 bit pattern; lengths are the caller's contract.
    unsafe { dot_half(w.as_ptr() as *const u16, x, w.len().min(x.len()), true) }
}

/// See [`crate::scalar::dot_fourbit`].
///
/// # Safety
/// AVX2, FMA must be available; `half_block` is a multiple of 8; `codes`, `xe`, `xo` hold
/// `scales.len() * half_block` elements.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_fourbit(
    codes: &[u8],
    scales: &[f32],
    levels: &[f32; 16],
    xe: &[f32],
    xo: &[f32],
    half_block: usize,
) -> f32 {
    debug_assert!(half_block.is_multiple_of(8));
    let (cp, ep, op) = (codes.as_ptr(), xe.as_ptr(), xo.as_ptr());
    // SAFETY: all loads are within `scales.len() * half_block` elements (caller's contract).
    unsafe {
        let lo = _mm256_loadu_ps(levels.as_ptr());
        let hi = _mm256_loadu_ps(levels.as_ptr().add(8));
        // 16-entry lookup: vpermps reads the low 3 bits; bit 3, moved to the sign bit, picks the half.
        let lookup = |idx: __m256i| -> __m256 {
            let pick = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
            _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), pick)
        };
        let mut acc = [_mm256_setzero_ps(); 2];
        for (b, &scale) in scales.iter().enumerate() {
            let mut be = _mm256_setzero_ps();
            let mut bo = _mm256_setzero_ps();
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(cp.add(i) as *const __m128i));
                let we = lookup(_mm256_srli_epi32(v, 4));
                let wo = lookup(_mm256_and_si256(v, _mm256_set1_epi32(0x0F)));
                be = _mm256_fmadd_ps(we, _mm256_loadu_ps(ep.add(i)), be);
                bo = _mm256_fmadd_ps(wo, _mm256_loadu_ps(op.add(i)), bo);
                i += 8;
            }
            let k = b & 1;
            acc[k] = _mm256_fmadd_ps(_mm256_add_ps(be, bo), _mm256_set1_ps(scale), acc[k]);
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// See [`crate::scalar::dot_int8`]: `vpmaddubsw(|a|, sign(w, a))` gives exact i16 pair sums
/// (at most 2·127² < 2¹⁵), widened to i32 by `vpmaddwd` with ones.
///
/// # Safety
/// AVX2 must be available; `a.len() == w.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_int8(a: &[i8], w: &[i8]) -> i32 {
    let n = a.len().min(w.len());
    let (ap, wp) = (a.as_ptr(), w.as_ptr());
    let mut i = 0;
    // SAFETY: full loads stay below n; the tail is scalar.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 2];
        let mut k = 0;
        while i + 32 <= n {
            let va = _mm256_loadu_si256(ap.add(i) as *const __m256i);
            let vw = _mm256_loadu_si256(wp.add(i) as *const __m256i);
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(va), _mm256_sign_epi8(vw, va));
            acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(p, ones));
            k ^= 1;
            i += 32;
        }
        let mut s = hsum_i32(_mm256_add_epi32(acc[0], acc[1]));
        while i < n {
            s += *ap.add(i) as i32 * *wp.add(i) as i32;
            i += 1;
        }
        s
    }
}

/// See [`crate::scalar::dot_fourbit_q8`]; [`fourbit_q8_rows`] with one row.
///
/// # Safety
/// AVX2 must be available; `half_block` is a multiple of 32; `codes`, `qe`, `qo` hold
/// `factors.len() * half_block` elements. `qsum` is unused here (kept for a common signature).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_fourbit_q8(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    _qsum: &[i32],
    half_block: usize,
) -> f32 {
    // SAFETY: the caller's contract is the body's.
    unsafe {
        let [acc] = fourbit_q8_rows::<1, 1>(
            [codes.as_ptr()],
            [[factors.as_ptr()]],
            factors.len(),
            lut,
            [qe.as_ptr()],
            [qo.as_ptr()],
            half_block,
        );
        // The four-row kernel's lane sum, so a row gives the same bits through either.
        let z = _mm256_setzero_ps();
        _mm_cvtss_f32(hsum4([acc[0], z, z, z]))
    }
}

/// See [`crate::scalar::dot_fourbit_q8_x4`]: four rows against the same activations, each
/// activation vector loaded (and its absolute value taken) once for the four. Each row's result
/// is bit-identical to [`dot_fourbit_q8`] of that row.
///
/// # Safety
/// AVX2 must be available; `half_block` is a multiple of 32; every `codes[r]`, `qe`, `qo` hold
/// `nb * half_block` elements and every `factors[r]` `nb` entries, `nb = factors[0].len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_fourbit_q8_x4(
    codes: [&[u8]; 4],
    factors: [&[f32]; 4],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    _qsum: &[i32],
    half_block: usize,
) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: the caller's contract is the body's.
    unsafe {
        let [acc] = fourbit_q8_rows::<4, 1>(
            codes.map(|c| c.as_ptr()),
            [factors.map(|f| f.as_ptr())],
            factors[0].len(),
            lut,
            [qe.as_ptr()],
            [qo.as_ptr()],
            half_block,
        );
        _mm_storeu_ps(out.as_mut_ptr(), hsum4(acc));
    }
    out
}

/// The loop of the 4-bit decode-task kernels, written out where each level uses it with its own
/// row kernel (`$kernel::<R, T [, extra]>`, e.g. [`fourbit_q8_rows`]): rows four at a time for
/// `$t` tokens, then one at a time, every row's lanes summed as the four-row kernel sums them.
/// (A helper taking the row kernels as closures measured 3 % slower decode; this expands to the
/// hand-written loop.) `$factors`, `$qe`, `$qo` and `$out` are arrays of `$t`; the caller holds
/// the `unsafe` contract of the row kernel for every row of `$out`.
macro_rules! fourbit_rows_task {
    ($kernel:ident $(, $extra:ident)?; $t:literal; $codes:expr, $factors:expr, $lut:expr, $qe:expr, $qo:expr, $half_block:expr, $out:expr) => {{
        let out: [&mut [f32]; $t] = $out;
        let n = out[0].len();
        let op: [*mut f32; $t] = out.map(|o: &mut [f32]| o.as_mut_ptr());
        let fp: [*const f32; $t] = $factors.map(|f: &[f32]| f.as_ptr());
        let nb = $factors[0].len() / n.max(1);
        let row_bytes = nb * $half_block;
        let cp = $codes.as_ptr();
        let (qe, qo): ([*const i8; $t], [*const i8; $t]) = ($qe.map(|q: &[i8]| q.as_ptr()), $qo.map(|q: &[i8]| q.as_ptr()));
        let mut i = 0;
        while i + 4 <= n {
            let rows: [usize; 4] = std::array::from_fn(|j| i + j);
            let c = rows.map(|r| cp.add(r * row_bytes));
            let acc = $kernel::<4, $t $(, $extra)?>(c, fp.map(|f| rows.map(|r| f.add(r * nb))), nb, $lut, qe, qo, $half_block);
            for (o, a) in op.iter().zip(acc) {
                _mm_storeu_ps(o.add(i), hsum4(a));
            }
            i += 4;
        }
        let z = _mm256_setzero_ps();
        while i < n {
            for t in 0..$t {
                let (c, f) = ([cp.add(i * row_bytes)], [[fp[t].add(i * nb)]]);
                let [[acc]] = $kernel::<1, 1 $(, $extra)?>(c, f, nb, $lut, [qe[t]], [qo[t]], $half_block);
                *op[t].add(i) = _mm_cvtss_f32(hsum4([acc, z, z, z]));
            }
            i += 1;
        }
    }};
}
pub(super) use fourbit_rows_task;

/// See [`crate::scalar::dot_fourbit_q8_rows`]: every row of a decode task in one call, four
/// at a time, then one at a time, each row's bits those of [`dot_fourbit_q8_x4`] (a call per
/// four rows of 576 weights cost about a quarter of their arithmetic).
///
/// # Safety
/// AVX2 must be available; `half_block` is a multiple of 32; with `n = out.len()` and
/// `nb = factors.len() / n`, `codes` holds `n * nb * half_block` bytes (row after row), `qe`,
/// `qo` `nb * half_block` elements and `factors` exactly `n * nb` entries.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_fourbit_q8_rows(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    _qsum: &[i32],
    half_block: usize,
    out: &mut [f32],
) {
    // SAFETY: row i reads `nb·half_block` codes at `i·nb·half_block` and `nb` factors at `i·nb`,
    // i below `out.len()`: inside the lengths the caller guarantees.
    unsafe { fourbit_rows_task!(fourbit_q8_rows; 1; codes, [factors], lut, [qe], [qo], half_block, [out]) }
}

/// See [`crate::scalar::dot_fourbit_q8_rows_t2`]: [`dot_fourbit_q8_rows`] for two tokens at
/// once (a decode batch), each row's codes looked up once for both, every (row, token) with the
/// bits of the one-row kernel on that token alone.
///
/// # Safety
/// As [`dot_fourbit_q8_rows`], for both tokens' activations and factors; `out[0]` and `out[1]`
/// have equal lengths.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_fourbit_q8_rows_t2(
    codes: &[u8],
    factors: [&[f32]; 2],
    lut: &[i8; 16],
    qe: [&[i8]; 2],
    qo: [&[i8]; 2],
    _qsum: [&[i32]; 2],
    half_block: usize,
    out: [&mut [f32]; 2],
) {
    // SAFETY: row i reads `nb·half_block` codes at `i·nb·half_block` and, per token, `nb` factors
    // at `i·nb`, i below `out[0].len()`: inside the lengths the caller guarantees.
    unsafe { fourbit_rows_task!(fourbit_q8_rows; 2; codes, factors, lut, qe, qo, half_block, out) }
}

/// See [`crate::scalar::dot_fourbit_q8_rows_t8`]: a decode task's rows (weights in blocks of
/// 64) against eight tokens prepared as [`crate::pairs::TokenPairs`], every (row, token) with the
/// bits of [`dot_fourbit_q8_rows`] on that token alone. Each row's codes are looked up once for
/// the eight; the tokens' codes and their absolute values come straight from the prepared
/// buffers, and each block's factor is one multiply of the row's scale by the token's.
///
/// # Safety
/// AVX2 and FMA must be available; with `n = out.rows()` and `nb = group.nb`, `codes` holds
/// `n * nb * 32` bytes (row after row), `scales` `n * nb` entries, and `group` its full buffers
/// for `nb` blocks of two steps.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_fourbit_q8_rows_t8(
    codes: &[u8],
    scales: &[f32],
    lut: &[i8; 16],
    group: crate::pairs::PairGroup<'_>,
    mut out: crate::Grid<'_>,
) {
    let n = out.rows();
    let nb = group.nb;
    let row_bytes = nb * 32;
    let (op, rs, ts) = out.raw();
    // SAFETY: row i reads 32·nb code bytes at i·row_bytes and nb scales at i·nb, i < n; block b
    // of the group reads 512 bytes of codes and of their absolute values at b·512 and 64
    // scales at b·64 (caller's contract); stores go to the grid's cells of rows below n.
    unsafe {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
        let (cp, sp) = (codes.as_ptr(), scales.as_ptr());
        let z = _mm256_setzero_ps();
        let mut i = 0;
        while i < n {
            // Up to four rows, one at a time, their lanes kept to be summed four rows at once
            // as the one-token kernel sums them (a row's lane of `hsum4` depends on it alone).
            // The blocks in chunks, each chunk's token data (1.25 KiB a block) read from L1 by
            // all four rows: a long row's whole group (80 KiB at 4096 columns) did not stay
            // there from one row to the next (Mistral-7B's 14336 × 4096 at m = 128: 1.23× →
            // 1.45× f32 gemm; chunks of 2, 8 and 16 blocks did less). Each lane still adds its
            // blocks in order.
            let rows = (n - i).min(4);
            let mut acc = [[z; 8]; 4];
            for b0 in (0..nb).step_by(T8_CHUNK) {
                let blocks = b0..(b0 + T8_CHUNK).min(nb);
                for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                    rows_t8(cp.add((i + r) * row_bytes), sp.add((i + r) * nb), blocks.clone(), table, group, acc);
                }
            }
            if ts == 1 {
                // A row's eight tokens side by side: two `hsum4` of four tokens each (a lane of
                // `hsum4` depends on its own vector alone, so the bits are the same).
                for (r, a) in acc.iter().enumerate().take(rows) {
                    let p = op.add((i + r) * rs);
                    _mm_storeu_ps(p, hsum4([a[0], a[1], a[2], a[3]]));
                    _mm_storeu_ps(p.add(4), hsum4([a[4], a[5], a[6], a[7]]));
                }
            } else {
                for (t, &first) in acc[0].iter().enumerate() {
                    // The four rows' vectors of token t read in place (`acc.map` copied all
                    // thirty-two vectors per token: a sixth of a prompt's kernel time at AVX2).
                    let v = hsum4([first, acc[1][t], acc[2][t], acc[3][t]]);
                    let mut s = [0f32; 4];
                    _mm_storeu_ps(s.as_mut_ptr(), v);
                    for (r, &s) in s.iter().enumerate().take(rows) {
                        *op.add((i + r) * rs + t * ts) = s;
                    }
                }
            }
            i += rows;
        }
    }
}

/// Blocks of a group's token data [`dot_fourbit_q8_rows_t8`] runs through four rows at a time.
const T8_CHUNK: usize = 4;

/// One row's lane sums against a group's eight tokens over `blocks`, added to `acc`.
///
/// # Safety
/// AVX2 and FMA enabled by the caller; codes and scales of every block in `blocks` at `codes`
/// and `scales`, and the group's buffers for them.
#[inline(always)]
unsafe fn rows_t8(
    codes: *const u8,
    scales: *const f32,
    blocks: std::ops::Range<usize>,
    table: __m256i,
    group: crate::pairs::PairGroup<'_>,
    acc: &mut [__m256; 8],
) {
    // SAFETY: the caller's contract.
    unsafe {
        let nib = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let (qp, ap, xp) = (group.q.as_ptr(), group.aq.as_ptr(), group.xs.as_ptr());
        for b in blocks {
            ahead(codes, b * 32);
            let v = _mm256_loadu_si256(codes.add(b * 32) as *const __m256i);
            let (wh, wl) = nibbles(table, nib, v);
            let ws = _mm256_set1_ps(*scales.add(b));
            let (qb, ab, xb) = (qp.add(b * 512), ap.add(b * 512), xp.add(b * 64));
            for (t, acc) in acc.iter_mut().enumerate() {
                // Token t's even codes at pair t/2, step 0, half t%2; its odd ones at step 1.
                let at = (t / 2) * 128 + (t % 2) * 32;
                let load = |p: *const i8| _mm256_loadu_si256(p as *const __m256i);
                let ph = _mm256_maddubs_epi16(load(ab.add(at)), _mm256_sign_epi8(wh, load(qb.add(at))));
                let pl = _mm256_maddubs_epi16(load(ab.add(at + 64)), _mm256_sign_epi8(wl, load(qb.add(at + 64))));
                // Widen each product vector separately: their i16 sum could overflow.
                let sum = _mm256_add_epi32(_mm256_madd_epi16(ph, ones), _mm256_madd_epi16(pl, ones));
                let f = _mm256_mul_ps(ws, _mm256_loadu_ps(xb.add((t / 2) * 16 + (t % 2) * 8)));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), f, *acc);
            }
        }
    }
}

/// How far ahead (bytes) of the bytes being read the decode loops prefetch: from DRAM at one
/// thread the AVX2 loops reached far more of the bandwidth with it than without, and 16 KiB did
/// as well as anything up to 64 (docs/PERFORMANCE.md). The cache level aimed at is the
/// process's [`crate::Prefetch`].
const PREFETCH_L2: usize = 16384;

/// Prefetches the weights [`PREFETCH_L2`] bytes past `first + done`, where `first` starts the
/// rows a multi-row kernel streams and `done` counts the bytes it has consumed: the rows of a
/// product are consecutive, so R rows read 32 bytes a step each move through one region R·32
/// bytes a step. (Prefetching each row's own stream ahead only reached the rows being read.)
/// Two lines, for the 128 bytes four rows consume per step; one covers a single row's two steps.
#[inline(always)]
pub(super) fn ahead(first: *const u8, done: usize) {
    let p = first.wrapping_add(done + PREFETCH_L2) as *const i8;
    super::prefetch_line(p);
    super::prefetch_line(p.wrapping_add(64));
}

/// The per-lane partial sums of `R` block-aligned 4-bit rows against the int8 activations of
/// `T` tokens (`nb` blocks each). Nibbles index the int8 level table with `vpshufb`, once per
/// row and step for all tokens; `vpmaddubsw(|q|, sign(w, q))` gives exact i16 pair sums
/// (|w|, |q| ≤ 127), widened to i32 by `vpmaddwd` with ones; each block's sum is converted and
/// scaled once, into one accumulator per row and token. A (row, token) pair goes through the
/// same operations in the same order for any `R` and `T`, so its bits never depend on which
/// rows and tokens share the call.
///
/// # Safety
/// AVX2 and FMA enabled (callers are `#[target_feature]` functions); every `codes[r]` and every
/// token's activations hold `nb * half_block` bytes, every `factors[t][r]` `nb` floats,
/// `half_block` a multiple of 32.
#[inline(always)]
unsafe fn fourbit_q8_rows<const R: usize, const T: usize>(
    codes: [*const u8; R],
    factors: [[*const f32; R]; T],
    nb: usize,
    lut: &[i8; 16],
    qe: [*const i8; T],
    qo: [*const i8; T],
    half_block: usize,
) -> [[__m256; R]; T] {
    // Blocks of 64 (bitsandbytes' default) are one step each: a copy with that constant has no
    // inner loop, and its block sums never outlive the step (no spilled registers).
    // SAFETY: the caller's contract is the callee's.
    unsafe {
        if half_block == 32 {
            fourbit_q8_rows_hb::<R, T, 32>(codes, factors, nb, lut, qe, qo, half_block)
        } else if half_block == 16 {
            fourbit_q8_rows_split::<R, T>(codes, factors, nb, lut, qe, qo)
        } else {
            fourbit_q8_rows_hb::<R, T, 0>(codes, factors, nb, lut, qe, qo, half_block)
        }
    }
}

/// A 32-byte step of codes `v` as the int8 levels of its high and low nibbles (`table` holds
/// the 16 levels in both lanes).
///
/// # Safety
/// AVX2 enabled (inlined into `#[target_feature]` callers).
#[inline(always)]
pub(super) unsafe fn nibbles(table: __m256i, nib: __m256i, v: __m256i) -> (__m256i, __m256i) {
    // SAFETY: register arithmetic; the caller enables AVX2.
    unsafe {
        (
            _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), nib)),
            _mm256_shuffle_epi8(table, _mm256_and_si256(v, nib)),
        )
    }
}

/// Each of `T` tokens' 32 bytes at `i` of their even (`qe`) and odd (`qo`) activations.
///
/// # Safety
/// AVX2 enabled (inlined into `#[target_feature]` callers); 32 bytes readable at `i` of each.
#[inline(always)]
pub(super) unsafe fn step_tokens<const T: usize>(
    qe: [*const i8; T],
    qo: [*const i8; T],
    i: usize,
) -> ([__m256i; T], [__m256i; T]) {
    // SAFETY: the caller's contract.
    unsafe {
        (
            std::array::from_fn(|t| _mm256_loadu_si256(qe[t].add(i) as *const __m256i)),
            std::array::from_fn(|t| _mm256_loadu_si256(qo[t].add(i) as *const __m256i)),
        )
    }
}

/// `[f[0]; 4]` then `[f[1]; 4]`: the factors of the two 32-weight blocks that one 32-byte step
/// covers, in the lanes that hold each block's sums (bytes 0–15 of a step are the first block's
/// 32 weights and end in lanes 0–3 after `vpmaddubsw` + `vpmaddwd`).
///
/// # Safety
/// AVX2 enabled; two floats readable at `f`.
#[inline(always)]
pub(super) unsafe fn factor_pair(f: *const f32) -> __m256 {
    // SAFETY: an 8-byte load of the two floats (caller's contract; `movq` takes any
    // alignment, where `_mm_load_sd` would assume an f64's); register moves.
    unsafe {
        let two = _mm_castsi128_ps(_mm_loadl_epi64(f as *const __m128i));
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
    }
}

/// Step `b`'s block factor(s) from `f`: one broadcast, or with `SPLIT` (blocks of 32 weights,
/// two to a step) the two blocks' [`factor_pair`].
///
/// # Safety
/// AVX2 enabled; entry `b` (with `SPLIT`, `2b` and `2b + 1`) readable at `f`.
#[inline(always)]
pub(super) unsafe fn step_factor<const SPLIT: bool>(f: *const f32, b: usize) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe {
        if SPLIT {
            factor_pair(f.add(2 * b))
        } else {
            _mm256_set1_ps(*f.add(b))
        }
    }
}

/// [`fourbit_q8_rows`] for blocks of 32 weights (16 bytes of codes, bitsandbytes' blocksize
/// 32): each 32-byte step holds two whole blocks, its exact sums scaled lane by lane by the two
/// blocks' factors ([`factor_pair`]) — the same instructions per step as blocks of 64.
///
/// # Safety
/// As [`fourbit_q8_rows`] with `half_block` 16 and `nb` even.
#[inline(always)]
unsafe fn fourbit_q8_rows_split<const R: usize, const T: usize>(
    codes: [*const u8; R],
    factors: [[*const f32; R]; T],
    nb: usize,
    lut: &[i8; 16],
    qe: [*const i8; T],
    qo: [*const i8; T],
) -> [[__m256; R]; T] {
    debug_assert!(nb.is_multiple_of(2));
    // SAFETY: step s reads 32 bytes at 32·s < 16·nb and factors 2s, 2s + 1 < nb (caller's
    // contract); prefetches may point anywhere.
    unsafe {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
        let nib = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); R]; T];
        for s in 0..nb / 2 {
            let i = 32 * s;
            let (qh, ql) = step_tokens(qe, qo, i);
            let aqh = qh.map(|v| _mm256_abs_epi8(v));
            let aql = ql.map(|v| _mm256_abs_epi8(v));
            ahead(codes[0], R * i);
            for r in 0..R {
                let v = _mm256_loadu_si256(codes[r].add(i) as *const __m256i);
                let (wh, wl) = nibbles(table, nib, v);
                for t in 0..T {
                    let ph = _mm256_maddubs_epi16(aqh[t], _mm256_sign_epi8(wh, qh[t]));
                    let pl = _mm256_maddubs_epi16(aql[t], _mm256_sign_epi8(wl, ql[t]));
                    let sum = _mm256_add_epi32(_mm256_madd_epi16(ph, ones), _mm256_madd_epi16(pl, ones));
                    let f = factor_pair(factors[t][r].add(2 * s));
                    acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), f, acc[t][r]);
                }
            }
        }
        acc
    }
}

/// [`fourbit_q8_rows`] with the half block a constant `HB` (0: `half_block` at run time).
///
/// # Safety
/// As [`fourbit_q8_rows`].
#[inline(always)]
unsafe fn fourbit_q8_rows_hb<const R: usize, const T: usize, const HB: usize>(
    codes: [*const u8; R],
    factors: [[*const f32; R]; T],
    nb: usize,
    lut: &[i8; 16],
    qe: [*const i8; T],
    qo: [*const i8; T],
    half_block: usize,
) -> [[__m256; R]; T] {
    let half_block = if HB != 0 { HB } else { half_block };
    debug_assert!(half_block.is_multiple_of(32));
    // SAFETY: loads stay within `nb * half_block` bytes (caller's contract); prefetches may point
    // anywhere.
    unsafe {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
        let nib = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); R]; T];
        for b in 0..nb {
            let mut isum = [[_mm256_setzero_si256(); R]; T];
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let (qh, ql) = step_tokens(qe, qo, i);
                let aqh = qh.map(|v| _mm256_abs_epi8(v));
                let aql = ql.map(|v| _mm256_abs_epi8(v));
                ahead(codes[0], R * i);
                for r in 0..R {
                    let v = _mm256_loadu_si256(codes[r].add(i) as *const __m256i);
                    let (wh, wl) = nibbles(table, nib, v);
                    for t in 0..T {
                        let ph = _mm256_maddubs_epi16(aqh[t], _mm256_sign_epi8(wh, qh[t]));
                        let pl = _mm256_maddubs_epi16(aql[t], _mm256_sign_epi8(wl, ql[t]));
                        // Widen each product vector separately: their i16 sum could overflow.
                        isum[t][r] = _mm256_add_epi32(
                            isum[t][r],
                            _mm256_add_epi32(_mm256_madd_epi16(ph, ones), _mm256_madd_epi16(pl, ones)),
                        );
                    }
                }
                i += 32;
            }
            for t in 0..T {
                for r in 0..R {
                    let f = _mm256_set1_ps(*factors[t][r].add(b));
                    acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t][r]), f, acc[t][r]);
                }
            }
        }
        acc
    }
}

/// See [`crate::scalar::dot_fourbit_q8_x4t2`]: [`dot_fourbit_q8_x4`] for two tokens at once,
/// each row's codes looked up once for both; every (row, token) bit-identical to
/// [`dot_fourbit_q8_x4`] of that token.
///
/// # Safety
/// As [`dot_fourbit_q8_x4`], for both tokens' activations and factors.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_fourbit_q8_x4t2(
    codes: [&[u8]; 4],
    factors: [[&[f32]; 4]; 2],
    lut: &[i8; 16],
    qe: [&[i8]; 2],
    qo: [&[i8]; 2],
    _qsum: [&[i32]; 2],
    half_block: usize,
) -> [[f32; 4]; 2] {
    let mut out = [[0f32; 4]; 2];
    // SAFETY: the caller's contract is the body's.
    unsafe {
        let acc = fourbit_q8_rows::<4, 2>(
            codes.map(|c| c.as_ptr()),
            factors.map(|f| f.map(|f| f.as_ptr())),
            factors[0][0].len(),
            lut,
            qe.map(|q| q.as_ptr()),
            qo.map(|q| q.as_ptr()),
            half_block,
        );
        for (o, a) in out.iter_mut().zip(acc) {
            _mm_storeu_ps(o.as_mut_ptr(), hsum4(a));
        }
    }
    out
}

/// The AVX2 prefill tile ([`crate::scalar::fourbit_q8_tile`] for four rows and eight tokens):
/// per block, `vpmaddubsw(|q|, sign(w, q))` per half, the block sum scaled by the token's and
/// then the row's factor, as on AVX-512. A row's nibbles are looked up once per block for eight tokens, and
/// the tokens' absolute values come precomputed (`aqe`, `aqo`), so a (row, token) pair costs
/// `vpsignb` + `vpmaddubsw(|q|, sign(w, q))` per half block and no row needs `vpabsb`: fewer
/// instructions per weight, and two registers per row instead of four, which leaves room for
/// eight accumulators. Prefill takes it for weights in blocks of 32 (and widths the four-row
/// kernels skip); blocks of 64 go through [`dot_fourbit_q8_rows_t8`] over prepared token pairs,
/// which reads every token from one buffer and ran SmolLM2's prefill 5–16 % faster.
///
/// # Safety
/// AVX2 and FMA must be available; with `nb = wf[0].len()`, every `wf[r]`, `xs[t]` holds `nb`
/// entries and every `codes[r]`, `qe[t]`, `qo[t]`, `aqe[t]`, `aqo[t]` at least `32 · nb` bytes,
/// with `aqe[t][i] = |qe[t][i]|` (≤ 127), likewise `aqo`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fourbit_q8_tile8(
    codes: [&[u8]; 4],
    wf: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 8],
    qo: [&[i8]; 8],
    aqe: [&[i8]; 8],
    aqo: [&[i8]; 8],
    xs: [&[f32]; 8],
) -> [[f32; 8]; 4] {
    // SAFETY: the caller's contract.
    unsafe { tile8_g::<false>(codes, wf, lut, qe, qo, aqe, aqo, xs) }
}

/// [`fourbit_q8_tile8`] for weights in blocks of 32, two to each 32-byte step (`wf` holds one
/// entry per block of 32, an even count; the activations stay in blocks of 64, one `xs` entry
/// per step): lanes 0–3 of a step hold the first block's sums, 4–7 the second's, each scaled by
/// its own row factor ([`factor_pair`]).
///
/// # Safety
/// As [`fourbit_q8_tile8`] with `wf[0].len()` = 2 · `xs[t].len()`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fourbit_q8_tile8_split(
    codes: [&[u8]; 4],
    wf: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 8],
    qo: [&[i8]; 8],
    aqe: [&[i8]; 8],
    aqo: [&[i8]; 8],
    xs: [&[f32]; 8],
) -> [[f32; 8]; 4] {
    // SAFETY: the caller's contract.
    unsafe { tile8_g::<true>(codes, wf, lut, qe, qo, aqe, aqo, xs) }
}

/// The eight-token tile's body, for blocks of 64 or (`SPLIT`) of 32 weights two to a step.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile8_g<const SPLIT: bool>(
    codes: [&[u8]; 4],
    wf: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 8],
    qo: [&[i8]; 8],
    aqe: [&[i8]; 8],
    aqo: [&[i8]; 8],
    xs: [&[f32]; 8],
) -> [[f32; 8]; 4] {
    // Steps of 32 bytes of codes.
    let nb = if SPLIT { wf[0].len() / 2 } else { wf[0].len() };
    let mut out = [[0f32; 8]; 4];
    // SAFETY: block b reads 32 bytes at 32·b of codes/qe/qo/aqe/aqo and entry b of wf/xs:
    // inside the lengths the caller guarantees.
    unsafe {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
        let nib = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for (r, row_out) in out.iter_mut().enumerate() {
            let cp = codes[r].as_ptr();
            let mut acc = [_mm256_setzero_ps(); 8];
            for b in 0..nb {
                let i = 32 * b;
                _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(i + 256) as *const i8);
                let v = _mm256_loadu_si256(cp.add(i) as *const __m256i);
                let (wh, wl) = nibbles(table, nib, v);
                let f = step_factor::<SPLIT>(wf[r].as_ptr(), b);
                for (t, a) in acc.iter_mut().enumerate() {
                    let load = |q: &[i8]| _mm256_loadu_si256(q.as_ptr().add(i) as *const __m256i);
                    let ph = _mm256_maddubs_epi16(load(aqe[t]), _mm256_sign_epi8(wh, load(qe[t])));
                    let pl = _mm256_maddubs_epi16(load(aqo[t]), _mm256_sign_epi8(wl, load(qo[t])));
                    let s = _mm256_add_epi32(_mm256_madd_epi16(ph, ones), _mm256_madd_epi16(pl, ones));
                    let fx = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(*xs[t].get_unchecked(b)));
                    *a = _mm256_fmadd_ps(fx, f, *a);
                }
            }
            let lo = hsum4([acc[0], acc[1], acc[2], acc[3]]);
            let hi = hsum4([acc[4], acc[5], acc[6], acc[7]]);
            _mm_storeu_ps(row_out.as_mut_ptr(), lo);
            _mm_storeu_ps(row_out.as_mut_ptr().add(4), hi);
        }
    }
    out
}

/// See [`crate::scalar::quantize_q8`]; blocks of 64 or 32 with a whole number of blocks run
/// here (anything else goes to the scalar code). Scaled, rounded half-even by `vcvtps2dq` under the
/// default rounding mode (what the scalar code's magic-number rounding gives), narrowed with
/// saturating packs (the values are within ±127), put back in order by one permute, then split
/// into even and odd elements by a byte shuffle.
///
/// # Safety
/// AVX2 must be available; the slices have the lengths the scalar function documents.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_q8(x: &[f32], blocksize: usize, qe: &mut [i8], qo: &mut [i8], xs: &mut [f32], sum: &mut [i32]) {
    if !(blocksize == 64 || blocksize == 32) || !x.len().is_multiple_of(blocksize) {
        return crate::scalar::quantize_q8(x, blocksize, qe, qo, xs, sum);
    }
    if blocksize == 32 {
        // SAFETY: the caller's contract is the body's.
        return unsafe { quantize_q8_bs::<32>(x, qe, qo, xs, sum) };
    }
    // SAFETY: the caller's contract is the body's.
    unsafe { quantize_q8_bs::<64>(x, qe, qo, xs, sum) }
}

/// [`quantize_q8`] for blocks of `BS` (32 or 64) elements, `BS / 8` registers each.
///
/// # Safety
/// AVX2 enabled; `x.len()` a multiple of `BS`, the outputs as long as the scalar code needs.
#[inline(always)]
unsafe fn quantize_q8_bs<const BS: usize>(x: &[f32], qe: &mut [i8], qo: &mut [i8], xs: &mut [f32], sum: &mut [i32]) {
    let nb = x.len() / BS;
    let hb = BS / 2;
    assert!(qe.len() >= nb * hb && qo.len() >= nb * hb && xs.len() >= nb && sum.len() >= nb);
    // SAFETY: block b reads x[BS·b .. BS·b + BS] and writes BS / 2 bytes at (BS / 2)·b of qe/qo:
    // all in bounds by the lengths asserted above.
    unsafe {
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
        );
        for b in 0..nb {
            let (c, am, _) = block_ints::<BS>(x.as_ptr().add(BS * b));
            let mut total = c[0];
            for cj in &c[1..BS / 8] {
                total = _mm256_add_epi32(total, *cj);
            }
            for h in 0..BS / 32 {
                // Bytes in order 0..32 of this half block, then evens | odds per 128-bit lane.
                let q = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(bytes32(&c, h), split));
                _mm_storeu_si128(qe.as_mut_ptr().add(hb * b + 16 * h) as *mut __m128i, _mm256_castsi256_si128(q));
                _mm_storeu_si128(qo.as_mut_ptr().add(hb * b + 16 * h) as *mut __m128i, _mm256_extracti128_si256(q, 1));
            }
            xs[b] = am / 127.0 * (1.0 / 127.0);
            sum[b] = hsum_i32(total);
        }
    }
}

/// A block of `BS` (32 or 64) activations at `p` as the i32 codes `round_half_even(x · 127 /
/// absmax)` (`BS / 8` registers; the rest zero), its absmax and the scale `127 / absmax` (0 where
/// that is not finite), as the scalar quantizers form them.
///
/// # Safety
/// AVX2 enabled; `BS` floats readable at `p`.
#[inline(always)]
unsafe fn block_ints<const BS: usize>(p: *const f32) -> ([__m256i; 8], f32, f32) {
    // SAFETY: the caller's contract.
    unsafe {
        // Plain loops, not `array::from_fn`: a closure calling intrinsics may be compiled on its
        // own, without this function's features, and then calls each one (measured: a tenth of
        // AVX2's batched decode).
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut v = [_mm256_setzero_ps(); 8];
        for (j, v) in v.iter_mut().enumerate().take(BS / 8) {
            *v = _mm256_loadu_ps(p.add(8 * j));
        }
        // `vmaxps` returns its second operand when either is NaN: the running maximum goes
        // second, so NaN inputs are skipped as `f32::max` skips them.
        let mut m = _mm256_setzero_ps();
        for vj in &v[..BS / 8] {
            m = _mm256_max_ps(_mm256_and_ps(*vj, abs), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let am = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
        let scale = if am > 0.0 && (127.0 / am).is_finite() { 127.0 / am } else { 0.0 };
        let inv = _mm256_set1_ps(scale);
        // A NaN product (a NaN input, or ±∞ times a zero scale) converts to 0 as the scalar
        // cast does, not to `vcvtps2dq`'s i32::MIN.
        let mut c = [_mm256_setzero_si256(); 8];
        for (c, v) in c.iter_mut().zip(v) {
            let p = _mm256_mul_ps(v, inv);
            *c = _mm256_cvtps_epi32(_mm256_and_ps(p, _mm256_cmp_ps::<_CMP_ORD_Q>(p, p)));
        }
        (c, am, scale)
    }
}

/// Codes `32h .. 32h + 32` of a block's i32 codes as bytes, in order (saturating packs, then
/// one permute back into order; the values are within ±127).
#[inline(always)]
fn bytes32(c: &[__m256i; 8], h: usize) -> __m256i {
    // SAFETY: register arithmetic; AVX2 is enabled wherever this is inlined.
    unsafe {
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let (a, b) = (_mm256_packs_epi32(c[4 * h], c[4 * h + 1]), _mm256_packs_epi32(c[4 * h + 2], c[4 * h + 3]));
        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), order)
    }
}

/// See [`crate::q8::quantize_activations`] (block int8's activations, in order): blocks of 32 or
/// 64 with a whole number of blocks run here as [`quantize_q8`]'s do, without the split into
/// even and odd codes; anything else goes to the scalar code. Also the AVX-512 level's.
///
/// # Safety
/// AVX2 must be available; `q` holds `x.len()` entries and `d` one per block.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_q8_plain(x: &[f32], blocksize: usize, q: &mut [i8], d: &mut [f32]) {
    // SAFETY: the caller's contract is the bodies'.
    unsafe {
        match blocksize {
            32 if x.len().is_multiple_of(32) => quantize_q8_plain_bs::<32>(x, q, d),
            64 if x.len().is_multiple_of(64) => quantize_q8_plain_bs::<64>(x, q, d),
            _ => crate::q8::quantize_activations(x, blocksize, q, d),
        }
    }
}

/// [`quantize_q8_plain`] for blocks of `BS` (32 or 64).
///
/// # Safety
/// AVX2 enabled; `x.len()` a multiple of `BS`, `q` and `d` as long as the scalar code needs.
#[inline(always)]
unsafe fn quantize_q8_plain_bs<const BS: usize>(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    let nb = x.len() / BS;
    assert!(q.len() >= nb * BS && d.len() >= nb);
    // SAFETY: block b reads x[BS·b .. BS·b + BS] and writes q[BS·b .. BS·b + BS]: in bounds by
    // the lengths asserted above.
    unsafe {
        for (b, d) in d.iter_mut().enumerate().take(nb) {
            let (c, am, inv) = block_ints::<BS>(x.as_ptr().add(BS * b));
            for h in 0..BS / 32 {
                _mm256_storeu_si256(q.as_mut_ptr().add(BS * b + 32 * h) as *mut __m256i, bytes32(&c, h));
            }
            // No scale where the codes had none (an infinite absmax scales by 0).
            *d = if inv == 0.0 { 0.0 } else { am / 127.0 };
        }
    }
}

/// See [`crate::scalar::nested_factors`]: eight scales at a time, the dynamic-map values read
/// by scalar loads (faster than `vgatherdps` on AMD Zen 5, at 8 and 16 lanes alike), then the
/// same separate multiply, add and multiply as the scalar code (no FMA). Also the AVX-512
/// level's.
///
/// # Safety
/// AVX2 must be available; `codes`, `xs` and `out` have equal lengths.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn nested_factors(codes: &[u8], map: &[f32; 256], na: f32, offset: f32, xs: &[f32], out: &mut [f32]) {
    let n = out.len().min(codes.len()).min(xs.len());
    let (cp, xp, op) = (codes.as_ptr(), xs.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: full 8-wide steps stay below n; the codes are bytes, so they index inside the map.
    unsafe {
        let (nav, offv) = (_mm256_set1_ps(na), _mm256_set1_ps(offset));
        while i + 8 <= n {
            let m = |j: usize| *map.get_unchecked(*cp.add(i + j) as usize);
            let v = _mm256_setr_ps(m(0), m(1), m(2), m(3), m(4), m(5), m(6), m(7));
            let v = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(v, nav), offv), _mm256_loadu_ps(xp.add(i)));
            _mm256_storeu_ps(op.add(i), v);
            i += 8;
        }
    }
    crate::scalar::nested_factors(&codes[i..n], map, na, offset, &xs[i..n], &mut out[i..n]);
}

/// See [`crate::scalar::dot_int8_rows`]: every row of a decode task in one call, four rows at
/// a time through [`dot_int8_x4`] and the rest through [`dot_int8`] (exact sums either way).
///
/// # Safety
/// AVX2 must be available; `w` holds `out.len() · a.len()` elements.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_int8_rows(a: &[i8], w: &[i8], out: &mut [i32]) {
    let cols = a.len();
    let n = out.len();
    let mut i = 0;
    // SAFETY: row r is `w[r·cols .. (r + 1)·cols]`, r < n, inside `w` (caller's contract);
    // the callees' contracts are this one's.
    unsafe {
        while i + 4 <= n {
            let rows: [&[i8]; 4] = std::array::from_fn(|j| w.get_unchecked((i + j) * cols..(i + j + 1) * cols));
            out.get_unchecked_mut(i..i + 4).copy_from_slice(&dot_int8_x4(a, rows));
            i += 4;
        }
        while i < n {
            *out.get_unchecked_mut(i) = dot_int8(a, w.get_unchecked(i * cols..(i + 1) * cols));
            i += 1;
        }
    }
}

/// See [`crate::scalar::dot_int8_x4`]: each 32 activation bytes loaded, and their absolute
/// value taken, once for four weight rows (`vpmaddubsw(|a|, sign(w, a))`).
///
/// # Safety
/// AVX2 must be available; all five slices have the same length.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_int8_x4(a: &[i8], w: [&[i8]; 4]) -> [i32; 4] {
    let n = a.len();
    let ap = a.as_ptr();
    let wp = w.map(|w| w.as_ptr());
    let mut i = 0;
    // SAFETY: full loads stay below n, which every slice holds; the tail is scalar.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 4];
        while i + 32 <= n {
            let va = _mm256_loadu_si256(ap.add(i) as *const __m256i);
            let aa = _mm256_abs_epi8(va);
            ahead(wp[0] as *const u8, 4 * i);
            for (r, s) in acc.iter_mut().enumerate() {
                let vw = _mm256_loadu_si256(wp[r].add(i) as *const __m256i);
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(_mm256_maddubs_epi16(aa, _mm256_sign_epi8(vw, va)), ones));
            }
            i += 32;
        }
        std::array::from_fn(|r| {
            let mut s = hsum_i32(acc[r]);
            for j in i..n {
                s += *ap.add(j) as i32 * *wp[r].add(j) as i32;
            }
            s
        })
    }
}

/// See [`crate::scalar::dot_int8_4x4`]: per weight row, [`dot_int8_x4`] against the four
/// activation rows (the row's vector loaded once for the four; exact, so the roles can swap).
///
/// # Safety
/// AVX2 must be available; all eight slices have the same length.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_int8_4x4(a: [&[i8]; 4], w: [&[i8]; 4]) -> [[i32; 4]; 4] {
    // SAFETY: same contract as dot_int8_x4, which the caller upholds for every row.
    std::array::from_fn(|i| unsafe { dot_int8_x4(w[i], a) })
}

/// [`crate::scalar::exp_f32`] of eight lanes, step for step (the out-of-range lanes are
/// computed on clamped inputs, then replaced as the scalar code returns early).
#[inline(always)]
pub(super) unsafe fn exp8(x: __m256) -> __m256 {
    use crate::scalar::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
    // SAFETY: plain register arithmetic; AVX2 and FMA are enabled by the caller.
    unsafe {
        let xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)), _mm256_set1_ps(EXP_MAX));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            xc,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), xc);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
        let v = _mm256_mul_ps(e, _mm256_castsi256_ps(pow2));
        let v = _mm256_blendv_ps(v, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN)));
        let v =
            _mm256_blendv_ps(v, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(EXP_MAX)));
        _mm256_blendv_ps(v, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }
}

/// See [`crate::scalar::exp_sub`]; bit-identical to it.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_sub(x: &mut [f32], sub: f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: every access stays below n.
    unsafe {
        let s = _mm256_set1_ps(sub);
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), s)));
            i += 8;
        }
    }
    crate::scalar::exp_sub(&mut x[i..], sub);
}

/// See [`crate::scalar::softmax_parts`]; bit-identical to it. The scaling and the running
/// maximum take one pass, the exponentials and the running sum a second, the division a third
/// (where the scalar code's five passes each ran a chain of dependent operations alone: they
/// took about a twelfth of a 706-token prefill).
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax_parts(x: &mut [f32], scale: f32, normalize: bool) -> (f32, f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    // SAFETY: every access stays below n.
    unsafe {
        let max = scale_max(p, n, scale);
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let sum = tail_sum(x, i, max, acc);
        if normalize {
            scale_in_place(x, 1.0 / sum);
        }
        (max, sum)
    }
}

/// `x[i] *= scale` over the `n` floats at `p`, returning the largest in the scalar code's
/// eight-lane order.
///
/// # Safety
/// AVX2 enabled by the caller; `n` floats at `p`.
#[inline(always)]
pub(super) unsafe fn scale_max(p: *mut f32, n: usize, scale: f32) -> f32 {
    // SAFETY: every access stays below n (caller's contract).
    unsafe {
        let s = _mm256_set1_ps(scale);
        let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), s);
            _mm256_storeu_ps(p.add(i), v);
            // The running value second: `vmaxps` returns it where `v` is NaN, as
            // `f32::max(running, v)` does.
            mx = _mm256_max_ps(v, mx);
            i += 8;
        }
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), mx);
        for (k, l) in l.iter_mut().enumerate().take(n - i) {
            let v = *p.add(i + k) * scale;
            *p.add(i + k) = v;
            *l = l.max(v);
        }
        crate::scalar::combine(l, f32::max)
    }
}

/// The elements of `x` from `i` on as `exp(x − max)`, added into lanes 0, 1, … of `acc` (the
/// running sums of the vector loop), and the lanes combined in the scalar code's order.
///
/// # Safety
/// AVX enabled by the caller.
#[inline(always)]
pub(super) unsafe fn tail_sum(x: &mut [f32], i: usize, max: f32, acc: __m256) -> f32 {
    let mut l = [0f32; 8];
    // SAFETY: a store to a local array.
    unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
    let rest = &mut x[i..];
    crate::scalar::exp_sub(rest, max);
    for (l, &v) in l.iter_mut().zip(rest.iter()) {
        *l += v;
    }
    crate::scalar::combine(l, |a, b| a + b)
}

/// `x[i] *= f`.
///
/// # Safety
/// AVX enabled by the caller.
#[inline(always)]
pub(super) unsafe fn scale_in_place(x: &mut [f32], f: f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: every access stays below n.
    unsafe {
        let fv = _mm256_set1_ps(f);
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), fv));
            i += 8;
        }
    }
    x[i..].iter_mut().for_each(|v| *v *= f);
}

/// See [`crate::scalar::silu_mul`]; bit-identical to it.
///
/// # Safety
/// AVX2 and FMA must be available; `gate.len() == up.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let (gp, up_) = (gate.as_mut_ptr(), up.as_ptr());
    let mut i = 0;
    // SAFETY: every access stays below n, which bounds both slices.
    unsafe {
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        while i + 8 <= n {
            let g = _mm256_loadu_ps(gp.add(i));
            let e = exp8(_mm256_xor_ps(g, neg));
            let v = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up_.add(i)));
            _mm256_storeu_ps(gp.add(i), v);
            i += 8;
        }
    }
    crate::scalar::silu_mul(&mut gate[i..n], &up[i..n]);
}

/// The per-lane partial sums of `R` block int8 rows against one token's block int8 activations
/// (`nb` blocks of `bs`, a multiple of 32): per 32 bytes and row `vpmaddubsw(|w|, sign(q, w))`
/// (exact i16 pair sums, and exact for a stored −128 too: |−128| reads as the unsigned 128),
/// widened by `vpmaddwd` with ones; each block's sum converted and scaled once. The activations
/// are loaded once for the `R` rows; a row goes through the same operations for any `R`.
///
/// # Safety
/// AVX2, FMA and F16C enabled (callers are `#[target_feature]` functions); every `w[r]` and `q`
/// hold `nb · bs` bytes, every `scale[r]` and `d` `nb` entries, `bs` a multiple of 32.
#[inline(always)]
unsafe fn q8_rows<const R: usize>(
    w: [*const i8; R],
    scale: [*const f16; R],
    q: *const i8,
    d: *const f32,
    nb: usize,
    bs: usize,
) -> [__m256; R] {
    // SAFETY: the caller's contract is the body's.
    unsafe { int8_rows(Int8Weights(w), scale, q, d, nb, bs) }
}

/// Where [`int8_rows`] gets the exact int32 lane sums of 32 weights of a row against 32
/// activations (lane k: weights 4k … 4k + 3): block int8's bytes, or block int5's unpacked in
/// registers. Both give the same lane sums for the same integers, so the same bits.
trait WeightSteps<const R: usize> {
    /// What a step's activations give every row of it.
    type Step: Copy;
    /// The activations `qv` of a step, prepared once for the `R` rows.
    ///
    /// # Safety
    /// AVX2 enabled by the caller.
    unsafe fn step(&self, qv: __m256i) -> Self::Step;
    /// Row `r`'s lane sums for weights `i .. i + 32` against the step's activations.
    ///
    /// # Safety
    /// AVX2 enabled by the caller; inside the rows the caller was given.
    unsafe fn sums(&self, r: usize, i: usize, step: Self::Step) -> __m256i;
    /// Prefetches ahead of weight `i` of the `R` rows (a hint: any address).
    fn ahead(&self, i: usize);
}

/// Block int8 rows.
struct Int8Weights<const R: usize>([*const i8; R]);

impl<const R: usize> WeightSteps<R> for Int8Weights<R> {
    type Step = __m256i;

    #[inline(always)]
    unsafe fn step(&self, qv: __m256i) -> __m256i {
        qv
    }

    #[inline(always)]
    unsafe fn sums(&self, r: usize, i: usize, qv: __m256i) -> __m256i {
        // SAFETY: inside the row by the caller's contract.
        unsafe {
            let wv = _mm256_loadu_si256(self.0[r].add(i) as *const __m256i);
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(qv, wv));
            _mm256_madd_epi16(p, _mm256_set1_epi16(1))
        }
    }

    #[inline(always)]
    fn ahead(&self, i: usize) {
        ahead(self.0[0] as *const u8, R * i);
    }
}

/// Block int5 rows: each row's `qs` (16 bytes a block of 32) and `qh` (4 bytes a block).
struct Int5Weights<const R: usize> {
    qs: [*const u8; R],
    qh: [*const u8; R],
}

impl<const R: usize> WeightSteps<R> for Int5Weights<R> {
    /// The activations, and 16 times their lane sums.
    type Step = (__m256i, __m256i);

    #[inline(always)]
    unsafe fn step(&self, qv: __m256i) -> (__m256i, __m256i) {
        // SAFETY: register arithmetic; the caller enables AVX2.
        unsafe { (qv, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(16), qv), _mm256_set1_epi16(1))) }
    }

    #[inline(always)]
    unsafe fn sums(&self, r: usize, i: usize, (qv, sixteen_q): (__m256i, __m256i)) -> __m256i {
        // The 5-bit fields u = w + 16 (0 … 31) are unsigned bytes as they come: Σ u·q − 16·Σ q
        // is Σ w·q exactly (|u·q| pairs stay far inside int16), without the sign trick.
        // SAFETY: block i / 32 of the row, inside it by the caller's contract.
        unsafe {
            let u = unpack_q5_fields(self.qs[r].add(i / 2), self.qh[r].add(i / 8));
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, qv), _mm256_set1_epi16(1));
            _mm256_sub_epi32(p, sixteen_q)
        }
    }

    #[inline(always)]
    fn ahead(&self, i: usize) {
        // The rows are adjacent, as block int8's are: their nibbles and fifth bits two streams.
        ahead(self.qs[0], R * i / 2);
        super::prefetch_line(self.qh[0].wrapping_add(R * i / 8 + PREFETCH_L2 / 4) as *const i8);
    }
}

/// One block of block int5 as its 32 five-bit fields `u` (the integers plus 16): the nibbles
/// split into the two halves of a 256-bit vector, each byte's fifth bit picked out of the
/// block's u32 by a byte shuffle and a bit mask.
///
/// # Safety
/// AVX2 enabled by the caller; 16 bytes readable at `qs`, 4 at `qh`.
#[inline(always)]
unsafe fn unpack_q5_fields(qs: *const u8, qh: *const u8) -> __m256i {
    // SAFETY: the loads stay inside the block by the caller's contract.
    unsafe {
        let bytes = _mm_loadu_si128(qs as *const __m128i);
        let nib = _mm256_and_si256(
            _mm256_inserti128_si256(_mm256_castsi128_si256(bytes), _mm_srli_epi16(bytes, 4), 1),
            _mm256_set1_epi8(0x0F),
        );
        let word = _mm256_set1_epi32((qh as *const i32).read_unaligned());
        // Byte j of the block takes byte j / 8 of the block's u32, then tests bit j % 8 of it.
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(word, spread), bit), bit);
        _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(16)))
    }
}

/// One block of block int5 as 32 int8 values (its fields less 16).
///
/// # Safety
/// As [`unpack_q5_fields`].
#[inline(always)]
unsafe fn unpack_q5_block(qs: *const u8, qh: *const u8) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe {
        let sixteen = _mm256_set1_epi8(16);
        _mm256_sub_epi8(unpack_q5_fields(qs, qh), sixteen)
    }
}

/// [`q8_rows`] over any [`WeightSteps`]: a row's sums go through the same operations whatever
/// its weights' storage, so block int5 gives block int8's bits for the same integers.
///
/// # Safety
/// As [`q8_rows`], with `w` reading `nb · bs` weights of each row.
#[inline(always)]
unsafe fn int8_rows<const R: usize>(
    w: impl WeightSteps<R>,
    scale: [*const f16; R],
    q: *const i8,
    d: *const f32,
    nb: usize,
    bs: usize,
) -> [__m256; R] {
    // SAFETY: loads stay within `nb · bs` bytes and `nb` entries (caller's contract); prefetches
    // may point anywhere.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        // Each block's factor scale·d, eight blocks a conversion and multiply ahead of the
        // integer work (the same single rounding as the scalar code's product).
        let mut f = [[0f32; 8]; R];
        for b0 in (0..nb).step_by(8) {
            let n = (nb - b0).min(8);
            for r in 0..R {
                if n == 8 {
                    let sv = _mm256_cvtph_ps(_mm_loadu_si128(scale[r].add(b0) as *const __m128i));
                    _mm256_storeu_ps(f[r].as_mut_ptr(), _mm256_mul_ps(sv, _mm256_loadu_ps(d.add(b0))));
                } else {
                    for (j, fj) in f[r].iter_mut().enumerate().take(n) {
                        let bits = (*scale[r].add(b0 + j)).to_bits();
                        let sv = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
                        *fj = sv * *d.add(b0 + j);
                    }
                }
            }
            for (j, b) in (b0..b0 + n).enumerate() {
                let mut isum = [_mm256_setzero_si256(); R];
                let mut i = b * bs;
                while i < (b + 1) * bs {
                    let step = w.step(_mm256_loadu_si256(q.add(i) as *const __m256i));
                    w.ahead(i);
                    for (r, isum) in isum.iter_mut().enumerate() {
                        *isum = _mm256_add_epi32(*isum, w.sums(r, i, step));
                    }
                    i += 32;
                }
                for r in 0..R {
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(f[r][j]), acc[r]);
                }
            }
        }
        acc
    }
}

/// See [`crate::scalar::dot_q8`]; [`q8_rows`] with one row.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `blocksize` is a multiple of 32; `w` and `q` hold
/// `scale.len() · blocksize` values and `d` `scale.len()` entries.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8(w: &[i8], scale: &[f16], q: &[i8], d: &[f32], blocksize: usize) -> f32 {
    // SAFETY: the caller's contract is the body's.
    unsafe {
        let [acc] = q8_rows::<1>([w.as_ptr()], [scale.as_ptr()], q.as_ptr(), d.as_ptr(), scale.len(), blocksize);
        let z = _mm256_setzero_ps();
        _mm_cvtss_f32(hsum4([acc, z, z, z]))
    }
}

/// See [`crate::scalar::dot_q8_rows`]: every row of a decode task in one call, four at a time
/// and then one at a time, each row with [`dot_q8`]'s bits.
///
/// # Safety
/// AVX2, FMA and F16C must be available; with `n = out.len()` and `nb = scale.len() / n`,
/// `scale` holds exactly `n * nb` entries, `w` `n * nb * blocksize`, `q` `nb * blocksize`, `d`
/// `nb`; `blocksize` is one [`dot_q8`] takes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_rows(w: &[i8], scale: &[f16], q: &[i8], d: &[f32], blocksize: usize, out: &mut [f32]) {
    let n = out.len();
    let nb = scale.len() / n.max(1);
    let cols = nb * blocksize;
    let (wp, sp) = (w.as_ptr(), scale.as_ptr());
    let mut i = 0;
    // SAFETY: row i reads `cols` weights at `i·cols` and `nb` scales at `i·nb`, i < n: inside
    // the lengths the caller guarantees.
    unsafe {
        while i + 4 <= n {
            let rows: [usize; 4] = std::array::from_fn(|j| i + j);
            let acc = q8_rows::<4>(
                rows.map(|r| wp.add(r * cols)),
                rows.map(|r| sp.add(r * nb)),
                q.as_ptr(),
                d.as_ptr(),
                nb,
                blocksize,
            );
            _mm_storeu_ps(out.as_mut_ptr().add(i), hsum4(acc));
            i += 4;
        }
        let z = _mm256_setzero_ps();
        while i < n {
            let [acc] = q8_rows::<1>([wp.add(i * cols)], [sp.add(i * nb)], q.as_ptr(), d.as_ptr(), nb, blocksize);
            *out.get_unchecked_mut(i) = _mm_cvtss_f32(hsum4([acc, z, z, z]));
            i += 1;
        }
    }
}

/// [`dot_q8_rows`] over block int5 rows (blocks of 32), unpacked in registers: each row the
/// bits [`dot_q8_rows`] gives the block int8 row with its integers and scales.
///
/// # Safety
/// AVX2, FMA and F16C must be available; with `n = out.len()` and `nb = scale.len() / n`,
/// `scale` holds exactly `n * nb` entries, `qs` `16 · n · nb` bytes, `qh` `4 · n · nb`, `q`
/// `32 · nb` values and `d` `nb`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_rows(qs: &[u8], qh: &[u8], scale: &[f16], q: &[i8], d: &[f32], out: &mut [f32]) {
    let n = out.len();
    let nb = scale.len() / n.max(1);
    let (sp, hp, fp) = (qs.as_ptr(), qh.as_ptr(), scale.as_ptr());
    let mut i = 0;
    // SAFETY: row i reads 16·nb bytes of `qs` at 16·nb·i, 4·nb of `qh` at 4·nb·i and `nb` scales
    // at nb·i, i < n: inside the lengths the caller guarantees.
    unsafe {
        while i + 4 <= n {
            let rows: [usize; 4] = std::array::from_fn(|j| i + j);
            let w = Int5Weights { qs: rows.map(|r| sp.add(r * 16 * nb)), qh: rows.map(|r| hp.add(r * 4 * nb)) };
            let acc = int8_rows::<4>(w, rows.map(|r| fp.add(r * nb)), q.as_ptr(), d.as_ptr(), nb, 32);
            _mm_storeu_ps(out.as_mut_ptr().add(i), hsum4(acc));
            i += 4;
        }
        let z = _mm256_setzero_ps();
        while i < n {
            let w = Int5Weights { qs: [sp.add(i * 16 * nb)], qh: [hp.add(i * 4 * nb)] };
            let [acc] = int8_rows::<1>(w, [fp.add(i * nb)], q.as_ptr(), d.as_ptr(), nb, 32);
            *out.get_unchecked_mut(i) = _mm_cvtss_f32(hsum4([acc, z, z, z]));
            i += 1;
        }
    }
}

/// See [`crate::scalar::dot_q8_rows_t8`]: a decode task's block int8 rows against eight tokens
/// prepared as [`crate::pairs::TokenPairs::q8`], every (row, token) with the bits of
/// [`dot_q8_rows`] on that token alone. A row's bytes and their absolute values are loaded once
/// for the eight tokens, where one token a call reads the row again for each (a batched decode
/// step's 8-bit head, 28 MB at SmolLM2's size, went through the cores sixteen times); each
/// token's codes, signed by the row's, go through `vpmaddubsw` + `vpmaddwd` as there, and each
/// block's factor is the row's scale times the token's, one multiply, as there.
///
/// # Safety
/// AVX2, FMA and F16C must be available; with `n = out.rows()`, `nb = group.nb` and
/// `bs = 32 · group.steps` (32 or 64), `w` holds `n · nb · bs` values (row after row), `scale`
/// `n · nb`, and `group` its full buffers.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_rows_t8(w: &[i8], scale: &[f16], group: crate::pairs::PairGroup<'_>, out: crate::Grid<'_>) {
    // SAFETY: the caller's contract.
    unsafe {
        if group.steps == 1 {
            q8_rows_t8::<1>(w, scale, group, out)
        } else {
            q8_rows_t8::<2>(w, scale, group, out)
        }
    }
}

/// [`dot_q8_rows_t8`] for blocks of `32 · S` values.
///
/// # Safety
/// As [`dot_q8_rows_t8`], with `group.steps == S`; inlined into it.
#[inline(always)]
unsafe fn q8_rows_t8<const S: usize>(
    w: &[i8],
    scale: &[f16],
    group: crate::pairs::PairGroup<'_>,
    mut out: crate::Grid<'_>,
) {
    let n = out.rows();
    let nb = group.nb;
    let cols = nb * 32 * S;
    let (op, rs, ts) = out.raw();
    // SAFETY: row i reads `cols` values at `i·cols` and `nb` scales at `i·nb`, i < n; block b of
    // the group reads S·256 bytes of codes at b·S·256 and 64 scales at b·64 (caller's contract);
    // stores go to the grid's cells of rows below n.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let (qp, xp) = (group.q.as_ptr(), group.xs.as_ptr());
        for i in 0..n {
            let row = w.as_ptr().add(i * cols);
            let mut acc = [_mm256_setzero_ps(); 8];
            for b in 0..nb {
                ahead(row as *const u8, b * 32 * S);
                let wv: [__m256i; S] =
                    std::array::from_fn(|st| _mm256_loadu_si256(row.add((b * S + st) * 32) as *const __m256i));
                let aw = wv.map(|v| _mm256_abs_epi8(v));
                // f16 to f32 is exact however it is converted.
                let ws = _mm256_set1_ps(scale.get_unchecked(i * nb + b).to_f32());
                let (qb, xb) = (qp.add(b * S * 256), xp.add(b * 64));
                for (t, acc) in acc.iter_mut().enumerate() {
                    // Token t's step st at pair t/2, half t%2; its scale in lanes 8·(t%2) of the pair's 16.
                    let (p, h) = (t / 2, t % 2);
                    let mut isum = _mm256_setzero_si256();
                    for st in 0..S {
                        let qv = _mm256_loadu_si256(qb.add((p * S + st) * 64 + h * 32) as *const __m256i);
                        let pr = _mm256_maddubs_epi16(aw[st], _mm256_sign_epi8(qv, wv[st]));
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pr, ones));
                    }
                    let f = _mm256_mul_ps(ws, _mm256_loadu_ps(xb.add(16 * p + 8 * h)));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), f, *acc);
                }
            }
            // Four tokens a `hsum4`: a lane of it depends on its own vector alone, so each
            // (row, token) has the one-token kernel's sum.
            let (lo, hi) = (hsum4([acc[0], acc[1], acc[2], acc[3]]), hsum4([acc[4], acc[5], acc[6], acc[7]]));
            let p = op.add(i * rs);
            if ts == 1 {
                _mm_storeu_ps(p, lo);
                _mm_storeu_ps(p.add(4), hi);
            } else {
                let mut v = [0f32; 8];
                _mm_storeu_ps(v.as_mut_ptr(), lo);
                _mm_storeu_ps(v.as_mut_ptr().add(4), hi);
                for (t, &v) in v.iter().enumerate() {
                    *p.add(t * ts) = v;
                }
            }
        }
    }
}

/// Four block int8 rows against the same activations, each row bit-identical to [`dot_q8`].
///
/// # Safety
/// As [`dot_q8`], for each of the four rows and their scales.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_x4(w: [&[i8]; 4], scale: [&[f16]; 4], q: &[i8], d: &[f32], blocksize: usize) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: the caller's contract is the body's.
    unsafe {
        let acc = q8_rows::<4>(
            w.map(|w| w.as_ptr()),
            scale.map(|s| s.as_ptr()),
            q.as_ptr(),
            d.as_ptr(),
            scale[0].len(),
            blocksize,
        );
        _mm_storeu_ps(out.as_mut_ptr(), hsum4(acc));
    }
    out
}

/// See [`crate::scalar::transpose`]: blocks of 8 × 8 through registers (pairs of rows
/// interleaved, then pairs of pairs, then the 128-bit halves swapped), the edges one value at a
/// time.
///
/// # Safety
/// AVX2 must be available; with `rows, cols > 0`, `src` holds `(rows − 1)·src_stride + cols`
/// values and `dst` `(cols − 1)·dst_stride + rows`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn transpose(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, rows: usize, cols: usize) {
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: every read is at r·src_stride + c and every write at c·dst_stride + r with
    // r < rows, c < cols: inside the lengths the caller guarantees.
    unsafe {
        let mut r = 0;
        while r + 8 <= rows {
            let mut c = 0;
            while c + 8 <= cols {
                let v: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(sp.add((r + i) * src_stride + c)));
                for (j, t) in transpose8(v).into_iter().enumerate() {
                    _mm256_storeu_ps(dp.add((c + j) * dst_stride + r), t);
                }
                c += 8;
            }
            for c in c..cols {
                for i in 0..8 {
                    *dp.add(c * dst_stride + r + i) = *sp.add((r + i) * src_stride + c);
                }
            }
            r += 8;
        }
        for r in r..rows {
            for c in 0..cols {
                *dp.add(c * dst_stride + r) = *sp.add(r * src_stride + c);
            }
        }
    }
}

/// Eight rows of eight as eight columns.
#[inline(always)]
fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register arithmetic; AVX is enabled wherever this is inlined.
    unsafe {
        // Rows 2k and 2k + 1 interleaved: columns (0, 1 | 4, 5) and (2, 3 | 6, 7) of the pair.
        let lo: [__m256; 4] = std::array::from_fn(|k| _mm256_unpacklo_ps(v[2 * k], v[2 * k + 1]));
        let hi: [__m256; 4] = std::array::from_fn(|k| _mm256_unpackhi_ps(v[2 * k], v[2 * k + 1]));
        // Four rows' values of one column in each half: columns c | c + 4 of rows 4h .. 4h + 4.
        let quad = |a: [__m256; 4], h: usize| {
            (_mm256_shuffle_ps::<0x44>(a[2 * h], a[2 * h + 1]), _mm256_shuffle_ps::<0xEE>(a[2 * h], a[2 * h + 1]))
        };
        let (c0, c1) = quad(lo, 0);
        let (c2, c3) = quad(hi, 0);
        let (d0, d1) = quad(lo, 1);
        let (d2, d3) = quad(hi, 1);
        [
            _mm256_permute2f128_ps::<0x20>(c0, d0),
            _mm256_permute2f128_ps::<0x20>(c1, d1),
            _mm256_permute2f128_ps::<0x20>(c2, d2),
            _mm256_permute2f128_ps::<0x20>(c3, d3),
            _mm256_permute2f128_ps::<0x31>(c0, d0),
            _mm256_permute2f128_ps::<0x31>(c1, d1),
            _mm256_permute2f128_ps::<0x31>(c2, d2),
            _mm256_permute2f128_ps::<0x31>(c3, d3),
        ]
    }
}

/// See [`crate::q5::unpack`]: block int5's integers, a block of 32 per step
/// ([`unpack_q5_block`]), with the scalar code's result.
///
/// # Safety
/// AVX2 must be available; `qs` holds `out.len() / 2` bytes and `qh` `out.len() / 8`, and
/// `out.len()` is a multiple of 32.
#[target_feature(enable = "avx2")]
pub unsafe fn unpack_q5(qs: &[u8], qh: &[u8], out: &mut [i8]) {
    let blocks = out.len() / 32;
    let (sp, hp, op) = (qs.as_ptr(), qh.as_ptr(), out.as_mut_ptr());
    // SAFETY: block b reads qs[16b .. 16b + 16] and qh[4b .. 4b + 4] and writes out[32b .. 32b
    // + 32], all inside the slices by the caller's contract.
    unsafe {
        for b in 0..blocks {
            // The weights' stream, as the block int8 loops prefetch theirs (the fifth bits are
            // a quarter of the nibbles' bytes, so a quarter of the distance ahead).
            if b % 4 == 0 {
                super::prefetch_line(sp.wrapping_add(16 * b + PREFETCH_L2) as *const i8);
            }
            if b % 16 == 0 {
                super::prefetch_line(hp.wrapping_add(4 * b + PREFETCH_L2 / 4) as *const i8);
            }
            _mm256_storeu_si256(op.add(32 * b) as *mut __m256i, unpack_q5_block(sp.add(16 * b), hp.add(4 * b)));
        }
    }
}
