//! Block int8 weights against block int8 activations.

use half::f16;

/// `Σ_b (Σ_{i in b} w[i]·q[i]) · (scale[b] · d[b])` over blocks of `blocksize`, the block sums
/// exact in i32, the float sum in block order. `w` and `q` hold `scale.len() · blocksize` values.
pub fn dot_q8(w: &[i8], scale: &[f16], q: &[i8], d: &[f32], blocksize: usize) -> f32 {
    let mut acc = 0f32;
    for (b, (&s, &d)) in scale.iter().zip(d).enumerate() {
        let r = b * blocksize..(b + 1) * blocksize;
        let isum: i32 = w[r.clone()].iter().zip(&q[r]).map(|(&a, &c)| a as i32 * c as i32).sum();
        acc += isum as f32 * (s.to_f32() * d);
    }
    acc
}

/// Every row of a decode task against the same activations: `out[i]` = [`dot_q8`] of row `i`,
/// whose `nb = scale.len() / out.len()` blocks follow row `i − 1`'s in `w` and `scale`.
pub fn dot_q8_rows(w: &[i8], scale: &[f16], q: &[i8], d: &[f32], blocksize: usize, out: &mut [f32]) {
    let nb = scale.len() / out.len().max(1);
    let cols = nb * blocksize;
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_q8(&w[i * cols..(i + 1) * cols], &scale[i * nb..(i + 1) * nb], q, d, blocksize);
    }
}

/// Every row of a decode task against a group of eight tokens (a decode batch): cell (i, t) of
/// `out` = [`dot_q8`] of row `i` and token `t` of `group` (blocks of `32 · group.steps` values).
/// The SIMD version gives every (row, token) the bits of its level's one-token kernel.
pub fn dot_q8_rows_t8(w: &[i8], scale: &[f16], group: crate::pairs::PairGroup<'_>, mut out: crate::Grid<'_>) {
    let (nb, steps) = (group.nb, group.steps);
    let mut o = vec![0f32; out.rows()];
    for t in 0..crate::pairs::GROUP {
        let mut q = Vec::with_capacity(nb * steps * 32);
        for b in 0..nb {
            for st in 0..steps {
                q.extend_from_slice(group.step(t, b, st));
            }
        }
        let d: Vec<f32> = (0..nb).map(|b| group.scale(t, b)).collect();
        dot_q8_rows(w, scale, &q, &d, 32 * steps, &mut o);
        for (i, &v) in o.iter().enumerate() {
            out.set(i, t, v);
        }
    }
}

/// Four rows against four tokens (a decode batch): `out[t][r]` = [`dot_q8`] of row `r` and
/// token `t`. The SIMD version gives every pair the bits of its level's one-token kernel.
pub fn dot_q8_x4t4(
    w: [&[i8]; 4],
    scale: [&[f16]; 4],
    q: [&[i8]; 4],
    d: [&[f32]; 4],
    blocksize: usize,
) -> [[f32; 4]; 4] {
    std::array::from_fn(|t| std::array::from_fn(|r| dot_q8(w[r], scale[r], q[t], d[t], blocksize)))
}

/// The prompt product of `rows` block int8 rows (`w` row after row, `nb · bs` values each, `scale`
/// their `nb` block scales a row) against every token of `panel` (padding included):
/// `out[t·rows + r]` (with `row_major`, `out[r·T + t]`, `T` the panel's tokens with padding) is
/// [`dot_q8`] of row `r` and token `t`. The AMX kernel computes the same with its tile unit.
pub fn q8_panel(w: &[i8], scale: &[f16], panel: &crate::panel::Panel, rows: usize, out: &mut [f32], row_major: bool) {
    let (nb, bs) = (panel.nb(), panel.blocksize());
    let tokens = panel.groups() * crate::panel::PANEL_TOKENS;
    for t in 0..tokens {
        for r in 0..rows {
            let mut acc = 0f32;
            for (b, s) in scale[r * nb..(r + 1) * nb].iter().enumerate() {
                let row = &w[r * nb * bs + b * bs..][..bs];
                let isum: i32 = row.iter().enumerate().map(|(k, &a)| a as i32 * panel.value(t, b, k) as i32).sum();
                acc += isum as f32 * (s.to_f32() * panel.scale(t, b));
            }
            out[if row_major { r * tokens + t } else { t * rows + r }] = acc;
        }
    }
}
