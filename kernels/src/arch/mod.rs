//! SIMD kernels, one folder per architecture and one file per instruction-set level. Each file
//! exports the same function names and signatures as `crate::scalar`, as `unsafe fn`s compiled
//! for that level; `crate::dispatch` only hands them out once the CPU is known to support it.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// The CPU's vendor string and family (base + extended, as vendors document it), for choices
/// measured per microarchitecture; `None` off x86-64.
pub fn cpu_vendor_family() -> Option<([u8; 12], u32)> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(x86_64::vendor_family())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}
