//! AVX-512 kernels. The exact 4-bit path looks levels up with one `vpermps` per 16 codes (the
//! 16-entry table fits a register); the integer route looks int8 levels up with `vpshufb`, or
//! VBMI's `vpermb` in the `_vbmi` variants; int8 products use VNNI's `vpdpbusd`.
//!
//! # Safety (for every function here)
//! The caller must ensure the CPU supports AVX-512 F, BW, VL and VNNI (plus AVX2/FMA), and VBMI
//! for the `_vbmi` functions, which `crate::dispatch::Kernels` guarantees by construction, and
//! must pass slices with the lengths documented on the matching `crate::scalar` function.

use core::arch::x86_64::*;
use half::{bf16, f16};

/// The plain and the VBMI entry point of a kernel body generic over `VBMI`: the same code
/// compiled twice, with and without `avx512vbmi` among its target features. The plain one
/// carries the given docs.
macro_rules! vbmi_pair {
    ($(#[$doc:meta])* $plain:ident, $vbmi:ident = $body:ident $([$extra:expr])? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$doc])*
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $plain($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: the caller's contract is the body's.
            unsafe { $body::<false $(, $extra)?>($($arg),*) }
        }

        #[doc = concat!("[`", stringify!($plain), "`] with the nibble lookups through VBMI's `vpermb` ([`lookup`]).")]
        ///
        /// # Safety
        #[doc = concat!("As [`", stringify!($plain), "`], and AVX-512 VBMI must be available.")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $vbmi($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: the caller's contract is the body's, VBMI included.
            unsafe { $body::<true $(, $extra)?>($($arg),*) }
        }
    };
}

/// How far ahead (bytes) the decode loops prefetch. The hardware prefetcher alone left the
/// weight-streaming loops waiting on their loads (half the 4-bit loop's samples sat on its code
/// loads); 8 KiB ahead beat an L1 prefetch 2 KiB ahead and none, from DRAM at one and two
/// threads (docs/PERFORMANCE.md). The cache level aimed at is the process's [`crate::Prefetch`],
/// as for [`super::avx2`]'s.
const PREFETCH_L2: usize = 8192;

/// See [`crate::scalar::dot_f32`].
///
/// # Safety
/// AVX-512F must be available; `w.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load stays below n, which bounds both slices.
    unsafe {
        while i + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(i + 16 * j)), _mm512_loadu_ps(xp.add(i + 16 * j)), *a);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(i)), _mm512_loadu_ps(xp.add(i)), acc[0]);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, wp.add(i)), _mm512_maskz_loadu_ps(m, xp.add(i)), acc[1]);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}

/// See [`crate::scalar::axpy_f32`]; one FMA per element, so bit-identical to it.
///
/// # Safety
/// AVX-512F must be available; `y.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn axpy_f32(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    // SAFETY: every access is masked to the n elements both slices hold.
    unsafe {
        let av = _mm512_set1_ps(a);
        while i < n {
            let left = n - i;
            let m: __mmask16 = if left >= 16 { !0 } else { (1u16 << left) - 1 };
            let v = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, xp.add(i)), _mm512_maskz_loadu_ps(m, yp.add(i)));
            _mm512_mask_storeu_ps(yp.add(i), m, v);
            i += 16;
        }
    }
}

/// Converts 16 f16 or bf16 values at `p` (as raw u16) to f32.
#[inline(always)]
unsafe fn load16_f16(p: *const u16, m: __mmask16) -> __m512 {
    // SAFETY: the caller guarantees the masked lanes are in bounds and the features are enabled.
    unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p as *const i16)) }
}

#[inline(always)]
unsafe fn load16_bf16(p: *const u16, m: __mmask16) -> __m512 {
    // SAFETY: as for load16_f16. bf16 is the top half of an f32: widen and shift.
    unsafe {
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p as *const i16)), 16))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn dot_half(w: *const u16, x: &[f32], n: usize, bf: bool) -> f32 {
    let xp = x.as_ptr();
    let mut i = 0;
    // SAFETY: loads stay below n; features are enabled by the caller.
    unsafe {
        let load = |p: *const u16, m: __mmask16| {
            if bf {
                load16_bf16(p, m)
            } else {
                load16_f16(p, m)
            }
        };
        let mut acc = [_mm512_setzero_ps(); 2];
        while i + 32 <= n {
            acc[0] = _mm512_fmadd_ps(load(w.add(i), !0), _mm512_loadu_ps(xp.add(i)), acc[0]);
            acc[1] = _mm512_fmadd_ps(load(w.add(i + 16), !0), _mm512_loadu_ps(xp.add(i + 16)), acc[1]);
            i += 32;
        }
        while i < n {
            let left = (n - i).min(16);
            let m: __mmask16 = if left == 16 { !0 } else { (1u16 << left) - 1 };
            acc[0] = _mm512_fmadd_ps(load(w.add(i), m), _mm512_maskz_loadu_ps(m, xp.add(i)), acc[0]);
            i += left;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }
}

/// See [`crate::scalar::dot_f16`].
///
/// # Safety
/// AVX-512F must be available; `w.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    // SAFETY: f16 is a u16 bit pattern; lengths are the caller's contract.
    unsafe { dot_half(w.as_ptr() as *const u16, x, w.len().min(x.len()), false) }
}

/// See [`crate::scalar::dot_bf16`].
///
/// # Safety
/// AVX-512F must be available; `w.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    // SAFETY: bf16 is a u16 bit pattern; lengths are the caller's contract.
    unsafe { dot_half(w.as_ptr() as *const u16, x, w.len().min(x.len()), true) }
}

/// See [`crate::scalar::dot_fourbit`]. Each 16 bytes of codes widen to 16 lanes; the high nibble
/// (shifted down) and the byte itself (vpermps reads only the low 4 bits) index the table.
///
/// # Safety
/// AVX-512F must be available; `half_block` is a multiple of 16; `codes`, `xe`, `xo` hold
/// `scales.len() * half_block` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn dot_fourbit(
    codes: &[u8],
    scales: &[f32],
    levels: &[f32; 16],
    xe: &[f32],
    xo: &[f32],
    half_block: usize,
) -> f32 {
    debug_assert!(half_block.is_multiple_of(16));
    debug_assert!(codes.len() >= scales.len() * half_block);
    let (cp, ep, op) = (codes.as_ptr(), xe.as_ptr(), xo.as_ptr());
    // SAFETY: all loads are within `scales.len() * half_block` elements, which the caller
    // guarantees every slice holds.
    unsafe {
        let lut = _mm512_loadu_ps(levels.as_ptr());
        // Two accumulators, alternating by block, so consecutive blocks do not wait on each other.
        let mut acc = [_mm512_setzero_ps(); 2];
        for (b, &scale) in scales.iter().enumerate() {
            let mut be = _mm512_setzero_ps();
            let mut bo = _mm512_setzero_ps();
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(i) as *const __m128i));
                let we = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
                let wo = _mm512_permutexvar_ps(v, lut);
                be = _mm512_fmadd_ps(we, _mm512_loadu_ps(ep.add(i)), be);
                bo = _mm512_fmadd_ps(wo, _mm512_loadu_ps(op.add(i)), bo);
                i += 16;
            }
            let k = b & 1;
            acc[k] = _mm512_fmadd_ps(_mm512_add_ps(be, bo), _mm512_set1_ps(scale), acc[k]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }
}

/// See [`crate::scalar::dot_int8`]. `vpdpbusd` multiplies unsigned by signed bytes, so the
/// activations are biased by +128 (xor 0x80) and `128 · Σw`, summed in the same pass with a
/// second `vpdpbusd` against ones, is taken off at the end.
///
/// # Safety
/// AVX-512F/BW and VNNI must be available; `a.len() == w.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub unsafe fn dot_int8(a: &[i8], w: &[i8]) -> i32 {
    let n = a.len().min(w.len());
    let (ap, wp) = (a.as_ptr(), w.as_ptr());
    // SAFETY: full loads stay below n; the tail uses a masked load of the remaining bytes.
    unsafe {
        let flip = _mm512_set1_epi8(-128);
        let ones = _mm512_set1_epi8(1);
        let mut acc = [_mm512_setzero_si512(); 2];
        let mut sum = _mm512_setzero_si512();
        let mut i = 0;
        let mut k = 0;
        while i < n {
            let left = n - i;
            let m: __mmask64 = if left >= 64 { !0 } else { (1u64 << left) - 1 };
            super::prefetch_line(wp.wrapping_add(i + PREFETCH_L2));
            let va = _mm512_maskz_loadu_epi8(m, ap.add(i));
            let vw = _mm512_maskz_loadu_epi8(m, wp.add(i));
            acc[k] = _mm512_dpbusd_epi32(acc[k], _mm512_xor_si512(va, flip), vw);
            sum = _mm512_dpbusd_epi32(sum, ones, vw);
            k ^= 1;
            i += 64;
        }
        let dot = _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]));
        dot.wrapping_sub(128i32.wrapping_mul(_mm512_reduce_add_epi32(sum)))
    }
}

/// The int8 level table biased by +128 (`vpdpbusd` takes one unsigned operand), in every
/// 128-bit lane: what `vpshufb` indexes per lane, and, as 64 bytes repeating every 16, what
/// `vpermb` indexes across the register.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn biased_table(lut: &[i8; 16]) -> __m512i {
    let biased: [u8; 16] = std::array::from_fn(|i| (lut[i] as i16 + 128) as u8);
    // SAFETY: a 16-byte load from a 16-byte array.
    _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(biased.as_ptr() as *const __m128i) })
}

/// The scales of blocks `b` (lanes 0–7) and `b + 1` (lanes 8–15; zero unless `two`): one 4- or
/// 8-byte load and one permute, matching the lane layout of two 64-blocks per register.
///
/// # Safety
/// `p.add(b)` (and `p.add(b + 1)` if `two`) must be readable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn scale_pair(p: *const f32, b: usize, two: bool) -> __m512 {
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    // SAFETY: the caller guarantees the one or two floats are readable.
    let v = unsafe {
        if two {
            // `movq`: any alignment (`_mm_load_sd` would assume an f64's).
            _mm_castsi128_ps(_mm_loadl_epi64(p.add(b) as *const __m128i))
        } else {
            _mm_load_ss(p.add(b))
        }
    };
    _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(v))
}

