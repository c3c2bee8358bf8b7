//! Advanced SIMD (NEON) kernels for aarch64.
//!
//! This machine is x86-64: these kernels are compile-checked with
//! `cargo check --target aarch64-unknown-linux-gnu` but their tests have not run on hardware.
//!
//! # Safety (for every function here)
//! NEON is mandatory on aarch64 Linux; `crate::dispatch::Kernels` still checks it. Slices must
//! have the lengths documented on the matching `crate::scalar` function.

use core::arch::aarch64::*;
use half::{bf16, f16};

/// See [`crate::scalar::dot_f32`].
///
/// # Safety
/// NEON must be available; `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut i = 0;
    // SAFETY: loads stay below n.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        while i + 16 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vfmaq_f32(*a, vld1q_f32(wp.add(i + 4 * j)), vld1q_f32(xp.add(i + 4 * j)));
            }
            i += 16;
        }
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
        while i < n {
            s = (*wp.add(i)).mul_add(*xp.add(i), s);
            i += 1;
        }
        s
    }
}

#[inline(always)]
unsafe fn dot_half(w: *const u16, x: &[f32], n: usize, bf: bool) -> f32 {
    let xp = x.as_ptr();
    let mut i = 0;
    // SAFETY: loads stay below n.
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        while i + 4 <= n {
            let v = if bf {
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(w.add(i))))
            } else {
                // Half-precision conversion intrinsics are not stable in Rust; widen per lane.
                let t = [0, 1, 2, 3].map(|j| f16::from_bits(*w.add(i + j)).to_f32());
                vld1q_f32(t.as_ptr())
            };
            acc = vfmaq_f32(acc, v, vld1q_f32(xp.add(i)));
            i += 4;
        }
        let mut s = vaddvq_f32(acc);
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
/// NEON must be available; `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    // SAFETY: f16 is a u16 bit pattern; lengths are the caller's contract.
    unsafe { dot_half(w.as_ptr() as *const u16, x, w.len().min(x.len()), false) }
}

/// See [`crate::scalar::dot_bf16`].
///
/// # Safety
/// NEON must be available; `w.len() == x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    // SAFETY: bf16 is a u16 bit pattern; lengths are the caller's contract.
    unsafe { dot_half(w.as_ptr() as *const u16, x, w.len().min(x.len()), true) }
}

/// See [`crate::scalar::dot_fourbit`]. The table lookup is done per lane (NEON's byte shuffles
/// cannot index 32-bit entries directly); the multiply-adds are vectorised.
///
/// # Safety
/// NEON must be available; `half_block` is a multiple of 4; `codes`, `xe`, `xo` hold
/// `scales.len() * half_block` elements.
#[target_feature(enable = "neon")]
pub unsafe fn dot_fourbit(
    codes: &[u8],
    scales: &[f32],
    levels: &[f32; 16],
    xe: &[f32],
    xo: &[f32],
    half_block: usize,
) -> f32 {
    // SAFETY: all loads are within `scales.len() * half_block` elements (caller's contract).
    unsafe {
        let mut acc = vdupq_n_f32(0.0);
        for (b, &scale) in scales.iter().enumerate() {
            let mut be = vdupq_n_f32(0.0);
            let mut bo = vdupq_n_f32(0.0);
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let c = [codes[i], codes[i + 1], codes[i + 2], codes[i + 3]];
                let we = c.map(|v| levels[(v >> 4) as usize]);
                let wo = c.map(|v| levels[(v & 0x0F) as usize]);
                be = vfmaq_f32(be, vld1q_f32(we.as_ptr()), vld1q_f32(xe.as_ptr().add(i)));
                bo = vfmaq_f32(bo, vld1q_f32(wo.as_ptr()), vld1q_f32(xo.as_ptr().add(i)));
                i += 4;
            }
            acc = vfmaq_n_f32(acc, vaddq_f32(be, bo), scale);
        }
        vaddvq_f32(acc)
    }
}

/// See [`crate::scalar::dot_int8`]: widening multiplies to i16, pairwise-accumulated into i32.
///
/// # Safety
/// NEON must be available; `a.len() == w.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_int8(a: &[i8], w: &[i8]) -> i32 {
    let n = a.len().min(w.len());
    let (ap, wp) = (a.as_ptr(), w.as_ptr());
    let mut i = 0;
    // SAFETY: loads stay below n.
    unsafe {
        let mut acc = vdupq_n_s32(0);
        while i + 16 <= n {
            let va = vld1q_s8(ap.add(i));
            let vw = vld1q_s8(wp.add(i));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(va), vget_low_s8(vw)));
            acc = vpadalq_s16(acc, vmull_high_s8(va, vw));
            i += 16;
        }
        let mut s = vaddvq_s32(acc);
        while i < n {
            s += *ap.add(i) as i32 * *wp.add(i) as i32;
            i += 1;
        }
        s
    }
}

/// See [`crate::scalar::dot_fourbit_q8`]: `tbl` looks the nibbles up in the int8 level table;
/// widening multiplies accumulate exactly in i32.
///
/// # Safety
/// NEON must be available; `half_block` is a multiple of 16; `codes`, `qe`, `qo` hold
/// `factors.len() * half_block` elements.
#[target_feature(enable = "neon")]
pub unsafe fn dot_fourbit_q8(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    _qsum: &[i32],
    half_block: usize,
) -> f32 {
    // SAFETY: loads stay within `factors.len() * half_block` bytes (caller's contract).
    unsafe {
        let table = vld1q_s8(lut.as_ptr());
        let nib = vdupq_n_u8(0x0F);
        let mut acc = 0f32;
        for (b, &f) in factors.iter().enumerate() {
            let mut isum = vdupq_n_s32(0);
            let mut i = b * half_block;
            let end = i + half_block;
            while i < end {
                let v = vld1q_u8(codes.as_ptr().add(i));
                let wh = vqtbl1q_s8(table, vshrq_n_u8::<4>(v));
                let wl = vqtbl1q_s8(table, vandq_u8(v, nib));
                let qh = vld1q_s8(qe.as_ptr().add(i));
                let ql = vld1q_s8(qo.as_ptr().add(i));
                isum = vpadalq_s16(isum, vmull_s8(vget_low_s8(wh), vget_low_s8(qh)));
                isum = vpadalq_s16(isum, vmull_high_s8(wh, qh));
                isum = vpadalq_s16(isum, vmull_s8(vget_low_s8(wl), vget_low_s8(ql)));
                isum = vpadalq_s16(isum, vmull_high_s8(wl, ql));
                i += 16;
            }
            acc = (vaddvq_s32(isum) as f32).mul_add(f, acc);
        }
        acc
    }
}
