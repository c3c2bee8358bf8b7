//! x86-64 kernels: AVX2+FMA+F16C, and AVX-512 (F, BW, VL, VNNI).

pub mod amx;
pub mod avx2;
pub mod avx512;
pub mod avxvnni;

/// Blocks of 64 weights the prefill tile runs (`avx512::fourbit_q8_tile_run`,
/// `avxvnni::fourbit_q8_tile_run_vex`) look up into their buffers: rows up to 4096 weights.
pub const TILE_RUN_MAX_BLOCKS: usize = 64;

/// The vendor string and family of this CPU (`cpuid` leaves 0 and 1; the extended family is
/// added when the base family is 0xF, as both AMD and Intel define it).
pub fn vendor_family() -> ([u8; 12], u32) {
    use core::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` is baseline on x86-64 and leaves 0 and 1 always exist.
    let (l0, l1) = unsafe { (__cpuid(0), __cpuid(1)) };
    let mut vendor = [0u8; 12];
    for (i, r) in [l0.ebx, l0.edx, l0.ecx].into_iter().enumerate() {
        vendor[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
    }
    let base = (l1.eax >> 8) & 0xF;
    let family = if base == 0xF { base + ((l1.eax >> 20) & 0xFF) } else { base };
    (vendor, family)
}

/// Prefetches the line at `p` for the weights' stream, with this process's
/// [`crate::prefetch::Prefetch`] hint. A prefetch never faults and changes no result, whatever
/// the address.
#[inline(always)]
pub fn prefetch_line(p: *const i8) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA, _MM_HINT_T1};
    // SAFETY: a prefetch never faults; SSE is baseline on x86-64.
    unsafe {
        match crate::prefetch::Prefetch::in_loop() {
            crate::prefetch::Prefetch::Outer => _mm_prefetch::<_MM_HINT_T1>(p),
            crate::prefetch::Prefetch::NonTemporal => _mm_prefetch::<_MM_HINT_NTA>(p),
        }
    }
}

/// Hints that the cache lines of `bytes` bytes from `p` be brought in for one read, as the
/// weights are ([`prefetch_line`]): a LoRA adapter's rows are read once a token too.
#[inline]
pub fn prefetch_once(p: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        prefetch_line(p.wrapping_add(off) as *const i8);
    }
}
