//! GGUF tensor names → Hugging Face names for Llama-family architectures (FORMATS.md §F.3).
//!
//! A fixed table rather than string surgery: the two naming schemes do not correspond piecewise
//! (`attn_norm` ↔ `input_layernorm`, `ffn_norm` ↔ `post_attention_layernorm`), and an unknown
//! GGUF tensor (`rope_freqs.weight`, vision towers, …) must be reported, not guessed.

/// Which Q/K permutation a tensor carries, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkRole {
    /// `attn_q`: permuted per query head.
    Query,
    /// `attn_k`: permuted per key/value head.
    Key,
}

/// Per-layer suffixes: GGUF, HF, and whether the rows are Q/K-permuted (weights only; llama.cpp
/// permutes the Q/K *biases* of no Llama-family model we map, and Qwen2 is not permuted at all).
const LAYER: &[(&str, &str, Option<QkRole>)] = &[
    ("attn_norm.weight", "input_layernorm.weight", None),
    ("ffn_norm.weight", "post_attention_layernorm.weight", None),
    ("attn_q.weight", "self_attn.q_proj.weight", Some(QkRole::Query)),
    ("attn_k.weight", "self_attn.k_proj.weight", Some(QkRole::Key)),
    ("attn_v.weight", "self_attn.v_proj.weight", None),
    ("attn_q.bias", "self_attn.q_proj.bias", None),
    ("attn_k.bias", "self_attn.k_proj.bias", None),
    ("attn_v.bias", "self_attn.v_proj.bias", None),
    ("attn_output.weight", "self_attn.o_proj.weight", None),
    ("ffn_gate.weight", "mlp.gate_proj.weight", None),
    ("ffn_up.weight", "mlp.up_proj.weight", None),
    ("ffn_down.weight", "mlp.down_proj.weight", None),
];

const GLOBAL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The HF name of GGUF tensor `gguf`, and the Q/K role it would have in a permuted architecture.
pub fn hf_name(gguf: &str) -> Option<(String, Option<QkRole>)> {
    if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == gguf) {
        return Some((hf.to_string(), None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    // Canonical decimal only ("07" or "+7" would alias "7").
    let n: usize = layer.parse().ok()?;
    if n.to_string() != layer {
        return None;
    }
    let (_, hf, role) = LAYER.iter().find(|(g, _, _)| *g == suffix)?;
    Some((format!("model.layers.{n}.{hf}"), *role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_spec_table() {
        assert_eq!(hf_name("token_embd.weight").unwrap().0, "model.embed_tokens.weight");
        assert_eq!(hf_name("output.weight").unwrap().0, "lm_head.weight");
        assert_eq!(
            hf_name("blk.12.attn_q.weight"),
            Some(("model.layers.12.self_attn.q_proj.weight".into(), Some(QkRole::Query)))
        );
        assert_eq!(hf_name("blk.0.ffn_norm.weight").unwrap().0, "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_name("blk.07.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }
}