/// Row factors of weights in blocks of 32 for one 64-byte step (four blocks, or two when `two`
/// is false): entry `k + j` of `p` in lanes `4j .. 4j + 4`, where those blocks' sums lie.
///
/// # Safety
/// Four (two) floats readable at `p.add(k)`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn scale_quad(p: *const f32, k: usize, two: bool) -> __m512 {
    let quarters = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    // SAFETY: the caller guarantees the four or two floats are readable.
    let v = unsafe {
        if two {
            _mm_loadu_ps(p.add(k))
        } else {
            _mm_castsi128_ps(_mm_loadl_epi64(p.add(k) as *const __m128i))
        }
    };
    _mm512_permutexvar_ps(quarters, _mm512_castps128_ps512(v))
}

/// A step's row factors: [`scale_pair`] for blocks of 64, [`scale_quad`] for blocks of 32.
///
/// # Safety
/// As the two.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn row_scales<const SPLIT: bool>(p: *const f32, b: usize, two: bool) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        if SPLIT {
            scale_quad(p, 2 * b, two)
        } else {
            scale_pair(p, b, two)
        }
    }
}

/// The unsigned bias of a tile taken off `acc` before its lanes are summed: `−128 · Σ_k wf[k] ·
/// xs · qsum[k]` over the block entries `k` of the rows (sixteen at a time), with `xs` the
/// token's factor of the 64 activations block `k` lies in (`k / 2` for weights in blocks of 32,
/// `SPLIT`, whose `qsum` holds each half's sum).
///
/// # Safety
/// Every `wf[r]` holds `entries` floats, every `qs[t]` `entries` sums and every `xs[t]`
/// `entries` (`SPLIT`: `entries / 2`) floats.
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
unsafe fn take_bias<const SPLIT: bool>(
    acc: &mut [[__m512; 4]; 4],
    wf: [*const f32; 4],
    xs: [*const f32; 4],
    qs: [*const i32; 4],
    entries: usize,
) {
    // SAFETY: masked loads stay inside the lengths of the caller's contract.
    unsafe {
        let minus128 = _mm512_set1_ps(-128.0);
        let twice = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let mut j = 0;
        while j < entries {
            let left = entries - j;
            let m: __mmask16 = if left >= 16 { !0 } else { (1u16 << left) - 1 };
            let w: [__m512; 4] = std::array::from_fn(|r| _mm512_maskz_loadu_ps(m, wf[r].add(j)));
            for t in 0..4 {
                let q = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, qs[t].add(j)));
                let x = if SPLIT {
                    let half: __mmask8 = if left >= 16 { !0 } else { ((1u16 << left.div_ceil(2)) - 1) as u8 };
                    let x8 = _mm256_maskz_loadu_ps(half, xs[t].add(j / 2));
                    _mm512_permutexvar_ps(twice, _mm512_castps256_ps512(x8))
                } else {
                    _mm512_maskz_loadu_ps(m, xs[t].add(j))
                };
                let cq = _mm512_mul_ps(_mm512_mul_ps(x, q), minus128);
                for r in 0..4 {
                    acc[r][t] = _mm512_fmadd_ps(w[r], cq, acc[r][t]);
                }
            }
            j += 16;
        }
    }
}

vbmi_pair! {
    /// See [`crate::scalar::dot_fourbit_q8`]. Nibbles index the int8 level table ([`lookup`])
    /// and `vpdpbusd` multiplies them by the activations. `vpdpbusd` needs an unsigned operand, so
    /// the table is biased by +128: each block's integer sum then carries `128 · Σq` extra, which is
    /// taken off once at the end as `128 · Σ_b factor[b] · qsum[b]` (a float dot product over
    /// blocks, 16 at a time).
    ///
    /// Blocks of 64 (half_block 32, the default) go two to a 512-bit register: lanes 0–7 hold one
    /// block's partial sums and lanes 8–15 the next one's, and one FMA applies both factors.
    /// Larger blocks run whole 64-byte steps inside one block. Zen 4 splits 512-bit shuffles, so
    /// narrow rows decode through the 256-bit kernel instead (`Kernels::avx512`; the figures of
    /// both are in docs/PERFORMANCE.md).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VNNI must be available; `half_block` is a multiple of 32; `codes`, `qe`,
    /// `qo` hold `factors.len() * half_block` elements; `qsum[b]` = Σ of block b's activations.
    dot_fourbit_q8, dot_fourbit_q8_vbmi = fourbit_q8(
        codes: &[u8], factors: &[f32], lut: &[i8; 16], qe: &[i8], qo: &[i8], qsum: &[i32], half_block: usize
    ) -> f32
}

vbmi_pair! {
    /// [`dot_fourbit_q8`] for four tokens at once (a decode batch over rows too wide for the
    /// four-row kernels): each 64-byte step of codes is loaded and looked up once for the four,
    /// and every token's sums, accumulators and final reduction are exactly the one-token
    /// kernel's, so each gets the bits it gets alone.
    ///
    /// # Safety
    /// As [`dot_fourbit_q8`], for each token's activations, factors and sums (all with
    /// `factors[0].len()` blocks).
    dot_fourbit_q8_t4, dot_fourbit_q8_t4_vbmi = fourbit_q8_t[4](
        codes: &[u8], factors: [&[f32]; 4], lut: &[i8; 16], qe: [&[i8]; 4], qo: [&[i8]; 4], qsum: [&[i32]; 4],
        half_block: usize
    ) -> [f32; 4]
}

/// # Safety
/// Inlined only into the two entry points `vbmi_pair!` makes of it, whose contract it has.
#[inline(always)]
unsafe fn fourbit_q8<const VBMI: bool>(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    qsum: &[i32],
    half_block: usize,
) -> f32 {
    // SAFETY: the caller's contract is the body's.
    let [v] = unsafe { fourbit_q8_t::<VBMI, 1>(codes, [factors], lut, [qe], [qo], [qsum], half_block) };
    v
}

/// One row against `T` tokens: the one-token kernel's operations for each token, in its order,
/// with each step's codes loaded and looked up once for all of them.
///
/// # Safety
/// Inlined only into `vbmi_pair!` entry points (and [`fourbit_q8`]), whose contract it has for
/// every token.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // (token, accumulator) indices mirror the one-token order
unsafe fn fourbit_q8_t<const VBMI: bool, const T: usize>(
    codes: &[u8],
    factors: [&[f32]; T],
    lut: &[i8; 16],
    qe: [&[i8]; T],
    qo: [&[i8]; T],
    qsum: [&[i32]; T],
    half_block: usize,
) -> [f32; T] {
    debug_assert!(half_block.is_multiple_of(32));
    let nb = factors[0].len();
    debug_assert!((0..T).all(|t| factors[t].len() == nb && qsum[t].len() >= nb));
    let cp = codes.as_ptr();
    let (ep, op, fp) = (qe.map(|q| q.as_ptr()), qo.map(|q| q.as_ptr()), factors.map(|f| f.as_ptr()));
    // SAFETY: loads stay within `nb * half_block` bytes of codes and of every token's qe/qo and
    // within `nb` entries of its factors/qsum (caller's contract); the tails are masked.
    unsafe {
        let table = biased_table(lut);
        let nib = _mm512_set1_epi8(0x0F);
        let mut acc = [[_mm512_setzero_ps(); 4]; T];
        let mut b = 0;
        if half_block == 32 {
            // Factors of blocks b (lanes 0–7) and b + 1 (lanes 8–15): one 8-byte load and one
            // permute. (Two masked FMAs with broadcasts compiled to two FMAs plus two blends.)
            // Two blocks a step, four steps an iteration, four independent accumulators.
            while b + 8 <= nb {
                for u in 0..4 {
                    let i = (b + 2 * u) * 32;
                    let (wh, wl) = look::<VBMI>(cp, i, table, nib);
                    for t in 0..T {
                        let s = biased_sums(wh, wl, ep[t].add(i), op[t].add(i));
                        acc[t][u] =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale_pair(fp[t], b + 2 * u, true), acc[t][u]);
                    }
                }
                b += 8;
            }
            while b + 2 <= nb {
                let (wh, wl) = look::<VBMI>(cp, b * 32, table, nib);
                for t in 0..T {
                    let s = biased_sums(wh, wl, ep[t].add(b * 32), op[t].add(b * 32));
                    acc[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale_pair(fp[t], b, true), acc[t][0]);
                }
                b += 2;
            }
            if b < nb {
                // The odd last block.
                for t in 0..T {
                    let s = half_step::<VBMI>(cp.add(b * 32), ep[t].add(b * 32), op[t].add(b * 32), table, nib);
                    acc[t][2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(*fp[t].add(b)), acc[t][2]);
                }
            }
        } else {
            for j in 0..nb {
                let mut s = [_mm512_setzero_si512(); T];
                let mut i = j * half_block;
                let end = i + half_block;
                while i + 64 <= end {
                    let (wh, wl) = look::<VBMI>(cp, i, table, nib);
                    for t in 0..T {
                        s[t] = _mm512_add_epi32(s[t], biased_sums(wh, wl, ep[t].add(i), op[t].add(i)));
                    }
                    i += 64;
                }
                if i < end {
                    // half_block an odd multiple of 32 (96, 160, …): a 32-byte remainder.
                    for t in 0..T {
                        let h = half_step::<VBMI>(cp.add(i), ep[t].add(i), op[t].add(i), table, nib);
                        s[t] = _mm512_add_epi32(s[t], h);
                    }
                }
                for t in 0..T {
                    acc[t][j & 3] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), _mm512_set1_ps(*fp[t].add(j)), acc[t][j & 3]);
                }
            }
        }
        std::array::from_fn(|t| {
            // The bias: 128 · Σ_b factor[b] · qsum[b].
            let mut bias = _mm512_setzero_ps();
            let qp = qsum[t].as_ptr();
            let mut j = 0;
            while j < nb {
                let left = nb - j;
                let m: __mmask16 = if left >= 16 { !0 } else { (1u16 << left) - 1 };
                let q = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, qp.add(j)));
                bias = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, fp[t].add(j)), q, bias);
                j += 16;
            }
            let a = acc[t];
            let total = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            _mm512_reduce_add_ps(total) - 128.0 * _mm512_reduce_add_ps(bias)
        })
    }
}

/// The prefetch, load and nibble lookups of the 64 code bytes at `i`.
///
/// # Safety
/// As [`lookup`]; 64 bytes readable at `cp + i`.
#[inline(always)]
unsafe fn look<const VBMI: bool>(cp: *const u8, i: usize, table: __m512i, nib: __m512i) -> (__m512i, __m512i) {
    super::prefetch_line(cp.wrapping_add(i + PREFETCH_L2) as *const i8);
    // SAFETY: the caller's contract.
    unsafe { lookup::<VBMI>(_mm512_loadu_si512(cp.add(i) as *const _), table, nib) }
}

