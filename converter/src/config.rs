//! config.json: normalisation (both `rope_theta` styles) and the tensors it implies, so a
//! checkpoint whose tensors contradict its config is refused before anything is written.
//!
//! The stored config keeps every original key; normalisation only *adds* what the runtime reads
//! at the top level (`model_type`, `rope_theta`).

use crate::error::{ConvertError, Result};
use serde_json::Value;

/// Architectures the runtime implements (`architectures[0]` → `model_type`).
pub const ARCHITECTURES: [(&str, &str); 3] =
    [("MistralForCausalLM", "mistral"), ("LlamaForCausalLM", "llama"), ("Qwen2ForCausalLM", "qwen2")];

/// transformers' default `rope_theta` for all three architectures.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// The dimensions and options that fix every tensor's name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    /// `model_type`: "mistral", "llama" or "qwen2".
    pub model_type: String,
    /// Hidden size.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads × head_dim.
    pub q_out: usize,
    /// Key/value heads × head_dim.
    pub kv_out: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// `lm_head` shares the embedding matrix (then `lm_head.weight` may be absent).
    pub tied: bool,
    /// q/k/v projections have biases (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj has a bias (Llama with `attention_bias`).
    pub o_bias: bool,
    /// MLP projections have biases (Llama with `mlp_bias`).
    pub mlp_bias: bool,
}

fn num(cfg: &Value, key: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ConvertError::Config(format!("{key} is not a non-negative integer: {v}"))),
    }
}

fn need(cfg: &Value, key: &str) -> Result<usize> {
    match num(cfg, key)? {
        Some(0) => Err(ConvertError::Config(format!("{key} is 0"))),
        Some(n) => Ok(n),
        None => Err(ConvertError::Config(format!("{key} is missing"))),
    }
}

fn flag(cfg: &Value, key: &str) -> Result<Option<bool>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ConvertError::Config(format!("{key} is not a boolean: {v}"))),
    }
}

