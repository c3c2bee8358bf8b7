//! Integer dot product of int8 activations and int8 weights.

/// `Σ a[i]·w[i]` accumulated exactly in i32 (|a|, |w| ≤ 127 keeps 4096·127² far from overflow;
/// rows up to 133,000 wide are safe).
pub fn dot_int8(a: &[i8], w: &[i8]) -> i32 {
    a.iter().zip(w).map(|(&x, &y)| x as i32 * y as i32).sum()
}
