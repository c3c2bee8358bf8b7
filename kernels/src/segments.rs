//! Products over several prompts in one call: `x` holds the prompts' tokens one after another,
//! and each prompt gets the bits it gets alone. A burst of short prompts (sixteen questions of a
//! dozen tokens each) then costs one pass over the weights instead of sixteen, while a request's
//! answer still does not depend on what arrived beside it.
//!
//! Which products can take all the prompts at once is a property of the route a weight takes:
//! the 4-bit integer tiles compute every (row, token) from that token's own quantized
//! activations, so one call over all prompts gives each the bits of its own call. Every other
//! route depends on the call's token count — block int8 switches from decode's row kernels to
//! f32 gemm at 16 tokens (whose float activations score an all-8-bit file's text closer to f32;
//! through the row kernels at every length SmolLM2's default nf4 scored genesis at KL 0.2692
//! instead of 0.2660, for no faster prefill), gemm blocks a product by its shape, LLM.int8
//! shares outlier columns within a call — so those run one call per prompt, as they would alone.

use crate::dispatch::Kernels;
use crate::error::{KernelError, Result};
use crate::matmul::{
    check_joint_out, fourbit_gated, fourbit_tiles, gated_pairs, matmul_many_with, matmul_rows_many_with, matmul_with,
    MatmulOptions, PARALLEL_MIN_WORK,
};
use crate::weight::Weight;

/// Whether [`matmul_gated`] computes `gate` and `up` together for prompts of `segs` tokens:
/// both weights take the same 4-bit route that can pair them (the matrix unit's panels, the
/// AVX-512 and AVX-VNNI tile runs, AVX2's eight-token rows kernel) and no prompt is one token
/// long. A caller can size the gated output only when it will be used.
pub fn gates_together(gate: &Weight, up: &Weight, segs: &[usize], opts: &MatmulOptions) -> bool {
    let m = segs.iter().try_fold(0usize, |a, &s| a.checked_add(s));
    m.is_some_and(|m| !segs.contains(&1) && gated_pairs(crate::kernels(), gate, up, m, opts))
}

/// A gated MLP input over several prompts (as [`matmul_segments`] takes them):
/// `out (Σ segs × rows)` = silu(`gate · x`) ⊙ (`up · x`), each product bit for bit what
/// [`matmul_segments`] gives it and the gating [`Kernels::silu_mul`]'s, computed together where
/// [`gates_together`] says so: each piece of rows is gated as it is made, and only the gated
/// product is written. `Ok(false)`, and `out` untouched, anywhere else: the caller multiplies
/// and gates.
pub fn matmul_gated(
    out: &mut [f32],
    gate: &Weight,
    up: &Weight,
    x: &[f32],
    segs: &[usize],
    opts: &MatmulOptions,
) -> Result<bool> {
    let k = crate::kernels();
    let m = segs.iter().try_fold(0usize, |a, &s| a.checked_add(s)).ok_or(KernelError::Overflow {
        op: "matmul",
        rows: segs.len(),
        cols: usize::MAX,
    })?;
    let (Weight::FourBit(g), Weight::FourBit(u)) = (gate, up) else { return Ok(false) };
    if !gates_together(gate, up, segs, opts) {
        return Ok(false);
    }
    for w in [gate, up] {
        w.validate()?;
        if m.checked_mul(w.cols()) != Some(x.len()) {
            let expected = m.saturating_mul(w.cols());
            return Err(KernelError::ShapeMismatch { op: "matmul", what: "x", expected, got: x.len() });
        }
    }
    if m.checked_mul(g.rows) != Some(out.len()) {
        let expected = m.saturating_mul(g.rows);
        return Err(KernelError::ShapeMismatch { op: "matmul", what: "out", expected, got: out.len() });
    }
    let parallel = m.saturating_mul(g.rows).saturating_mul(g.cols) >= PARALLEL_MIN_WORK;
    fourbit_gated(k, out, g, u, x, m, parallel);
    Ok(true)
}

/// [`crate::matmul_many`] over several prompts: `x` holds `segs[i]` tokens of prompt `i` after
/// the tokens of the prompts before it, and `out` each weight's `Σ segs × rows` results, one
/// weight after the other, token-major. Every prompt's results are bit for bit what
/// [`crate::matmul_many`] gives it alone.
pub fn matmul_segments(out: &mut [f32], ws: &[&Weight], x: &[f32], segs: &[usize], opts: &MatmulOptions) -> Result<()> {
    matmul_segments_with(crate::kernels(), out, ws, x, segs, opts)
}

/// [`matmul_segments`] with explicit kernels.
pub fn matmul_segments_with(
    k: &Kernels,
    out: &mut [f32],
    ws: &[&Weight],
    x: &[f32],
    segs: &[usize],
    opts: &MatmulOptions,
) -> Result<()> {
    let m = segs.iter().try_fold(0usize, |a, &s| a.checked_add(s)).ok_or(KernelError::Overflow {
        op: "matmul",
        rows: segs.len(),
        cols: usize::MAX,
    })?;
    let segs: Vec<usize> = segs.iter().copied().filter(|&s| s > 0).collect();
    if segs.len() <= 1 {
        return matmul_many_with(k, out, ws, x, m, opts);
    }
    check_joint_out(out, ws, m)?;
    if let Some(w) = ws.iter().find(|w| m.checked_mul(w.cols()) != Some(x.len())) {
        let expected = m.saturating_mul(w.cols());
        return Err(KernelError::ShapeMismatch { op: "matmul", what: "x", expected, got: x.len() });
    }
    // One-token prompts are decode tokens (a prompt's product of one token is decode's row
    // kernel), and a batch of those gives each its own bits.
    if segs.iter().all(|&s| s == 1) {
        return matmul_rows_many_with(k, out, ws, x, m, opts);
    }
    // A one-token prompt among longer ones would meet the tiles, not its row kernel.
    let joint =
        |w: &Weight| segs.iter().all(|&s| s > 1) && matches!(w, Weight::FourBit(w4) if fourbit_tiles(k, w4, opts));
    if ws.iter().all(|w| joint(w)) {
        return matmul_many_with(k, out, ws, x, m, opts);
    }
    let mut from = 0;
    for w in ws {
        let (rows, cols) = (w.rows(), w.cols());
        let part = &mut out[from..from + m * rows];
        from += m * rows;
        if joint(w) {
            matmul_with(k, part, w, x, m, opts)?;
            continue;
        }
        let mut t0 = 0;
        for &s in &segs {
            matmul_with(k, &mut part[t0 * rows..(t0 + s) * rows], w, &x[t0 * cols..(t0 + s) * cols], s, opts)?;
            t0 += s;
        }
    }
    Ok(())
}
