//! SIMD kernels, one folder per architecture and one file per instruction-set level. Each file
//! exports the same function names and signatures as `crate::scalar`, as `unsafe fn`s compiled
//! for that level; `crate::dispatch` only hands them out once the CPU is known to support it.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
