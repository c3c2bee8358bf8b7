//! GGUF input through the whole pipeline: a tiny Llama GGUF built in the test (F32 norms, F16
//! embeddings and Q/K, Q8_0 for the other linear layers, Q/K rows in llama.cpp's permuted order)
//! converts to the Hugging Face tensors it came from; and the real SmolLM2 GGUF, when fetched.

mod common;

use common::*;
use lowbit_convert::gguf::{permute_rows, GgmlType, GgufModel, GgufWriter, Value};
use lowbit_convert::{ConvertError, QuantChoice};
use lowbit_format::{ModelFile, Scheme};
use lowbit_kernels::{quantize_4bit, Absmax, FourBitOptions};
use std::path::{Path, PathBuf};

/// Q8_0 blocks of `x` and the values they decode to.
fn q8_0(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut values) = (Vec::new(), Vec::new());
    for block in x.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0);
        bytes.extend_from_slice(&d.to_le_bytes());
        for &v in block {
            let q = if d.to_f32() == 0.0 { 0 } else { (v / d.to_f32()).round().clamp(-127.0, 127.0) as i8 };
            bytes.push(q as u8);
            values.push(d.to_f32() * q as f32);
        }
    }
    (bytes, values)
}

/// Writes a GGUF of `tiny` (a Llama with hidden 64); returns the HF tensors' expected values.
fn write_gguf(path: &Path, tiny: &Tiny, with_tokenizer: bool) -> Vec<(String, Vec<usize>, Vec<f32>, Scheme)> {
    let c = &tiny.config;
    let u = |k: &str| Value::U32(c[k].as_u64().unwrap() as u32);
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("llama.embedding_length", u("hidden_size"))
        .kv("llama.block_count", u("num_hidden_layers"))
        .kv("llama.feed_forward_length", u("intermediate_size"))
        .kv("llama.attention.head_count", u("num_attention_heads"))
        .kv("llama.attention.head_count_kv", u("num_key_value_heads"))
        .kv("llama.vocab_size", u("vocab_size"))
        .kv("llama.rope.freq_base", Value::F32(1e6))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.context_length", Value::U32(256));
    if with_tokenizer {
        w.kv("tokenizer.huggingface.json", Value::String(TOKENIZER.into()));
    }
    let heads = c["num_attention_heads"].as_u64().unwrap() as usize;
    let kv = c["num_key_value_heads"].as_u64().unwrap() as usize;
    let mut expected = Vec::new();
    for (name, shape, x) in &tiny.tensors {
        let gguf_name = match name.as_str() {
            "model.embed_tokens.weight" => "token_embd.weight".to_string(),
            "model.norm.weight" => "output_norm.weight".to_string(),
            "lm_head.weight" => "output.weight".to_string(),
            n => {
                let rest = n.strip_prefix("model.layers.").unwrap();
                let (l, what) = rest.split_once('.').unwrap();
                let g = match what {
                    "input_layernorm.weight" => "attn_norm.weight",
                    "post_attention_layernorm.weight" => "ffn_norm.weight",
                    "self_attn.q_proj.weight" => "attn_q.weight",
                    "self_attn.k_proj.weight" => "attn_k.weight",
                    "self_attn.v_proj.weight" => "attn_v.weight",
                    "self_attn.o_proj.weight" => "attn_output.weight",
                    "mlp.gate_proj.weight" => "ffn_gate.weight",
                    "mlp.up_proj.weight" => "ffn_up.weight",
                    "mlp.down_proj.weight" => "ffn_down.weight",
                    other => panic!("{other}"),
                };
                format!("blk.{l}.{g}")
            }
        };
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let permute = if name.ends_with("q_proj.weight") {
            Some(heads)
        } else if name.ends_with("k_proj.weight") {
            Some(kv)
        } else {
            None
        };
        if shape.len() == 1 {
            w.tensor(&gguf_name, &dims, GgmlType::F32, encode(x, safetensors::Dtype::F32));
            expected.push((name.clone(), shape.clone(), x.clone(), Scheme::F32));
        } else if let Some(h) = permute {
            let v = round_trip(x, safetensors::Dtype::F16);
            let stored = permute_rows(&v, shape[1], h).unwrap();
            w.tensor(&gguf_name, &dims, GgmlType::F16, encode(&stored, safetensors::Dtype::F16));
            expected.push((name.clone(), shape.clone(), v, Scheme::F16));
        } else if name.contains("embed") {
            let v = round_trip(x, safetensors::Dtype::F16);
            w.tensor(&gguf_name, &dims, GgmlType::F16, encode(&v, safetensors::Dtype::F16));
            expected.push((name.clone(), shape.clone(), v, Scheme::F16));
        } else {
            let (bytes, v) = q8_0(x);
            w.tensor(&gguf_name, &dims, GgmlType::Q8_0, bytes);
            expected.push((name.clone(), shape.clone(), v, Scheme::F16));
        }
    }
    std::fs::write(path, w.to_bytes()).unwrap();
    expected
}