/// One token's biased integer lane sums of a 64-byte step: the looked-up levels against its 64
/// even (`e`) and 64 odd (`o`) activations.
///
/// # Safety
/// AVX-512 VNNI enabled by the caller; 64 bytes readable at `e` and at `o`.
#[inline(always)]
unsafe fn biased_sums(wh: __m512i, wl: __m512i, e: *const i8, o: *const i8) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wh, _mm512_loadu_si512(e as *const _));
        _mm512_dpbusd_epi32(s, wl, _mm512_loadu_si512(o as *const _))
    }
}

/// The high- and low-nibble lookups of 64 code bytes in the biased table. `vpshufb` needs each
/// index masked to four bits (bit 7 would zero the byte). VBMI's `vpermb` reads six bits, and the
/// table repeats every 16 bytes across the 64, so bits 4–5 — after the 16-bit shift, the
/// neighbouring byte's low bits — select the same entry: no masks, two fewer instructions per 64
/// bytes.
///
/// # Safety
/// The CPU must have AVX-512 BW, and VBMI when `VBMI`; reached only from the `#[target_feature]`
/// wrappers that enable them (where it and its callers are inlined: checked in the disassembly).
#[inline(always)]
unsafe fn lookup<const VBMI: bool>(v: __m512i, table: __m512i, nib: __m512i) -> (__m512i, __m512i) {
    // SAFETY: the features are the caller's contract.
    unsafe {
        if VBMI {
            (_mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), table), _mm512_permutexvar_epi8(v, table))
        } else {
            (
                _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), nib)),
                _mm512_shuffle_epi8(table, _mm512_and_si512(v, nib)),
            )
        }
    }
}

vbmi_pair! {
    /// See [`crate::scalar::fourbit_q8_tile`]: four weight rows against four tokens. Each row's
    /// nibbles are looked up once per step and feed four tokens; each token's activations feed
    /// four rows. Blocks of 64 go four to a register ([`quad`]): per four blocks and (row, token)
    /// four `vpdpbusd`, a convert, and the scales as one multiply and one FMA with vectors holding
    /// block b + k's scale in lanes 4k–4k+3 (Mistral-7B's 14336×4096 at 128 tokens, one thread on
    /// Zen 4: 79.9 → 67.9 ms against pairs of blocks). Blocks left over go in pairs, two blocks
    /// of 64 per 512-bit step as in [`dot_fourbit_q8`] (two `vpdpbusd`, a convert, a multiply and
    /// an FMA per pair), as do blocks of 32. The unsigned bias (+128 on the table) is taken off at
    /// the end as `128 · Σ_b wf·xs·qsum`.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VNNI must be available; with `nb = wf[0].len()`, every `wf[r]`, `xs[t]`,
    /// `qsum[t]` holds `nb` entries and every `codes[r]`, `qe[t]`, `qo[t]` at least `32 · nb` bytes.
    fourbit_q8_tile, fourbit_q8_tile_vbmi = tile_g[false](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: [&[i8]; 4], qo: [&[i8]; 4], xs: [&[f32]; 4],
        qsum: [&[i32]; 4]
    ) -> [[f32; 4]; 4]
}

vbmi_pair! {
    /// [`fourbit_q8_tile`] for weights in blocks of 32 (four to each 64-byte step, each with its
    /// own row factor in its four lanes; `wf` and `qsum` hold an entry per block of 32 — `qsum`
    /// each half's sum — and `xs` one per 64 activations).
    ///
    /// # Safety
    /// As [`fourbit_q8_tile`] with `wf[r].len()` = `qsum[t].len()` = 2 · `xs[t].len()` = 2 · `nb`.
    fourbit_q8_tile_split, fourbit_q8_tile_split_vbmi = tile_g[true](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: [&[i8]; 4], qo: [&[i8]; 4], xs: [&[f32]; 4],
        qsum: [&[i32]; 4]
    ) -> [[f32; 4]; 4]
}

/// Four blocks of 64 in one register layout: from two steps' looked-up levels (`h0`/`l0` blocks
/// b and b + 1, `h1`/`l1` blocks b + 2 and b + 3; each block 32 bytes, half a register), four
/// registers whose lanes `4k .. 4k + 4` hold block b + k only — the first and second 16 bytes of
/// each block's high levels, then of its low levels. Summed by four `vpdpbusd` into one
/// register, each lane then holds sixteen products of one block, so four blocks take one
/// convert, multiply and FMA per (row, token) where pairs of blocks took two of each (the
/// products are exact integers; only which lane holds them changes).
///
/// # Safety
/// AVX-512F enabled by the caller.
#[inline(always)]
unsafe fn quad(h0: __m512i, h1: __m512i, l0: __m512i, l1: __m512i) -> [__m512i; 4] {
    // SAFETY: register shuffles; the features are the caller's contract.
    unsafe {
        [
            _mm512_shuffle_i64x2::<0x88>(h0, h1),
            _mm512_shuffle_i64x2::<0xDD>(h0, h1),
            _mm512_shuffle_i64x2::<0x88>(l0, l1),
            _mm512_shuffle_i64x2::<0xDD>(l0, l1),
        ]
    }
}

/// A token's even and odd activations of four blocks of 64 from byte `i`, laid out as [`quad`]
/// lays out the levels.
///
/// # Safety
/// AVX-512F enabled by the caller; 128 bytes readable at `qe.add(i)` and `qo.add(i)`.
#[inline(always)]
unsafe fn quad_tokens(qe: *const i8, qo: *const i8, i: usize) -> [__m512i; 4] {
    // SAFETY: the caller's contract.
    unsafe {
        let (e0, e1) = (_mm512_loadu_si512(qe.add(i) as *const _), _mm512_loadu_si512(qe.add(i + 64) as *const _));
        let (o0, o1) = (_mm512_loadu_si512(qo.add(i) as *const _), _mm512_loadu_si512(qo.add(i + 64) as *const _));
        quad(e0, e1, o0, o1)
    }
}

/// `acc + (Σ w·a) · xv · wf` for four blocks in the [`quad`] layout (`xv`, `wf` with block
/// b + k's factor in lanes `4k .. 4k + 4`).
///
/// # Safety
/// AVX-512F and VNNI enabled by the caller.
#[inline(always)]
unsafe fn quad_step(acc: __m512, w: [__m512i; 4], a: [__m512i; 4], xv: __m512, wf: __m512) -> __m512 {
    // SAFETY: register arithmetic; the features are the caller's contract.
    unsafe {
        let mut s = _mm512_setzero_si512();
        for k in 0..4 {
            s = _mm512_dpbusd_epi32(s, w[k], a[k]);
        }
        _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), xv), wf, acc)
    }
}

/// The levels of one block of 64 (32 code bytes at `cp`) in 256-bit registers: [`lookup`] on
/// half a register.
///
/// # Safety
/// AVX-512BW/VL (and VBMI when `VBMI`) enabled by the caller; 32 bytes readable at `cp`.
#[inline(always)]
unsafe fn look_one<const VBMI: bool>(cp: *const u8, table: __m512i) -> (__m256i, __m256i) {
    // SAFETY: the caller's contract.
    unsafe {
        let (v, t) = (_mm256_loadu_si256(cp as *const __m256i), _mm512_castsi512_si256(table));
        if VBMI {
            (_mm256_permutexvar_epi8(_mm256_srli_epi16(v, 4), t), _mm256_permutexvar_epi8(v, t))
        } else {
            let nib = _mm256_set1_epi8(0x0F);
            (
                _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16(v, 4), nib)),
                _mm256_shuffle_epi8(t, _mm256_and_si256(v, nib)),
            )
        }
    }
}

/// Four rows' accumulators for a token started from one block of 64 alone (an odd block count's
/// last one): its products in lanes 0–7 as a pair step puts a block's, scaled by the token's and
/// each row's factors, on 256-bit registers — half the work of a pair step with an empty half on a
/// CPU that splits 512-bit operations (Zen 4). Lanes 8–15 are zero.
///
/// # Safety
/// AVX-512F/VL and VNNI enabled by the caller; 32 bytes readable at `e` and at `o`.
#[inline(always)]
unsafe fn single_block(w: [(__m256i, __m256i); 4], e: *const i8, o: *const i8, xs: f32, wf: [f32; 4]) -> [__m512; 4] {
    // SAFETY: the caller's contract.
    unsafe {
        let (e, o) = (_mm256_loadu_si256(e as *const __m256i), _mm256_loadu_si256(o as *const __m256i));
        let x = _mm256_set1_ps(xs);
        // A loop, not `array::from_fn`: that closure was compiled on its own, without the
        // caller's features, calling every intrinsic.
        let mut acc = [_mm512_setzero_ps(); 4];
        for ((acc, w), wf) in acc.iter_mut().zip(w).zip(wf) {
            let s = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w.0, e), w.1, o);
            let fx = _mm256_mul_ps(_mm256_cvtepi32_ps(s), x);
            *acc = _mm512_zextps256_ps512(_mm256_mul_ps(fx, _mm256_set1_ps(wf)));
        }
        acc
    }
}

