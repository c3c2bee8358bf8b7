//! Importance statistics for quantization (llama.cpp calls them an importance matrix): the mean
//! square of the activations entering each linear layer, per input column, collected while the
//! model reads calibration text. A column whose activations are large costs more when its
//! weights are off, so the converter weights each weight's error by its column's value
//! (`lowbit convert --imatrix`).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Which linear layers share an input: q/k/v read the attention norm's output, gate/up the MLP
/// norm's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Input {
    /// q_proj, k_proj, v_proj.
    Attention,
    /// o_proj.
    Output,
    /// gate_proj, up_proj.
    Mlp,
    /// down_proj.
    Down,
}

impl Input {
    fn tensors(self) -> &'static [&'static str] {
        match self {
            Input::Attention => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            Input::Output => &["self_attn.o_proj"],
            Input::Mlp => &["mlp.gate_proj", "mlp.up_proj"],
            Input::Down => &["mlp.down_proj"],
        }
    }
}

/// Σx² per column of one layer input, and how many rows went in.
type Sums = (Vec<f64>, u64);

/// Running sums per (layer, input).
#[derive(Debug, Default)]
pub(crate) struct InputStats {
    sums: Mutex<BTreeMap<(usize, Input), Sums>>,
}

impl InputStats {
    /// Adds the rows of `x` (`rows × cols`, row-major) entering `input` of layer `layer`.
    pub(crate) fn add(&self, layer: usize, input: Input, x: &[f32], cols: usize) {
        let mut sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        let (s, n) = sums.entry((layer, input)).or_insert_with(|| (vec![0.0; cols], 0));
        for row in x.chunks_exact(cols) {
            for (a, &v) in s.iter_mut().zip(row) {
                *a += v as f64 * v as f64;
            }
            *n += 1;
        }
    }

    /// Mean x² per column for every linear weight seen, by tensor name
    /// (`model.layers.N.self_attn.q_proj.weight`, …), and the rows each mean is over.
    pub(crate) fn means(&self) -> Vec<(String, Vec<f32>, u64)> {
        let sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (&(layer, input), (s, n)) in sums.iter() {
            let mean: Vec<f32> = s.iter().map(|&v| (v / (*n).max(1) as f64) as f32).collect();
            for t in input.tensors() {
                out.push((format!("model.layers.{layer}.{t}.weight"), mean.clone(), *n));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