fn tiny_llama() -> Tiny {
    let mut cfg = mistral();
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    cfg["model_type"] = "llama".into();
    cfg["intermediate_size"] = 96.into();
    build(cfg, 21)
}

#[test]
fn gguf_converts_to_the_hugging_face_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tiny_llama();
    let gguf = tmp.path().join("tiny.gguf");
    let expected = write_gguf(&gguf, &tiny, true);

    let out = tmp.path().join("f32.lowbit");
    let s = run(&gguf, &out, &opts(QuantChoice::F32)).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let f = ModelFile::open(&out).unwrap();
    assert_eq!(f.tensors().len(), expected.len());
    for (name, shape, v, _) in &expected {
        let t = f.tensor(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(t.info.shape, shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
        assert_eq!(f32s(t.part("data").unwrap()), *v, "{name}: values (Q/K unpermuted)");
    }
    let m = f.metadata();
    assert_eq!((m.architecture.as_str(), m.quantization.source_format.as_str()), ("llama", "gguf"));
    assert_eq!(m.config["rope_theta"], 1e6);
    assert_eq!(m.config["hidden_size"], 64);
    assert_eq!(m.tokenizer_json.as_deref(), Some(TOKENIZER));
    assert_eq!(m.sources.len(), 1);
    assert_eq!(m.sources[0].bytes, std::fs::metadata(&gguf).unwrap().len());

    // NF4 on every linear weight: high-precision tensors keep F32/F16 sources exactly,
    // dequantized blocks go to f16; the linear layers are our NF4 of the dequantized values, the
    // head LLM.int8 rows.
    let out = tmp.path().join("nf4.lowbit");
    run(&gguf, &out, &opts(QuantChoice::Nf4Small)).unwrap();
    let f = ModelFile::open(&out).unwrap();
    for (name, shape, v, kept) in &expected {
        let t = f.tensor(name).unwrap();
        if name.ends_with("proj.weight") {
            let q = quantize_4bit(v, &FourBitOptions { scale_search: true, ..Default::default() }).unwrap();
            assert!(t.part("codes").unwrap() == q.codes, "{name}");
            let Absmax::Nested { codes, .. } = q.absmax else { panic!() };
            assert!(t.part("absmax").unwrap() == codes, "{name}");
        } else if name == "lm_head.weight" {
            // The 8-bit head is block int8 where rows are whole blocks of 32, LLM.int8 otherwise.
            if shape[1] % 32 == 0 {
                let q = lowbit_kernels::q8::quantize(v, shape[0], shape[1], 32).unwrap();
                assert_eq!(t.info.scheme, Scheme::Q8 { blocksize: 32 }, "{name}");
                assert!(t.part("qs").unwrap() == q.qs.iter().map(|&c| c as u8).collect::<Vec<_>>(), "{name}");
            } else {
                let q = lowbit_kernels::quantize_int8(v, shape[0], shape[1]).unwrap();
                assert_eq!(t.info.scheme, Scheme::Int8, "{name}");
                assert!(t.part("cb").unwrap() == q.cb.iter().map(|&c| c as u8).collect::<Vec<_>>(), "{name}");
            }
        } else {
            assert_eq!(&t.info.scheme, kept, "{name}");
        }
    }
}

#[test]
fn gguf_without_tokenizer_warns_and_bad_gguf_is_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny.gguf");
    write_gguf(&gguf, &tiny_llama(), false);
    let s = run(&gguf, &tmp.path().join("a.lowbit"), &opts(QuantChoice::Int8)).unwrap();
    assert!(s.warnings.iter().any(|w| w.contains("tokenizer")), "{:?}", s.warnings);

    // Recognised by its magic bytes whatever the extension.
    let renamed = tmp.path().join("tiny.bin");
    std::fs::copy(&gguf, &renamed).unwrap();
    run(&renamed, &tmp.path().join("b.lowbit"), &opts(QuantChoice::Int8)).unwrap();

    let bytes = std::fs::read(&gguf).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let out = tmp.path().join("cut.lowbit");
    let e = run(&cut, &out, &opts(QuantChoice::Nf4)).unwrap_err();
    assert!(matches!(&e, ConvertError::Gguf { path, .. } if path == &cut), "{e}");
    assert!(!out.exists());
}

