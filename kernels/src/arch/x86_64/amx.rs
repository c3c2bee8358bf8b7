//! AMX kernels (Intel Xeon since Sapphire Rapids): the products of prompts and of decode batches
//! against 4-bit and block int8 weights, each block's int8 sums on the tile unit — one
//! `tdpbssd` multiplies 16 weight rows by 16 tokens over a block — and each block's scaling in
//! AVX-512; and, for one decode token, sixteen-row VNNI twins that give the tile kernels' bits.
//! Stable Rust has no AMX intrinsics, so the tile instructions are inline assembly.
//!
//! # Safety (for every `unsafe fn` here)
//! The caller must ensure that [`usable`] is true (the CPU has AMX-TILE and AMX-INT8, the OS
//! saves their state and has let this process use it) and that the CPU has AVX-512 F/BW/VL,
//! which `crate::dispatch::Kernels` guarantees by construction, and must pass slices with the
//! lengths documented on the function.

use crate::panel::{Panel, PANEL_TOKENS};
use core::arch::asm;
use core::arch::x86_64::*;
use std::sync::OnceLock;

/// Whether this process may run the AMX kernels; detected (and the tile state requested from
/// the OS) once.
pub fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(detect)
}

fn detect() -> bool {
    // `cpuid` is baseline on x86-64; leaf 7 is read only when leaf 0 reports it.
    let (max, l1) = (__cpuid(0).eax, __cpuid(1));
    if max < 7 || l1.ecx & (1 << 27) == 0 {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    // AMX-TILE (bit 24) and AMX-INT8 (bit 25).
    if (l7.edx >> 24) & 3 != 3 {
        return false;
    }
    // XCR0 bits 17 and 18: the OS saves the tile configuration and data.
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE (checked above) makes `xgetbv` with ecx = 0 valid; it only reads XCR0.
    unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    let xcr0 = (hi as u64) << 32 | lo as u64;
    xcr0 & (3 << 17) == 3 << 17 && request_tile_data()
}

/// Linux hands the tile data state to a process only on request (`arch_prctl`
/// `ARCH_REQ_XCOMP_PERM`); without it the first tile load faults.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: this system call only adds the tile data to the process's permitted state; it
    // clobbers rcx and r11, as every `syscall` does.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        )
    };
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// Bytes of one tile: 16 rows of 64.
const TILE: usize = 1024;

/// How far ahead (bytes) the codes are prefetched, as decode's loops prefetch theirs: a
/// one-token step reads each row once, straight from memory.
const PREFETCH: usize = 16384;

/// Bytes from a tile of sixteen rows (`stride` bytes apart) to the tile whose lines its reads
/// prefetch: whole tiles, at least [`PREFETCH`]. Such a tile is read a column at a time, so
/// its prefetches follow the same columns of a later tile (a stream [`PREFETCH`] bytes ahead
/// reached rows 4096 weights wide too late: one-token decode at Mistral's width ran at three
/// fifths of the memory probe).
fn tiles_ahead(stride: usize) -> usize {
    let tile = 16 * stride;
    PREFETCH.div_ceil(tile).max(1) * tile
}

/// Prefetches byte `at` of each of sixteen rows `stride` bytes apart from `p`.
#[inline(always)]
fn prefetch_rows(p: *const u8, stride: usize, at: usize) {
    for r in 0..16 {
        super::prefetch_line(p.wrapping_add(r * stride + at) as *const i8);
    }
}

/// Palette 1 with six tiles: tmm0, tmm1 block sums (16 rows × 16 tokens of int32), tmm2, tmm3
/// weights (16 rows × `bs` bytes), tmm4, tmm5 activations ([`Panel`]'s tiles: `bs / 4` rows of
/// 64 bytes), for blocks of `bs` (32 or 64).
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn new(bs: usize) -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        // (bytes per row, rows) of tmm0 … tmm5.
        let shapes = [(64, 16), (64, 16), (bs, 16), (bs, 16), (64, bs / 4), (64, bs / 4)];
        for (t, (colsb, rows)) in shapes.into_iter().enumerate() {
            c[16 + 2 * t] = colsb as u8;
            c[48 + t] = rows as u8;
        }
        Config(c)
    }
}

