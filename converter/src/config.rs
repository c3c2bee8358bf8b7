//! config.json: normalisation (both `rope_theta` styles) and the tensor shapes it implies, so a
//! checkpoint whose tensors contradict its config is refused before anything is written.

use crate::error::{ConvertError, Result};
use serde_json::Value;

/// The dimensions that fix every tensor's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    /// Hidden size.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Query heads × head_dim.
    pub q_out: usize,
    /// Key/value heads × head_dim.
    pub kv_out: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Vocabulary.
    pub vocab: usize,
}

fn num(cfg: &Value, key: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| ConvertError::Config(format!("{key} is not a non-negative integer"))),
    }
}

fn need(cfg: &Value, key: &str) -> Result<usize> {
    num(cfg, key)?.ok_or_else(|| ConvertError::Config(format!("{key} is missing")))
}

/// Checks the architecture, fills `model_type` and a top-level `rope_theta` (from
/// transformers 5's `rope_parameters` if that is where it is), and returns the dimensions.
pub fn normalise(cfg: &mut Value) -> Result<Dims> {
    let obj = cfg.as_object_mut().ok_or_else(|| ConvertError::Config("not a JSON object".into()))?;
    let arch = obj.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("").to_string();
    let model_type = match obj.get("model_type").and_then(Value::as_str) {
        Some(t) => t.to_string(),
        None => match arch.as_str() {
            "MistralForCausalLM" => "mistral".into(),
            "Qwen2ForCausalLM" => "qwen2".into(),
            _ => "llama".into(),
        },
    };
    if !["mistral", "llama", "qwen2"].contains(&model_type.as_str()) {
        return Err(ConvertError::Config(format!(
            "model_type {model_type:?} is not supported (mistral, llama, qwen2)"
        )));
    }
    obj.insert("model_type".into(), Value::from(model_type));
    if !obj.contains_key("rope_theta") {
        if let Some(t) = obj.get("rope_parameters").and_then(|r| r.get("rope_theta")).cloned() {
            obj.insert("rope_theta".into(), t);
        }
    }
    let hidden = need(cfg, "hidden_size")?;
    let heads = need(cfg, "num_attention_heads")?;
    let kv_heads = num(cfg, "num_key_value_heads")?.unwrap_or(heads);
    let head_dim = match num(cfg, "head_dim")? {
        Some(d) => d,
        None if heads > 0 && hidden % heads == 0 => hidden / heads,
        None => {
            return Err(ConvertError::Config("head_dim missing and hidden_size is not a multiple of the heads".into()))
        }
    };
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(ConvertError::Config(format!("{kv_heads} kv heads do not divide {heads} heads")));
    }
    Ok(Dims {
        hidden,
        layers: need(cfg, "num_hidden_layers")?,
        q_out: heads * head_dim,
        kv_out: kv_heads * head_dim,
        intermediate: need(cfg, "intermediate_size")?,
        vocab: need(cfg, "vocab_size")?,
    })
}

impl Dims {
    /// The shape config.json implies for a tensor name, if it is one we know.
    pub fn expected(&self, name: &str) -> Option<Vec<usize>> {
        let (h, q, kv, i, v) = (self.hidden, self.q_out, self.kv_out, self.intermediate, self.vocab);
        let tail = |s: &str| name.ends_with(s);
        Some(match () {
            _ if name == "model.embed_tokens.weight" || name == "lm_head.weight" => vec![v, h],
            _ if name == "model.norm.weight" => vec![h],
            _ if tail("layernorm.weight") => vec![h],
            _ if tail("q_proj.weight") => vec![q, h],
            _ if tail("k_proj.weight") || tail("v_proj.weight") => vec![kv, h],
            _ if tail("q_proj.bias") => vec![q],
            _ if tail("k_proj.bias") || tail("v_proj.bias") => vec![kv],
            _ if tail("o_proj.weight") => vec![h, q],
            _ if tail("gate_proj.weight") || tail("up_proj.weight") => vec![i, h],
            _ if tail("down_proj.weight") => vec![h, i],
            _ => return None,
        })
    }

    /// Names every model of this shape must have (the lm_head only when untied).
    pub fn required(&self, tied: bool) -> Vec<String> {
        let mut v = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
        if !tied {
            v.push("lm_head.weight".into());
        }
        for l in 0..self.layers {
            for s in [
                "input_layernorm.weight",
                "post_attention_layernorm.weight",
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            ] {
                v.push(format!("model.layers.{l}.{s}"));
            }
        }
        v
    }
}