/// Checks the architecture, adds `model_type` and a top-level `rope_theta` (from transformers 5's
/// `rope_parameters` when that is where it is, else the default), and returns the dimensions.
/// Things worth telling the user go to `warnings`.
pub fn normalise(cfg: &mut Value, warnings: &mut Vec<String>) -> Result<Dims> {
    lowbit_format::limits::check_config(cfg)
        .map_err(|(key, problem)| ConvertError::Config(format!("{key}: {problem}")))?;
    let obj = cfg.as_object_mut().ok_or_else(|| ConvertError::Config("config.json is not a JSON object".into()))?;
    let arch = match obj.get("architectures") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().map(str::to_string),
        Some(v) => return Err(ConvertError::Config(format!("architectures must list one class name, not {v}"))),
    };
    let from_arch = match &arch {
        Some(a) => Some(ARCHITECTURES.iter().find(|(name, _)| name == a).map(|(_, t)| *t).ok_or_else(|| {
            ConvertError::Config(format!(
                "architecture {a} is not supported (MistralForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM)"
            ))
        })?),
        None => None,
    };
    let model_type = match (obj.get("model_type").and_then(Value::as_str), from_arch) {
        (Some(t), _) => t.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => return Err(ConvertError::Config("neither model_type nor architectures is given".into())),
    };
    if !ARCHITECTURES.iter().any(|(_, t)| *t == model_type) {
        return Err(ConvertError::Config(format!(
            "model_type {model_type:?} is not supported (mistral, llama, qwen2)"
        )));
    }
    obj.insert("model_type".into(), Value::from(model_type.clone()));

    let rope = obj.get("rope_parameters").filter(|v| v.is_object()).cloned();
    match (obj.get("rope_theta"), rope.as_ref().and_then(|r| r.get("rope_theta"))) {
        (Some(t), _) if !t.is_number() => {
            return Err(ConvertError::Config(format!("rope_theta is not a number: {t}")));
        }
        (Some(_), _) => {}
        (None, Some(t)) if t.is_number() => {
            let t = t.clone();
            obj.insert("rope_theta".into(), t);
        }
        (None, Some(t)) => {
            return Err(ConvertError::Config(format!("rope_parameters.rope_theta is not a number: {t}")))
        }
        (None, None) => {
            warnings
                .push(format!("config.json gives no rope_theta; recorded transformers' default {DEFAULT_ROPE_THETA}"));
            obj.insert("rope_theta".into(), Value::from(DEFAULT_ROPE_THETA));
        }
    }
    let rope_type = rope
        .as_ref()
        .and_then(|r| r.get("rope_type"))
        .or_else(|| obj.get("rope_scaling").and_then(|s| s.get("rope_type").or_else(|| s.get("type"))))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if rope_type != "default" {
        warnings.push(format!("RoPE type {rope_type:?} is stored, but the lowbit runtime only runs \"default\""));
    }

    let hidden = need(cfg, "hidden_size")?;
    let heads = need(cfg, "num_attention_heads")?;
    let kv_heads = num(cfg, "num_key_value_heads")?.unwrap_or(heads);
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(ConvertError::Config(format!("{kv_heads} key/value heads do not divide {heads} heads")));
    }
    let head_dim = match num(cfg, "head_dim")? {
        Some(0) => return Err(ConvertError::Config("head_dim is 0".into())),
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(ConvertError::Config(
                "head_dim is missing and hidden_size is not a multiple of num_attention_heads".into(),
            ))
        }
    };
    if head_dim % 2 != 0 {
        // Rotary embeddings turn pairs of a head's values: the runtime refuses such a file at
        // open. Converting it is still what was asked (its tensors are whole), so say so here.
        warnings.push(format!(
            "head_dim {head_dim} is odd: the file is written, but the lowbit runtime cannot run it (rotary embeddings need pairs)"
        ));
    }
    let overflow = || ConvertError::Config("head counts × head_dim overflow".into());
    let attention_bias = flag(cfg, "attention_bias")?;
    let (qwen2, llama) = (model_type == "qwen2", model_type == "llama");
    Ok(Dims {
        hidden,
        layers: need(cfg, "num_hidden_layers")?,
        q_out: heads.checked_mul(head_dim).ok_or_else(overflow)?,
        kv_out: kv_heads.checked_mul(head_dim).ok_or_else(overflow)?,
        intermediate: need(cfg, "intermediate_size")?,
        vocab: need(cfg, "vocab_size")?,
        tied: flag(cfg, "tie_word_embeddings")?.unwrap_or(false),
        // Qwen2's q/k/v always have biases and its o_proj never has one; Mistral has none; only
        // Llama reads attention_bias (q/k/v/o) and mlp_bias.
        qkv_bias: qwen2 || (llama && attention_bias == Some(true)),
        o_bias: llama && attention_bias == Some(true),
        mlp_bias: llama && flag(cfg, "mlp_bias")? == Some(true),
        model_type,
    })
}

/// What config.json says about one tensor name.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A tensor of the architecture, with this shape.
    Shape(Vec<usize>),
    /// A buffer transformers recomputes (`rotary_emb.inv_freq`); not stored.
    Skip,
    /// Not a name the architecture uses; stored as it is.
    Unknown,
}