/// The sums of blocks `b` and `b + 1` (`two`) of a row tile and a token group into `c0` and
/// `c1`: weights at `a0` / `a1` (rows `sa` bytes apart), activations at `x0` / `x1` (a panel's
/// tiles).
///
/// # Safety
/// The tiles are configured ([`Config`]); the addresses hold what the configuration reads and
/// `c0`, `c1` 1 KiB each.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_sums(
    two: bool,
    a0: *const i8,
    a1: *const i8,
    sa: usize,
    x0: *const i8,
    x1: *const i8,
    c0: *mut i32,
    c1: *mut i32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if two {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tileloadd tmm2, [{a0} + {sa}*1]",
                "tileloadd tmm4, [{x0} + {s}*1]",
                "tileloadd tmm3, [{a1} + {sa}*1]",
                "tileloadd tmm5, [{x1} + {s}*1]",
                "tdpbssd tmm0, tmm2, tmm4",
                "tdpbssd tmm1, tmm3, tmm5",
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                a0 = in(reg) a0, x0 = in(reg) x0, a1 = in(reg) a1, x1 = in(reg) x1,
                c0 = in(reg) c0, c1 = in(reg) c1, sa = in(reg) sa, s = in(reg) 64usize,
                options(nostack)
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tileloadd tmm2, [{a0} + {sa}*1]",
                "tileloadd tmm4, [{x0} + {s}*1]",
                "tdpbssd tmm0, tmm2, tmm4",
                "tilestored [{c0} + {s}*1], tmm0",
                a0 = in(reg) a0, x0 = in(reg) x0, c0 = in(reg) c0, sa = in(reg) sa, s = in(reg) 64usize,
                options(nostack)
            );
        }
    }
}

/// Two result tiles' worth of int32 sums, line-aligned.
#[repr(C, align(64))]
struct Sums([i32; 2 * 256]);

/// A group's results for a tile of 16 rows (one register of 16 tokens per row) into `out`:
/// row-major (`out[r·16·groups + t]`: each register is one store) or token-major
/// (`out[t·rows + r]`, through a transpose).
///
/// # Safety
/// AVX-512 F enabled by the caller; `out` holds `16 · groups · rows` values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn put_tile(
    acc: &[__m512; 16],
    res: &mut Results,
    out: &mut [f32],
    rows: usize,
    rt: usize,
    g: usize,
    groups: usize,
    row_major: bool,
) {
    // SAFETY: every store lands inside `out` (caller's contract) or `res`.
    unsafe {
        if row_major {
            let tokens = PANEL_TOKENS * groups;
            for (r, a) in acc.iter().enumerate() {
                let at = (16 * rt + r) * tokens + PANEL_TOKENS * g;
                _mm512_storeu_ps(out[at..at + 16].as_mut_ptr(), *a);
            }
        } else {
            for (r, a) in acc.iter().enumerate() {
                _mm512_store_ps(res.0.as_mut_ptr().add(16 * r), *a);
            }
            let at = PANEL_TOKENS * g * rows + 16 * rt;
            super::avx2::transpose(&res.0, 16, &mut out[at..], rows, 16, 16);
        }
    }
}

/// Blocks whose sums the tile unit forms before any of them is scaled.
const CHUNK: usize = 8;

/// A chunk's int32 sums, a result tile per block, line-aligned.
#[repr(C, align(64))]
struct ChunkSums([i32; CHUNK * 256]);

/// Sixteen rows × sixteen tokens of f32 results, line-aligned.
#[repr(C, align(64))]
struct Results([f32; 256]);