fn smollm2() -> Option<PathBuf> {
    let cache = std::env::var_os("LOWBIT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache"));
    let p = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent (run scripts/fetch-smollm2.sh)", p.display());
        None
    }
}

#[test]
fn smollm2_gguf_to_nf4() {
    let Some(gguf) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2.lowbit");
    let s = run(&gguf, &out, &opts(QuantChoice::Nf4)).unwrap();
    let f = ModelFile::open(&out).unwrap();
    assert_eq!(f.tensors().len(), 2 + 30 * 9, "embeddings, final norm, 30 layers (tied: no lm_head)");
    // The linear layers, and the tied embedding as the 8-bit (block int8) head.
    assert_eq!(s.quantized_params, 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 1536 * 576) + 49152 * 576);
    assert_eq!(f.tensor("model.embed_tokens.weight").unwrap().info.scheme, Scheme::Q8 { blocksize: 32 });
    assert!(f.metadata().tokenizer_json.is_some() && f.metadata().chat_template.is_some());
    let model = GgufModel::open(&gguf).unwrap();
    let name = "model.layers.7.self_attn.q_proj.weight";
    let q =
        quantize_4bit(&model.tensor_f32(name).unwrap(), &FourBitOptions { scale_search: true, ..Default::default() })
            .unwrap();
    assert!(f.tensor(name).unwrap().part("codes").unwrap() == q.codes);
    // The recipe's 8-bit weights: v_proj and the last layer's MLP; its 5-bit ones: k_proj and
    // the MLPs of the first layer and of the one before the last.
    for name in ["model.layers.0.self_attn.v_proj.weight", "model.layers.29.mlp.up_proj.weight"] {
        assert_eq!(f.tensor(name).unwrap().info.scheme, Scheme::Q8 { blocksize: 32 }, "{name}");
    }
    for name in [
        "model.layers.7.self_attn.k_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.28.mlp.down_proj.weight",
    ] {
        assert_eq!(f.tensor(name).unwrap().info.scheme, Scheme::Q5 { blocksize: 32 }, "{name}");
    }
    assert!(matches!(f.tensor("model.layers.27.mlp.up_proj.weight").unwrap().info.scheme, Scheme::FourBit { .. }));
    eprintln!(
        "SmolLM2 nf4: {:.3} bits/weight overall, {} tensors, {:.1} s",
        s.bits_per_weight(),
        s.tensors,
        s.elapsed.as_secs_f64()
    );
}
