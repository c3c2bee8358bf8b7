//! The AVX2 level's integer kernels with VNNI's `vpdpbusd` on 256-bit vectors: four u8 × i8
//! products summed into each i32 lane in one instruction, where AVX2 needs
//! `vpsignb` + `vpmaddubsw` + `vpmaddwd` and an add. `vpdpbusd` takes one unsigned operand, so
//! the 4-bit level table is biased by +128 (and `128 · Σq` per block taken off), and int8
//! activations are biased by +128 (and `128 · Σw` per row taken off), as on AVX-512.
//!
//! Every kernel body is compiled twice by `vnni_pair!`: with AVX-VNNI's VEX encoding (Alder
//! Lake and later, Zen 5: [`crate::Isa::AvxVnni`]) and with AVX-512 VNNI's EVEX encoding of the
//! same 256-bit instruction (`avx512vnni` + `avx512vl`), which is how machines with AVX-512 run
//! and test this code.
//!
//! # Safety (for every function here)
//! The caller must ensure the CPU supports AVX2 and FMA plus AVX-VNNI (the `_vex` functions) or
//! AVX-512 VNNI and VL (the `_evex` functions), which `crate::dispatch::Kernels` guarantees by
//! construction, and must pass slices with the lengths documented on the matching
//! `crate::scalar` function.

use super::avx2::{ahead, factor_pair, fourbit_rows_task, hsum4, hsum_i32, nibbles, step_factor, step_tokens};
use super::TILE_RUN_MAX_BLOCKS;
use core::arch::x86_64::*;

/// The VEX and EVEX entry points of a kernel body generic over `EVEX`.
macro_rules! vnni_pair {
    ($(#[$doc:meta])* $vex:ident, $evex:ident = $body:ident $([$extra:expr])? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$doc])*
        #[target_feature(enable = "avx2,fma,avxvnni")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $vex($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: the caller's contract is the body's.
            unsafe { $body::<false $(, $extra)?>($($arg),*) }
        }

        #[doc = concat!("[`", stringify!($vex), "`] with AVX-512 VNNI's encoding of `vpdpbusd`.")]
        ///
        /// # Safety
        #[doc = concat!("As [`", stringify!($vex), "`], with AVX-512 VNNI and VL instead of AVX-VNNI.")]
        #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $evex($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: the caller's contract is the body's.
            unsafe { $body::<true $(, $extra)?>($($arg),*) }
        }
    };
}

/// `acc + Σ₄ a·b` per i32 lane (a unsigned, b signed) in the encoding `EVEX` selects.
///
/// # Safety
/// AVX-VNNI, or AVX-512 VNNI + VL when `EVEX`; reached only from the `vnni_pair!` entry points.
#[inline(always)]
unsafe fn dpbusd<const EVEX: bool>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: the features are the caller's contract.
    unsafe {
        if EVEX {
            _mm256_dpbusd_epi32(acc, a, b)
        } else {
            _mm256_dpbusd_avx_epi32(acc, a, b)
        }
    }
}

/// The int8 level table biased by +128, in both 128-bit lanes (what `vpshufb` indexes).
#[inline(always)]
unsafe fn biased_table(lut: &[i8; 16]) -> __m256i {
    let biased: [u8; 16] = std::array::from_fn(|i| (lut[i] as i16 + 128) as u8);
    // SAFETY: a 16-byte load from a 16-byte array; AVX2 is enabled by the caller.
    unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(biased.as_ptr() as *const __m128i)) }
}

