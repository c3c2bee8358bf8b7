//! Synthetic checkpoints with the exact tensor names and shapes of real models and random
//! weights of a trained model's scale, for measuring speed and memory at 7B scale where the real
//! weights cannot be downloaded. Written as sharded bf16 safetensors with an index, config.json
//! and a byte-level tokenizer, streamed to disk: memory use is one chunk per thread.

use crate::error::{ConvertError, Result};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A model shape to imitate.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// Name on the command line.
    pub name: &'static str,
    /// The config.json it writes.
    pub config: Value,
}

/// The presets: Mistral-7B v0.1/v0.2/v0.3, Qwen2.5-14B, SmolLM2-135M and Qwen2.5-0.5B, with their
/// published configs.
pub fn presets() -> Vec<Preset> {
    let mistral = |vocab: u64, theta: f64, window: Value| {
        json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": vocab,
               "rope_theta": theta, "sliding_window": window, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
               "hidden_act": "silu", "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"})
    };
    vec![
        Preset { name: "mistral-7b-v0.1", config: mistral(32000, 10000.0, json!(4096)) },
        Preset { name: "mistral-7b-v0.2", config: mistral(32000, 1e6, Value::Null) },
        Preset { name: "mistral-7b-v0.3", config: mistral(32768, 1e6, Value::Null) },
        Preset {
            name: "qwen2.5-14b",
            config: json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 13824,
                "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064, "rope_theta": 1e6,
                "sliding_window": 131072, "use_sliding_window": false, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                "hidden_act": "silu", "tie_word_embeddings": false, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}),
        },
        Preset {
            name: "smollm2-135m",
            config: json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": true,
                "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}),
        },
        Preset {
            name: "qwen2.5-0.5b",
            config: json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "rope_theta": 1e6,
                "sliding_window": 32768, "use_sliding_window": false, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                "hidden_act": "silu", "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}),
        },
    ]
}

/// Tensor names and shapes of a config, in the order a checkpoint lists them (biases included
/// where the architecture has them, e.g. Qwen2's q/k/v).
pub fn tensor_shapes(cfg: &Value) -> Result<Vec<(String, Vec<usize>)>> {
    let mut c = cfg.clone();
    let mut warnings = Vec::new();
    let d = crate::config::normalise(&mut c, &mut warnings)?;
    d.required()
        .into_iter()
        .map(|name| match d.expect(&name)? {
            crate::config::Expect::Shape(shape) => Ok((name, shape)),
            _ => Err(ConvertError::Config(format!("{name}: required tensor without a shape"))),
        })
        .collect()
}

/// Deterministic pseudo-normal bf16 values: norms near 1, everything else N(0, 0.02²) like an
/// initialised-and-trained transformer's weights.
fn fill(name: &str, seed: u64, start: usize, out: &mut [u8]) {
    let norm = name.ends_with("norm.weight");
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01B3);
    }
    for (i, pair) in out.chunks_exact_mut(2).enumerate() {
        let mut s = h ^ ((start + i) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut acc = 0f32;
        for _ in 0..4 {
            s ^= s >> 33;
            s = s.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            s ^= s >> 29;
            acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        // Sum of four uniforms has variance 1/3.
        let v = if norm { 1.0 + 0.05 * acc } else { acc * 0.02 * 1.732 };
        pair.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
    }
}

/// A byte-level BPE tokenizer with no merges: every byte is a token, plus `<unk>`, `<s>`, `</s>`.
fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    // GPT-2's printable spelling of the 256 bytes.
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut extra = 0;
    let mut spelled = vec![0u32; 256];
    for b in 0..256u32 {
        if printable.contains(&b) {
            spelled[b as usize] = b;
        } else {
            spelled[b as usize] = 256 + extra;
            extra += 1;
        }
    }
    printable.clear();
    for (b, &c) in spelled.iter().enumerate() {
        vocab.insert(char::from_u32(c).expect("valid char").to_string(), json!(3 + b));
    }
    let special = |id: usize, s: &str| json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}})
    .to_string()
}

