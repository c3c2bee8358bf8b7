//! A GGUF file seen as a Hugging Face model: HF tensor names and shapes, tensors dequantized to
//! f32 with llama.cpp's Q/K permutation undone, and the config / tokenizer files HF would ship.
//!
//! Hyper-parameters are read and checked once in [`GgufModel::from_file`], so the accessors
//! afterwards cannot fail and a file missing e.g. `llama.block_count` is refused up front with the
//! key's name rather than producing a config.json with holes.
//!
//! Architectures: `llama` (which is also what llama.cpp writes for Mistral checkpoints) and
//! `mistral` are Q/K-permuted; `qwen2` is not (llama.cpp never permutes it). Both Llama-style
//! names produce a `LlamaForCausalLM` config: a GGUF carries no sliding-window key, and llama.cpp
//! runs these files as plain Llama, so claiming `mistral` (whose config class defaults to a 4096
//! window) would change the model.

use super::error::{GgufError, Result};
use super::file::GgufFile;
use super::names::{hf_name, QkRole};
use super::permute::{gguf_row_of_hf_row, unpermute_rows};
use super::reader::Metadata;
use super::tokenizer;
use super::types::GgmlType;
use super::value::Value;
use serde_json::json;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// One tensor under its Hugging Face name.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape outermost first (`[out, in]` for linear weights).
    pub shape: Vec<usize>,
    /// The name in the GGUF file.
    pub gguf_name: String,
    /// ggml storage type.
    pub ty: GgmlType,
    /// `Some(heads)` when the GGUF rows are Q/K-permuted with that many heads (undone by the
    /// `tensor_f32*` accessors; callers moving raw rows must undo it themselves).
    pub unpermute_heads: Option<usize>,
}

/// Hyper-parameters, validated.
#[derive(Debug, Clone, PartialEq)]
struct HParams {
    hidden: u64,
    layers: u64,
    ffn: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    eps: f64,
    rope_theta: f64,
    context: Option<u64>,
    vocab: u64,
}

/// A GGUF file mapped onto Hugging Face conventions.
#[derive(Debug)]
pub struct GgufModel {
    file: GgufFile,
    arch: String,
    hp: HParams,
    tensors: Vec<HfTensor>,
    by_hf: HashMap<String, usize>,
    skipped: Vec<String>,
}

/// `key` as a non-negative integer, if present.
fn opt_u64(m: &Metadata, key: &str) -> Result<Option<u64>> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(GgufError::WrongKeyType { key: key.into(), expected: "an integer" }),
    }
}

fn need_u64(m: &Metadata, key: &str) -> Result<u64> {
    opt_u64(m, key)?.ok_or_else(|| GgufError::MissingKey { key: key.into() })
}

fn opt_f64(m: &Metadata, key: &str) -> Result<Option<f64>> {
    match m.get(key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(GgufError::WrongKeyType { key: key.into(), expected: "a float" }),
    }
}

impl GgufModel {
    /// Maps and parses `path`, then checks it is a supported model.
    pub fn open(path: &Path) -> Result<GgufModel> {
        GgufModel::from_file(GgufFile::open(path)?)
    }

