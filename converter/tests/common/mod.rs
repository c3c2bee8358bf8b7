//! Tiny checkpoints built in the tests: a Mistral/Llama/Qwen2-shaped config with small (and
//! deliberately awkward) dimensions, deterministic pseudo-random weights, written with the
//! `safetensors` crate's serializer in f32/f16/bf16, single-file or sharded with an index.

#![allow(dead_code)]

use lowbit_convert::{convert, ConvertError, ConvertOptions, ConvertSummary, QuantChoice};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// splitmix64: a tiny deterministic generator (no `rand` dependency needed).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly normal (Irwin–Hall of 4), scaled; one value in 300 is an outlier ×8.
    pub fn weight(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0;
        let v = s * scale * 1.7;
        if self.next_u64().is_multiple_of(300) {
            v * 8.0
        } else {
            v
        }
    }
}

/// A model: its config.json and tensors (name, shape, f32 values).
#[derive(Clone)]
pub struct Tiny {
    pub config: Value,
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Mistral-shaped: hidden 64, 4 heads × 16, 2 kv heads, intermediate 320 (gate/up/down have 320
/// blocks of 64: two nested blocks of 256, the second short), vocab 100, 2 layers, untied.
pub fn mistral() -> Value {
    json!({
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 64,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 320,
        "num_hidden_layers": 2, "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "sliding_window": null, "tie_word_embeddings": false, "max_position_embeddings": 256,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2
    })
}

/// Awkward sizes: hidden 45, 5 heads × 9, 1 kv head, intermediate 51 — gate/up/down have an odd
/// number of elements (2295) and a short last block; Llama, tied embeddings, transformers-5
/// `rope_parameters` instead of `rope_theta`.
pub fn odd_llama() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 45,
        "num_attention_heads": 5, "num_key_value_heads": 1, "intermediate_size": 51,
        "num_hidden_layers": 1, "vocab_size": 37, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "tie_word_embeddings": true
    })
}

/// Qwen2-shaped (q/k/v biases).
pub fn qwen2() -> Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "num_hidden_layers": 2, "vocab_size": 80, "rope_theta": 1e6, "tie_word_embeddings": true
    })
}

fn get(cfg: &Value, k: &str) -> usize {
    cfg[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize
}

/// Every tensor the config implies, with random values.
pub fn build(config: Value, seed: u64) -> Tiny {
    let (h, heads, layers, i, v) = (
        get(&config, "hidden_size"),
        get(&config, "num_attention_heads"),
        get(&config, "num_hidden_layers"),
        get(&config, "intermediate_size"),
        get(&config, "vocab_size"),
    );
    let kv = config["num_key_value_heads"].as_u64().map_or(heads, |k| k as usize);
    let hd = config["head_dim"].as_u64().map_or(h / heads, |d| d as usize);
    let (q, k) = (heads * hd, kv * hd);
    let qwen = config["model_type"] == "qwen2";
    let tied = config["tie_word_embeddings"].as_bool().unwrap_or(false);
    let mut rng = Rng::new(seed);
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, norm: bool| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| if norm { 0.6 + 0.8 * rng.uniform() } else { rng.weight(scale) }).collect();
        tensors.push((name, shape, data));
    };
    add("model.embed_tokens.weight".into(), vec![v, h], 0.5, false);
    add("model.norm.weight".into(), vec![h], 0.0, true);
    if !tied {
        add("lm_head.weight".into(), vec![v, h], 0.12, false);
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}.");
        add(format!("{p}input_layernorm.weight"), vec![h], 0.0, true);
        add(format!("{p}post_attention_layernorm.weight"), vec![h], 0.0, true);
        add(format!("{p}self_attn.q_proj.weight"), vec![q, h], 0.12, false);
        add(format!("{p}self_attn.k_proj.weight"), vec![k, h], 0.12, false);
        add(format!("{p}self_attn.v_proj.weight"), vec![k, h], 0.12, false);
        add(format!("{p}self_attn.o_proj.weight"), vec![h, q], 0.12, false);
        add(format!("{p}mlp.gate_proj.weight"), vec![i, h], 0.12, false);
        add(format!("{p}mlp.up_proj.weight"), vec![i, h], 0.12, false);
        add(format!("{p}mlp.down_proj.weight"), vec![h, i], 0.12, false);
        if qwen {
            add(format!("{p}self_attn.q_proj.bias"), vec![q], 0.05, false);
            add(format!("{p}self_attn.k_proj.bias"), vec![k], 0.05, false);
            add(format!("{p}self_attn.v_proj.bias"), vec![k], 0.05, false);
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Tiny { config, tensors }
}

/// Little-endian bytes of `x` in `dtype` (f32/f16/bf16).
pub fn encode(x: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => x.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        Dtype::BF16 => x.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        other => panic!("encode {other:?}"),
    }
}

/// What the converter reads back from `dtype` bytes of `x`.
pub fn round_trip(x: &[f32], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => x.to_vec(),
        Dtype::F16 => x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        Dtype::BF16 => x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
        other => panic!("round_trip {other:?}"),
    }
}

/// A tokenizer.json the `tokenizers` crate loads.
pub const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
"model":{"type":"WordLevel","vocab":{"<unk>":0,"hello":1,"world":2},"unk_token":"<unk>"}}"#;

pub const TEMPLATE: &str = "{% for m in messages %}{{ m['content'] }}{% endfor %}";

/// Serializes `tensors` (already encoded) to `path`.
pub fn write_safetensors(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Options for writing a checkpoint folder.
pub struct Layout {
    pub dtype: Dtype,
    /// 1 = `model.safetensors`; more = shards plus `model.safetensors.index.json`.
    pub shards: usize,
    pub tokenizer: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { dtype: Dtype::F16, shards: 1, tokenizer: true }
    }
}

/// Writes `tiny` as a Hugging Face folder at `dir`.
pub fn write(dir: &Path, tiny: &Tiny, layout: &Layout) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&tiny.config).unwrap()).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"bos_token_id": 1, "eos_token_id": 2}"#).unwrap();
    if layout.tokenizer {
        std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
        let tc = json!({"bos_token": "<unk>", "chat_template": TEMPLATE});
        std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    }
    let enc: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        tiny.tensors.iter().map(|(n, s, x)| (n.clone(), layout.dtype, s.clone(), encode(x, layout.dtype))).collect();
    if layout.shards <= 1 {
        write_safetensors(&dir.join("model.safetensors"), &enc);
        return;
    }
    let per = enc.len().div_ceil(layout.shards);
    let mut map = serde_json::Map::new();
    for (i, part) in enc.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, layout.shards);
        write_safetensors(&dir.join(&file), part);
        for t in part {
            map.insert(t.0.clone(), file.clone().into());
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

pub fn run(src: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertSummary, ConvertError> {
    convert(src, out, opts, &|_| {})
}

pub fn opts(quant: QuantChoice) -> ConvertOptions {
    ConvertOptions { quant, ..Default::default() }
}

/// The tests' data folder.
pub fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

pub fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Copies the files of `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A tensor as (name, dtype, shape, bytes).
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrites `dir/model.safetensors` with `f` applied to its tensor list.
pub fn edit_tensors(dir: &Path, f: impl FnOnce(&mut Vec<RawTensor>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<RawTensor> =
        st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    f(&mut v);
    write_safetensors(&p, &v);
}
