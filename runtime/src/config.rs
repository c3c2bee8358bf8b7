//! The model configuration, read from the `config.json` the converter embedded in the file.
//! Mistral, Llama (incl. SmolLM2) and Qwen2 share one decoder shape; the differences are
//! data: sliding window, attention biases, tied embeddings.

use crate::error::{Result, RuntimeError};
use serde_json::Value;

/// Decoder-only transformer hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `model_type` (mistral, llama, qwen2).
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Each query sees this many keys including itself; `None` = full causal attention.
    pub sliding_window: Option<usize>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub attention_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
}

fn get_usize(cfg: &Value, key: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| bad(key, format!("expected a non-negative integer, got {v}"))),
    }
}

fn need_usize(cfg: &Value, key: &str) -> Result<usize> {
    get_usize(cfg, key)?.ok_or_else(|| bad(key, "missing".into()))
}

fn bad(key: &str, problem: String) -> RuntimeError {
    RuntimeError::Config { key: key.to_string(), problem }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())).collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads and checks a Hugging Face `config.json` value. Both `rope_theta` at top level
    /// (older files, the Mistral repos) and transformers 5's `rope_parameters` are accepted.
    pub fn from_json(cfg: &Value) -> Result<ModelConfig> {
        lowbit_format::limits::check_config(cfg).map_err(|(key, problem)| bad(&key, problem))?;
        let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("llama").to_string();
        if !["mistral", "llama", "qwen2"].contains(&model_type.as_str()) {
            return Err(bad("model_type", format!("{model_type:?} is not supported (mistral, llama, qwen2)")));
        }
        let hidden_size = need_usize(cfg, "hidden_size")?;
        let num_heads = need_usize(cfg, "num_attention_heads")?;
        let num_kv_heads = get_usize(cfg, "num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(bad("num_key_value_heads", format!("{num_kv_heads} does not divide {num_heads} heads")));
        }
        let head_dim = match get_usize(cfg, "head_dim")? {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => return Err(bad("head_dim", "missing and hidden_size is not a multiple of the heads".into())),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad("head_dim", format!("{head_dim} must be even and non-zero")));
        }
        let rope = cfg.get("rope_parameters").filter(|v| v.is_object());
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| cfg.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        let rope_type = rope
            .and_then(|r| r.get("rope_type"))
            .or_else(|| cfg.get("rope_scaling").and_then(|s| s.get("rope_type").or_else(|| s.get("type"))))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(bad("rope_scaling", format!("rope type {rope_type:?} is not supported")));
        }
        let sliding_window =
            if model_type == "qwen2" && cfg.get("use_sliding_window").and_then(Value::as_bool) != Some(true) {
                None
            } else {
                get_usize(cfg, "sliding_window")?
            };
        let c = ModelConfig {
            hidden_size,
            num_layers: need_usize(cfg, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: need_usize(cfg, "intermediate_size")?,
            vocab_size: need_usize(cfg, "vocab_size")?,
            rope_theta,
            rms_norm_eps: cfg.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
            sliding_window: sliding_window.filter(|&w| w > 0),
            max_position_embeddings: get_usize(cfg, "max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            attention_bias: cfg.get("attention_bias").and_then(Value::as_bool).unwrap_or(model_type == "qwen2"),
            bos_token_id: token_ids(cfg.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(cfg.get("eos_token_id")),
            model_type,
        };
        if c.vocab_size == 0 || c.hidden_size == 0 || c.intermediate_size == 0 {
            return Err(bad("vocab_size", "sizes must be non-zero".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_rope_styles() {
        let base = json!({"model_type": "mistral", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256, "rope_theta": 1e6, "sliding_window": null});
        let c = ModelConfig::from_json(&base).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.sliding_window, None);
        let mut v5 = base.clone();
        v5.as_object_mut().unwrap().remove("rope_theta");
        v5["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "default"});
        assert_eq!(ModelConfig::from_json(&v5).unwrap().rope_theta, 500000.0);
        let mut bad_heads = base.clone();
        bad_heads["num_key_value_heads"] = json!(3);
        assert!(ModelConfig::from_json(&bad_heads).is_err());
        // A header written by anything: sizes and floats are range-checked, not trusted (a
        // billion layers would have aborted on allocation).
        for (key, v) in [
            ("num_hidden_layers", json!(1_000_000_000u64)),
            ("rope_theta", json!(0.0)),
            ("rms_norm_eps", json!("1e-6")),
            ("rms_norm_eps", json!(-1.0)),
            ("max_position_embeddings", json!(0)),
        ] {
            let mut c = base.clone();
            c[key] = v;
            assert!(
                matches!(ModelConfig::from_json(&c), Err(RuntimeError::Config { key: k, .. }) if k == key),
                "{key}"
            );
        }
    }
}
