//! 4-bit weights against int8-quantized activations: the integer route (llama.cpp's IQ4_NL
//! idea applied to NF4/FP4). Codes are looked up as int8 levels (`round(127·level)`), the
//! activations are quantized to int8 once per call in blocks aligned with the weight blocks,
//! and each block is an exact integer dot product scaled once.

/// `Σ_b factor[b] · Σ_j lut[code_j] · q_j` for one block-aligned row, where `lut` holds the
/// int8 levels, `qe`/`qo` the de-interleaved int8 activations (`qe[i] = q[2i]`, `qo[i] = q[2i+1]`)
/// and `factor[b]` = weight absmax · activation scale / 127 for block `b`. The per-block integer
/// sums are exact; only the final float accumulation has rounding. `half_block` = blocksize / 2.
/// `qsum[b]` (the sum of block b's activations) is what the VNNI version needs to undo its
/// unsigned bias; this version ignores it.
pub fn dot_fourbit_q8(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    _qsum: &[i32],
    half_block: usize,
) -> f32 {
    let mut acc = 0f32;
    for (b, &f) in factors.iter().enumerate() {
        let range = b * half_block..(b + 1) * half_block;
        let mut isum = 0i32;
        for ((&byte, &e), &o) in codes[range.clone()].iter().zip(&qe[range.clone()]).zip(&qo[range]) {
            isum += lut[(byte >> 4) as usize] as i32 * e as i32;
            isum += lut[(byte & 0x0F) as usize] as i32 * o as i32;
        }
        acc = (isum as f32).mul_add(f, acc);
    }
    acc
}

/// Four block-aligned rows against the same activations: `out[r]` = [`dot_fourbit_q8`] of row
/// `r` (decode's micro-kernel: each activation vector loaded once feeds four rows).
pub fn dot_fourbit_q8_x4(
    codes: [&[u8]; 4],
    factors: [&[f32]; 4],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    qsum: &[i32],
    half_block: usize,
) -> [f32; 4] {
    std::array::from_fn(|r| dot_fourbit_q8(codes[r], factors[r], lut, qe, qo, qsum, half_block))
}

/// One row against four tokens (a decode batch over wide rows): `out[t]` = [`dot_fourbit_q8`]
/// of the row against token `t`.
pub fn dot_fourbit_q8_t4(
    codes: &[u8],
    factors: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 4],
    qo: [&[i8]; 4],
    qsum: [&[i32]; 4],
    half_block: usize,
) -> [f32; 4] {
    std::array::from_fn(|t| dot_fourbit_q8(codes, factors[t], lut, qe[t], qo[t], qsum[t], half_block))
}

/// Every row of a decode task against the same activations: `out[i]` = [`dot_fourbit_q8`] of
/// row `i`, whose `nb = factors.len() / out.len()` blocks of codes follow row `i − 1`'s in
/// `codes` and whose factors are `factors[i·nb .. (i + 1)·nb]`.
#[allow(clippy::too_many_arguments)]
pub fn dot_fourbit_q8_rows(
    codes: &[u8],
    factors: &[f32],
    lut: &[i8; 16],
    qe: &[i8],
    qo: &[i8],
    qsum: &[i32],
    half_block: usize,
    out: &mut [f32],
) {
    let nb = factors.len() / out.len().max(1);
    let row = nb * half_block;
    for (i, o) in out.iter_mut().enumerate() {
        let codes = &codes[i * row..(i + 1) * row];
        *o = dot_fourbit_q8(codes, &factors[i * nb..(i + 1) * nb], lut, qe, qo, qsum, half_block);
    }
}

/// [`dot_fourbit_q8_rows`] for two tokens (a decode batch): `out[t][i]` is row `i` against
/// token `t`'s activations and factors (`factors[t]`: every row's block factors for token `t`).
#[allow(clippy::too_many_arguments)]
pub fn dot_fourbit_q8_rows_t2(
    codes: &[u8],
    factors: [&[f32]; 2],
    lut: &[i8; 16],
    qe: [&[i8]; 2],
    qo: [&[i8]; 2],
    qsum: [&[i32]; 2],
    half_block: usize,
    out: [&mut [f32]; 2],
) {
    rows_per_token(codes, factors, lut, qe, qo, qsum, half_block, out);
}