/// The tile's body, for weights in blocks of 64 or (`SPLIT`) of 32.
///
/// # Safety
/// Inlined only into the entry points `vbmi_pair!` makes of it, whose contract it has.
#[inline(always)]
unsafe fn tile_g<const VBMI: bool, const SPLIT: bool>(
    codes: [&[u8]; 4],
    wf: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 4],
    qo: [&[i8]; 4],
    xs: [&[f32]; 4],
    qsum: [&[i32]; 4],
) -> [[f32; 4]; 4] {
    // Blocks of 64 activations (steps of 32 code bytes).
    let nb = xs[0].len();
    // SAFETY: the odd last block loads 32 bytes through a mask; every other load is a full step
    // inside the 32·nb bytes (or nb entries) the caller guarantees.
    unsafe {
        let table = biased_table(lut);
        let nib = _mm512_set1_epi8(0x0F);
        let pair = |p: *const f32, b: usize, two: bool| scale_pair(p, b, two);
        // An odd count of blocks of 64 starts from its last block ([`single_block`]); the rest
        // go four at a time, a block to each quarter of the lanes ([`quad`]), then in pairs.
        let single = !SPLIT && nb % 2 == 1;
        let paired = nb - single as usize;
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        if single {
            let (b, i) = (nb - 1, (nb - 1) * 32);
            let w = std::array::from_fn(|r| look_one::<VBMI>(codes[r].as_ptr().add(i), table));
            let f = wf.map(|w| *w.as_ptr().add(b));
            for t in 0..4 {
                let a = single_block(w, qe[t].as_ptr().add(i), qo[t].as_ptr().add(i), *xs[t].as_ptr().add(b), f);
                for r in 0..4 {
                    acc[r][t] = a[r];
                }
            }
        }
        let quads = if SPLIT { 0 } else { nb / 4 };
        for qd in 0..quads {
            let (b, i) = (4 * qd, 128 * qd);
            let w: [[__m512i; 4]; 4] = std::array::from_fn(|r| {
                _mm_prefetch::<_MM_HINT_T0>(codes[r].as_ptr().wrapping_add(i + 256) as *const i8);
                let (h0, l0) = look::<VBMI>(codes[r].as_ptr(), i, table, nib);
                let (h1, l1) = look::<VBMI>(codes[r].as_ptr(), i + 64, table, nib);
                quad(h0, h1, l0, l1)
            });
            let wfv: [__m512; 4] = std::array::from_fn(|r| scale_quad(wf[r].as_ptr(), b, true));
            for t in 0..4 {
                let a = quad_tokens(qe[t].as_ptr(), qo[t].as_ptr(), i);
                let xv = scale_quad(xs[t].as_ptr(), b, true);
                for r in 0..4 {
                    acc[r][t] = quad_step(acc[r][t], w[r], a, xv, wfv[r]);
                }
            }
        }
        let mut b = 4 * quads;
        while b < paired {
            let two = b + 1 < paired;
            let m: __mmask64 = if two { !0 } else { 0xFFFF_FFFF };
            let i = b * 32;
            let mut wh = [_mm512_setzero_si512(); 4];
            let mut wl = [_mm512_setzero_si512(); 4];
            for r in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(codes[r].as_ptr().wrapping_add(i + 256) as *const i8);
                let v = _mm512_maskz_loadu_epi8(m, codes[r].as_ptr().add(i) as *const i8);
                (wh[r], wl[r]) = lookup::<VBMI>(v, table, nib);
            }
            let wfv: [__m512; 4] = std::array::from_fn(|r| row_scales::<SPLIT>(wf[r].as_ptr(), b, two));
            for t in 0..4 {
                let e = _mm512_maskz_loadu_epi8(m, qe[t].as_ptr().add(i));
                let o = _mm512_maskz_loadu_epi8(m, qo[t].as_ptr().add(i));
                let xv = pair(xs[t].as_ptr(), b, two);
                for r in 0..4 {
                    let s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wh[r], e), wl[r], o);
                    let fx = _mm512_mul_ps(_mm512_cvtepi32_ps(s), xv);
                    acc[r][t] = _mm512_fmadd_ps(fx, wfv[r], acc[r][t]);
                }
            }
            b += 2;
        }
        // The bias, sixteen blocks at a time, taken off before the lanes are summed.
        let entries = wf[0].len();
        take_bias::<SPLIT>(&mut acc, wf.map(|w| w.as_ptr()), xs.map(|x| x.as_ptr()), qsum.map(|q| q.as_ptr()), entries);
        let sums = hsum16(std::array::from_fn(|i| acc[i / 4][i % 4]));
        let mut out = [[0f32; 4]; 4];
        _mm512_storeu_ps(out.as_mut_ptr() as *mut f32, sums);
        out
    }
}

vbmi_pair! {
    /// See [`crate::scalar::dot_fourbit_q8_rows_t4`]: a decode task's rows against four tokens,
    /// every (row, token) with the bits of the 256-bit VNNI row kernel
    /// (`avxvnni::dot_fourbit_q8_x4_evex`, this level's one-token kernel for these rows) on that
    /// token alone. Each 512-bit register holds one token's eight lanes in its low half and the
    /// next token's in its high half, lane for lane what the 256-bit kernel holds, so one
    /// `vpdpbusd`, convert and FMA serve two tokens, and a row's codes, loaded into both halves,
    /// are looked up once for all four.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VNNI must be available; `half_block` is a multiple of 32; with
    /// `n = out[0].len()` (every `out[t]` as long) and `nb = factors[0].len() / n`, `codes` holds
    /// `n * nb * half_block` bytes (row after row), every `qe[t]`, `qo[t]` `nb * half_block`
    /// elements and every `factors[t]` exactly `n * nb`.
    dot_fourbit_q8_rows_t4, dot_fourbit_q8_rows_t4_vbmi = fourbit_rows_t4(
        codes: &[u8], factors: [&[f32]; 4], lut: &[i8; 16], qe: [&[i8]; 4], qo: [&[i8]; 4], half_block: usize,
        out: [&mut [f32]; 4]
    )
}

/// # Safety
/// Inlined only into the two entry points `vbmi_pair!` makes of it, whose contract it has.
#[inline(always)]
unsafe fn fourbit_rows_t4<const VBMI: bool>(
    codes: &[u8],
    factors: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 4],
    qo: [&[i8]; 4],
    half_block: usize,
    out: [&mut [f32]; 4],
) {
    let n = out[0].len();
    let nb = factors[0].len() / n.max(1);
    let row_bytes = nb * half_block;
    let cp = codes.as_ptr();
    let fp = factors.map(|f| f.as_ptr());
    let (qe, qo) = (qe.map(|q| q.as_ptr()), qo.map(|q| q.as_ptr()));
    let op = out.map(|o| o.as_mut_ptr());
    // SAFETY: row i reads `row_bytes` codes at `i·row_bytes` and, per token, `nb` factors at
    // `i·nb`, i < n: inside the lengths the caller guarantees; stores stay below n.
    unsafe {
        let mut i = 0;
        while i + 4 <= n {
            let rows: [usize; 4] = std::array::from_fn(|j| i + j);
            let c = rows.map(|r| cp.add(r * row_bytes));
            let f = fp.map(|f| rows.map(|r| f.add(r * nb)));
            let acc = rows_t4::<4, VBMI>(c, f, nb, lut, qe, qo, half_block);
            // Each token's four rows summed as the 256-bit kernel's `hsum4` sums them.
            for p in 0..2 {
                let [lo, hi] = split(acc[p]);
                _mm_storeu_ps(op[2 * p].add(i), super::avx2::hsum4(lo));
                _mm_storeu_ps(op[2 * p + 1].add(i), super::avx2::hsum4(hi));
            }
            i += 4;
        }
        let z = _mm256_setzero_ps();
        while i < n {
            let f = fp.map(|f| [f.add(i * nb)]);
            let acc = rows_t4::<1, VBMI>([cp.add(i * row_bytes)], f, nb, lut, qe, qo, half_block);
            for p in 0..2 {
                let [[lo], [hi]] = split(acc[p]);
                *op[2 * p].add(i) = _mm_cvtss_f32(super::avx2::hsum4([lo, z, z, z]));
                *op[2 * p + 1].add(i) = _mm_cvtss_f32(super::avx2::hsum4([hi, z, z, z]));
            }
            i += 1;
        }
    }
}

vbmi_pair! {
    /// See [`crate::scalar::dot_fourbit_q8_rows_t8`]: a decode task's rows (weights in blocks of
    /// 64) against eight tokens prepared as [`crate::pairs::TokenPairs`], every (row, token) with
    /// the bits of [`dot_fourbit_q8_rows_t4`] (the 256-bit VNNI row kernel's) on that token
    /// alone. Per row and block the codes are looked up once for the eight; per pair of tokens
    /// the integer sum starts at minus the unsigned bias, the codes go straight from memory into the two
    /// `vpdpbusd`, and the factor is one multiply of the row's block scale by the pair's scales,
    /// the product `block_factors` forms.
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VNNI must be available; with `n = out.rows()` and `nb = group.nb`,
    /// `codes` holds `n * nb * 32` bytes (row after row), `scales` `n * nb` entries, and `group`
    /// its full buffers for `nb` blocks.
    dot_fourbit_q8_rows_t8, dot_fourbit_q8_rows_t8_vbmi = fourbit_rows_t8(
        codes: &[u8], scales: &[f32], lut: &[i8; 16], group: crate::pairs::PairGroup<'_>, out: crate::Grid<'_>
    )
}

/// # Safety
/// Inlined only into the two entry points `vbmi_pair!` makes of it, whose contract it has.
#[inline(always)]
unsafe fn fourbit_rows_t8<const VBMI: bool>(
    codes: &[u8],
    scales: &[f32],
    lut: &[i8; 16],
    group: crate::pairs::PairGroup<'_>,
    mut out: crate::Grid<'_>,
) {
    let n = out.rows();
    let nb = group.nb;
    let row_bytes = nb * 32;
    let (cp, sp) = (codes.as_ptr(), scales.as_ptr());
    let (qp, cq, xp) = (group.q.as_ptr(), group.corr.as_ptr(), group.xs.as_ptr());
    let cells = out.raw();
    // SAFETY: row i reads 32·nb code bytes at i·row_bytes and nb scales at i·nb, i < n; block b
    // of the group reads 512 bytes of codes at b·512 and 64 lanes of corrections and scales at b·64
    // (caller's contract); stores go to the grid's cells of rows below n.
    unsafe {
        let table = biased_table(lut);
        let nib = _mm512_set1_epi8(0x0F);
        let mut i = 0;
        // Two rows a pass: four would hold sixteen accumulators beside the pairs' corrections
        // and scales, more than the 32 registers (the spills cost more than the shared lookups).
        while i + 2 <= n {
            let acc = rows_t8::<2, VBMI>(cp.add(i * row_bytes), sp.add(i * nb), nb, qp, cq, xp, table, nib);
            for (r, a) in acc.into_iter().enumerate() {
                store_row8(cells, i + r, token_sums(a));
            }
            i += 2;
        }
        if i < n {
            let [acc] = rows_t8::<1, VBMI>(cp.add(i * row_bytes), sp.add(i * nb), nb, qp, cq, xp, table, nib);
            store_row8(cells, i, token_sums(acc));
        }
    }
}

