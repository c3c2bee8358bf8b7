//! The oracle: obvious code for every kernel, always compiled, and the fallback on CPUs without
//! a faster path. SIMD versions in `arch/` have the same names and signatures and are tested
//! against these.

mod activation;
mod dense;
mod fourbit;
mod fourbit_q8;
mod int8;
mod layout;
mod q8;

#[cfg(target_arch = "x86_64")]
pub(crate) use activation::{combine, EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
pub use activation::{exp_f32, exp_sub, silu_mul, softmax_parts};
pub use dense::{
    axpy_bf16_rows, axpy_f16_rows, axpy_f16_rows_multi, axpy_f32, axpy_f32_rows, axpy_f32_rows_multi, dot_bf16,
    dot_bf16_rows, dot_f16, dot_f16_rows, dot_f16_rows_multi, dot_f32, dot_f32_rows, dot_f32_rows_multi,
};
pub use fourbit::dot_fourbit;
pub use fourbit_q8::{
    dot_fourbit_q8, dot_fourbit_q8_rows, dot_fourbit_q8_rows_t2, dot_fourbit_q8_rows_t4, dot_fourbit_q8_rows_t8,
    dot_fourbit_q8_t4, dot_fourbit_q8_x4, dot_fourbit_q8_x4t2, fourbit_q8_panel, fourbit_q8_tile, nested_factors,
    quantize_q8,
};
pub use int8::{dot_int8, dot_int8_4x4, dot_int8_rows, dot_int8_x4, int8_panel};
pub use layout::transpose;
pub use q8::{dot_q8, dot_q8_rows, dot_q8_rows_t8, dot_q8_x4t4, q8_panel};