/// [`dot_fourbit_q8_rows`] for four tokens (a decode batch), as [`dot_fourbit_q8_rows_t2`]. The
/// SIMD version looks each row's codes up once for the four and gives every (row, token) the
/// bits of that level's one-token kernel.
#[allow(clippy::too_many_arguments)]
pub fn dot_fourbit_q8_rows_t4(
    codes: &[u8],
    factors: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 4],
    qo: [&[i8]; 4],
    qsum: [&[i32]; 4],
    half_block: usize,
    out: [&mut [f32]; 4],
) {
    rows_per_token(codes, factors, lut, qe, qo, qsum, half_block, out);
}

/// [`dot_fourbit_q8_rows`] for a group of eight tokens (a decode batch) against weights in
/// blocks of 64: cell (i, t) of `out` is row `i` against token `t` of `group`, with the factors
/// `scales[i·nb + b] · xs` (the row's block scale times the token's activation scale, the product
/// the other callers pass as `factors`). The SIMD version looks each row's codes up once for the
/// eight and gives every (row, token) the bits of that level's one-token kernel.
pub fn dot_fourbit_q8_rows_t8(
    codes: &[u8],
    scales: &[f32],
    lut: &[i8; 16],
    group: crate::pairs::PairGroup<'_>,
    mut out: crate::Grid<'_>,
) {
    let nb = group.nb;
    let mut o = vec![0f32; out.rows()];
    for t in 0..crate::pairs::GROUP {
        let (mut qe, mut qo) = (Vec::with_capacity(32 * nb), Vec::with_capacity(32 * nb));
        for b in 0..nb {
            qe.extend_from_slice(group.step(t, b, 0));
            qo.extend_from_slice(group.step(t, b, 1));
        }
        let factors: Vec<f32> = (0..o.len() * nb).map(|j| group.scale(t, j % nb) * scales[j]).collect();
        dot_fourbit_q8_rows(codes, &factors, lut, &qe, &qo, &[], 32, &mut o);
        for (i, &v) in o.iter().enumerate() {
            out.set(i, t, v);
        }
    }
}

/// [`dot_fourbit_q8_rows`] of each of `T` tokens.
#[allow(clippy::too_many_arguments)]
fn rows_per_token<const T: usize>(
    codes: &[u8],
    factors: [&[f32]; T],
    lut: &[i8; 16],
    qe: [&[i8]; T],
    qo: [&[i8]; T],
    qsum: [&[i32]; T],
    half_block: usize,
    out: [&mut [f32]; T],
) {
    for (t, o) in out.into_iter().enumerate() {
        dot_fourbit_q8_rows(codes, factors[t], lut, qe[t], qo[t], qsum[t], half_block, o);
    }
}

/// [`dot_fourbit_q8_x4`] for two tokens (batched decode): `out[t]` is the four rows against
/// token `t`'s activations and factors (`factors[t][r]`: row `r`'s block factors for token `t`).
/// The SIMD versions look each row's codes up once for both tokens and give every (row, token)
/// the bits of their four-row kernel on that token alone.
#[allow(clippy::too_many_arguments)]
pub fn dot_fourbit_q8_x4t2(
    codes: [&[u8]; 4],
    factors: [[&[f32]; 4]; 2],
    lut: &[i8; 16],
    qe: [&[i8]; 2],
    qo: [&[i8]; 2],
    qsum: [&[i32]; 2],
    half_block: usize,
) -> [[f32; 4]; 2] {
    std::array::from_fn(|t| dot_fourbit_q8_x4(codes, factors[t], lut, qe[t], qo[t], qsum[t], half_block))
}

/// The per-block factors of one run of double-quantized blocks that share a nested scale:
/// `out[i] = (DYNAMIC_MAP[codes[i]] · nested_absmax + offset) · xs[i]`, where the part in
/// brackets is bitsandbytes' float32 block absmax ([`crate::fourbit::nested_scale`], computed
/// the same way, multiply then add) and `xs[i]` the activation block's scale / 127.
pub fn nested_factors(codes: &[u8], map: &[f32; 256], nested_absmax: f32, offset: f32, xs: &[f32], out: &mut [f32]) {
    for ((o, &c), &x) in out.iter_mut().zip(codes).zip(xs) {
        *o = (map[c as usize] * nested_absmax + offset) * x;
    }
}