/// One row's eight token sums, in token order, from its four token-pair accumulators (`acc[p]`:
/// token 2p's eight lanes, then token 2p + 1's), each summed as the 256-bit kernel's `hsum4`
/// sums its eight lanes — `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))` — so each has the
/// one-token kernel's bits. Two rounds of pairwise sums across all four registers (the `hadd`
/// of `hsum4` as two shuffles and an add), then the halves: fifteen instructions for the row
/// where a `hsum4` per token pair took about ninety.
#[inline(always)]
fn token_sums(acc: [__m512; 4]) -> __m256 {
    // SAFETY: register arithmetic; AVX-512F is enabled wherever this is inlined.
    unsafe {
        let pairs =
            |a: __m512, b: __m512| _mm512_add_ps(_mm512_shuffle_ps::<0x88>(a, b), _mm512_shuffle_ps::<0xDD>(a, b));
        // 128-bit lanes of `u`: the (l0+l1)+(l2+l3) sums of tokens 0, 2, 4, 6; their
        // (l4+l5)+(l6+l7) sums; then the same two for tokens 1, 3, 5, 7.
        let u = pairs(pairs(acc[0], acc[1]), pairs(acc[2], acc[3]));
        let w = _mm512_add_ps(u, _mm512_shuffle_f32x4::<0b10_11_00_01>(u, u));
        let (even, odd) = (_mm512_castps512_ps128(w), _mm512_extractf32x4_ps::<2>(w));
        _mm256_set_m128(_mm_unpackhi_ps(even, odd), _mm_unpacklo_ps(even, odd))
    }
}

/// Stores row `i`'s eight token values `v` into a grid's cells (`cells`: its first cell, row and
/// token strides): one store where the tokens are adjacent.
///
/// # Safety
/// Row `i`'s eight cells are writable.
#[inline(always)]
unsafe fn store_row8((p, rs, ts): (*mut f32, usize, usize), i: usize, v: __m256) {
    // SAFETY: the caller's contract.
    unsafe {
        let p = p.add(i * rs);
        if ts == 1 {
            _mm256_storeu_ps(p, v);
        } else {
            let mut s = [0f32; 8];
            _mm256_storeu_ps(s.as_mut_ptr(), v);
            for (t, &s) in s.iter().enumerate() {
                *p.add(t * ts) = s;
            }
        }
    }
}

/// The lane sums of `R` consecutive rows (`32·nb` code bytes each from `codes`, `nb` block
/// scales each from `scales`) against a group's four token pairs (`[row][pair]`, the pair's
/// first token in lanes 0–7).
///
/// # Safety
/// Inlined into [`fourbit_rows_t8`]'s entry points, whose contract covers every pointer.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_t8<const R: usize, const VBMI: bool>(
    codes: *const u8,
    scales: *const f32,
    nb: usize,
    q: *const i8,
    corr: *const i32,
    xs: *const f32,
    table: __m512i,
    nib: __m512i,
) -> [[__m512; 4]; R] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for b in 0..nb {
            super::avx2::ahead(codes, R * b * 32);
            let (qb, cb, xb) = (q.add(b * 512), corr.add(b * 64), xs.add(b * 64));
            for (r, acc) in acc.iter_mut().enumerate() {
                let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(codes.add(r * nb * 32 + b * 32) as *const __m256i));
                let (wh, wl) = lookup::<VBMI>(v, table, nib);
                let ws = _mm512_set1_ps(*scales.add(r * nb + b));
                for (p, acc) in acc.iter_mut().enumerate() {
                    // The sum starts at minus the bias, so it ends exact.
                    let s = _mm512_loadu_si512(cb.add(16 * p) as *const _);
                    let s = _mm512_dpbusd_epi32(s, wh, _mm512_loadu_si512(qb.add(128 * p) as *const _));
                    let s = _mm512_dpbusd_epi32(s, wl, _mm512_loadu_si512(qb.add(128 * p + 64) as *const _));
                    let f = _mm512_mul_ps(ws, _mm512_loadu_ps(xb.add(16 * p)));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, *acc);
                }
            }
        }
        acc
    }
}

/// The low (first token's) and high (second token's) halves of each register.
#[inline(always)]
fn split<const R: usize>(acc: [__m512; R]) -> [[__m256; R]; 2] {
    // SAFETY: register moves; AVX-512F is enabled wherever this is inlined.
    unsafe {
        [
            acc.map(|a| _mm512_castps512_ps256(a)),
            acc.map(|a| _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))),
        ]
    }
}

/// Two tokens' 32 bytes at `i` in the two halves of one register.
///
/// # Safety
/// 32 bytes readable at `a + i` and `b + i`.
#[inline(always)]
unsafe fn token_pair(a: *const i8, b: *const i8, i: usize) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        let lo = _mm512_castsi256_si512(_mm256_loadu_si256(a.add(i) as *const __m256i));
        _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(b.add(i) as *const __m256i))
    }
}

/// The lane sums of `R` rows against four tokens as two token pairs (`[pair][row]`, the pair's
/// first token in lanes 0–7): per 32-byte step and row, the codes go into both halves and are
/// looked up once; per pair, two `vpdpbusd` and the pair's `128 · Σq` correction, as in
/// `avxvnni::fourbit_q8_rows`; per block, the exact sum converted and scaled by each token's
/// factor (the pair's two factors broadcast into the two halves).
///
/// # Safety
/// Inlined into [`fourbit_rows_t4`]'s entry points, whose contract covers every pointer.
#[inline(always)]
unsafe fn rows_t4<const R: usize, const VBMI: bool>(
    codes: [*const u8; R],
    factors: [[*const f32; R]; 4],
    nb: usize,
    lut: &[i8; 16],
    qe: [*const i8; 4],
    qo: [*const i8; 4],
    half_block: usize,
) -> [[__m512; R]; 2] {
    // SAFETY: loads stay within `nb * half_block` bytes and `nb` entries (caller's contract).
    unsafe {
        let table = biased_table(lut);
        let nib = _mm512_set1_epi8(0x0F);
        let c128 = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); R]; 2];
        for b in 0..nb {
            let mut isum = [[_mm512_setzero_si512(); R]; 2];
            let mut corr = [_mm512_setzero_si512(); 2];
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let qh: [__m512i; 2] = std::array::from_fn(|p| token_pair(qe[2 * p], qe[2 * p + 1], i));
                let ql: [__m512i; 2] = std::array::from_fn(|p| token_pair(qo[2 * p], qo[2 * p + 1], i));
                for p in 0..2 {
                    corr[p] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(corr[p], c128, qh[p]), c128, ql[p]);
                }
                super::avx2::ahead(codes[0], R * i);
                for r in 0..R {
                    let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(codes[r].add(i) as *const __m256i));
                    let (wh, wl) = lookup::<VBMI>(v, table, nib);
                    for p in 0..2 {
                        isum[p][r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(isum[p][r], wh, qh[p]), wl, ql[p]);
                    }
                }
                i += 32;
            }
            for p in 0..2 {
                for r in 0..R {
                    let exact = _mm512_sub_epi32(isum[p][r], corr[p]);
                    let lo = _mm512_set1_ps(*factors[2 * p][r].add(b));
                    let f = _mm512_mask_broadcastss_ps(lo, 0xFF00, _mm_load_ss(factors[2 * p + 1][r].add(b)));
                    acc[p][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), f, acc[p][r]);
                }
            }
        }
        acc
    }
}

/// See [`crate::scalar::dot_q8_rows`]: a decode task's block int8 rows against one token, two
/// rows to a 512-bit register (row `i` in the low half, `i + 1` in the high), every row with
/// the bits of `avx2::dot_q8` / `avx2::dot_q8_x4` (this level's other block int8 kernels): each
/// half holds, lane for lane, what the AVX2 kernel holds — `vpdpbusd` of the activations biased
/// to unsigned and the rows, minus `128 · Σw` per lane, is the exact sum `vpmaddubsw` +
/// `vpmaddwd` give — and the block factors are the same single products `scale · d`.
///
/// # Safety
/// AVX-512F/BW/VL, VNNI and F16C must be available; with `n = out.len()` and
/// `nb = scale.len() / n`, `scale` holds exactly `n * nb` entries, `w` `n * nb * blocksize`, `q`
/// `nb * blocksize`, `d` `nb`; `blocksize` is a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_rows(w: &[i8], scale: &[f16], q: &[i8], d: &[f32], blocksize: usize, out: &mut [f32]) {
    let n = out.len();
    let nb = scale.len() / n.max(1);
    let cols = nb * blocksize;
    let (wp, sp, qp, dp) = (w.as_ptr(), scale.as_ptr(), q.as_ptr(), d.as_ptr());
    let mut i = 0;
    // SAFETY: row r reads `cols` weights at `r·cols` and `nb` scales at `r·nb`, r < n; `q` and
    // `d` hold `cols` and `nb` entries: the lengths the caller guarantees.
    unsafe {
        let c128 = _mm512_set1_epi8(-128);
        while i + 4 <= n {
            let rw: [*const i8; 4] = std::array::from_fn(|j| wp.add((i + j) * cols));
            let rs: [*const f16; 4] = std::array::from_fn(|j| sp.add((i + j) * nb));
            let mut acc = [_mm512_setzero_ps(); 2];
            // Each block's factor scale·d, eight blocks a conversion and multiply ahead.
            let mut f = [[0f32; 8]; 4];
            for b0 in (0..nb).step_by(8) {
                let len = (nb - b0).min(8);
                for r in 0..4 {
                    if len == 8 {
                        let sv = _mm256_cvtph_ps(_mm_loadu_si128(rs[r].add(b0) as *const __m128i));
                        _mm256_storeu_ps(f[r].as_mut_ptr(), _mm256_mul_ps(sv, _mm256_loadu_ps(dp.add(b0))));
                    } else {
                        for (j, fj) in f[r].iter_mut().enumerate().take(len) {
                            let bits = (*rs[r].add(b0 + j)).to_bits();
                            *fj = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) * *dp.add(b0 + j);
                        }
                    }
                }
                for (j, b) in (b0..b0 + len).enumerate() {
                    let mut isum = [_mm512_setzero_si512(); 2];
                    let mut corr = [_mm512_setzero_si512(); 2];
                    let mut k = b * blocksize;
                    while k < (b + 1) * blocksize {
                        let qv = _mm512_xor_si512(
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(qp.add(k) as *const __m256i)),
                            c128,
                        );
                        super::avx2::ahead(rw[0] as *const u8, 4 * k);
                        for p in 0..2 {
                            let wv = token_pair(rw[2 * p], rw[2 * p + 1], k);
                            corr[p] = _mm512_dpbusd_epi32(corr[p], c128, wv);
                            isum[p] = _mm512_dpbusd_epi32(isum[p], qv, wv);
                        }
                        k += 32;
                    }
                    for p in 0..2 {
                        let exact = _mm512_sub_epi32(isum[p], corr[p]);
                        let fv = _mm512_mask_broadcastss_ps(
                            _mm512_set1_ps(f[2 * p][j]),
                            0xFF00,
                            _mm_load_ss(&f[2 * p + 1][j]),
                        );
                        acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), fv, acc[p]);
                    }
                }
            }
            let [[lo0, lo1], [hi0, hi1]] = split(acc);
            _mm_storeu_ps(out.as_mut_ptr().add(i), super::avx2::hsum4([lo0, hi0, lo1, hi1]));
            i += 4;
        }
        for r in i..n {
            let (wr, sr) = (&w[r * cols..(r + 1) * cols], &scale[r * nb..(r + 1) * nb]);
            *out.get_unchecked_mut(r) = super::avx2::dot_q8(wr, sr, q, d, blocksize);
        }
    }
}

