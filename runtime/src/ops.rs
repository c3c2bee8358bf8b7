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

/// In-place softmax of `x · scale` (the kernels' fused passes; the exponential a fixed
/// polynomial, the same bits on every ISA).
pub fn softmax(x: &mut [f32], scale: f32) {
    lowbit_kernels::kernels().softmax_parts(x, scale, true);
}

/// [`softmax`] without the division: `x[i] = exp(x[i]·scale − max)`, returning `(max, Σ x[i])`
/// (one piece of a longer softmax, which its caller merges).
pub fn softmax_parts(x: &mut [f32], scale: f32) -> (f32, f32) {
    lowbit_kernels::kernels().softmax_parts(x, scale, false)
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

/// Elements below which a row loop stays on the calling thread (a meeting of the threads costs
/// more than the work).
const ROWS_PARALLEL_MIN: usize = 1 << 15;

/// Row `i` of `a` and `b` together ([`lowbit_kernels::team::for_each_row_pair`]), on the team
/// where `a` has enough elements (a prompt's).
fn paired_rows(
    a: &mut [f32],
    wa: usize,
    b: &mut [f32],
    wb: usize,
    row: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    lowbit_kernels::team::for_each_row_pair(a, wa, b, wb, a.len() >= ROWS_PARALLEL_MIN, row);
}

/// For every row `i` (`width` wide) of the residual stream `h`: `h_i += y_i` where `y` is given,
/// then `x_i = rmsnorm(h_i) ⊙ w`. One pass over each row, a prompt's rows on the team's threads;
/// each row's bits are the separate add's and norm's, whatever the split.
pub fn add_rmsnorm(h: &mut [f32], y: Option<&[f32]>, x: &mut [f32], w: &[f32], eps: f32, width: usize) {
    paired_rows(h, width, x, width, |i, h, x| {
        if let Some(y) = y {
            add_inplace(h, &y[i * width..(i + 1) * width]);
        }
        rmsnorm(x, h, w, eps);
    });
}

/// Rotary embedding of every token's query heads (rows of `q`, `qd` wide) and key heads (rows
/// of `k`, `kvd` wide), token `i` with `cos`/`sin` entries `i·hd/2 ..` (the tables of its
/// position); a prompt's tokens on the team's threads.
pub fn rope_rows(q: &mut [f32], k: &mut [f32], qd: usize, kvd: usize, hd: usize, cos: &[f32], sin: &[f32]) {
    paired_rows(q, qd, k, kvd, |i, q, k| {
        let (c, s) = (&cos[i * hd / 2..(i + 1) * hd / 2], &sin[i * hd / 2..(i + 1) * hd / 2]);
        Rope::apply_with(q, hd, c, s);
        Rope::apply_with(k, hd, c, s);
    });
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

    /// The row loops shared by the team give each row the bits of the plain per-row code, at
    /// sizes below and above the parallel threshold and with a last piece of fewer rows.
    #[test]
    fn row_loops_on_the_team_keep_each_rows_bits() {
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let (width, kvd, hd) = (96usize, 32usize, 16usize);
        let w: Vec<f32> = (0..width).map(|_| next() + 1.0).collect();
        let rope = Rope::new(hd, 10000.0);
        for rows in [3usize, 343, 1000] {
            let h0: Vec<f32> = (0..rows * width).map(|_| next()).collect();
            let y: Vec<f32> = (0..rows * width).map(|_| next()).collect();
            let (mut h, mut x) = (h0.clone(), vec![0f32; rows * width]);
            add_rmsnorm(&mut h, Some(&y), &mut x, &w, 1e-5, width);
            let (mut want_h, mut want_x) = (h0.clone(), vec![0f32; rows * width]);
            for i in 0..rows {
                let r = i * width..(i + 1) * width;
                add_inplace(&mut want_h[r.clone()], &y[r.clone()]);
                rmsnorm(&mut want_x[r.clone()], &want_h[r.clone()], &w, 1e-5);
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!((bits(&h), bits(&x)), (bits(&want_h), bits(&want_x)), "{rows} rows");

            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            let (c, s) = rope.tables(7, rows);
            cos.extend(c);
            sin.extend(s);
            let (q0, k0): (Vec<f32>, Vec<f32>) =
                ((0..rows * width).map(|_| next()).collect(), (0..rows * kvd).map(|_| next()).collect());
            let (mut q, mut k) = (q0.clone(), k0.clone());
            rope_rows(&mut q, &mut k, width, kvd, hd, &cos, &sin);
            let (mut want_q, mut want_k) = (q0, k0);
            for i in 0..rows {
                let (c, s) = (&cos[i * hd / 2..(i + 1) * hd / 2], &sin[i * hd / 2..(i + 1) * hd / 2]);
                Rope::apply_with(&mut want_q[i * width..(i + 1) * width], hd, c, s);
                Rope::apply_with(&mut want_k[i * kvd..(i + 1) * kvd], hd, c, s);
            }
            assert_eq!((bits(&q), bits(&k)), (bits(&want_q), bits(&want_k)), "rope, {rows} rows");
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, f32::NEG_INFINITY];
        softmax(&mut x, 1.0);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
    }
}
