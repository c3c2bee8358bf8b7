//! Element-wise functions of the forward pass that need `exp`: the softmax numerator and SiLU.
//! `exp` is a fixed polynomial (Cephes' `expf`: Cody–Waite range reduction, a degree-5
//! polynomial in the remainder, scaling by 2ⁿ through the exponent bits) whose every step the
//! SIMD versions repeat, so results are bit-identical on every ISA and within 2 ulp of the true
//! value; libm's `expf` is a function call per element, which dominated softmax and SiLU.

/// log₂(e).
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two (Cody–Waite): `n·LN2_HI` is exact for the `n` that occur.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
/// The rest of ln 2.
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// The polynomial's coefficients, highest degree first.
pub(crate) const EXP_POLY: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// Below this `exp` returns 0 (the result would be subnormal or zero).
pub(crate) const EXP_MIN: f32 = -87.336_55;
/// Above this `exp` returns +∞ (2ⁿ with n = 128 would not be representable).
pub(crate) const EXP_MAX: f32 = 88.376_26;

/// `eˣ` as described in the module docs: 0 below `EXP_MIN` (−87.34, and for −∞), +∞ above
/// `EXP_MAX` (88.38), NaN for NaN.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_MIN {
        return 0.0;
    }
    if x > EXP_MAX {
        return f32::INFINITY;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    let e = p.mul_add(r * r, r) + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax over `x` scaled by `scale`, in place: `x[i] = exp(x[i]·scale − m)` with `m` the
/// largest scaled value; returns `(m, Σ x[i])`, and with `normalize` divides by the sum (one
/// multiply by its reciprocal). The maximum and the sum run in eight lanes (element `i` in lane
/// `i mod 8`) combined as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`: the order every
/// ISA keeps, where eight independent lanes are what a vector register holds.
pub fn softmax_parts(x: &mut [f32], scale: f32, normalize: bool) -> (f32, f32) {
    x.iter_mut().for_each(|v| *v *= scale);
    let max = lanes(x, f32::NEG_INFINITY, f32::max);
    exp_sub(x, max);
    let sum = lanes(x, 0.0, |a, b| a + b);
    if normalize {
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }
    (max, sum)
}

/// `x` reduced by `f` from `init` in eight running lanes, combined in [`softmax_parts`]' order.
pub(crate) fn lanes(x: &[f32], init: f32, f: fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = f(*a, v);
    }
    combine(acc, f)
}

/// Eight lanes into one: `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))` for `f` = +.
pub(crate) fn combine(l: [f32; 8], f: fn(f32, f32) -> f32) -> f32 {
    f(f(f(l[0], l[4]), f(l[2], l[6])), f(f(l[1], l[5]), f(l[3], l[7])))
}

/// `x[i] = exp(x[i] − sub)` ([`exp_f32`]): softmax's numerators.
pub fn exp_sub(x: &mut [f32], sub: f32) {
    x.iter_mut().for_each(|v| *v = exp_f32(*v - sub));
}

/// `gate[i] = gate[i] / (1 + exp(−gate[i])) · up[i]`: SiLU of the gate times the up projection.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_f32(-*g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        let mut x = -87.3f32;
        while x < 88.3 {
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!((got - want).abs() <= 2.0 * ulp as f64, "exp({x}) = {got}, want {want}");
            x += 0.0137;
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