/// The per-lane partial sums of `R` rows of the 4-bit integer route against `T` tokens (see
/// `avx2::fourbit_q8_rows`; here each 32-byte step is two `vpdpbusd` per row and token, the
/// nibbles looked up once per row for all tokens). The table's +128 bias adds `128 · Σq` over
/// each lane's bytes to that lane; two more `vpdpbusd` per step and token, shared by the rows,
/// compute exactly that and it is taken off each block's sums, so every lane holds what the
/// AVX2 kernel's lane holds and the results are the same bits — for any `R` and `T`.
///
/// # Safety
/// As `avx2::fourbit_q8_rows`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn fourbit_q8_rows<const R: usize, const T: usize, const EVEX: bool>(
    codes: [*const u8; R],
    factors: [[*const f32; R]; T],
    nb: usize,
    lut: &[i8; 16],
    qe: [*const i8; T],
    qo: [*const i8; T],
    half_block: usize,
) -> [[__m256; R]; T] {
    // SAFETY: loads stay within `nb * half_block` bytes and `nb` entries (caller's contract).
    unsafe {
        let table = biased_table(lut);
        let nib = _mm256_set1_epi8(0x0F);
        let c128 = _mm256_set1_epi8(-128);
        let mut acc = [[_mm256_setzero_ps(); R]; T];
        if half_block == 16 {
            // Blocks of 32 weights, two to a step, as `avx2::fourbit_q8_rows` runs them: the
            // step's exact sums (the correction is per lane) scaled lane by lane.
            for s in 0..nb / 2 {
                let i = 32 * s;
                let (qh, ql) = step_tokens(qe, qo, i);
                let corr: [__m256i; T] = std::array::from_fn(|t| {
                    dpbusd::<EVEX>(dpbusd::<EVEX>(_mm256_setzero_si256(), c128, qh[t]), c128, ql[t])
                });
                ahead(codes[0], R * i);
                for r in 0..R {
                    let v = _mm256_loadu_si256(codes[r].add(i) as *const __m256i);
                    let (wh, wl) = nibbles(table, nib, v);
                    for t in 0..T {
                        let sum = dpbusd::<EVEX>(dpbusd::<EVEX>(_mm256_setzero_si256(), wh, qh[t]), wl, ql[t]);
                        let exact = _mm256_sub_epi32(sum, corr[t]);
                        let f = factor_pair(factors[t][r].add(2 * s));
                        acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), f, acc[t][r]);
                    }
                }
            }
            return acc;
        }
        for b in 0..nb {
            let mut isum = [[_mm256_setzero_si256(); R]; T];
            let mut corr = [_mm256_setzero_si256(); T];
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let (qh, ql) = step_tokens(qe, qo, i);
                for t in 0..T {
                    corr[t] = dpbusd::<EVEX>(dpbusd::<EVEX>(corr[t], c128, qh[t]), c128, ql[t]);
                }
                ahead(codes[0], R * i);
                for r in 0..R {
                    let v = _mm256_loadu_si256(codes[r].add(i) as *const __m256i);
                    let (wh, wl) = nibbles(table, nib, v);
                    for t in 0..T {
                        isum[t][r] = dpbusd::<EVEX>(dpbusd::<EVEX>(isum[t][r], wh, qh[t]), wl, ql[t]);
                    }
                }
                i += 32;
            }
            for t in 0..T {
                for r in 0..R {
                    let exact = _mm256_sub_epi32(isum[t][r], corr[t]);
                    let f = _mm256_set1_ps(*factors[t][r].add(b));
                    acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), f, acc[t][r]);
                }
            }
        }
        acc
    }
}

/// `−128 · qsum` in lane 0 and zeros elsewhere: where a block's biased integer sum starts.
#[inline(always)]
unsafe fn unbias(qsum: i32) -> __m256i {
    // SAFETY: plain register moves; AVX2 is enabled by the caller.
    unsafe { _mm256_zextsi128_si256(_mm_cvtsi32_si128(qsum.wrapping_mul(-128))) }
}

vnni_pair! {
    /// See [`crate::scalar::dot_fourbit_q8`]; one row of [`dot_fourbit_q8_x4_vex`], with the same
    /// bits.
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI must be available; `half_block` is a multiple of 32; `codes`, `qe`,
    /// `qo` hold `factors.len() * half_block` elements, `qsum` `factors.len()`.
    dot_fourbit_q8_vex, dot_fourbit_q8_evex = dot_fourbit_q8(
        codes: &[u8], factors: &[f32], lut: &[i8; 16], qe: &[i8], qo: &[i8], qsum: &[i32], half_block: usize
    ) -> f32
}