/// See [`crate::scalar::dot_q8_x4t4`]: four block int8 rows against four tokens, every (row,
/// token) with the bits of `avx2::dot_q8_x4` (this level's one-token kernel) on that token
/// alone. As in [`dot_fourbit_q8_rows_t4`], a register holds two tokens, one per half, each
/// half lane for lane what the AVX2 kernel holds: `vpdpbusd` of the activations biased to
/// unsigned (+128) and the row, minus `128 · Σw` per lane (one more `vpdpbusd` per row, shared
/// by the tokens), is the exact sum `vpmaddubsw` + `vpmaddwd` give; each block's sum is
/// converted and scaled by `scale · d` rounded once, as there.
///
/// # Safety
/// AVX-512F/BW/VL, VNNI and F16C must be available; `blocksize` is a multiple of 32; every
/// `w[r]`, `q[t]` hold `nb · blocksize` values and every `scale[r]`, `d[t]` `nb` entries,
/// `nb = scale[0].len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_x4t4(
    w: [&[i8]; 4],
    scale: [&[f16]; 4],
    q: [&[i8]; 4],
    d: [&[f32]; 4],
    blocksize: usize,
) -> [[f32; 4]; 4] {
    let nb = scale[0].len();
    let (wp, sp) = (w.map(|w| w.as_ptr()), scale.map(|s| s.as_ptr()));
    let (qp, dp) = (q.map(|q| q.as_ptr()), d.map(|d| d.as_ptr()));
    let mut out = [[0f32; 4]; 4];
    // SAFETY: loads stay within `nb · blocksize` bytes and `nb` entries (caller's contract).
    unsafe {
        let c128 = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_ps(); 4]; 2];
        for b in 0..nb {
            // Row r's scale in all sixteen lanes; token pair p's d in its two halves.
            let s: [__m512; 4] = std::array::from_fn(|r| {
                let bits = (*sp[r].add(b)).to_bits();
                _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
            });
            let dv: [__m512; 2] = std::array::from_fn(|p| {
                _mm512_mask_broadcastss_ps(_mm512_set1_ps(*dp[2 * p].add(b)), 0xFF00, _mm_load_ss(dp[2 * p + 1].add(b)))
            });
            let mut isum = [[_mm512_setzero_si512(); 4]; 2];
            let mut corr = [_mm512_setzero_si512(); 4];
            let mut i = b * blocksize;
            while i < (b + 1) * blocksize {
                let qu: [__m512i; 2] =
                    std::array::from_fn(|p| _mm512_xor_si512(token_pair(qp[2 * p], qp[2 * p + 1], i), c128));
                super::avx2::ahead(wp[0] as *const u8, 4 * i);
                for r in 0..4 {
                    let wv = _mm512_broadcast_i64x4(_mm256_loadu_si256(wp[r].add(i) as *const __m256i));
                    corr[r] = _mm512_dpbusd_epi32(corr[r], c128, wv);
                    for p in 0..2 {
                        isum[p][r] = _mm512_dpbusd_epi32(isum[p][r], qu[p], wv);
                    }
                }
                i += 32;
            }
            for p in 0..2 {
                for r in 0..4 {
                    let exact = _mm512_sub_epi32(isum[p][r], corr[r]);
                    let f = _mm512_mul_ps(s[r], dv[p]);
                    acc[p][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), f, acc[p][r]);
                }
            }
        }
        for p in 0..2 {
            let [lo, hi] = split(acc[p]);
            _mm_storeu_ps(out[2 * p].as_mut_ptr(), super::avx2::hsum4(lo));
            _mm_storeu_ps(out[2 * p + 1].as_mut_ptr(), super::avx2::hsum4(hi));
        }
    }
    out
}

/// See [`crate::scalar::dot_q8_rows_t8`]: a decode task's block int8 rows (a multiple of four)
/// against eight tokens prepared as [`crate::pairs::TokenPairs::q8`], every (row, token) with the
/// bits of [`dot_q8_x4t4`] (`avx2::dot_q8_x4`'s) on that token alone. Here the weights carry the
/// unsigned bias (+128, one `vpxord` per row and step for the eight tokens) and each token pair's
/// `−128 · Σq` per lane, prepared once, is where its sum starts; the pair's codes go straight
/// from memory into `vpdpbusd`, and each block's factor is the row's scale times the pair's
/// scales, the product the other kernels form.
///
/// # Safety
/// AVX-512F/BW/VL, VNNI and F16C must be available; with `n = out.rows()` (a multiple of 4),
/// `nb = group.nb` and `bs = 32 · group.steps` (32 or 64), `w` holds
/// `n · nb · bs` values (row after row), `scale` `n · nb`, and `group` its full buffers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    let (wp, sp) = (w.as_ptr(), scale.as_ptr() as *const u16);
    let (qp, cq, xp) = (group.q.as_ptr(), group.corr.as_ptr(), group.xs.as_ptr());
    let cells = out.raw();
    // SAFETY: rows i..i+4 read `cols` values at `r·cols` and `nb` scales at `r·nb` (the last
    // chunk of scales through a mask); block b of the group reads 4·S·64 bytes of codes and 64
    // lanes of corrections and scales (caller's contract); stores go to the grid's cells of rows
    // below n.
    unsafe {
        let flip = _mm512_set1_epi8(-128);
        let mut i = 0;
        // Two rows a pass, as in `fourbit_rows_t8` (four spill).
        while i + 2 <= n {
            let mut acc = [[_mm512_setzero_ps(); 4]; 2];
            let mut b0 = 0;
            while b0 < nb {
                // Sixteen blocks' row scales converted at a time.
                let len = (nb - b0).min(16);
                let mask: __mmask16 = if len == 16 { !0 } else { (1 << len) - 1 };
                let mut sf = [[0f32; 16]; 2];
                for (r, sf) in sf.iter_mut().enumerate() {
                    let h = _mm256_maskz_loadu_epi16(mask, sp.add((i + r) * nb + b0) as *const i16);
                    _mm512_storeu_ps(sf.as_mut_ptr(), _mm512_cvtph_ps(h));
                }
                for b in b0..b0 + len {
                    super::avx2::ahead(wp.add(i * cols) as *const u8, 2 * b * 32 * S);
                    let (qb, cb, xb) = (qp.add(b * 4 * S * 64), cq.add(b * 64), xp.add(b * 64));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let row = wp.add((i + r) * cols + b * 32 * S);
                        let wu: [__m512i; S] = std::array::from_fn(|st| {
                            let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(row.add(32 * st) as *const __m256i));
                            _mm512_xor_si512(v, flip)
                        });
                        let ws = _mm512_set1_ps(sf[r][b - b0]);
                        for (p, acc) in acc.iter_mut().enumerate() {
                            let mut s = _mm512_loadu_si512(cb.add(16 * p) as *const _);
                            for (st, wu) in wu.iter().enumerate() {
                                s = _mm512_dpbusd_epi32(
                                    s,
                                    *wu,
                                    _mm512_loadu_si512(qb.add((p * S + st) * 64) as *const _),
                                );
                            }
                            let f = _mm512_mul_ps(ws, _mm512_loadu_ps(xb.add(16 * p)));
                            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, *acc);
                        }
                    }
                }
                b0 += 16;
            }
            for (r, a) in acc.into_iter().enumerate() {
                store_row8(cells, i + r, token_sums(a));
            }
            i += 2;
        }
    }
}

/// Block pairs (of 64 weights each) [`tile_run_g`] looks up into its buffer.
const TILE_RUN_MAX_PAIRS: usize = super::TILE_RUN_MAX_BLOCKS / 2;

vbmi_pair! {
    /// [`fourbit_q8_tile`] over a run of tokens: the four rows' nibbles are looked up once into a
    /// buffer (biased int8 levels, as the tile holds them), then every group of four tokens runs
    /// the tile's arithmetic against the buffer — the same operations in the same order, so each
    /// (row, token) has the tile's bits, without a lookup per row and group or a call per tile.
    /// Token `t`'s activations are at `qe[t·q_stride ..]` / `qo[t·q_stride ..]`, its scales and
    /// sums at `xs[t·nb ..]` / `qsum[t·nb ..]`; `out[4·t + r]` receives (row r, token t).
    ///
    /// # Safety
    /// AVX-512F/BW/VL and VNNI must be available; with `nb = wf[0].len()` (at most
    /// `TILE_RUN_MAX_BLOCKS`), every `wf[r]` holds `nb` entries and every `codes[r]` at least
    /// `32 · nb` bytes; `tokens` is a multiple of 4; `qe`, `qo` hold `(tokens − 1)·q_stride + 32·nb`
    /// elements, `xs`, `qsum` `tokens · nb`, `out` `4 · tokens`.
    fourbit_q8_tile_run, fourbit_q8_tile_run_vbmi = tile_run_g[false](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: &[i8], qo: &[i8], q_stride: usize, xs: &[f32],
        qsum: &[i32], tokens: usize, out: &mut [f32]
    )
}

vbmi_pair! {
    /// [`fourbit_q8_tile_run`] for weights in blocks of 32, as [`fourbit_q8_tile_split`] runs them
    /// (`wf` and each token's `qsum` hold an entry per block of 32, each token's `xs` one per 64
    /// activations).
    ///
    /// # Safety
    /// As [`fourbit_q8_tile_run`] with `nb = wf[0].len() / 2` in its lengths, `qsum` holding
    /// `tokens · wf[0].len()` sums.
    fourbit_q8_tile_run_split, fourbit_q8_tile_run_split_vbmi = tile_run_g[true](
        codes: [&[u8]; 4], wf: [&[f32]; 4], lut: &[i8; 16], qe: &[i8], qo: &[i8], q_stride: usize, xs: &[f32],
        qsum: &[i32], tokens: usize, out: &mut [f32]
    )
}

