//! Helpers shared by the model tests: convert a reference checkpoint, read reference tensors.

#![allow(dead_code)]

use lowbit_convert::{convert, ConvertOptions, QuantChoice};
use std::path::{Path, PathBuf};

/// Converts `src` into a temporary lowbit file with `quant`.
pub fn convert_to(src: &Path, quant: QuantChoice, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.lowbit", quant.label()));
    convert(src, &out, &ConvertOptions { quant, ..Default::default() }, &|_| {})
        .unwrap_or_else(|e| panic!("converting {}: {e}", src.display()));
    out
}

/// A reference tensor as f32 (from f32 or i64 data).
pub fn read(path: &Path, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference file parses");
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e:?}", path.display()));
    let d = t.data();
    let v = match t.dtype() {
        safetensors::Dtype::F32 => {
            d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
        }
        safetensors::Dtype::I64 => {
            d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
        }
        safetensors::Dtype::I32 => {
            d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
        }
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), v)
}

/// Mean KL(p ‖ q) over rows of logits `p` and `q` (`rows × vocab`).
pub fn mean_kl(p: &[f32], q: &[f32], vocab: usize) -> f64 {
    let lsm = |l: &[f32]| -> Vec<f64> {
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s = l.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
        l.iter().map(|&v| v as f64 - s).collect()
    };
    let rows = p.len() / vocab;
    (0..rows)
        .map(|r| {
            let (a, b) = (lsm(&p[r * vocab..(r + 1) * vocab]), lsm(&q[r * vocab..(r + 1) * vocab]));
            a.iter().zip(&b).map(|(x, y)| x.exp() * (x - y)).sum::<f64>()
        })
        .sum::<f64>()
        / rows as f64
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}