#[inline(always)]
unsafe fn dot_fourbit_q8<const EVEX: bool>(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    qsum: &[i32],
    half_block: usize,
) -> f32 {
    // SAFETY: the caller's contract.
    unsafe {
        let _ = qsum;
        let [acc] = fourbit_q8_rows::<1, 1, EVEX>(
            [codes.as_ptr()],
            [[factors.as_ptr()]],
            factors.len(),
            lut,
            [qe.as_ptr()],
            [qo.as_ptr()],
            half_block,
        );
        let z = _mm256_setzero_ps();
        _mm_cvtss_f32(hsum4([acc[0], z, z, z]))
    }
}

vnni_pair! {
    /// See [`crate::scalar::dot_fourbit_q8_x4`]: four rows against the same activations, two
    /// `vpdpbusd` per row and 64 weights; each row bit-identical to [`dot_fourbit_q8_vex`].
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI must be available; `half_block` is a multiple of 32; every
    /// `codes[r]`, `qe`, `qo` hold `nb * half_block` elements, every `factors[r]` and `qsum` `nb`,
    /// `nb = factors[0].len()`.
    dot_fourbit_q8_x4_vex, dot_fourbit_q8_x4_evex = dot_fourbit_q8_x4(
        codes: [&[u8]; 4], factors: [&[f32]; 4], lut: &[i8; 16], qe: &[i8], qo: &[i8], qsum: &[i32],
        half_block: usize
    ) -> [f32; 4]
}