/// The tile run's body, for weights in blocks of 64 or (`SPLIT`) of 32.
///
/// # Safety
/// Inlined only into the entry points `vbmi_pair!` makes of it, whose contract it has.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_run_g<const VBMI: bool, const SPLIT: bool>(
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
    // Row factor (and bias sum) entries, and blocks of 64 activations (steps of 32 code bytes).
    let entries = wf[0].len();
    let nb = if SPLIT { entries / 2 } else { entries };
    let pairs = nb.div_ceil(2);
    debug_assert!(pairs <= TILE_RUN_MAX_PAIRS && tokens.is_multiple_of(4));
    // SAFETY: loads stay inside the lengths the caller guarantees (the odd last block through
    // masks, as in `tile`); the buffer holds `8 · pairs` registers.
    unsafe {
        let table = biased_table(lut);
        let nib = _mm512_set1_epi8(0x0F);
        // Per block pair and row, the high and low nibbles' levels: [pair][row][high, low].
        // Only the first `8 · pairs` are written and read (not zeroed: 16 KiB a call).
        let mut buf = [std::mem::MaybeUninit::<__m512i>::uninit(); 8 * TILE_RUN_MAX_PAIRS];
        // Blocks of 64 four at a time first ([`quad`]: per quad and row, its four registers at
        // 16·quad + 4·row), then the pairs left as the tile has them.
        let quads = if SPLIT { 0 } else { nb / 4 };
        // An odd count of blocks of 64: the last one's levels in the low halves of the last
        // pair's registers, run first ([`single_block`]).
        let single = !SPLIT && nb % 2 == 1;
        let paired = nb - single as usize;
        if single {
            for r in 0..4 {
                let (h, l) = look_one::<VBMI>(codes[r].as_ptr().add((nb - 1) * 32), table);
                buf[8 * (pairs - 1) + 2 * r].write(_mm512_castsi256_si512(h));
                buf[8 * (pairs - 1) + 2 * r + 1].write(_mm512_castsi256_si512(l));
            }
        }
        for qd in 0..quads {
            for r in 0..4 {
                let (h0, l0) = look::<VBMI>(codes[r].as_ptr(), 128 * qd, table, nib);
                let (h1, l1) = look::<VBMI>(codes[r].as_ptr(), 128 * qd + 64, table, nib);
                for (k, v) in quad(h0, h1, l0, l1).into_iter().enumerate() {
                    buf[16 * qd + 4 * r + k].write(v);
                }
            }
        }
        for p in 2 * quads..paired.div_ceil(2) {
            let m: __mmask64 = if 2 * p + 1 < nb { !0 } else { 0xFFFF_FFFF };
            for r in 0..4 {
                let v = _mm512_maskz_loadu_epi8(m, codes[r].as_ptr().add(64 * p) as *const i8);
                let (h, l) = lookup::<VBMI>(v, table, nib);
                buf[8 * p + 2 * r].write(h);
                buf[8 * p + 2 * r + 1].write(l);
            }
        }
        for t0 in (0..tokens).step_by(4) {
            let (qe, qo): ([*const i8; 4], [*const i8; 4]) = (
                std::array::from_fn(|t| qe.as_ptr().add((t0 + t) * q_stride)),
                std::array::from_fn(|t| qo.as_ptr().add((t0 + t) * q_stride)),
            );
            let xt: [*const f32; 4] = std::array::from_fn(|t| xs.as_ptr().add((t0 + t) * nb));
            let st: [*const i32; 4] = std::array::from_fn(|t| qsum.as_ptr().add((t0 + t) * entries));
            let mut acc = [[_mm512_setzero_ps(); 4]; 4];
            if single {
                let (b, i) = (nb - 1, (nb - 1) * 32);
                let w = std::array::from_fn(|r| {
                    let slot = |k: usize| _mm512_castsi512_si256(buf[8 * (pairs - 1) + 2 * r + k].assume_init());
                    (slot(0), slot(1))
                });
                let f = wf.map(|w| *w.as_ptr().add(b));
                for t in 0..4 {
                    let a = single_block(w, qe[t].add(i), qo[t].add(i), *xt[t].add(b), f);
                    for r in 0..4 {
                        acc[r][t] = a[r];
                    }
                }
            }
            for qd in 0..quads {
                let (b, i) = (4 * qd, 128 * qd);
                let wfv: [__m512; 4] = std::array::from_fn(|r| scale_quad(wf[r].as_ptr(), b, true));
                for t in 0..4 {
                    let a = quad_tokens(qe[t], qo[t], i);
                    let xv = scale_quad(xt[t], b, true);
                    for r in 0..4 {
                        let w = std::array::from_fn(|k| buf[16 * qd + 4 * r + k].assume_init());
                        acc[r][t] = quad_step(acc[r][t], w, a, xv, wfv[r]);
                    }
                }
            }
            for p in 2 * quads..paired.div_ceil(2) {
                let b = 2 * p;
                let two = b + 1 < nb;
                let m: __mmask64 = if two { !0 } else { 0xFFFF_FFFF };
                let i = b * 32;
                let wfv: [__m512; 4] = std::array::from_fn(|r| row_scales::<SPLIT>(wf[r].as_ptr(), b, two));
                for t in 0..4 {
                    let e = _mm512_maskz_loadu_epi8(m, qe[t].add(i));
                    let o = _mm512_maskz_loadu_epi8(m, qo[t].add(i));
                    let xv = scale_pair(xt[t], b, two);
                    for r in 0..4 {
                        let (wh, wl) = (buf[8 * p + 2 * r].assume_init(), buf[8 * p + 2 * r + 1].assume_init());
                        let s = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wh, e), wl, o);
                        let fx = _mm512_mul_ps(_mm512_cvtepi32_ps(s), xv);
                        acc[r][t] = _mm512_fmadd_ps(fx, wfv[r], acc[r][t]);
                    }
                }
            }
            // The bias, as in `tile`.
            take_bias::<SPLIT>(&mut acc, wf.map(|w| w.as_ptr()), xt, st, entries);
            let sums = hsum16(std::array::from_fn(|i| acc[i / 4][i % 4]));
            let mut v = [0f32; 16];
            _mm512_storeu_ps(v.as_mut_ptr(), sums);
            for t in 0..4 {
                for r in 0..4 {
                    out[4 * (t0 + t) + r] = v[4 * r + t];
                }
            }
        }
    }
}

/// See [`crate::scalar::nested_factors`]: sixteen codes at a time, the 256-entry map looked up
/// in registers — `vpermt2ps` over each 32-entry piece (the code's low five bits), then the
/// pieces merged by its top three bits — with the scalar code's separate multiply, add and
/// multiply (no FMA), so the same bits. The AVX2 version's scalar loads of the map cost about
/// three instructions a factor, which blocks of 32 weights (twice the factors) made a tenth
/// of decode.
///
/// # Safety
/// AVX-512F/BW must be available; `codes`, `xs` and `out` have equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn nested_factors(codes: &[u8], map: &[f32; 256], na: f32, offset: f32, xs: &[f32], out: &mut [f32]) {
    let n = out.len().min(codes.len()).min(xs.len());
    let (cp, xp, op) = (codes.as_ptr(), xs.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: full 16-wide steps stay below n; the map is 256 floats, read as sixteen vectors.
    unsafe {
        let table: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(map.as_ptr().add(16 * j)));
        let (nav, offv) = (_mm512_set1_ps(na), _mm512_set1_ps(offset));
        let bit = |b: i32| _mm512_set1_epi32(b);
        while i + 16 <= n {
            let idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(cp.add(i) as *const __m128i));
            let piece: [__m512; 8] =
                std::array::from_fn(|p| _mm512_permutex2var_ps(table[2 * p], idx, table[2 * p + 1]));
            let (b5, b6, b7) = (
                _mm512_test_epi32_mask(idx, bit(32)),
                _mm512_test_epi32_mask(idx, bit(64)),
                _mm512_test_epi32_mask(idx, bit(128)),
            );
            let l1: [__m512; 4] = std::array::from_fn(|q| _mm512_mask_blend_ps(b5, piece[2 * q], piece[2 * q + 1]));
            let l2: [__m512; 2] = std::array::from_fn(|q| _mm512_mask_blend_ps(b6, l1[2 * q], l1[2 * q + 1]));
            let m = _mm512_mask_blend_ps(b7, l2[0], l2[1]);
            let v = _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(m, nav), offv), _mm512_loadu_ps(xp.add(i)));
            _mm512_storeu_ps(op.add(i), v);
            i += 16;
        }
        super::avx2::nested_factors(&codes[i..n], map, na, offset, &xs[i..n], &mut out[i..n]);
    }
}

/// Lane `i` of the result = the sum of `v[i]`'s sixteen lanes: a transpose-and-add tree (45
/// instructions instead of sixteen separate reductions).
#[target_feature(enable = "avx512f")]
#[inline]
fn hsum16(v: [__m512; 16]) -> __m512 {
    // Within each 128-bit lane: pairs of vectors, then pairs of pairs.
    let s: [__m512; 8] = std::array::from_fn(|i| {
        _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]))
    });
    let u: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (_mm512_castps_pd(s[2 * i]), _mm512_castps_pd(s[2 * i + 1]));
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)))
    });
    // Across the four 128-bit lanes.
    let lanes =
        |a: __m512, b: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b));
    lanes(lanes(u[0], u[1]), lanes(u[2], u[3]))
}

