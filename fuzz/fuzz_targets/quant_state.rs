//! A bitsandbytes 4-bit checkpoint whose quant-state JSON is arbitrary bytes (the rest of the
//! layer well-formed): conversion must be an error or a valid file, never a panic, and leave no
//! file behind on error.
#![no_main]
use safetensors::{tensor::TensorView, Dtype};

const CONFIG: &str = r#"{"model_type":"mistral","hidden_size":64,"intermediate_size":64,"num_hidden_layers":1,
"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":16,"tie_word_embeddings":true,
"quantization_config":{"quant_method":"bitsandbytes","load_in_4bit":true,"bnb_4bit_quant_type":"nf4"}}"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("lowbit-fuzz-qs-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let f16 = |n: usize| vec![0x3cu8; n * 2]; // 1.0-ish halves
    let shapes: [(&str, Vec<usize>); 3] = [
        ("model.embed_tokens.weight", vec![16, 64]),
        ("model.norm.weight", vec![64]),
        ("model.layers.0.input_layernorm.weight", vec![64]),
    ];
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        shapes.iter().map(|(n, s)| (n.to_string(), Dtype::F16, s.clone(), f16(s.iter().product()))).collect();
    // q_proj quantized by "bitsandbytes": 64×64 codes, 64 absmax, the NF4 table and the fuzz JSON.
    let nf4: Vec<u8> = lowbit_kernels::FourBitKind::Nf4.levels().iter().flat_map(|v| v.to_le_bytes()).collect();
    let p = "model.layers.0.self_attn.q_proj.weight";
    owned.push((p.into(), Dtype::U8, vec![2048, 1], vec![0x77; 2048]));
    owned.push((format!("{p}.absmax"), Dtype::F32, vec![64], vec![0; 256]));
    owned.push((format!("{p}.quant_map"), Dtype::F32, vec![16], nf4));
    owned.push((format!("{p}.quant_state.bitsandbytes__nf4"), Dtype::U8, vec![data.len()], data.to_vec()));
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .filter_map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).ok().map(|v| (n.clone(), v)))
        .collect();
    if safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).is_err() {
        return;
    }
    let out = dir.join("out.lowbit");
    let _ = std::fs::remove_file(&out);
    if lowbit_convert::convert(&dir, &out, &lowbit_convert::ConvertOptions::default(), &|_| {}).is_err() {
        assert!(!out.exists(), "a failed conversion left an output file");
    }
});
