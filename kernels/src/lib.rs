//! # lowbit-kernels
//!
//! Quantization kernels for running transformer weights on a CPU, bit-compatible with
//! bitsandbytes' storage formats:
//!
//! - **NF4 / FP4** ([`fourbit`]): blockwise 4-bit codes with optional double quantization of the
//!   block scales — bytes, scales and dequantized floats equal bitsandbytes' own.
//! - **LLM.int8** ([`int8`]): row-wise int8 weights (`CB`, `SCB`) and per-token int8 activations
//!   with outlier columns computed in floating point.
//! - **Block int8** ([`q8`]): int8 weights in blocks of 32 or 64 with one f16 scale each.
//! - **Dense** f32 / f16 / bf16.
//!
//! Products ([`matmul`], [`matvec`]) never materialise a dequantized weight matrix. Every kernel
//! has a plain scalar version in [`scalar`] — the oracle the SIMD versions (AVX2, AVX-512/VNNI,
//! NEON) are tested against — and the level is chosen once per process ([`Isa`], `LOWBIT_ISA`).
//!
//! ## Accuracy contract
//! Quantize and dequantize are exact (bit for bit) on every ISA. Integer dot products are exact.
//! Floating-point dot products differ between ISAs only in summation order:
//! `|simd − scalar| ≤ 1e-5 · Σ|terms| + 1e-6`.

#![warn(missing_docs)]

mod arch;
pub mod codebook;
mod cpu;
mod decode;
mod dispatch;
mod error;
pub mod fourbit;
mod grid;
pub mod int8;
mod lined;
mod matmul;
pub mod pairs;
pub mod panel;
mod prefetch;
mod probe;
pub mod q5;
pub mod q8;
pub mod scalar;
mod segments;
pub mod team;
mod weight;

pub use cpu::Isa;
pub use dispatch::{kernels, try_kernels, Amx, Kernels};
pub use error::{KernelError, Result};
pub use fourbit::{
    quantize_4bit, quantize_4bit_weighted, Absmax, ColumnImportance, FourBitKind, FourBitOptions, FourBitTensor,
    NestedRule,
};
pub use grid::Grid;
pub use int8::{quantize_int8, Int8Tensor};
pub use matmul::{
    gemm_strided, matmul, matmul_many, matmul_many_with, matmul_rows, matmul_rows_many, matmul_rows_many_then,
    matmul_rows_many_with, matmul_rows_with, matmul_with, matvec, MatmulOptions, RowsThen,
};
pub use prefetch::Prefetch;
pub use probe::bandwidth_probe;
pub use q8::Q8Tensor;
pub use segments::{gates_together, matmul_gated, matmul_segments, matmul_segments_with};
pub use weight::{AbsmaxRef, FourBitRef, Int8Ref, Q5Ref, Q8Ref, Weight};

/// Hints that `data[from .. from + len]` (clamped to `data`) will be read soon, and once (with
/// the weights' [`Prefetch`] hint), for reads too small or scattered for the hardware prefetcher
/// to catch (a low-rank update's few kilobytes per task of a product). Changes no result; a
/// no-op where the architecture has no hint here.
#[inline]
pub fn prefetch<T>(data: &[T], from: usize, len: usize) {
    let from = from.min(data.len());
    let len = len.min(data.len() - from);
    #[cfg(target_arch = "x86_64")]
    arch::x86_64::prefetch_once(data[from..].as_ptr() as *const u8, len * std::mem::size_of::<T>());
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (from, len);
}