/// See [`crate::scalar::quantize_q8`]; blocks of 64 with a whole number of blocks run here
/// (anything else goes to the scalar code). Even and odd elements are separated with two
/// permutes per 32, scaled, rounded half-even by `vcvtps2dq` under the default rounding mode
/// (what the scalar code's magic-number rounding gives) and narrowed with `vpmovdb`.
///
/// # Safety
/// AVX-512F/BW must be available; the slices have the lengths the scalar function documents.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn quantize_q8(x: &[f32], blocksize: usize, qe: &mut [i8], qo: &mut [i8], xs: &mut [f32], sum: &mut [i32]) {
    if blocksize != 64 || !x.len().is_multiple_of(64) {
        // Blocks of 32 (and whatever else it takes) through the AVX2 kernel: the same bits.
        // SAFETY: AVX-512F implies AVX2 and FMA; the caller's contract is the callee's.
        return unsafe { super::avx2::quantize_q8(x, blocksize, qe, qo, xs, sum) };
    }
    let nb = x.len() / 64;
    assert!(qe.len() >= nb * 32 && qo.len() >= nb * 32 && xs.len() >= nb && sum.len() >= nb);
    // SAFETY: block b reads x[64b .. 64b + 64] and writes 32 bytes at 32b of qe/qo: all in
    // bounds by the lengths asserted above.
    unsafe {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let abs = _mm512_set1_epi32(0x7FFF_FFFF);
        for b in 0..nb {
            let p = x.as_ptr().add(64 * b);
            let v: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(p.add(16 * j)));
            // NaN lanes count as 0 in the maximum, as `f32::max` skips them.
            let a = v.map(|v| {
                let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs));
                _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(a, a), a)
            });
            let am = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(a[0], a[1]), _mm512_max_ps(a[2], a[3])));
            let inv = _mm512_set1_ps(if am > 0.0 && (127.0 / am).is_finite() { 127.0 / am } else { 0.0 });
            let mut total = _mm512_setzero_si512();
            for h in 0..2 {
                let (lo, hi) = (v[2 * h], v[2 * h + 1]);
                // A NaN product converts to 0 as the scalar cast does, not to i32::MIN.
                let cvt =
                    |p: __m512| _mm512_cvtps_epi32(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), p));
                let e = cvt(_mm512_mul_ps(_mm512_permutex2var_ps(lo, even, hi), inv));
                let o = cvt(_mm512_mul_ps(_mm512_permutex2var_ps(lo, odd, hi), inv));
                total = _mm512_add_epi32(total, _mm512_add_epi32(e, o));
                _mm_storeu_si128(qe.as_mut_ptr().add(32 * b + 16 * h) as *mut __m128i, _mm512_cvtepi32_epi8(e));
                _mm_storeu_si128(qo.as_mut_ptr().add(32 * b + 16 * h) as *mut __m128i, _mm512_cvtepi32_epi8(o));
            }
            xs[b] = am / 127.0 * (1.0 / 127.0);
            sum[b] = _mm512_reduce_add_epi32(total);
        }
    }
}

/// The biased integer lane sums of 32 code bytes at `c` against the activations at `e`/`o`, in
/// the lower half of the register (the upper half zero).
///
/// # Safety
/// 32 bytes readable at each pointer; AVX-512 BW and VNNI (and VBMI when `VBMI`), reached only
/// from the `vbmi_pair!` entry points.
#[inline(always)]
unsafe fn half_step<const VBMI: bool>(
    c: *const u8,
    e: *const i8,
    o: *const i8,
    table: __m512i,
    nib: __m512i,
) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        let v = _mm512_zextsi256_si512(_mm256_loadu_si256(c as *const __m256i));
        let (wh, wl) = lookup::<VBMI>(v, table, nib);
        let qh = _mm512_maskz_loadu_epi8(0xFFFF_FFFF, e);
        let ql = _mm512_maskz_loadu_epi8(0xFFFF_FFFF, o);
        _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wh, qh), wl, ql)
    }
}

/// See [`crate::scalar::dot_int8_4x4`]: 16 VNNI accumulators; the activations are biased to
/// unsigned once per load and each weight row's sum (for the bias correction) rides along.
///
/// # Safety
/// AVX-512F/BW and VNNI must be available; all eight slices have the same length.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub unsafe fn dot_int8_4x4(a: [&[i8]; 4], w: [&[i8]; 4]) -> [[i32; 4]; 4] {
    let n = a[0].len();
    // SAFETY: every load is masked to the common length n.
    unsafe {
        let flip = _mm512_set1_epi8(-128);
        let ones = _mm512_set1_epi8(1);
        let mut acc = [[_mm512_setzero_si512(); 4]; 4];
        let mut sums = [_mm512_setzero_si512(); 4];
        let mut i = 0;
        while i < n {
            let left = n - i;
            let m: __mmask64 = if left >= 64 { !0 } else { (1u64 << left) - 1 };
            let av: [__m512i; 4] =
                std::array::from_fn(|j| _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, a[j].as_ptr().add(i)), flip));
            for r in 0..4 {
                let wv = _mm512_maskz_loadu_epi8(m, w[r].as_ptr().add(i));
                sums[r] = _mm512_dpbusd_epi32(sums[r], ones, wv);
                for j in 0..4 {
                    acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av[j], wv);
                }
            }
            i += 64;
        }
        // Masked-off lanes loaded 0 ^ 0x80 = 128 against w = 0: they add nothing.
        std::array::from_fn(|r| {
            let bias = 128i32.wrapping_mul(_mm512_reduce_add_epi32(sums[r]));
            std::array::from_fn(|j| _mm512_reduce_add_epi32(acc[r][j]).wrapping_sub(bias))
        })
    }
}

/// [`crate::scalar::exp_f32`] of sixteen lanes, step for step as [`super::avx2`]'s eight-lane
/// twin takes them (the out-of-range lanes computed on clamped inputs, then replaced as the
/// scalar code returns early).
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    use crate::scalar::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
    // SAFETY: plain register arithmetic; AVX-512 F is enabled by the caller.
    unsafe {
        let xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)), _mm512_set1_ps(EXP_MAX));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            xc,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), xc);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)));
        let v = _mm512_mul_ps(e, _mm512_castsi512_ps(pow2));
        let v =
            _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_MIN)), v, _mm512_setzero_ps());
        let v = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(EXP_MAX)),
            v,
            _mm512_set1_ps(f32::INFINITY),
        );
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), v, x)
    }
}

/// See [`crate::scalar::exp_sub`]; bit-identical to it (sixteen lanes a step, the rest through
/// the AVX2 loop and then the scalar code, all with the same bits).
///
/// # Safety
/// AVX-512 F, AVX2 and FMA must be available.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn exp_sub(x: &mut [f32], sub: f32) {
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    // SAFETY: every access stays below n; the AVX2 twin's contract holds (its features are
    // enabled here).
    unsafe {
        let s = _mm512_set1_ps(sub);
        while i + 16 <= n {
            _mm512_storeu_ps(p.add(i), exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), s)));
            i += 16;
        }
        super::avx2::exp_sub(&mut x[i..], sub);
    }
}

/// See [`crate::scalar::softmax_parts`]; bit-identical to it ([`super::avx2::softmax_parts`]
/// with the exponentials sixteen at a time, each half added into the eight running sums in
/// turn, as eight at a time add them).
///
/// # Safety
/// AVX-512 F, AVX2 and FMA must be available.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn softmax_parts(x: &mut [f32], scale: f32, normalize: bool) -> (f32, f32) {
    use super::avx2::{exp8, scale_in_place, scale_max, tail_sum};
    let n = x.len();
    let p = x.as_mut_ptr();
    // SAFETY: every access stays below n.
    unsafe {
        let max = scale_max(p, n, scale);
        let m16 = _mm512_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), m16));
            _mm512_storeu_ps(p.add(i), e);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
            acc = _mm256_add_ps(_mm256_add_ps(acc, _mm512_castps512_ps256(e)), hi);
            i += 16;
        }
        if i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), _mm256_set1_ps(max)));
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

/// See [`crate::scalar::silu_mul`]; bit-identical to it (sixteen lanes a step, the rest through
/// the AVX2 loop).
///
/// # Safety
/// AVX-512 F, AVX2 and FMA must be available; `gate.len() == up.len()`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let (gp, up_) = (gate.as_mut_ptr(), up.as_ptr());
    let mut i = 0;
    // SAFETY: every access stays below n, which bounds both slices; the AVX2 twin's contract
    // holds (its features are enabled here).
    unsafe {
        let (one, sign) = (_mm512_set1_ps(1.0), _mm512_set1_epi32(i32::MIN));
        while i + 16 <= n {
            let g = _mm512_loadu_ps(gp.add(i));
            // −g by its sign bit, as the scalar negation (and the AVX2 loop's xor) forms it.
            let e = exp16(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(g), sign)));
            let v = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up_.add(i)));
            _mm512_storeu_ps(gp.add(i), v);
            i += 16;
        }
        super::avx2::silu_mul(&mut gate[i..n], &up[i..n]);
    }
}

/// See [`crate::q5::unpack`]: two blocks of block int5 a step — the 32 bytes of nibbles spread
/// over the four 128-bit lanes (low nibbles of each block, then its high ones), the blocks'
/// 64 fifth bits loaded as a mask that adds 16 to their bytes — with the scalar code's result.
///
/// # Safety
/// AVX-512 BW must be available; `qs` holds `out.len() / 2` bytes and `qh` `out.len() / 8`, and
/// `out.len()` is a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
pub unsafe fn unpack_q5(qs: &[u8], qh: &[u8], out: &mut [i8]) {
    let blocks = out.len() / 32;
    let (sp, hp, op) = (qs.as_ptr(), qh.as_ptr(), out.as_mut_ptr());
    // SAFETY: step p reads qs[32p .. 32p + 32] and qh[8p .. 8p + 8] and writes out[64p .. 64p +
    // 64], inside the slices by the caller's contract; an odd last block goes to the AVX2 code.
    unsafe {
        let low = _mm512_set1_epi8(0x0F);
        let sixteen = _mm512_set1_epi8(16);
        for p in 0..blocks / 2 {
            // The weights' stream, as the block int8 loops prefetch theirs (the fifth bits are
            // a quarter of the nibbles' bytes, so a quarter of the distance ahead).
            super::prefetch_line(sp.wrapping_add(32 * p + PREFETCH_L2) as *const i8);
            if p % 8 == 0 {
                super::prefetch_line(hp.wrapping_add(8 * p + PREFETCH_L2 / 4) as *const i8);
            }
            let bytes = _mm512_castsi256_si512(_mm256_loadu_si256(sp.add(32 * p) as *const __m256i));
            // Lanes: block 0's bytes twice, then block 1's twice; the second copy of each shifted
            // to its high nibbles.
            let spread = _mm512_shuffle_i64x2(bytes, bytes, 0b01_01_00_00);
            let nib = _mm512_and_si512(_mm512_mask_srli_epi16(spread, 0xFF00_FF00, spread, 4), low);
            let bits = (hp.add(8 * p) as *const u64).read_unaligned();
            let v = _mm512_sub_epi8(_mm512_mask_add_epi8(nib, bits, nib, sixteen), sixteen);
            _mm512_storeu_si512(op.add(64 * p) as *mut __m512i, v);
        }
        if blocks % 2 == 1 {
            let b = blocks - 1;
            super::avx2::unpack_q5(&qs[16 * b..16 * b + 16], &qh[4 * b..4 * b + 4], &mut out[32 * b..32 * b + 32]);
        }
    }
}
