//! Integer dot product of int8 activations and int8 weights.

/// `Σ a[i]·w[i]` accumulated exactly in i32 (|a|, |w| ≤ 127 keeps 4096·127² far from overflow;
/// rows up to 133,000 wide are safe).
pub fn dot_int8(a: &[i8], w: &[i8]) -> i32 {
    a.iter().zip(w).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// A 4 × 4 tile of exact int8 dot products: `out[i][j] = Σ a[j]·w[i]` for four weight rows and
/// four activation rows of equal length (the prefill micro-kernel: each loaded vector is used
/// four times).
pub fn dot_int8_4x4(a: [&[i8]; 4], w: [&[i8]; 4]) -> [[i32; 4]; 4] {
    std::array::from_fn(|i| std::array::from_fn(|j| dot_int8(a[j], w[i])))
}

/// Four weight rows against one activation row: `out[i] = Σ a·w[i]` (decode's micro-kernel:
/// each activation vector loaded once feeds four rows).
pub fn dot_int8_x4(a: &[i8], w: [&[i8]; 4]) -> [i32; 4] {
    w.map(|w| dot_int8(a, w))
}

/// Every row of a decode task against one activation row: `out[i] = Σ a·w_i`, the rows
/// `a.len()` wide one after another in `w`.
pub fn dot_int8_rows(a: &[i8], w: &[i8], out: &mut [i32]) {
    for (o, w) in out.iter_mut().zip(w.chunks_exact(a.len().max(1))) {
        *o = dot_int8(a, w);
    }
}

/// LLM.int8's prompt product on a matrix unit, its exact sums: `out[r·T + t] = Σ_k w[r·cols +
/// k] · a_t[k]` for `rows` whole int8 rows (`cols = panel.nb() · 64`) against every token of
/// `panel` (`T` its tokens with padding; padding tokens are all zero), accumulated in i32 with
/// wrapping as the unit does (a row would need over 133,000 columns of ±127 to wrap).
pub fn int8_panel(w: &[i8], panel: &crate::panel::Panel, rows: usize, out: &mut [i32]) {
    let (nb, bs) = (panel.nb(), panel.blocksize());
    let (cols, tokens) = (nb * bs, crate::panel::PANEL_TOKENS * panel.groups());
    for r in 0..rows {
        for t in 0..tokens {
            out[r * tokens + t] = (0..cols)
                .map(|k| w[r * cols + k] as i32 * panel.value(t, k / bs, k % bs) as i32)
                .fold(0i32, i32::wrapping_add);
        }
    }
}
