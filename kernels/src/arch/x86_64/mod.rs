//! x86-64 kernels: AVX2+FMA+F16C, and AVX-512 (F, BW, VL, VNNI).

pub mod avx2;
pub mod avx512;
pub mod avxvnni;

/// Blocks of 64 weights the prefill tile runs (`avx512::fourbit_q8_tile_run`,
/// `avxvnni::fourbit_q8_tile_run_vex`) look up into their buffers: rows up to 4096 weights.
pub const TILE_RUN_MAX_BLOCKS: usize = 64;

/// Hints that the cache lines of `bytes` bytes from `p` be brought in for one read
/// (non-temporal: a LoRA adapter's rows are read once a token, as the weights are, and on AMD
/// Zen 5 its decode ran 5 % faster at one thread than with the lines prefetched into L2).
///
/// A prefetch never faults and changes no result, whatever the address, so this is safe to call
/// with any pointer.
#[inline]
pub fn prefetch_once(p: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults; SSE is baseline on x86-64.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_NTA }>(p.wrapping_add(off) as *const i8)
        };
    }
}