/// See [`crate::scalar::fourbit_q8_panel`]. Per tile of 16 rows, the rows' codes are looked up
/// once into `scratch` as int8 levels (`[high nibbles' levels, low nibbles' levels]` per block,
/// the panel's order), then every group of 16 tokens runs two blocks at a time through
/// `tdpbssd` (exact int32 sums), and each block's sums are scaled as the AVX-512 tiles scale
/// theirs: `acc = fma(sum · xs, factor, acc)`, sixteen tokens to a register, one register per
/// row. The results go to `out` at the end of each group ([`put_tile`]), token-major or, with
/// `row_major`, row-major.
///
/// # Safety
/// See the module; with `nb = panel.nb()`: `rows` is a multiple of 16, `codes` holds
/// `32 · nb · rows` bytes, `wf` `nb · rows` factors, `scratch` `1024 · nb` bytes and `out`
/// `16 · panel.groups() · rows` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fourbit_q8_panel(
    codes: &[u8],
    wf: &[f32],
    lut: &[i8; 16],
    panel: &Panel,
    rows: usize,
    scratch: &mut [i8],
    out: &mut [f32],
    row_major: bool,
) {
    let nb = panel.nb();
    let groups = panel.groups();
    debug_assert!(rows.is_multiple_of(16) && codes.len() >= 32 * nb * rows && wf.len() >= nb * rows);
    debug_assert!(scratch.len() >= TILE * nb && out.len() >= PANEL_TOKENS * groups * rows);
    let config = Config::new(64);
    let mut sums = ChunkSums([0; CHUNK * 256]);
    let mut res = Results([0.0; 256]);
    // SAFETY: every load reads inside the lengths of the contract (a row's block: 32 code bytes;
    // a tile: 1 KiB of `scratch` or of the panel); tile stores write `sums`; the configuration
    // is this thread's and is released before returning.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
        let nib = _mm256_set1_epi8(0x0F);
        let sp = scratch.as_mut_ptr();
        let cs = sums.0.as_mut_ptr();
        for rt in 0..rows / 16 {
            // The tile's rows are one stretch of codes, read in order.
            let first = codes.as_ptr().add(16 * rt * 32 * nb);
            for r in 0..16 {
                for b in 0..nb {
                    let at = (r * nb + b) * 32;
                    if at.is_multiple_of(64) {
                        super::prefetch_line(first.wrapping_add(at + PREFETCH) as *const i8);
                    }
                    let v = _mm256_loadu_si256(first.add(at) as *const __m256i);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                    let lo = _mm256_and_si256(v, nib);
                    let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hi), lo);
                    _mm512_storeu_si512(sp.add(TILE * b + 64 * r) as *mut _, _mm512_shuffle_epi8(table, z));
                }
            }
            let wrow = wf.as_ptr().add(16 * rt * nb);
            for g in 0..groups {
                let mut acc = [_mm512_setzero_ps(); 16];
                for b0 in (0..nb).step_by(CHUNK) {
                    let nc = (nb - b0).min(CHUNK);
                    // The chunk's sums first, then their scaling: a block's sums are read back
                    // long after the tile unit stored them, and the tile unit never waits on
                    // the scaling (block by block, each stage waited on the other).
                    for b in (0..nc).step_by(2) {
                        let two = b + 1 < nc;
                        let next = if two { b + 1 } else { b };
                        let (x0, x1) = (panel.tile(g, b0 + b).as_ptr(), panel.tile(g, b0 + next).as_ptr());
                        let (s0, s1) = (sp.add(TILE * (b0 + b)), sp.add(TILE * (b0 + next)));
                        block_sums(two, s0, s1, 64, x0, x1, cs.add(256 * b), cs.add(256 * next));
                    }
                    for b in 0..nc {
                        let c = cs.add(256 * b);
                        let xv = _mm512_loadu_ps(panel.scales(g, b0 + b).as_ptr());
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let s = _mm512_cvtepi32_ps(_mm512_load_si512(c.add(16 * r) as *const _));
                            let f = _mm512_set1_ps(*wrow.add(r * nb + b0 + b));
                            *acc = _mm512_fmadd_ps(_mm512_mul_ps(s, xv), f, *acc);
                        }
                    }
                }
                put_tile(&acc, &mut res, out, rows, rt, g, groups, row_major);
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// See [`crate::scalar::q8_panel`]: the weights' int8 rows go to the tile unit as they are
/// stored (16 rows × one block, `cols` bytes apart), two blocks at a time against each group of
/// 16 tokens; each block's sums are scaled as decode scales them, `acc = fma(sum, scale · d,
/// acc)`, sixteen tokens to a register, one register per row, and the results put into `out`
/// token-major or row-major ([`put_tile`]).
///
/// # Safety
/// See the module; with `nb = panel.nb()`, `bs = panel.blocksize()` (32 or 64): `rows` is a
/// multiple of 16, `w` holds `nb · bs · rows` values, `scale` `nb · rows`, `scratch` `16 · nb`
/// and `out` `16 · panel.groups() · rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn q8_panel(
    w: &[i8],
    scale: &[half::f16],
    panel: &Panel,
    rows: usize,
    scratch: &mut [f32],
    out: &mut [f32],
    row_major: bool,
) {
    let (nb, bs, groups) = (panel.nb(), panel.blocksize(), panel.groups());
    let cols = nb * bs;
    debug_assert!(rows.is_multiple_of(16) && w.len() >= cols * rows && scale.len() >= nb * rows);
    debug_assert!(scratch.len() >= 16 * nb && out.len() >= PANEL_TOKENS * groups * rows);
    let config = Config::new(bs);
    let mut sums = Sums([0; 512]);
    let mut res = Results([0.0; 256]);
    // SAFETY: tile loads read 16 rows of one block of `w` (`cols` apart, inside the rows of the
    // contract) and whole panel tiles; a tile's scales are its 16 · nb of `scale`, widened into
    // the first 16 · nb of `scratch`; tile stores write `sums`; the configuration is this
    // thread's and is released before returning.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        let (c0, c1) = (sums.0.as_mut_ptr(), sums.0.as_mut_ptr().add(256));
        for rt in 0..rows / 16 {
            // The tile's 16 · nb scales widened sixteen at a time (exact, as any conversion;
            // the `half` crate's slice conversion goes eight at a time through a buffer).
            let (from, to) = (scale.as_ptr().add(16 * rt * nb) as *const __m256i, scratch.as_mut_ptr());
            for i in 0..nb {
                _mm512_storeu_ps(to.add(16 * i), _mm512_cvtph_ps(_mm256_loadu_si256(from.add(i))));
            }
            let sf = scratch.as_ptr();
            let wrow = w.as_ptr().add(16 * rt * cols);
            for g in 0..groups {
                let mut acc = [_mm512_setzero_ps(); 16];
                for b in (0..nb).step_by(2) {
                    let two = b + 1 < nb;
                    let next = if two { b + 1 } else { b };
                    let (x0, x1) = (panel.tile(g, b).as_ptr(), panel.tile(g, next).as_ptr());
                    if g == 0 {
                        // The tile load waits on memory otherwise.
                        let ahead = (wrow as *const u8).wrapping_add(tiles_ahead(cols));
                        for at in (bs * b..bs * (b + 2)).step_by(64) {
                            prefetch_rows(ahead, cols, at);
                        }
                    }
                    block_sums(two, wrow.add(bs * b), wrow.add(bs * next), cols, x0, x1, c0, c1);
                    for (k, c) in [c0, c1].into_iter().enumerate().take(1 + two as usize) {
                        let dv = _mm512_loadu_ps(panel.scales(g, b + k).as_ptr());
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let s = _mm512_cvtepi32_ps(_mm512_load_si512(c.add(16 * r) as *const _));
                            let f = _mm512_mul_ps(_mm512_set1_ps(*sf.add(r * nb + b + k)), dv);
                            *acc = _mm512_fmadd_ps(s, f, *acc);
                        }
                    }
                }
                put_tile(&acc, &mut res, out, rows, rt, g, groups, row_major);
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// See [`crate::scalar::int8_panel`]: LLM.int8's whole int8 rows on the tile unit, sixteen rows
/// against two groups of sixteen tokens at a time, `tdpbssd` over every 64 columns into the
/// same two accumulator tiles (the rows have one scale, not one a block, so their sums stay on
/// the unit until the row's end), then stored into `out[r·T + t]` (`T` the panel's tokens with
/// padding).
///
/// # Safety
/// See the module; `panel.blocksize()` is 64, `rows` a multiple of 16, `w` holds
/// `rows · 64 · panel.nb()` values and `out` `rows · 16 · panel.groups()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn int8_panel(w: &[i8], panel: &Panel, rows: usize, out: &mut [i32]) {
    let (nb, groups) = (panel.nb(), panel.groups());
    let (cols, tokens) = (64 * nb, PANEL_TOKENS * groups);
    debug_assert!(panel.blocksize() == 64 && rows.is_multiple_of(16));
    debug_assert!(w.len() >= cols * rows && out.len() >= tokens * rows);
    let config = Config::new(64);
    // SAFETY: tile loads read 16 rows of 64 bytes of `w` (`cols` apart, inside the rows of the
    // contract) and whole panel tiles; tile stores write 16 rows of 16 sums (`tokens` apart)
    // inside `out`; the accumulator tiles are only touched by this function's own instructions
    // between its `tilezero`s and stores; the configuration is this thread's and is released
    // before returning.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        let so = 4 * tokens;
        for rt in 0..rows / 16 {
            let wrow = w.as_ptr().add(16 * rt * cols);
            let orow = out.as_mut_ptr().add(16 * rt * tokens);
            let ahead = (wrow as *const u8).wrapping_add(tiles_ahead(cols));
            for g in (0..groups).step_by(2) {
                let two = g + 1 < groups;
                asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                for b in 0..nb {
                    if g == 0 {
                        // The tile load waits on memory otherwise.
                        prefetch_rows(ahead, cols, 64 * b);
                    }
                    let (a, x0) = (wrow.add(64 * b), panel.tile(g, b).as_ptr());
                    if two {
                        let x1 = panel.tile(g + 1, b).as_ptr();
                        asm!(
                            "tileloadd tmm2, [{a} + {sa}*1]",
                            "tileloadd tmm4, [{x0} + {s}*1]",
                            "tileloadd tmm5, [{x1} + {s}*1]",
                            "tdpbssd tmm0, tmm2, tmm4",
                            "tdpbssd tmm1, tmm2, tmm5",
                            a = in(reg) a, x0 = in(reg) x0, x1 = in(reg) x1, sa = in(reg) cols, s = in(reg) 64usize,
                            options(nostack, readonly)
                        );
                    } else {
                        asm!(
                            "tileloadd tmm2, [{a} + {sa}*1]",
                            "tileloadd tmm4, [{x0} + {s}*1]",
                            "tdpbssd tmm0, tmm2, tmm4",
                            a = in(reg) a, x0 = in(reg) x0, sa = in(reg) cols, s = in(reg) 64usize,
                            options(nostack, readonly)
                        );
                    }
                }
                let c0 = orow.add(PANEL_TOKENS * g);
                asm!("tilestored [{c} + {so}*1], tmm0", c = in(reg) c0, so = in(reg) so, options(nostack));
                if two {
                    let c1 = c0.add(PANEL_TOKENS);
                    asm!("tilestored [{c} + {so}*1], tmm1", c = in(reg) c1, so = in(reg) so, options(nostack));
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Sixteen registers' lanes summed within each 128-bit quarter: quarter `c` of the result's
/// register `i` holds, for registers `4i .. 4i + 4`, the sum of their lanes in quarter `c`
/// (pairs of registers interleaved and added, then pairs of pairs).
#[inline(always)]
unsafe fn quarter_sums(p: [__m512i; 16]) -> [__m512i; 4] {
    // SAFETY: register-only AVX-512F operations (the caller's target features).
    unsafe {
        // Loops, not closures: a closure around intrinsics may be compiled without the target
        // features, each intrinsic then a call.
        let mut two = [_mm512_setzero_si512(); 8];
        for (i, t) in two.iter_mut().enumerate() {
            let (a, b) = (p[2 * i], p[2 * i + 1]);
            *t = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        }
        let mut four = [_mm512_setzero_si512(); 4];
        for (i, f) in four.iter_mut().enumerate() {
            let (a, b) = (two[2 * i], two[2 * i + 1]);
            *f = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        }
        four
    }
}

/// Quarters 0 + 1 and 2 + 3 of [`quarter_sums`] added, in the quarters of two registers:
/// `[q(4i)(0+1), q(4i)(2+3), q(4i+4)(0+1), q(4i+4)(2+3)]` for `i` = 0, 1.
#[inline(always)]
unsafe fn half_sums(four: [__m512i; 4]) -> [__m512i; 2] {
    // SAFETY: register-only AVX-512F operations (the caller's target features).
    unsafe {
        let mut eight = [_mm512_setzero_si512(); 2];
        for (i, e) in eight.iter_mut().enumerate() {
            let (a, b) = (four[2 * i], four[2 * i + 1]);
            *e = _mm512_add_epi32(
                _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
            );
        }
        eight
    }
}

/// The exact int32 sums of sixteen registers' lanes, register `r`'s total in lane `r`.
#[inline(always)]
unsafe fn lane_totals(p: [__m512i; 16]) -> __m512i {
    // SAFETY: register-only AVX-512F operations (the caller's target features).
    unsafe {
        let [a, b] = half_sums(quarter_sums(p));
        _mm512_add_epi32(_mm512_shuffle_i32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b))
    }
}

/// Sixteen registers whose low halves and high halves each hold one block's partial sums: the
/// exact int32 sums of each half, register `r`'s low-half total in lane `r` of the first result,
/// its high-half total in lane `r` of the second.
#[inline(always)]
unsafe fn half_totals(p: [__m512i; 16]) -> [__m512i; 2] {
    // SAFETY: register-only AVX-512F operations (the caller's target features).
    unsafe {
        let [a, b] = half_sums(quarter_sums(p));
        [_mm512_shuffle_i32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b)]
    }
}

/// One token against sixteen 4-bit rows (blocks of 64) with [`fourbit_q8_panel`]'s arithmetic
/// and so its bits for that token: per block, the sixteen rows' exact int32 sums in the lanes of
/// one register (`vpdpbusd` on biased levels, lanes summed by [`lane_totals`], the bias taken
/// off with the block's activation sum), then `acc = fma(sum · xs, factor, acc)` with one lane
/// per row. A decode step of one sequence runs this; a step of several runs the tile unit, and
/// each token gets the same bits either way.
///
/// # Safety
/// See the module; also AVX-512 VNNI. Row `r`'s `32 · nb` code bytes start at `codes[r·half]`
/// (`nb = xs.len()`), its `nb` factors at `wf[r·nb]`; `qe`, `qo` hold `32 · nb` activations,
/// `qsum` `nb` sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn fourbit_q8_rows16(
    codes: &[u8],
    half: usize,
    wf: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    xs: &[f32],
    qsum: &[i32],
) -> [f32; 16] {
    let nb = xs.len();
    debug_assert!(codes.len() >= 15 * half + 32 * nb && wf.len() >= 16 * nb && qsum.len() >= nb);
    debug_assert!(qe.len() >= 32 * nb && qo.len() >= 32 * nb);
    let mut biased = [0u8; 16];
    for (b, &l) in biased.iter_mut().zip(lut) {
        *b = (l as i16 + 128) as u8;
    }
    let mut out = [0f32; 16];
    // SAFETY: loads read each row's blocks, the activations and (gathered) the factors inside
    // the lengths of the contract; the prefetches never fault.
    unsafe {
        let table = _mm512_broadcast_i32x4(_mm_loadu_si128(biased.as_ptr() as *const __m128i));
        let (nib, nib2) = (_mm256_set1_epi8(0x0F), _mm512_set1_epi8(0x0F));
        let first = codes.as_ptr();
        let mut acc = _mm512_setzero_ps();
        let ahead = first.wrapping_add(tiles_ahead(half));
        // Row r's factors start at element r·nb of `wf`: gathered a block at a time.
        let rows_at = _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32(nb as i32),
        );
        // Block `b`'s scaling, in block order (the panel kernel's).
        macro_rules! scale {
            ($sums:expr, $b:expr) => {{
                let b = $b;
                let sums = _mm512_sub_epi32($sums, _mm512_set1_epi32(128 * *qsum.as_ptr().add(b)));
                let s = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(*xs.as_ptr().add(b)));
                let f = _mm512_i32gather_ps::<4>(rows_at, wf.as_ptr().add(b) as *const _);
                acc = _mm512_fmadd_ps(s, f, acc);
            }};
        }
        // Two blocks a step: a row's 64 code bytes in one register, high and low nibbles looked
        // up apart and met by the two blocks' even and odd activations, each block's partial
        // sums in its half of the row's register (no lane crossing before the reduction).
        for st in 0..nb / 2 {
            prefetch_rows(ahead, half, 64 * st);
            let ae = _mm512_loadu_si512(qe.as_ptr().add(64 * st) as *const _);
            let ao = _mm512_loadu_si512(qo.as_ptr().add(64 * st) as *const _);
            let mut p = [_mm512_setzero_si512(); 16];
            for (r, p) in p.iter_mut().enumerate() {
                let v = _mm512_loadu_si512(first.add(r * half + 64 * st) as *const _);
                let wh = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib2));
                let wl = _mm512_shuffle_epi8(table, _mm512_and_si512(v, nib2));
                *p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wh, ae), wl, ao);
            }
            let [lo, hi] = half_totals(p);
            scale!(lo, 2 * st);
            scale!(hi, 2 * st + 1);
        }
        // An odd last block: high and low nibbles side by side in one register.
        if nb % 2 == 1 {
            let b = nb - 1;
            prefetch_rows(ahead, half, 32 * b);
            let a = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(qe.as_ptr().add(32 * b) as *const __m256i)),
                _mm256_loadu_si256(qo.as_ptr().add(32 * b) as *const __m256i),
            );
            let mut p = [_mm512_setzero_si512(); 16];
            for (r, p) in p.iter_mut().enumerate() {
                let v = _mm256_loadu_si256(first.add(r * half + 32 * b) as *const __m256i);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                let lo = _mm256_and_si256(v, nib);
                let w = _mm512_shuffle_epi8(table, _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hi), lo));
                *p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
            }
            scale!(lane_totals(p), b);
        }
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
    }
    out
}