#[inline(always)]
unsafe fn dot_fourbit_q8_x4<const EVEX: bool>(
    codes: [&[u8]; 4],
    factors: [&[f32]; 4],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    qsum: &[i32],
    half_block: usize,
) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: the caller's contract.
    unsafe {
        let _ = qsum;
        let [acc] = fourbit_q8_rows::<4, 1, EVEX>(
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

vnni_pair! {
    /// See [`crate::scalar::dot_fourbit_q8_rows`]: every row of a decode task in one call, four
    /// at a time and then one at a time, each row's bits those of [`dot_fourbit_q8_x4_vex`].
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI must be available; `half_block` is a multiple of 32; with
    /// `n = out.len()` and `nb = factors.len() / n`, `codes` holds `n * nb * half_block` bytes
    /// (row after row), `qe`, `qo` `nb * half_block` elements and `factors` exactly `n * nb`.
    dot_fourbit_q8_rows_vex, dot_fourbit_q8_rows_evex = dot_fourbit_q8_rows(
        codes: &[u8], factors: &[f32], lut: &[i8; 16], qe: &[i8], qo: &[i8], qsum: &[i32],
        half_block: usize, out: &mut [f32]
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_fourbit_q8_rows<const EVEX: bool>(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    qsum: &[i32],
    half_block: usize,
    out: &mut [f32],
) {
    let _ = qsum;
    // SAFETY: row i reads `nb·half_block` codes at `i·nb·half_block` and `nb` factors at `i·nb`,
    // i below `out.len()`: inside the lengths the caller guarantees.
    unsafe { fourbit_rows_task!(fourbit_q8_rows, EVEX; 1; codes, [factors], lut, [qe], [qo], half_block, [out]) }
}

vnni_pair! {
    /// See [`crate::scalar::dot_fourbit_q8_rows_t2`]: [`dot_fourbit_q8_rows_vex`] for two tokens
    /// at once, each row's codes looked up once for both, every (row, token) with the bits of
    /// [`dot_fourbit_q8_x4_vex`] on that token alone.
    ///
    /// # Safety
    /// As [`dot_fourbit_q8_rows_vex`], for both tokens' activations and factors; `out[0]` and
    /// `out[1]` have equal lengths.
    dot_fourbit_q8_rows_t2_vex, dot_fourbit_q8_rows_t2_evex = dot_fourbit_q8_rows_t2(
        codes: &[u8], factors: [&[f32]; 2], lut: &[i8; 16], qe: [&[i8]; 2], qo: [&[i8]; 2], qsum: [&[i32]; 2],
        half_block: usize, out: [&mut [f32]; 2]
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_fourbit_q8_rows_t2<const EVEX: bool>(
    codes: &[u8],
    factors: [&[f32]; 2],
    lut: &[i8; 16],
    qe: [&[i8]; 2],
    qo: [&[i8]; 2],
    qsum: [&[i32]; 2],
    half_block: usize,
    out: [&mut [f32]; 2],
) {
    let _ = qsum;
    // SAFETY: row i reads `nb·half_block` codes at `i·nb·half_block` and, per token, `nb` factors
    // at `i·nb`, i below `out[0].len()`: inside the lengths the caller guarantees.
    unsafe { fourbit_rows_task!(fourbit_q8_rows, EVEX; 2; codes, factors, lut, qe, qo, half_block, out) }
}

vnni_pair! {
    /// See [`crate::scalar::dot_fourbit_q8_x4t2`]: [`dot_fourbit_q8_x4_vex`] for two tokens,
    /// each row's codes looked up once for both; every (row, token) bit-identical to
    /// [`dot_fourbit_q8_x4_vex`] of that token.
    ///
    /// # Safety
    /// As [`dot_fourbit_q8_x4_vex`], for both tokens' activations, factors and sums.
    dot_fourbit_q8_x4t2_vex, dot_fourbit_q8_x4t2_evex = dot_fourbit_q8_x4t2(
        codes: [&[u8]; 4], factors: [[&[f32]; 4]; 2], lut: &[i8; 16], qe: [&[i8]; 2], qo: [&[i8]; 2],
        qsum: [&[i32]; 2], half_block: usize
    ) -> [[f32; 4]; 2]
}

#[inline(always)]
unsafe fn dot_fourbit_q8_x4t2<const EVEX: bool>(
    codes: [&[u8]; 4],
    factors: [[&[f32]; 4]; 2],
    lut: &[i8; 16],
    qe: [&[i8]; 2],
    qo: [&[i8]; 2],
    _qsum: [&[i32]; 2],
    half_block: usize,
) -> [[f32; 4]; 2] {
    let mut out = [[0f32; 4]; 2];
    // SAFETY: the caller's contract.
    unsafe {
        let acc = fourbit_q8_rows::<4, 2, EVEX>(
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

vnni_pair! {
    /// See [`crate::scalar::fourbit_q8_tile`]: per weight row, its nibbles looked up once per
    /// block (biased) and fed to four tokens with two `vpdpbusd` each, from `−128 · qsum` (see
    /// `fourbit_q8_rows`); the exact block sum is scaled by the token's and then the row's factor.
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI must be available; with `nb = wf[0].len()`, every `wf[r]`, `xs[t]`,
    /// `qsum[t]` holds `nb` entries and every `codes[r]`, `qe[t]`, `qo[t]` at least `32 · nb`
    /// bytes.
    fourbit_q8_tile_vex, fourbit_q8_tile_evex = tile_g[false](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: [&[i8]; 4], qo: [&[i8]; 4], xs: [&[f32]; 4],
        qsum: [&[i32]; 4]
    ) -> [[f32; 4]; 4]
}

vnni_pair! {
    /// [`fourbit_q8_tile_vex`] for weights in blocks of 32, two to each 32-byte step (`wf` holds
    /// one entry per block of 32, an even count; the activations stay in blocks of 64, one `xs`
    /// entry per step, but `qsum` holds each half's sum, one per block of 32): each step's lanes
    /// 0–3 hold the first block's sums, 4–7 the second's, each with its own bias correction and
    /// row factor.
    ///
    /// # Safety
    /// As [`fourbit_q8_tile_vex`] with `wf[0].len()` = `qsum[t].len()` = 2 · `xs[t].len()`.
    fourbit_q8_tile_split_vex, fourbit_q8_tile_split_evex = tile_g[true](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: [&[i8]; 4], qo: [&[i8]; 4], xs: [&[f32]; 4],
        qsum: [&[i32]; 4]
    ) -> [[f32; 4]; 4]
}

/// Where step `b`'s biased sum starts: `−128 · Σq` of its block in lane 0 (with `SPLIT`, of
/// its two halves in lanes 0 and 4, which are scaled by different factors).
///
/// # Safety
/// AVX2 enabled; entry `b` (with `SPLIT`, `2b` and `2b + 1`) readable at `q`.
#[inline(always)]
unsafe fn step_unbias<const SPLIT: bool>(q: *const i32, b: usize) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe {
        if SPLIT {
            let (lo, hi) = ((*q.add(2 * b)).wrapping_mul(-128), (*q.add(2 * b + 1)).wrapping_mul(-128));
            _mm256_setr_epi32(lo, 0, 0, 0, hi, 0, 0, 0)
        } else {
            unbias(*q.add(b))
        }
    }
}

/// The 4 × 4 tile's body, for blocks of 64 or (`SPLIT`) of 32 weights two to a step.
#[inline(always)]
unsafe fn tile_g<const EVEX: bool, const SPLIT: bool>(
    codes: [&[u8]; 4],
    wf: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 4],
    qo: [&[i8]; 4],
    xs: [&[f32]; 4],
    qsum: [&[i32]; 4],
) -> [[f32; 4]; 4] {
    // Steps of 32 bytes of codes.
    let nb = if SPLIT { wf[0].len() / 2 } else { wf[0].len() };
    let mut out = [[0f32; 4]; 4];
    // SAFETY: block b reads 32 bytes at 32·b of codes/qe/qo and entry b of wf/xs/qsum: inside
    // the lengths the caller guarantees.
    unsafe {
        let table = biased_table(lut);
        let nib = _mm256_set1_epi8(0x0F);
        for (r, row_out) in out.iter_mut().enumerate() {
            let cp = codes[r].as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..nb {
                let i = 32 * b;
                _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(i + 256) as *const i8);
                let v = _mm256_loadu_si256(cp.add(i) as *const __m256i);
                let (wh, wl) = nibbles(table, nib, v);
                let f = step_factor::<SPLIT>(wf[r].as_ptr(), b);
                for (t, a) in acc.iter_mut().enumerate() {
                    let qh = _mm256_loadu_si256(qe[t].as_ptr().add(i) as *const __m256i);
                    let ql = _mm256_loadu_si256(qo[t].as_ptr().add(i) as *const __m256i);
                    let s = dpbusd::<EVEX>(dpbusd::<EVEX>(step_unbias::<SPLIT>(qsum[t].as_ptr(), b), wh, qh), wl, ql);
                    let fx = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(*xs[t].get_unchecked(b)));
                    *a = _mm256_fmadd_ps(fx, f, *a);
                }
            }
            _mm_storeu_ps(row_out.as_mut_ptr(), hsum4(acc));
        }
    }
    out
}

vnni_pair! {
    /// [`fourbit_q8_tile_vex`] over a run of tokens: the four rows' nibbles are looked up once
    /// into a buffer, then each row meets the run's tokens eight (or four) at a time with the
    /// tile's arithmetic — the same operations in the same order, so every (row, token) has the
    /// tile's bits, without a lookup per row and four tokens or a call per tile. The layout of
    /// the arguments is that of `avx512::fourbit_q8_tile_run`.
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI must be available; with `nb = wf[0].len()` (at most
    /// [`TILE_RUN_MAX_BLOCKS`]), every `wf[r]` holds `nb` entries and every `codes[r]` at least
    /// `32 · nb` bytes; `tokens` is a multiple of 4; `qe`, `qo` hold
    /// `(tokens − 1)·q_stride + 32·nb` elements, `xs`, `qsum` `tokens · nb`, `out` `4 · tokens`.
    fourbit_q8_tile_run_vex, fourbit_q8_tile_run_evex = tile_run_g[false](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: &[i8], qo: &[i8], q_stride: usize, xs: &[f32],
        qsum: &[i32], tokens: usize, out: &mut [f32]
    )
}

vnni_pair! {
    /// [`fourbit_q8_tile_run_vex`] for weights in blocks of 32, two to a step, as
    /// [`fourbit_q8_tile_split_vex`] runs them (`wf` and each token's `qsum` hold one entry per
    /// block of 32, each token's `xs` one per step of 64).
    ///
    /// # Safety
    /// As [`fourbit_q8_tile_run_vex`] with `wf[0].len()` even, at most
    /// `2 · TILE_RUN_MAX_BLOCKS`; `xs` holds `tokens · wf[0].len() / 2` entries, `qsum`
    /// `tokens · wf[0].len()`.
    fourbit_q8_tile_run_split_vex, fourbit_q8_tile_run_split_evex = tile_run_g[true](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: &[i8], qo: &[i8], q_stride: usize, xs: &[f32],
        qsum: &[i32], tokens: usize, out: &mut [f32]
    )
}

/// The tile run's body, for blocks of 64 or (`SPLIT`) of 32 weights two to a step.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_run_g<const EVEX: bool, const SPLIT: bool>(
    codes: [&[u8]; 4],
    wf: [&[f32]; 4],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    q_stride: usize,
    xs: &[f32],
    qsum: &[i32],
    tokens: usize,
    out: &mut [f32],
) {
    // Steps of 32 bytes of codes.
    let nb = if SPLIT { wf[0].len() / 2 } else { wf[0].len() };
    debug_assert!(nb <= TILE_RUN_MAX_BLOCKS && tokens.is_multiple_of(4));
    // SAFETY: block b reads 32 bytes at 32·b of each row's codes and of each token's activations
    // (token t from t·q_stride) and entry b of wf / a token's xs and qsum: inside the caller's
    // lengths. The buffer's first `8 · nb` registers are written before they are read.
    unsafe {
        let table = biased_table(lut);
        let nib = _mm256_set1_epi8(0x0F);
        let mut buf = [std::mem::MaybeUninit::<__m256i>::uninit(); 8 * TILE_RUN_MAX_BLOCKS];
        for r in 0..4 {
            for b in 0..nb {
                let v = _mm256_loadu_si256(codes[r].as_ptr().add(32 * b) as *const __m256i);
                buf[2 * (r * nb + b)].write(_mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), nib)));
                buf[2 * (r * nb + b) + 1].write(_mm256_shuffle_epi8(table, _mm256_and_si256(v, nib)));
            }
        }
        let buf = &buf[..8 * nb];
        let mut t0 = 0;
        while t0 + 8 <= tokens {
            tile_run_tokens::<8, EVEX, SPLIT>(buf, wf, qe, qo, q_stride, xs, qsum, t0, out);
            t0 += 8;
        }
        if t0 < tokens {
            tile_run_tokens::<4, EVEX, SPLIT>(buf, wf, qe, qo, q_stride, xs, qsum, t0, out);
        }
    }
}

/// Tokens `t0 .. t0 + T` of [`tile_run_g`] against the looked-up rows in `buf`.
///
/// # Safety
/// As [`tile_run_g`], with `buf` its looked-up rows and `t0 + T ≤ tokens`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_run_tokens<const T: usize, const EVEX: bool, const SPLIT: bool>(
    buf: &[std::mem::MaybeUninit<__m256i>],
    wf: [&[f32]; 4],
    qe: &[i8],
    qo: &[i8],
    q_stride: usize,
    xs: &[f32],
    qsum: &[i32],
    t0: usize,
    out: &mut [f32],
) {
    // Block entries (a token's `qsum` entries) and steps of 32 bytes (its `xs` entries).
    let entries = wf[0].len();
    let nb = if SPLIT { entries / 2 } else { entries };
    // SAFETY: the caller's contract.
    unsafe {
        let pe: [*const i8; T] = std::array::from_fn(|t| qe.as_ptr().add((t0 + t) * q_stride));
        let po: [*const i8; T] = std::array::from_fn(|t| qo.as_ptr().add((t0 + t) * q_stride));
        let px: [*const f32; T] = std::array::from_fn(|t| xs.as_ptr().add((t0 + t) * nb));
        let ps: [*const i32; T] = std::array::from_fn(|t| qsum.as_ptr().add((t0 + t) * entries));
        for r in 0..4 {
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let i = 32 * b;
                let (wh, wl) = (buf[2 * (r * nb + b)].assume_init(), buf[2 * (r * nb + b) + 1].assume_init());
                let f = step_factor::<SPLIT>(wf[r].as_ptr(), b);
                for (t, a) in acc.iter_mut().enumerate() {
                    let qh = _mm256_loadu_si256(pe[t].add(i) as *const __m256i);
                    let ql = _mm256_loadu_si256(po[t].add(i) as *const __m256i);
                    let s = dpbusd::<EVEX>(dpbusd::<EVEX>(step_unbias::<SPLIT>(ps[t], b), wh, qh), wl, ql);
                    let fx = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(*px[t].add(b)));
                    *a = _mm256_fmadd_ps(fx, f, *a);
                }
            }
            for g in 0..T / 4 {
                let mut v = [0f32; 4];
                _mm_storeu_ps(v.as_mut_ptr(), hsum4([acc[4 * g], acc[4 * g + 1], acc[4 * g + 2], acc[4 * g + 3]]));
                for (u, &x) in v.iter().enumerate() {
                    *out.get_unchecked_mut(4 * (t0 + 4 * g + u) + r) = x;
                }
            }
        }
    }
}

