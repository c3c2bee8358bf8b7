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
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: plain register arithmetic; AVX2 is enabled by the caller.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

/// See [`crate::scalar::dot_f32`].
///
/// # Safety
/// AVX2 and FMA must be available; `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load stays below n.
    unsafe {
        while i + 32 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i + 8 * j)), _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        while i < n {
            s = (*wp.add(i)).mul_add(*xp.add(i), s);
            i += 1;
        }
        s
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

/// See [`crate::scalar::dot_fourbit_q8`]. Nibbles index the int8 level table with `vpshufb`;
/// `vpmaddubsw(|w|, sign(q, w))` gives exact i16 pair sums (|w|, |q| ≤ 127).
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
    debug_assert!(half_block.is_multiple_of(32));
    let (cp, ep, op) = (codes.as_ptr(), qe.as_ptr(), qo.as_ptr());
    // SAFETY: loads stay within `factors.len() * half_block` bytes (caller's contract).
    unsafe {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
        let nib = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        for (b, &f) in factors.iter().enumerate() {
            let mut isum = _mm256_setzero_si256();
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let v = _mm256_loadu_si256(cp.add(i) as *const __m256i);
                let wh = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
                let wl = _mm256_shuffle_epi8(table, _mm256_and_si256(v, nib));
                let qh = _mm256_loadu_si256(ep.add(i) as *const __m256i);
                let ql = _mm256_loadu_si256(op.add(i) as *const __m256i);
                let ph = _mm256_maddubs_epi16(_mm256_abs_epi8(wh), _mm256_sign_epi8(qh, wh));
                let pl = _mm256_maddubs_epi16(_mm256_abs_epi8(wl), _mm256_sign_epi8(ql, wl));
                // Widen each product vector separately: their i16 sum could overflow.
                isum =
                    _mm256_add_epi32(isum, _mm256_add_epi32(_mm256_madd_epi16(ph, ones), _mm256_madd_epi16(pl, ones)));
                i += 32;
            }
            let k = b & 1;
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(f), acc[k]);
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// See [`crate::scalar::nested_factors`]: eight scales at a time, the dynamic-map values
/// gathered, then the same separate multiply, add and multiply as the scalar code (no FMA).
///
/// # Safety
/// AVX2 must be available; `codes`, `xs` and `out` have equal lengths.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn nested_factors(codes: &[u8], map: &[f32; 256], na: f32, offset: f32, xs: &[f32], out: &mut [f32]) {
    let n = out.len().min(codes.len()).min(xs.len());
    let (cp, xp, op) = (codes.as_ptr(), xs.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    // SAFETY: full 8-wide steps stay below n; gather indices are bytes, inside the 256-entry map.
    unsafe {
        let (nav, offv) = (_mm256_set1_ps(na), _mm256_set1_ps(offset));
        while i + 8 <= n {
            let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(cp.add(i) as *const __m128i));
            let v = _mm256_i32gather_ps::<4>(map.as_ptr(), idx);
            let v = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(v, nav), offv), _mm256_loadu_ps(xp.add(i)));
            _mm256_storeu_ps(op.add(i), v);
            i += 8;
        }
    }
    crate::scalar::nested_factors(&codes[i..n], map, na, offset, &xs[i..n], &mut out[i..n]);
}

/// See [`crate::scalar::dot_int8_4x4`]; on AVX2 the tile is 16 row dot products (no register
/// blocking yet).
///
/// # Safety
/// AVX2 must be available; all eight slices have the same length.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_int8_4x4(a: [&[i8]; 4], w: [&[i8]; 4]) -> [[i32; 4]; 4] {
    // SAFETY: same contract as dot_int8, which the caller upholds for every pair.
    std::array::from_fn(|i| std::array::from_fn(|j| unsafe { dot_int8(a[j], w[i]) }))
}
