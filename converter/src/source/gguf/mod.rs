//! GGUF files (llama.cpp's format) as a conversion source: Llama-architecture models (Mistral
//! GGUFs say "llama" too) with F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K tensors. Tensors are
//! dequantized as ggml's reference code does, renamed to Hugging Face names, and the Q/K row
//! permutation llama.cpp's converter applies is undone so the runtime's rotate_half RoPE is
//! right (FORMATS.md §F.4). config.json, tokenizer.json and the chat template are rebuilt from
//! the metadata.

pub mod dequant;
pub mod reader;
pub mod tokenizer;

use super::{SrcDtype, TensorSource};
use crate::convert::{make_plan, quant_settings, Plan};
use crate::error::{ConvertError, Result};
use crate::plan::{ConvertOptions, QuantChoice};
use lowbit_format::{ConverterInfo, Metadata, Scheme};
use reader::{Gguf, TensorInfo, Value};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An opened GGUF file.
pub struct GgufSource {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Parsed header.
    pub gguf: Gguf,
    /// HF name → (index into gguf.tensors, HF shape, rows permuted with this many heads).
    by_hf: HashMap<String, (usize, Vec<usize>, Option<usize>)>,
    /// GGUF tensors we do not map.
    pub skipped: Vec<String>,
}

fn hf_name(g: &str) -> Option<String> {
    let direct = match g {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = g.strip_prefix("blk.")?;
    let (layer, what) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let hf = match what {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's per-head row interleave: within each head of `head_dim` rows, GGUF row
/// `2i + j` holds HF row `j·head_dim/2 + i`.
pub fn unpermute_rows(data: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = data.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * (hd / 2) + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

impl GgufSource {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufSource> {
        let err = |problem: String| ConvertError::Gguf { path: path.to_path_buf(), problem };
        let file = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
        // SAFETY: a read-only map; the parser checks every offset against its length. A file
        // truncated by another process during conversion could still raise SIGBUS.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ConvertError::io(path, e))?;
        let gguf = reader::parse(&map).map_err(err)?;
        let arch = gguf.metadata.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string();
        if !["llama", "mistral", "qwen2"].contains(&arch.as_str()) {
            return Err(err(format!("architecture {arch:?} is not supported (llama, mistral, qwen2)")));
        }
        let heads =
            gguf.metadata.get(&format!("{arch}.attention.head_count")).and_then(Value::as_u64).unwrap_or(0) as usize;
        let kv_heads = gguf
            .metadata
            .get(&format!("{arch}.attention.head_count_kv"))
            .and_then(Value::as_u64)
            .map_or(heads, |v| v as usize);
        let mut by_hf = HashMap::new();
        let mut skipped = Vec::new();
        for (i, t) in gguf.tensors.iter().enumerate() {
            let Some(name) = hf_name(&t.name) else {
                skipped.push(t.name.clone());
                continue;
            };
            let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
            // llama.cpp permutes Q and K of llama-architecture models only.
            let permute = match (arch.as_str(), t.name.ends_with("attn_q.weight"), t.name.ends_with("attn_k.weight")) {
                ("llama" | "mistral", true, _) => Some(heads),
                ("llama" | "mistral", _, true) => Some(kv_heads),
                _ => None,
            };
            if let Some(h) = permute {
                if h == 0 || shape.len() != 2 || !shape[0].is_multiple_of(h) || !(shape[0] / h).is_multiple_of(2) {
                    return Err(err(format!("tensor {}: {shape:?} rows do not split into {h} heads", t.name)));
                }
            }
            by_hf.insert(name, (i, shape, permute));
        }
        Ok(GgufSource { path: path.to_path_buf(), map, gguf, by_hf, skipped })
    }

    fn info(&self, name: &str) -> Result<(&TensorInfo, &Vec<usize>, Option<usize>)> {
        let (i, shape, p) = self.by_hf.get(name).ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
        Ok((&self.gguf.tensors[*i], shape, *p))
    }

    /// A whole tensor, dequantized and in Hugging Face layout.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (t, shape, permute) = self.info(name)?;
        let n: usize = shape.iter().product();
        let mut out = vec![0f32; n];
        dequant::dequantize(t.ty, &self.map[t.offset as usize..(t.offset + t.size) as usize], &mut out);
        Ok(match permute {
            Some(h) => unpermute_rows(&out, h, shape[1]),
            None => out,
        })
    }

    /// Architecture string.
    pub fn arch(&self) -> String {
        self.gguf.metadata.get("general.architecture").and_then(Value::as_str).unwrap_or("llama").to_string()
    }

    /// A Hugging Face config.json for the model.
    pub fn config(&self) -> Result<serde_json::Value> {
        let arch = self.arch();
        let m = &self.gguf.metadata;
        let get = |k: &str| m.get(&format!("{arch}.{k}"));
        let need = |k: &str| {
            get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| ConvertError::Gguf { path: self.path.clone(), problem: format!("{arch}.{k} missing") })
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let vocab = match get("vocab_size").and_then(Value::as_u64) {
            Some(v) => v,
            None => m
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len() as u64)
                .or_else(|| self.by_hf.get("model.embed_tokens.weight").map(|(_, s, _)| s[0] as u64))
                .unwrap_or(0),
        };
        let tok = |k: &str| m.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64);
        let model_type = if arch == "qwen2" { "qwen2" } else { "llama" };
        Ok(json!({
            "architectures": [if arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": need("feed_forward_length")?,
            "num_hidden_layers": need("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": get("attention.head_count_kv").and_then(Value::as_u64).unwrap_or(heads),
            "head_dim": get("rope.dimension_count").and_then(Value::as_u64).unwrap_or(hidden / heads.max(1)),
            "rms_norm_eps": get("attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-5),
            "rope_theta": get("rope.freq_base").and_then(Value::as_f64).unwrap_or(10000.0),
            "max_position_embeddings": get("context_length").and_then(Value::as_u64).unwrap_or(4096),
            "vocab_size": vocab,
            "tie_word_embeddings": !self.by_hf.contains_key("lm_head.weight"),
            "bos_token_id": tok("bos_token_id"),
            "eos_token_id": tok("eos_token_id"),
            "attention_bias": self.by_hf.contains_key("model.layers.0.self_attn.q_proj.bias"),
            "torch_dtype": "float32",
        }))
    }

    /// tokenizer_config.json equivalent: special token strings, BOS handling and template.
    pub fn tokenizer_config(&self) -> serde_json::Value {
        let m = &self.gguf.metadata;
        let tokens = m.get("tokenizer.ggml.tokens").and_then(Value::as_array);
        let tok = |k: &str| {
            let id = m.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64)?;
            tokens?.get(id as usize)?.as_str().map(str::to_string)
        };
        json!({
            "bos_token": tok("bos_token_id"),
            "eos_token": tok("eos_token_id"),
            "unk_token": tok("unknown_token_id"),
            "pad_token": tok("padding_token_id"),
            "add_bos_token": m.get("tokenizer.ggml.add_bos_token").map(|v| matches!(v, Value::Bool(true))),
            "chat_template": self.chat_template(),
        })
    }

    /// `tokenizer.chat_template`.
    pub fn chat_template(&self) -> Option<String> {
        self.gguf.metadata.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string)
    }
}

impl TensorSource for GgufSource {
    fn list(&self) -> Vec<(String, SrcDtype, Vec<usize>)> {
        let mut v: Vec<_> = self.by_hf.iter().map(|(k, (_, s, _))| (k.clone(), SrcDtype::F32, s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn read_raw(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>> {
        let all = self.tensor_f32(name)?;
        let part = all.get(start..start + len).ok_or_else(|| ConvertError::Gguf {
            path: self.path.clone(),
            problem: format!("read past the end of {name}"),
        })?;
        Ok(part.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Plans a conversion of a GGUF file.
pub(crate) fn plan(g: &GgufSource, path: &Path, opts: &ConvertOptions) -> Result<Plan> {
    let mut config = g.config()?;
    let dims = crate::config::normalise(&mut config)?;
    let tied = config.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false);
    let mut warnings: Vec<String> = g.skipped.iter().map(|s| format!("GGUF tensor {s} is not used")).collect();
    let tokenizer_json = tokenizer::tokenizer_json(&g.gguf.metadata)
        .map_err(|problem| ConvertError::Gguf { path: path.to_path_buf(), problem })?;
    if tokenizer_json.is_none() {
        warnings.push("the GGUF file has no tokenizer: the output accepts token ids only".into());
    }
    let mut jobs = Vec::new();
    for (name, _, shape) in g.list() {
        if let Some(e) = dims.expected(&name) {
            if e != shape {
                return Err(ConvertError::ShapeMismatch { tensor: name, shape, expected: e });
            }
        }
        let (t, _, _) = g.info(&name)?;
        // Tensors kept in high precision: f32 where the GGUF had f32, else f16 (the source was
        // already quantized, so f16 loses nothing that matters and halves the size).
        let kept = if t.ty == 0 || opts.quant == QuantChoice::F32 { Scheme::F32 } else { Scheme::F16 };
        let scheme = opts.scheme_for(&name, shape.len(), kept, "float32");
        jobs.push((name, shape, scheme));
    }
    let have: std::collections::HashSet<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
    if let Some(m) = dims.required(tied).into_iter().find(|r| !have.contains(r.as_str())) {
        return Err(ConvertError::MissingTensor(m));
    }
    let metadata = Metadata {
        architecture: config.get("model_type").and_then(|v| v.as_str()).unwrap_or("llama").to_string(),
        config,
        tokenizer_json,
        tokenizer_config: Some(g.tokenizer_config()),
        chat_template: g.chat_template(),
        generation_config: None,
        quantization: quant_settings(opts, "gguf"),
        converter: ConverterInfo { name: "lowbit".into(), version: env!("CARGO_PKG_VERSION").into() },
        sources: Vec::new(),
    };
    Ok(make_plan(metadata, jobs, warnings, vec![path.to_path_buf()]))
}