/// Four int8 rows against one activation row (see [`crate::scalar::dot_int8_x4`]): the
/// activations biased to unsigned once per 32 bytes, one `vpdpbusd` per row and step, and a
/// second against ones for the row's sum (the bias taken off at the end, `128 · Σw`). The prefill
/// tile's body; decode keeps the AVX2 kernel (see `Kernels::avxvnni`).
///
/// # Safety
/// AVX2, FMA and AVX-VNNI (or AVX-512 VNNI + VL when `EVEX`); all five slices have the same
/// length; reached only from the `vnni_pair!` entry points.
#[inline(always)]
unsafe fn dot_int8_x4<const EVEX: bool>(a: &[i8], w: [&[i8]; 4]) -> [i32; 4] {
    let n = a.len();
    let ap = a.as_ptr();
    let wp = w.map(|w| w.as_ptr());
    let mut i = 0;
    // SAFETY: full loads stay below n, which every slice holds; the tail is scalar.
    unsafe {
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi8(1);
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut sums = [_mm256_setzero_si256(); 4];
        while i + 32 <= n {
            let va = _mm256_xor_si256(_mm256_loadu_si256(ap.add(i) as *const __m256i), flip);
            ahead(wp[0] as *const u8, 4 * i);
            for r in 0..4 {
                let vw = _mm256_loadu_si256(wp[r].add(i) as *const __m256i);
                acc[r] = dpbusd::<EVEX>(acc[r], va, vw);
                sums[r] = dpbusd::<EVEX>(sums[r], ones, vw);
            }
            i += 32;
        }
        let mut out = [0i32; 4];
        for (r, o) in out.iter_mut().enumerate() {
            *o = hsum_i32(acc[r]).wrapping_sub(128i32.wrapping_mul(hsum_i32(sums[r])));
            for j in i..n {
                *o += *ap.add(j) as i32 * *wp[r].add(j) as i32;
            }
        }
        out
    }
}

vnni_pair! {
    /// See [`crate::scalar::dot_int8_4x4`]: per weight row, `dot_int8_x4` against the four
    /// activation rows (exact, so the roles can swap).
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI must be available; all eight slices have the same length.
    dot_int8_4x4_vex, dot_int8_4x4_evex = dot_int8_4x4(a: [&[i8]; 4], w: [&[i8]; 4]) -> [[i32; 4]; 4]
}

#[inline(always)]
unsafe fn dot_int8_4x4<const EVEX: bool>(a: [&[i8]; 4], w: [&[i8]; 4]) -> [[i32; 4]; 4] {
    // A loop, not `array::from_fn`: the body must inline into this function's features.
    let mut out = [[0i32; 4]; 4];
    for (o, wi) in out.iter_mut().zip(w) {
        // SAFETY: same contract as dot_int8_x4 for every row.
        *o = unsafe { dot_int8_x4::<EVEX>(wi, a) };
    }
    out
}