    /// Wraps an already parsed file (e.g. one built in memory by a test).
    pub fn from_file(file: GgufFile) -> Result<GgufModel> {
        let m = file.metadata();
        let arch = match m.get("general.architecture") {
            None => return Err(GgufError::MissingKey { key: "general.architecture".into() }),
            Some(v) => v
                .as_str()
                .ok_or(GgufError::WrongKeyType { key: "general.architecture".into(), expected: "a string" })?,
        }
        .to_string();
        let permuted = match arch.as_str() {
            "llama" | "mistral" => true,
            "qwen2" => false,
            _ => return Err(GgufError::UnsupportedArchitecture { arch }),
        };

        let mut tensors = Vec::new();
        let mut skipped = Vec::new();
        for t in file.tensors() {
            match hf_name(&t.name) {
                Some((name, role)) => tensors.push((name, role, t)),
                None => skipped.push(t.name.clone()),
            }
        }
        let q_rows = tensors
            .iter()
            .find(|(_, role, _)| *role == Some(QkRole::Query))
            .and_then(|(_, _, t)| t.hf_shape().first().copied());
        let hp = hparams(m, &arch, q_rows)?;

        let mut out = Vec::with_capacity(tensors.len());
        let mut by_hf = HashMap::with_capacity(tensors.len());
        for (name, role, t) in tensors {
            let shape = t.hf_shape();
            let heads = match role.filter(|_| permuted) {
                Some(QkRole::Query) => Some(hp.heads),
                Some(QkRole::Key) => Some(hp.kv_heads),
                None => None,
            };
            if let Some(h) = heads {
                // Undoing the permutation needs rows = heads × head_dim, head_dim even.
                if shape.len() != 2 || shape[0] as u64 != h * hp.head_dim || !hp.head_dim.is_multiple_of(2) {
                    return Err(GgufError::BadShape {
                        tensor: t.name.clone(),
                        shape,
                        problem: "Q/K rows are not heads × head_dim with an even head_dim",
                    });
                }
            }
            by_hf.insert(name.clone(), out.len());
            out.push(HfTensor {
                name,
                shape,
                gguf_name: t.name.clone(),
                ty: t.ty,
                unpermute_heads: heads.map(|h| h as usize),
            });
        }
        Ok(GgufModel { file, arch, hp, tensors: out, by_hf, skipped })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// `general.architecture`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// GGUF tensors with no Hugging Face counterpart (e.g. `rope_freqs.weight`).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Every mapped tensor, in file order.
    pub fn tensors(&self) -> Vec<HfTensor> {
        self.tensors.clone()
    }

    /// The mapped tensor with HF name `hf_name`.
    pub fn tensor(&self, hf_name: &str) -> Option<&HfTensor> {
        self.by_hf.get(hf_name).map(|&i| &self.tensors[i])
    }

    fn need(&self, hf_name: &str) -> Result<&HfTensor> {
        self.tensor(hf_name).ok_or_else(|| GgufError::MissingTensor { name: hf_name.into() })
    }

    /// A whole tensor as f32 in Hugging Face layout: dequantized, Q/K rows un-permuted.
    pub fn tensor_f32(&self, hf_name: &str) -> Result<Vec<f32>> {
        let t = self.need(hf_name)?;
        let data = self.file.tensor_f32(&t.gguf_name)?.data;
        match t.unpermute_heads {
            Some(h) => unpermute_rows(&data, t.shape[1], h).map_err(|e| e.for_tensor(&t.gguf_name)),
            None => Ok(data),
        }
    }

    /// Rows `rows` (HF order, first dimension) of a tensor as f32, for streaming without holding
    /// the whole tensor; a 1-D tensor is one row.
    pub fn tensor_f32_rows(&self, hf_name: &str, rows: Range<usize>) -> Result<Vec<f32>> {
        let t = self.need(hf_name)?;
        let info =
            self.file.tensor_info(&t.gguf_name).ok_or_else(|| GgufError::MissingTensor { name: hf_name.into() })?;
        let (n_rows, row_len) = (info.n_rows() as usize, info.row_len() as usize);
        if rows.start > rows.end || rows.end > n_rows {
            return Err(GgufError::SizeMismatch {
                what: format!("tensor {hf_name}: rows {}..{}", rows.start, rows.end),
                expected: n_rows,
                got: rows.end,
            });
        }
        let mut out = vec![0f32; rows.len() * row_len];
        if row_len == 0 {
            return Ok(out);
        }
        for (r, dst) in rows.zip(out.chunks_exact_mut(row_len)) {
            let src = match t.unpermute_heads {
                Some(h) => gguf_row_of_hf_row(r, n_rows, h)?,
                None => r,
            };
            let raw = self.file.row_bytes(info, src..src + 1)?;
            super::dequant::dequantize(info.ty, raw, dst).map_err(|e| e.for_tensor(&t.gguf_name))?;
        }
        Ok(out)
    }

    /// A Hugging Face `config.json` for the model.
    pub fn config(&self) -> serde_json::Value {
        let hp = &self.hp;
        let m = self.file.metadata();
        let tok = |k: &str| m.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_u64);
        let (architecture, model_type) =
            if self.arch == "qwen2" { ("Qwen2ForCausalLM", "qwen2") } else { ("LlamaForCausalLM", "llama") };
        let has = |n: &str| self.by_hf.contains_key(n);
        json!({
            "architectures": [architecture],
            "model_type": model_type,
            "hidden_size": hp.hidden,
            "intermediate_size": hp.ffn,
            "num_hidden_layers": hp.layers,
            "num_attention_heads": hp.heads,
            "num_key_value_heads": hp.kv_heads,
            "head_dim": hp.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": hp.eps,
            "rope_theta": hp.rope_theta,
            "max_position_embeddings": hp.context,
            "vocab_size": hp.vocab,
            "tie_word_embeddings": !has("lm_head.weight"),
            "attention_bias": has("model.layers.0.self_attn.q_proj.bias"),
            "mlp_bias": false,
            "bos_token_id": tok("bos_token_id"),
            "eos_token_id": tok("eos_token_id"),
            "pad_token_id": tok("padding_token_id"),
            "torch_dtype": "float32",
        })
    }

