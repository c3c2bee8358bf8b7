//! The transformer's element-wise operations, in f32, written to match Hugging Face's
//! `modeling_mistral.py` step for step. Output first, like the kernels.

/// `out = x · rsqrt(mean(x²) + eps) ⊙ w` (Mistral/Llama RMSNorm; the weight has no +1).
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    // The sum of squares as the kernels' dot product (vectorized, unlike a float sum).
    let ms = lowbit_kernels::kernels().dot_f32(x, x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * inv);
    }
}

/// Rotary embedding tables for one position: `cos[i]`, `sin[i]` for i < head_dim/2.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `inv_freq[i] = 1 / θ^(2i/d)`, rounded to f32 as transformers computes it.
    pub fn new(head_dim: usize, theta: f64) -> Rope {
        let inv_freq = (0..head_dim / 2).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32).collect();
        Rope { inv_freq }
    }

    /// The cosines and sines of positions `p0 .. p0 + n`, `n × head_dim/2` each, for
    /// [`Rope::apply_with`]: computed once per forward pass, not once per layer.
    pub fn tables(&self, p0: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        // transformers multiplies the position and inv_freq in f32, then takes cos/sin.
        (p0..p0 + n)
            .flat_map(|pos| self.inv_freq.iter().map(move |&f| pos as f32 * f))
            .map(|a| (a.cos(), a.sin()))
            .unzip()
    }

    /// Rotates every head of `x` (heads × head_dim, contiguous) for position `pos`, in
    /// rotate_half layout: element i pairs with i + d/2.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let (cos, sin) = self.tables(pos, 1);
        Self::apply_with(x, head_dim, &cos, &sin);
    }

    /// [`Rope::apply`] with one position's row of [`Rope::tables`].
    pub fn apply_with(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        for head in x.chunks_mut(head_dim) {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// In-place softmax (the exponential from the kernels: a fixed polynomial, the same bits on
/// every ISA).
pub fn softmax(x: &mut [f32]) {
    let (_, sum) = softmax_parts(x);
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// [`softmax`] without the division: `x[i] = exp(x[i] − max)`, returning `(max, Σ x[i])` (one
/// piece of a longer softmax, which its caller merges).
pub fn softmax_parts(x: &mut [f32]) -> (f32, f32) {
    let max = lanes(x, f32::NEG_INFINITY, f32::max);
    lowbit_kernels::kernels().exp_sub(x, max);
    (max, lanes(x, 0.0, |a, b| a + b))
}

/// `x` reduced by `f` from `init`: eight running values combined in a fixed order. The compiler
/// keeps them in one vector (a single running sum is a chain of dependent scalar adds, which a
/// long prompt's attention spent a few percent of its time in), and the bits do not depend on
/// the ISA.
fn lanes(x: &[f32], init: f32, f: fn(f32, f32) -> f32) -> f32 {
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
    let [a, b, c, d, e, g, h, i] = acc;
    f(f(f(a, e), f(c, h)), f(f(b, g), f(d, i)))
}

/// `gate = silu(gate) ⊙ up`, silu(z) = z·sigmoid(z) (see [`lowbit_kernels::Kernels::silu_mul`]).
/// A prompt's worth runs in parallel pieces (each element's bits do not depend on the split:
/// the kernels are elementwise and equal the scalar code bit for bit).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    const PIECE: usize = 1 << 14;
    let k = lowbit_kernels::kernels();
    if gate.len() < 4 * PIECE {
        return k.silu_mul(gate, up);
    }
    // On the team, like the products around it (their threads spin between a prompt's loops).
    lowbit_kernels::team::for_each_chunk_mut(gate, PIECE, || (), |_, i, g| k.silu_mul(g, &up[i * PIECE..][..g.len()]));
}

/// `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, &b)| *a += b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_zero_is_identity_and_preserves_norm() {
        let r = Rope::new(8, 10000.0);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 - 3.0).collect();
        let mut x = orig.clone();
        r.apply(&mut x, 8, 0);
        assert_eq!(x, orig);
        r.apply(&mut x, 8, 17);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
    }
}