/// The f16 scales of block `b` of sixteen rows (`nb` scales a row from `sp`; `rows_at` holds
/// each row's byte offset) in f32, one row per lane: 32-bit words gathered and truncated, the
/// last block's read as the word before it and shifted, so no gather reads past a row's scales.
///
/// # Safety
/// AVX-512F and F16C; `sp` holds `16 · nb` scales.
#[inline(always)]
unsafe fn row_scales(sp: *const u8, rows_at: __m512i, nb: usize, b: usize) -> __m512 {
    // SAFETY: every gathered word lies inside row r's `nb` scales (two of them), by the choice
    // below; one scale a row is read plainly.
    unsafe {
        let words = if b + 1 < nb {
            _mm512_i32gather_epi32::<1>(rows_at, sp.add(2 * b) as *const _)
        } else if b > 0 {
            _mm512_srli_epi32::<16>(_mm512_i32gather_epi32::<1>(rows_at, sp.add(2 * b - 2) as *const _))
        } else {
            return _mm512_cvtph_ps(_mm256_loadu_si256(sp as *const __m256i));
        };
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words))
    }
}

/// Byte offsets of sixteen rows' scales from the first row's, each row holding `nb` f16 scales:
/// lane r holds `2 · nb · r` (for [`row_scales`] and [`pair_scales`]).
#[inline(always)]
unsafe fn scale_rows_at(nb: usize) -> __m512i {
    // SAFETY: register arithmetic (the caller's target features).
    unsafe {
        _mm512_mullo_epi32(
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
            _mm512_set1_epi32(2 * nb as i32),
        )
    }
}

