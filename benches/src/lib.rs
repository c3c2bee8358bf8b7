//! Shared pieces of the benches: random weights in every scheme at a given shape, and the
//! memory-bandwidth probe the matvec figures are compared against.

use half::{bf16, f16};
use lowbit_kernels::{
    quantize_4bit, quantize_int8, Absmax, AbsmaxRef, FourBitKind, FourBitOptions, FourBitRef, FourBitTensor, Int8Ref,
    Int8Tensor, Weight,
};
use rayon::prelude::*;

/// Deterministic pseudo-normal weights with a trained model's scale (std ≈ 0.02).
pub fn random_weights(n: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        let mut s = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for v in chunk {
            // Sum of 4 uniforms ≈ normal; cheap and reproducible.
            let mut acc = 0f32;
            for _ in 0..4 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            *v = acc * 0.035;
        }
    });
    out
}

/// Owned storage of one weight matrix in one scheme.
#[derive(Clone)]
pub enum Stored {
    /// f32.
    F32(Vec<f32>),
    /// f16.
    F16(Vec<f16>),
    /// bf16.
    Bf16(Vec<bf16>),
    /// LLM.int8.
    Int8(Int8Tensor),
    /// NF4 with double quant.
    Nf4(FourBitTensor),
}

impl Stored {
    /// Quantizes `w` (rows × cols) into `scheme` ("f32", "f16", "bf16", "int8", "nf4").
    pub fn new(scheme: &str, w: &[f32], rows: usize, cols: usize) -> Stored {
        match scheme {
            "f32" => Stored::F32(w.to_vec()),
            "f16" => Stored::F16(w.par_iter().map(|&v| f16::from_f32(v)).collect()),
            "bf16" => Stored::Bf16(w.par_iter().map(|&v| bf16::from_f32(v)).collect()),
            "int8" => Stored::Int8(quantize_int8(w, rows, cols).expect("finite weights")),
            "nf4" => {
                // Quantize row bands in parallel: every band is a whole number of blocks, so
                // the codes are the same as one call over the whole matrix would give (the
                // double-quant offset differs; irrelevant for speed).
                Stored::Nf4(
                    quantize_4bit(w, &FourBitOptions { kind: FourBitKind::Nf4, ..Default::default() })
                        .expect("finite weights"),
                )
            }
            other => panic!("unknown scheme {other}"),
        }
    }

    /// The kernel view.
    pub fn view(&self, rows: usize, cols: usize) -> Weight<'_> {
        match self {
            Stored::F32(d) => Weight::F32 { rows, cols, data: d },
            Stored::F16(d) => Weight::F16 { rows, cols, data: d },
            Stored::Bf16(d) => Weight::Bf16 { rows, cols, data: d },
            Stored::Int8(q) => Weight::Int8(Int8Ref { rows, cols, cb: &q.cb, scb: &q.scb }),
            Stored::Nf4(q) => Weight::FourBit(FourBitRef {
                kind: q.kind,
                rows,
                cols,
                blocksize: q.blocksize,
                codes: &q.codes,
                absmax: match &q.absmax {
                    Absmax::F32(v) => AbsmaxRef::F32(v),
                    Absmax::Nested { codes, nested_absmax, nested_blocksize, offset } => {
                        AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize: *nested_blocksize, offset: *offset }
                    }
                },
            }),
        }
    }
}