    /// A Hugging Face `tokenizer.json` rebuilt from `tokenizer.ggml.*` (or the embedded
    /// `tokenizer.huggingface.json`); `None` when the file has no tokenizer.
    pub fn tokenizer_json(&self) -> Result<Option<String>> {
        tokenizer::tokenizer_json(self.file.metadata())
    }

    /// The parts of `tokenizer_config.json` a GGUF knows: special token strings, BOS/EOS
    /// insertion and the chat template.
    pub fn tokenizer_config(&self) -> serde_json::Value {
        tokenizer::tokenizer_config(self.file.metadata())
    }

    /// `tokenizer.chat_template`.
    pub fn chat_template(&self) -> Option<String> {
        self.file.metadata().get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string)
    }
}

/// Reads and checks the hyper-parameters under the `{arch}.` prefix.
fn hparams(m: &Metadata, arch: &str, q_rows: Option<usize>) -> Result<HParams> {
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = need_u64(m, &key("embedding_length"))?;
    let heads = need_u64(m, &key("attention.head_count"))?;
    let kv_heads = opt_u64(m, &key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(GgufError::WrongKeyType {
            key: key("attention.head_count_kv"),
            expected: "a non-zero divisor of attention.head_count",
        });
    }
    // Newer files state the head size; older ones imply it through the Q rows or hidden / heads.
    let head_dim = match opt_u64(m, &key("attention.key_length"))? {
        Some(d) => d,
        None => match q_rows {
            Some(r) if (r as u64).is_multiple_of(heads) => r as u64 / heads,
            _ if hidden % heads == 0 => hidden / heads,
            _ => return Err(GgufError::MissingKey { key: key("attention.key_length") }),
        },
    };
    let vocab = match opt_u64(m, &key("vocab_size"))? {
        Some(v) => v,
        None => m
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|a| a.len() as u64)
            .ok_or_else(|| GgufError::MissingKey { key: key("vocab_size") })?,
    };
    Ok(HParams {
        hidden,
        layers: need_u64(m, &key("block_count"))?,
        ffn: need_u64(m, &key("feed_forward_length"))?,
        heads,
        kv_heads,
        head_dim,
        // llama.cpp's own defaults when the keys are absent.
        eps: opt_f64(m, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: opt_f64(m, &key("rope.freq_base"))?.unwrap_or(10000.0),
        context: opt_u64(m, &key("context_length"))?,
        vocab,
    })
}