/// The scales of blocks `b` and `b + 1` of sixteen rows, from one gather of the 32-bit word at
/// block `b` of each.
///
/// # Safety
/// AVX-512F and F16C; both scales of every row readable at `sp + rows_at[r] + 2b`.
#[inline(always)]
unsafe fn pair_scales(sp: *const u8, rows_at: __m512i, b: usize) -> [__m512; 2] {
    // SAFETY: the caller's contract.
    unsafe {
        let words = _mm512_i32gather_epi32::<1>(rows_at, sp.add(2 * b) as *const _);
        [
            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words)),
            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(words))),
        ]
    }
}

/// A block's scaling with one lane per row, in the panel kernel's order: `acc + f32(sums −
/// 128 · qsum) · (scales · d)` (the 128 undoes the weights' flipped sign bit).
#[inline(always)]
unsafe fn scale_block(acc: __m512, sums: __m512i, qsum: i32, d: f32, scales: __m512) -> __m512 {
    // SAFETY: register arithmetic (the caller's target features).
    unsafe {
        let sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(128 * qsum));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(scales, _mm512_set1_ps(d)), acc)
    }
}

/// [`q8_rows16`] over sixteen block int5 rows (blocks of 32, [`crate::q5`]'s layout), unpacked
/// in registers: each byte handed to `vpdpbusd` is `(u − 16) + 128 = u + 112` for the 5-bit
/// field `u`, the flipped byte [`q8_rows16`] makes of the unpacked integer, so the block sums
/// and the result are the bits of the block int8 rows of those integers — without writing the
/// rows out and reading them back (a third of a q5 row's decode time).
///
/// # Safety
/// See the module; also AVX-512 VNNI. With `nb = d.len()` and `cols ≥ 32 · nb` a multiple of
/// 32: row `r`'s nibbles start at `qs[r·cols/2]`, its fifth bits at `qh[r·cols/8]` and its `nb`
/// scales at `scale[r·nb]`; `q` holds `32 · nb` activations, `qsum` their `nb` block sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q5_rows16(
    qs: &[u8],
    qh: &[u8],
    cols: usize,
    scale: &[half::f16],
    q: &[i8],
    d: &[f32],
    qsum: &[i32],
) -> [f32; 16] {
    let nb = d.len();
    let (qs_row, qh_row) = (cols / 2, cols / 8);
    debug_assert!(cols.is_multiple_of(32) && cols >= 32 * nb);
    debug_assert!(qs.len() >= 15 * qs_row + 16 * nb && qh.len() >= 15 * qh_row + 4 * nb);
    debug_assert!(scale.len() >= 16 * nb && q.len() >= 32 * nb && qsum.len() >= nb);
    let mut out = [0f32; 16];
    // SAFETY: a step reads 32 nibble bytes and 8 bit bytes of each row (16 and 4 through a mask
    // for an odd last block) and 64 activations inside the lengths of the contract; the
    // prefetches never fault.
    unsafe {
        let (low, sixteen, bias) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(16), _mm512_set1_epi8(112));
        let (np, hp) = (qs.as_ptr(), qh.as_ptr());
        let mut acc = _mm512_setzero_ps();
        let sp = scale.as_ptr() as *const u8;
        let rows_at = scale_rows_at(nb);
        // A step's 32 nibble bytes (two blocks) as 64 bytes: block 0's low then high nibbles,
        // then block 1's; `bits` sets the fifth bits, `bias` makes the flipped bytes.
        let bytes = |nib32: __m512i, bits: u64| {
            let spread = _mm512_shuffle_i64x2::<0b01_01_00_00>(nib32, nib32);
            let nib = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(spread, 0xFF00_FF00, spread), low);
            _mm512_add_epi8(_mm512_mask_add_epi8(nib, bits, nib, sixteen), bias)
        };
        let steps = nb / 2;
        let (ahead_n, ahead_h) = (np.wrapping_add(tiles_ahead(qs_row)), hp.wrapping_add(tiles_ahead(qh_row)));
        for st in 0..steps {
            // The nibbles take a line a row every two steps, the bits every eight.
            if st % 2 == 0 {
                prefetch_rows(ahead_n, qs_row, 32 * st);
            }
            if st % 8 == 0 {
                prefetch_rows(ahead_h, qh_row, 8 * st);
            }
            let a = _mm512_loadu_si512(q.as_ptr().add(64 * st) as *const _);
            let mut p = [_mm512_setzero_si512(); 16];
            for (r, p) in p.iter_mut().enumerate() {
                let n = _mm512_castsi256_si512(_mm256_loadu_si256(np.add(r * qs_row + 32 * st) as *const __m256i));
                let bits = (hp.add(r * qh_row + 8 * st) as *const u64).read_unaligned();
                *p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bytes(n, bits), a);
            }
            let (b, [lo, hi], [s0, s1]) = (2 * st, half_totals(p), pair_scales(sp, rows_at, 2 * st));
            acc = scale_block(acc, lo, qsum[b], d[b], s0);
            acc = scale_block(acc, hi, qsum[b + 1], d[b + 1], s1);
        }
        // An odd last block: the low half of a step, the rest of the activations masked off.
        if nb % 2 == 1 {
            let b = nb - 1;
            let a = _mm512_maskz_loadu_epi8(0xFFFF_FFFF, q.as_ptr().add(32 * b));
            let mut p = [_mm512_setzero_si512(); 16];
            for (r, p) in p.iter_mut().enumerate() {
                let n = _mm512_maskz_loadu_epi8(0xFFFF, np.add(r * qs_row + 16 * b) as *const i8);
                let bits = (hp.add(r * qh_row + 4 * b) as *const u32).read_unaligned() as u64;
                *p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bytes(n, bits), a);
            }
            acc = scale_block(acc, lane_totals(p), qsum[b], d[b], row_scales(sp, rows_at, nb, b));
        }
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
    }
    out
}