/// Writes `tensors` (bf16, values from [`fill`]) as one safetensors file at `path`, through a
/// temporary file renamed at the end, filled in chunks across threads. Returns the data bytes.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)], seed: u64) -> Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0u64;
    let mut spans = Vec::new();
    for (name, shape) in tensors {
        let len = shape.iter().product::<usize>() as u64 * 2;
        header.insert(name.clone(), json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + len]}));
        spans.push((name.clone(), off, len));
        off += len;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| ConvertError::Config(e.to_string()))?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let base = 8 + h.len() as u64;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(|e| ConvertError::io(&tmp, e))?;
    file.set_len(base + off).map_err(|e| ConvertError::io(&tmp, e))?;
    file.write_all_at(&(h.len() as u64).to_le_bytes(), 0).map_err(|e| ConvertError::io(&tmp, e))?;
    file.write_all_at(&h, 8).map_err(|e| ConvertError::io(&tmp, e))?;
    // Fill in 16 MiB chunks across threads.
    const CHUNK: u64 = 16 << 20;
    let jobs: Vec<(usize, u64, u64)> = spans
        .iter()
        .enumerate()
        .flat_map(|(i, (_, o, l))| (0..*l).step_by(CHUNK as usize).map(move |c| (i, o + c, CHUNK.min(l - c))))
        .collect();
    jobs.par_iter().try_for_each(|&(i, at, len)| {
        let (name, start, _) = &spans[i];
        let mut buf = vec![0u8; len as usize];
        fill(name, seed, ((at - start) / 2) as usize, &mut buf);
        file.write_all_at(&buf, base + at).map_err(|e| ConvertError::io(&tmp, e))
    })?;
    file.sync_all().map_err(|e| ConvertError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ConvertError::io(path, e))?;
    Ok(off)
}

/// Writes a synthetic PEFT LoRA adapter of rank `rank` (α = 2·rank) on all seven linear layers
/// of every layer of `cfg` into `dir` (created): `adapter_config.json` and one bf16
/// `adapter_model.safetensors`, named and shaped as PEFT saves them. Returns the data bytes.
pub fn synthesize_adapter(cfg: &Value, dir: &Path, rank: usize, seed: u64, layers: Option<usize>) -> Result<u64> {
    if rank == 0 || rank > 4096 {
        return Err(ConvertError::Config(format!("adapter rank {rank} must be in 1..=4096")));
    }
    let mut cfg = cfg.clone();
    if let Some(l) = layers {
        cfg["num_hidden_layers"] = json!(l);
    }
    const MODULES: [&str; 7] = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    let mut tensors = Vec::new();
    for (name, shape) in tensor_shapes(&cfg)? {
        let Some(module) = name.strip_prefix("model.layers.").and_then(|n| n.strip_suffix(".weight")) else { continue };
        if !MODULES.iter().any(|m| module.ends_with(m)) || shape.len() != 2 {
            continue;
        }
        let (out, inp) = (shape[0], shape[1]);
        let peft = format!("base_model.model.model.layers.{module}");
        tensors.push((format!("{peft}.lora_A.weight"), vec![rank, inp]));
        tensors.push((format!("{peft}.lora_B.weight"), vec![out, rank]));
    }
    std::fs::create_dir_all(dir).map_err(|e| ConvertError::io(dir, e))?;
    let bytes = write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, seed)?;
    let config = json!({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": "synthetic"});
    let p = dir.join("adapter_config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&config).map_err(|e| ConvertError::Config(e.to_string()))?)
        .map_err(|e| ConvertError::io(&p, e))?;
    Ok(bytes)
}

/// Writes a synthetic checkpoint for `cfg` into `dir` (created), in shards of about `shard_bytes`.
/// `layers` overrides the layer count for quicker runs. Returns the bytes of tensor data written.
pub fn synthesize(cfg: &Value, dir: &Path, seed: u64, layers: Option<usize>, shard_bytes: u64) -> Result<u64> {
    let mut cfg = cfg.clone();
    if let Some(l) = layers {
        cfg["num_hidden_layers"] = json!(l);
    }
    let shapes = tensor_shapes(&cfg)?;
    std::fs::create_dir_all(dir).map_err(|e| ConvertError::io(dir, e))?;
    // Group tensors into shards by size.
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0u64;
    for (name, shape) in shapes {
        let bytes = shape.iter().product::<usize>() as u64 * 2;
        if size > 0 && size + bytes > shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("non-empty").push((name, shape));
    }
    let k = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (si, shard) in shards.iter().enumerate() {
        let file_name = if k == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, k)
        };
        for (name, _) in shard {
            weight_map.insert(name.clone(), json!(file_name));
        }
        total += write_safetensors(&dir.join(&file_name), shard, seed)?;
    }
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).map_err(|e| ConvertError::io(&p, e))?;
        f.write_all(text.as_bytes()).map_err(|e| ConvertError::io(&p, e))
    };
    if k > 1 {
        write(
            "model.safetensors.index.json",
            json!({"metadata": {"total_size": total}, "weight_map": weight_map}).to_string(),
        )?;
    }
    write("config.json", serde_json::to_string_pretty(&cfg).map_err(|e| ConvertError::Config(e.to_string()))?)?;
    write("tokenizer.json", tokenizer_json())?;
    write(
        "tokenizer_config.json",
        json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}).to_string(),
    )?;
    Ok(total)
}