/// Per-layer tensor names (after `model.layers.{i}.`) with a flag saying whether the config
/// has them, and their shapes.
fn layer_tensors(d: &Dims) -> [(&'static str, bool, Vec<usize>); 17] {
    let (h, q, kv, i) = (d.hidden, d.q_out, d.kv_out, d.intermediate);
    [
        ("input_layernorm.weight", true, vec![h]),
        ("post_attention_layernorm.weight", true, vec![h]),
        ("self_attn.q_proj.weight", true, vec![q, h]),
        ("self_attn.k_proj.weight", true, vec![kv, h]),
        ("self_attn.v_proj.weight", true, vec![kv, h]),
        ("self_attn.o_proj.weight", true, vec![h, q]),
        ("mlp.gate_proj.weight", true, vec![i, h]),
        ("mlp.up_proj.weight", true, vec![i, h]),
        ("mlp.down_proj.weight", true, vec![h, i]),
        ("self_attn.q_proj.bias", d.qkv_bias, vec![q]),
        ("self_attn.k_proj.bias", d.qkv_bias, vec![kv]),
        ("self_attn.v_proj.bias", d.qkv_bias, vec![kv]),
        ("self_attn.o_proj.bias", d.o_bias, vec![h]),
        ("mlp.gate_proj.bias", d.mlp_bias, vec![i]),
        ("mlp.up_proj.bias", d.mlp_bias, vec![i]),
        ("mlp.down_proj.bias", d.mlp_bias, vec![h]),
        // Old Llama checkpoints saved this buffer; transformers recomputes it.
        ("self_attn.rotary_emb.inv_freq", false, vec![]),
    ]
}

impl Dims {
    /// What config.json implies for tensor `name`. A layer index past `num_hidden_layers` or a
    /// bias the configuration does not have is a [`ConvertError::Contradiction`].
    pub fn expect(&self, name: &str) -> Result<Expect> {
        let (h, v) = (self.hidden, self.vocab);
        match name {
            "model.embed_tokens.weight" | "lm_head.weight" => return Ok(Expect::Shape(vec![v, h])),
            "model.norm.weight" => return Ok(Expect::Shape(vec![h])),
            _ => {}
        }
        let Some(rest) = name.strip_prefix("model.layers.") else { return Ok(Expect::Unknown) };
        let Some((idx, what)) = rest.split_once('.') else { return Ok(Expect::Unknown) };
        let Ok(layer) = idx.parse::<usize>() else { return Ok(Expect::Unknown) };
        let Some((_, has, shape)) = layer_tensors(self).into_iter().find(|(n, _, _)| *n == what) else {
            return Ok(Expect::Unknown);
        };
        if what.ends_with("inv_freq") {
            return Ok(Expect::Skip);
        }
        if layer >= self.layers {
            return Err(ConvertError::Contradiction {
                tensor: name.into(),
                problem: format!("layer {layer}, but config.json has num_hidden_layers = {}", self.layers),
            });
        }
        if !has {
            return Err(ConvertError::Contradiction {
                tensor: name.into(),
                problem: format!("config.json ({} without attention_bias/mlp_bias) has no such bias", self.model_type),
            });
        }
        Ok(Expect::Shape(shape))
    }

    /// Checks `shape` against [`Dims::expect`]; returns what to do with the tensor.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<Expect> {
        let e = self.expect(name)?;
        match &e {
            Expect::Shape(want) if want != shape => {
                Err(ConvertError::ShapeMismatch { tensor: name.into(), shape: shape.to_vec(), expected: want.clone() })
            }
            _ => Ok(e),
        }
    }

    /// Names every checkpoint of this configuration must have (`lm_head.weight` only when the
    /// embeddings are untied).
    pub fn required(&self) -> Vec<String> {
        let mut v = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
        if !self.tied {
            v.push("lm_head.weight".into());
        }
        let per_layer: Vec<&str> =
            layer_tensors(self).into_iter().filter(|(_, has, _)| *has).map(|(n, _, _)| n).collect();
        for l in 0..self.layers {
            v.extend(per_layer.iter().map(|s| format!("model.layers.{l}.{s}")));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
               "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 100,
               "rope_theta": 1e6})
    }

    #[test]
    fn both_rope_styles_and_model_type_from_architecture() {
        let mut w = Vec::new();
        let mut c = base();
        let d = normalise(&mut c, &mut w).unwrap();
        assert_eq!((c["model_type"].as_str(), c["rope_theta"].as_f64()), (Some("mistral"), Some(1e6)));
        assert_eq!((d.q_out, d.kv_out), (64, 32));
        let mut c = base();
        c.as_object_mut().unwrap().remove("rope_theta");
        c["rope_parameters"] = json!({"rope_theta": 5e5, "rope_type": "default"});
        normalise(&mut c, &mut w).unwrap();
        assert_eq!(c["rope_theta"], 5e5);
        assert_eq!(c["rope_parameters"]["rope_theta"], 5e5, "original keys are kept");
        assert!(w.is_empty(), "{w:?}");
        c.as_object_mut().unwrap().remove("rope_theta");
        c.as_object_mut().unwrap().remove("rope_parameters");
        normalise(&mut c, &mut w).unwrap();
        assert_eq!(c["rope_theta"], DEFAULT_ROPE_THETA);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn unsupported_and_broken_configs_are_refused() {
        let mut w = Vec::new();
        for (k, v) in [
            ("architectures", json!(["GemmaForCausalLM"])),
            ("model_type", json!("gemma")),
            ("hidden_size", json!(0)),
            ("num_key_value_heads", json!(3)),
            ("vocab_size", json!(-1)),
            ("rope_theta", json!("big")),
            ("tie_word_embeddings", json!("yes")),
        ] {
            let mut c = base();
            c[k] = v;
            assert!(matches!(normalise(&mut c, &mut w), Err(ConvertError::Config(_))), "{k}");
        }
        let mut c = base();
        c.as_object_mut().unwrap().remove("intermediate_size");
        assert!(normalise(&mut c, &mut w).unwrap_err().to_string().contains("intermediate_size"));
        // An odd head cannot rotate in pairs: converted with a warning that the runtime will
        // refuse it (found by the `model_config` fuzz target, which had it converted silently).
        let (mut c, mut w) = (base(), Vec::new());
        c["head_dim"] = json!(63);
        assert!(normalise(&mut c, &mut w).is_ok());
        assert!(w.iter().any(|m| m.contains("head_dim 63 is odd")), "{w:?}");
    }

    #[test]
    fn qwen2_has_qkv_biases_and_layers_are_bounded() {
        let mut w = Vec::new();
        let mut c = base();
        c["architectures"] = json!(["Qwen2ForCausalLM"]);
        let d = normalise(&mut c, &mut w).unwrap();
        assert_eq!(d.expect("model.layers.1.self_attn.k_proj.bias").unwrap(), Expect::Shape(vec![32]));
        assert!(d.required().contains(&"model.layers.0.self_attn.q_proj.bias".to_string()));
        assert!(matches!(d.expect("model.layers.2.mlp.up_proj.weight"), Err(ConvertError::Contradiction { .. })));
        assert!(matches!(d.expect("model.layers.0.self_attn.o_proj.bias"), Err(ConvertError::Contradiction { .. })));
        assert_eq!(d.expect("model.layers.0.self_attn.rotary_emb.inv_freq").unwrap(), Expect::Skip);
        assert_eq!(d.expect("model.vision_tower.x").unwrap(), Expect::Unknown);
        let mut c = base();
        let d = normalise(&mut c, &mut w).unwrap();
        assert!(matches!(d.expect("model.layers.0.self_attn.q_proj.bias"), Err(ConvertError::Contradiction { .. })));
        assert_eq!(d.required().len(), 3 + 2 * 9);
        c["attention_bias"] = true.into();
        let d = normalise(&mut c, &mut w).unwrap();
        assert!(!d.qkv_bias, "Mistral ignores attention_bias");
        c["architectures"] = json!(["LlamaForCausalLM"]);
        c["model_type"] = "llama".into();
        c["mlp_bias"] = true.into();
        let d = normalise(&mut c, &mut w).unwrap();
        assert_eq!(d.required().len(), 3 + 2 * 16);
        assert_eq!(d.expect("model.layers.0.mlp.down_proj.bias").unwrap(), Expect::Shape(vec![64]));
        assert!(matches!(
            d.check("model.layers.0.mlp.down_proj.weight", &[96, 64]),
            Err(ConvertError::ShapeMismatch { expected, .. }) if expected == [64, 96]
        ));
    }
}
