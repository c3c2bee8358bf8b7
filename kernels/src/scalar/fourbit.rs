//! 4-bit dot product of one block-aligned weight row.

/// `Σ_blocks scale[b] · Σ_j levels[code_j] · x_j` for one row whose length is a whole number of
/// blocks.
///
/// The activations come de-interleaved: `xe[i] = x[2i]`, `xo[i] = x[2i+1]`, so byte `i` of
/// `codes` pairs its high nibble with `xe[i]` and its low nibble with `xo[i]`. Splitting `x` once
/// per call lets the SIMD versions use the codes in storage order without shuffling nibbles.
/// `half_block` is blocksize / 2 (bytes per block).
pub fn dot_fourbit(codes: &[u8], scales: &[f32], levels: &[f32; 16], xe: &[f32], xo: &[f32], half_block: usize) -> f32 {
    let mut acc = 0f32;
    for (b, &scale) in scales.iter().enumerate() {
        let range = b * half_block..(b + 1) * half_block;
        let mut block = 0f32;
        for ((&byte, &e), &o) in codes[range.clone()].iter().zip(&xe[range.clone()]).zip(&xo[range]) {
            block = levels[(byte >> 4) as usize].mul_add(e, block);
            block = levels[(byte & 0x0F) as usize].mul_add(o, block);
        }
        acc = block.mul_add(scale, acc);
    }
    acc
}
