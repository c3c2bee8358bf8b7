//! Dense dot products: a weight row in f32 / f16 / bf16 against f32 activations.

use half::{bf16, f16};

/// `Σ w[i]·x[i]` in f32, in index order.
pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).fold(0.0, |acc, (&a, &b)| a.mul_add(b, acc))
}

/// `Σ f32(w[i])·x[i]`.
pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    w.iter().zip(x).fold(0.0, |acc, (&a, &b)| a.to_f32().mul_add(b, acc))
}

/// `Σ f32(w[i])·x[i]`.
pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    w.iter().zip(x).fold(0.0, |acc, (&a, &b)| a.to_f32().mul_add(b, acc))
}
