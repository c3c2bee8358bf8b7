//! llama.cpp's Q/K row permutation (FORMATS.md §F.4): the inverse really is the inverse, on random
//! data, for head sizes 64 (SmolLM2, Llama) and 8, and both directions follow the spec's formula.

use lowbit_convert::gguf::permute::{gguf_row_of_hf_row, hf_row_of_gguf_row};
use lowbit_convert::gguf::{permute_rows, unpermute_rows};
use proptest::prelude::*;

proptest! {
    #[test]
    fn unpermute_inverts_permute(
        head_dim in prop_oneof![Just(64usize), Just(8usize)],
        heads in 1usize..10,
        cols in 1usize..12,
        seed in any::<u64>(),
    ) {
        let n = heads * head_dim * cols;
        // A cheap deterministic stream of distinct-looking floats.
        let data: Vec<f32> = (0..n as u64).map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed) >> 40) as f32 - 8e6).collect();
        let permuted = permute_rows(&data, cols, heads).unwrap();
        prop_assert_eq!(&unpermute_rows(&permuted, cols, heads).unwrap(), &data);
        prop_assert_eq!(&permute_rows(&unpermute_rows(&data, cols, heads).unwrap(), cols, heads).unwrap(), &data);

        // The spec's formula, written out: within head h, GGUF row 2i + j holds HF row j·d/2 + i.
        let rows = heads * head_dim;
        for h in 0..heads {
            for i in 0..head_dim / 2 {
                for j in 0..2 {
                    let (g, f) = (h * head_dim + 2 * i + j, h * head_dim + j * head_dim / 2 + i);
                    prop_assert_eq!(&permuted[g * cols..(g + 1) * cols], &data[f * cols..(f + 1) * cols]);
                    prop_assert_eq!(gguf_row_of_hf_row(f, rows, heads).unwrap(), g);
                    prop_assert_eq!(hf_row_of_gguf_row(g, rows, heads).unwrap(), f);
                }
            }
        }
    }
}

#[test]
fn works_on_quantized_row_bytes() {
    // Rows of opaque bytes (e.g. whole Q4_1 rows) move the same way as f32 rows.
    let rows: Vec<[u8; 3]> = (0..16u8).map(|r| [r, r, r]).collect();
    let flat: Vec<u8> = rows.concat();
    let un = unpermute_rows(&flat, 3, 2).unwrap();
    let firsts: Vec<u8> = un.chunks(3).map(|r| r[0]).collect();
    assert_eq!(firsts, vec![0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]);
}