/// A 4 × 4 tile of the integer route for prefill, blocks of 64: `out[r][t] = Σ_b wf[r][b] ·
/// xs[t][b] · Σ_{j in b} lut[code_j] · q_j` for weight rows `r` (codes, decoded block absmax
/// `wf`) and tokens `t` (de-interleaved int8 activations `qe`/`qo`, block scales / 127 `xs`).
/// The block sums are exact integers; `qsum[t][b]` (Σ of block b's activations) is what the
/// VNNI version needs to undo its unsigned bias. Every row holds `wf[r].len()` blocks.
pub fn fourbit_q8_tile(
    codes: [&[u8]; 4],
    wf: [&[f32]; 4],
    lut: &[i8; 16],
    qe: [&[i8]; 4],
    qo: [&[i8]; 4],
    xs: [&[f32]; 4],
    _qsum: [&[i32]; 4],
) -> [[f32; 4]; 4] {
    std::array::from_fn(|r| {
        std::array::from_fn(|t| {
            let mut acc = 0f32;
            for (b, &f) in wf[r].iter().enumerate() {
                let mut isum = 0i32;
                for i in b * 32..(b + 1) * 32 {
                    let byte = codes[r][i];
                    isum += lut[(byte >> 4) as usize] as i32 * qe[t][i] as i32;
                    isum += lut[(byte & 0x0F) as usize] as i32 * qo[t][i] as i32;
                }
                acc += f * (xs[t][b] * isum as f32);
            }
            acc
        })
    })
}

/// The prompt product of `rows` 4-bit rows in blocks of 64 (`codes` row after row, `32·nb`
/// bytes each; `wf` their decoded block absmax, `nb` a row) against every token of `panel`
/// (padding included): `out[t·rows + r]` (with `row_major`, `out[r·T + t]`, `T` the panel's
/// tokens with padding) is [`fourbit_q8_tile`]'s sum for row `r` and token `t`. The AMX kernel
/// computes the same with its tile unit.
pub fn fourbit_q8_panel(
    codes: &[u8],
    wf: &[f32],
    lut: &[i8; 16],
    panel: &crate::panel::Panel,
    rows: usize,
    out: &mut [f32],
    row_major: bool,
) {
    let nb = panel.nb();
    let tokens = panel.groups() * crate::panel::PANEL_TOKENS;
    for t in 0..tokens {
        for r in 0..rows {
            let mut acc = 0f32;
            for (b, &f) in wf[r * nb..(r + 1) * nb].iter().enumerate() {
                let mut isum = 0i32;
                for (j, &byte) in codes[r * 32 * nb + 32 * b..][..32].iter().enumerate() {
                    isum += lut[(byte >> 4) as usize] as i32 * panel.value(t, b, j) as i32;
                    isum += lut[(byte & 0x0F) as usize] as i32 * panel.value(t, b, 32 + j) as i32;
                }
                acc += f * (panel.scale(t, b) * isum as f32);
            }
            out[if row_major { r * tokens + t } else { t * rows + r }] = acc;
        }
    }
}

/// Quantizes activations `x` to int8 in blocks of `blocksize` (even; the last block may be
/// short) for the integer route: per block, `q = round_half_even(x · 127 / absmax)`,
/// de-interleaved like the codes (`qe[i] = q[2i]`, `qo[i] = q[2i + 1]`, 0 past the end),
/// `xs[b] = (absmax / 127) / 127` (the activation's share of the block factor) and `sum[b] = Σ q`.
/// `qe`, `qo` hold `ceil(len / 2)` entries, `xs`, `sum` one per block.
pub fn quantize_q8(x: &[f32], blocksize: usize, qe: &mut [i8], qo: &mut [i8], xs: &mut [f32], sum: &mut [i32]) {
    let mut k = 0;
    for (b, block) in x.chunks(blocksize).enumerate() {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        // A block so small that 127/absmax overflows counts as zero.
        let inv = if am > 0.0 && (127.0 / am).is_finite() { 127.0 / am } else { 0.0 };
        let mut s = 0i32;
        for pair in block.chunks(2) {
            let a = crate::int8::round_to_i8(pair[0] * inv);
            let c = crate::int8::round_to_i8(pair.get(1).copied().unwrap_or(0.0) * inv);
            (qe[k], qo[k]) = (a, c);
            s += a as i32 + c as i32;
            k += 1;
        }
        xs[b] = am / 127.0 * (1.0 / 127.0);
        sum[b] = s;
    }
}