/// One token against sixteen block int8 rows (blocks of 32 or 64) with [`q8_panel`]'s
/// arithmetic and so its bits for that token: per block, the sixteen rows' exact int32 sums in
/// the lanes of one register (`vpdpbusd` on the weights with their sign bit flipped, i.e. +128,
/// lanes summed by [`lane_totals`], the bias taken off with the block's activation sum), then
/// `acc = fma(sum, scale · d, acc)` with one lane per row.
///
/// # Safety
/// See the module; also AVX-512 VNNI. With `nb = d.len()` and `bs` 32 or 64: row `r`'s
/// `nb · bs` values start at `w[r·cols]` (`cols ≥ nb · bs`) and its `nb` scales at
/// `scale[r·nb]`; `q` holds `nb · bs` activations, `qsum` their `nb` block sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q8_rows16(
    w: &[i8],
    cols: usize,
    bs: usize,
    scale: &[half::f16],
    q: &[i8],
    d: &[f32],
    qsum: &[i32],
) -> [f32; 16] {
    let nb = d.len();
    debug_assert!((bs == 32 || bs == 64) && cols >= nb * bs && w.len() >= 15 * cols + nb * bs);
    debug_assert!(scale.len() >= 15 * nb + nb && q.len() >= nb * bs && qsum.len() >= nb);
    let mut out = [0f32; 16];
    // SAFETY: loads read one block (`bs` bytes, through a mask for 32) of each row and of the
    // activations inside the lengths of the contract; the prefetches never fault.
    unsafe {
        let flip = _mm512_set1_epi8(-128);
        let first = w.as_ptr();
        let mut acc = _mm512_setzero_ps();
        let sp = scale.as_ptr() as *const u8;
        let rows_at = scale_rows_at(nb);
        // 64 bytes a step: one block of 64, or two of 32 (each row's two in its halves).
        let steps = nb * bs / 64;
        let ahead = (first as *const u8).wrapping_add(tiles_ahead(cols));
        for st in 0..steps {
            prefetch_rows(ahead, cols, 64 * st);
            let a = _mm512_loadu_si512(q.as_ptr().add(64 * st) as *const _);
            let mut p = [_mm512_setzero_si512(); 16];
            for (r, p) in p.iter_mut().enumerate() {
                let v = _mm512_loadu_si512(first.add(r * cols + 64 * st) as *const _);
                *p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(v, flip), a);
            }
            if bs == 64 {
                acc = scale_block(acc, lane_totals(p), qsum[st], d[st], row_scales(sp, rows_at, nb, st));
            } else {
                // Both blocks' scales from one gather: the 32-bit word at block 2·st holds them.
                let (b, [lo, hi], [s0, s1]) = (2 * st, half_totals(p), pair_scales(sp, rows_at, 2 * st));
                acc = scale_block(acc, lo, qsum[b], d[b], s0);
                acc = scale_block(acc, hi, qsum[b + 1], d[b + 1], s1);
            }
        }
        // An odd last block of 32: the low half of a step, the rest masked off (zero bytes flip
        // to 128 but meet zero activations).
        if bs == 32 && nb % 2 == 1 {
            let (b, mask) = (nb - 1, 0xFFFF_FFFFu64);
            let a = _mm512_maskz_loadu_epi8(mask, q.as_ptr().add(32 * b));
            let mut p = [_mm512_setzero_si512(); 16];
            for (r, p) in p.iter_mut().enumerate() {
                let v = _mm512_maskz_loadu_epi8(mask, first.add(r * cols + 32 * b));
                *p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(v, flip), a);
            }
            acc = scale_block(acc, lane_totals(p), qsum[b], d[b], row_scales(sp, rows_at, nb, b));
        }
        _mm512_storeu_ps(out.as_mut_ptr(), acc);
    }
    out
}
