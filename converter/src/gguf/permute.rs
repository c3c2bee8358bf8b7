//! llama.cpp's Q/K row permutation and its inverse (FORMATS.md §F.4).
//!
//! When llama.cpp converts a Llama/Mistral checkpoint it reorders the rows of `q_proj` (per query
//! head) and `k_proj` (per key/value head) so that its adjacent-pair RoPE matches Hugging Face's
//! rotate-half RoPE: within a head of `d` rows, GGUF row `2i + j` holds HF row `j·d/2 + i`
//! (j ∈ {0, 1}). Our runtime implements the Hugging Face convention, so the converter undoes the
//! permutation and the weights come out exactly as in the HF checkpoint.
//!
//! It is a pure row permutation, so it commutes with anything done per row. The functions are
//! generic over the element and take a row length, so the same code moves f32 rows or whole
//! rows of quantized bytes (ggml blocks never straddle rows), and [`gguf_row_of_hf_row`] lets
//! a streaming reader fetch single rows without materializing the tensor.

use super::error::{GgufError, Result};

/// Checks that `rows` split into `heads` heads of an even number of rows; returns rows per head.
fn head_rows(tensor: &str, rows: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(GgufError::BadShape {
            tensor: tensor.to_string(),
            shape: vec![rows, heads],
            problem: "rows (first) do not split into the given number of heads (second) of an even size",
        });
    }
    Ok(rows / heads)
}

/// The GGUF row holding HF row `hf_row` of a tensor of `rows` rows permuted with `heads` heads.
pub fn gguf_row_of_hf_row(hf_row: usize, rows: usize, heads: usize) -> Result<usize> {
    let d = head_rows("<rows>", rows, heads)?;
    if hf_row >= rows {
        return Err(GgufError::SizeMismatch { what: "row index".into(), expected: rows, got: hf_row });
    }
    let (head, r) = (hf_row / d, hf_row % d);
    // HF row j·d/2 + i lives at GGUF row 2i + j.
    let (j, i) = (r / (d / 2), r % (d / 2));
    Ok(head * d + 2 * i + j)
}

fn reorder<T: Copy>(data: &[T], row_len: usize, heads: usize, to_hf: bool) -> Result<Vec<T>> {
    if row_len == 0 || !data.len().is_multiple_of(row_len) {
        return Err(GgufError::SizeMismatch {
            what: "data length (a multiple of the row length)".into(),
            expected: data.len().next_multiple_of(row_len.max(1)),
            got: data.len(),
        });
    }
    let rows = data.len() / row_len;
    head_rows("<rows>", rows, heads)?;
    let mut out = Vec::with_capacity(data.len());
    for dst in 0..rows {
        // Building the output in order: for each output row, find where it comes from.
        let src = if to_hf { gguf_row_of_hf_row(dst, rows, heads)? } else { hf_row_of_gguf_row(dst, rows, heads)? };
        out.extend_from_slice(&data[src * row_len..(src + 1) * row_len]);
    }
    Ok(out)
}

/// The HF row stored at GGUF row `gguf_row` (the inverse of [`gguf_row_of_hf_row`]).
pub fn hf_row_of_gguf_row(gguf_row: usize, rows: usize, heads: usize) -> Result<usize> {
    let d = head_rows("<rows>", rows, heads)?;
    if gguf_row >= rows {
        return Err(GgufError::SizeMismatch { what: "row index".into(), expected: rows, got: gguf_row });
    }
    let (head, r) = (gguf_row / d, gguf_row % d);
    let (i, j) = (r / 2, r % 2);
    Ok(head * d + j * (d / 2) + i)
}

/// Undoes llama.cpp's permutation: GGUF-ordered rows (each `row_len` elements) → HF order.
pub fn unpermute_rows<T: Copy>(data: &[T], row_len: usize, heads: usize) -> Result<Vec<T>> {
    reorder(data, row_len, heads, true)
}

/// Applies llama.cpp's permutation: HF-ordered rows → GGUF order (for tests and writers).
pub fn permute_rows<T: Copy>(data: &[T], row_len: usize, heads: usize) -> Result<Vec<T>> {
    reorder(data, row_len, heads, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dim_8_matches_the_spec_example() {
        // FORMATS.md §F.4: for head_dim 8, GGUF rows hold HF rows [0,4,1,5,2,6,3,7].
        let hf: Vec<usize> = (0..8).collect();
        assert_eq!(permute_rows(&hf, 1, 1).unwrap(), vec![0, 4, 1, 5, 2, 6, 3, 7]);
        assert_eq!(unpermute_rows(&[0, 4, 1, 5, 2, 6, 3, 7], 1, 1).unwrap(), hf);
    }

    #[test]
    fn bad_head_counts_are_errors() {
        assert!(unpermute_rows(&[0u8; 12], 1, 0).is_err());
        assert!(unpermute_rows(&[0u8; 12], 1, 5).is_err());
        assert!(unpermute_rows(&[0u8; 12], 1, 4).is_err()); // 3 rows per head: odd
        assert!(unpermute_rows(&[0u8; 12], 5, 1).is_err());
    }
}
