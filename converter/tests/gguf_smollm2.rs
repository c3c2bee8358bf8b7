//! The GGUF source against a real file: SmolLM2-135M-Instruct, Q4_1 (scripts/fetch-smollm2.sh).
//!
//! Every test skips with a message when the model is not in `.cache/models` (or
//! `$LOWBIT_CACHE/models`), so a fresh checkout still passes; CI fetches it first.

use lowbit_convert::gguf::{self, GgmlType, GgufFile, GgufModel, Value};
use std::path::PathBuf;
use std::str::FromStr;
use tokenizers::Tokenizer;

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<PathBuf> {
    let cache = std::env::var_os("LOWBIT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache"));
    let path = cache.join("models").join(FILE);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: {} is absent (run scripts/fetch-smollm2.sh)", path.display());
        None
    }
}

fn open() -> Option<GgufModel> {
    Some(GgufModel::open(&model_path()?).expect("the SmolLM2 GGUF opens"))
}

#[test]
fn metadata_matches_the_published_model() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    let m = f.metadata();
    assert_eq!(f.header().version, 3);
    assert_eq!(f.header().alignment, 32);
    let u = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("{k}"));
    assert_eq!(m.get("general.architecture").and_then(Value::as_str), Some("llama"));
    assert_eq!(u("llama.block_count"), 30);
    assert_eq!(u("llama.embedding_length"), 576);
    assert_eq!(u("llama.attention.head_count"), 9);
    assert_eq!(u("llama.attention.head_count_kv"), 3);
    assert_eq!(u("llama.feed_forward_length"), 1536);
    assert_eq!(u("llama.vocab_size"), 49152);
    assert_eq!(u("llama.context_length"), 8192);
    assert_eq!(m.get("tokenizer.ggml.model").and_then(Value::as_str), Some("gpt2"));
    let tokens = m.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(m.get("tokenizer.ggml.merges").and_then(Value::as_array).unwrap().len(), 48900);
    let template = m.get("tokenizer.chat_template").and_then(Value::as_str).unwrap();
    assert!(template.contains("<|im_start|>") && template.contains("<|im_end|>"), "ChatML");

    // 1 embedding + 30 layers × 9 + output_norm; no output.weight (tied embeddings).
    assert_eq!(f.tensors().len(), 272);
    let count = |t: GgmlType| f.tensors().iter().filter(|i| i.ty == t).count();
    assert_eq!((count(GgmlType::Q8_0), count(GgmlType::Q4_1), count(GgmlType::F32)), (1, 210, 61));
    let embd = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!(embd.dims, vec![576, 49152]);
    assert_eq!(embd.hf_shape(), vec![49152, 576]);
    assert_eq!(embd.start, f.header().data_offset);
}

#[test]
fn config_is_the_hf_config() {
    let Some(model) = open() else { return };
    let c = model.config();
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert_eq!(c["head_dim"], 64);
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["max_position_embeddings"], 8192);
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(c["torch_dtype"], "float32");

    let t = model.tokenizer_config();
    assert_eq!(t["bos_token"], "<|im_start|>");
    assert_eq!(t["eos_token"], "<|im_end|>");
    assert_eq!(t["add_bos_token"], false);
    assert!(t["chat_template"].as_str().unwrap().contains("<|im_start|>"));
    assert_eq!(model.chat_template().as_deref(), t["chat_template"].as_str());

    let names: Vec<String> = model.tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 272);
    assert!(model.skipped().is_empty());
    assert!(names.contains(&"model.layers.29.mlp.down_proj.weight".to_string()));
    assert!(!names.contains(&"lm_head.weight".to_string()));
    let q = model.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!((q.shape.clone(), q.unpermute_heads), (vec![576, 576], Some(9)));
    let k = model.tensor("model.layers.0.self_attn.k_proj.weight").unwrap();
    assert_eq!((k.shape.clone(), k.unpermute_heads), (vec![192, 576], Some(3)));
    let down = model.tensor("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!((down.shape.clone(), down.unpermute_heads, down.ty), (vec![576, 1536], None, GgmlType::Q4_1));
}

/// Decodes Q4_1 block `b` written out the long way: element e of the block takes its nibble from
/// byte 4 + (e mod 16) — the low half for e < 16, the high half after — times d, plus m.
fn q4_1_by_hand(b: &[u8]) -> Vec<f32> {
    let d = half::f16::from_bits(u16::from(b[0]) | u16::from(b[1]) << 8).to_f32();
    let m = half::f16::from_bits(u16::from(b[2]) | u16::from(b[3]) << 8).to_f32();
    (0..32)
        .map(|e| {
            let byte = b[4 + e % 16];
            let nibble = if e < 16 { byte % 16 } else { byte / 16 };
            f32::from(nibble) * d + m
        })
        .collect()
}

#[test]
fn q4_1_blocks_decode_by_hand() {
    let Some(model) = open() else { return };
    let f = model.file();
    // v_proj is not permuted, so HF row r is GGUF row r.
    let info = f.tensor_info("blk.3.attn_v.weight").unwrap();
    assert_eq!(info.ty, GgmlType::Q4_1);
    let raw = f.tensor_bytes(info);
    let v = model.tensor_f32("model.layers.3.self_attn.v_proj.weight").unwrap();
    assert_eq!(v.len(), 192 * 576);
    // Row 0 block 0, and a block in the middle of row 100 (18 blocks of 20 bytes per row).
    for (row, block) in [(0usize, 0usize), (100, 7), (191, 17)] {
        let at = row * 18 * 20 + block * 20;
        let want = q4_1_by_hand(&raw[at..at + 20]);
        let got = &v[row * 576 + block * 32..][..32];
        assert_eq!(got, &want[..], "row {row} block {block}");
    }
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn q8_0_embedding_decodes_by_hand() {
    let Some(model) = open() else { return };
    let info = model.file().tensor_info("token_embd.weight").unwrap();
    let raw = model.file().tensor_bytes(info);
    let row = 19556; // "Hello"
    let got = model.tensor_f32_rows("model.embed_tokens.weight", row..row + 1).unwrap();
    assert_eq!(got.len(), 576);
    for block in 0..18 {
        let b = &raw[row * 18 * 34 + block * 34..][..34];
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        for e in 0..32 {
            assert_eq!(got[block * 32 + e], f32::from(b[2 + e] as i8) * d);
        }
    }
}

#[test]
fn q_and_k_come_out_unpermuted() {
    let Some(model) = open() else { return };
    for (hf, gg, heads) in [
        ("model.layers.5.self_attn.q_proj.weight", "blk.5.attn_q.weight", 9),
        ("model.layers.5.self_attn.k_proj.weight", "blk.5.attn_k.weight", 3),
    ] {
        let stored = model.file().tensor_f32(gg).unwrap();
        let hf_rows = model.tensor_f32(hf).unwrap();
        assert_eq!(hf_rows, gguf::unpermute_rows(&stored.data, 576, heads).unwrap());
        // Within head 1, HF row 64 + i sits at GGUF row 64 + 2i, HF row 64 + 32 + i at 64 + 2i + 1.
        for i in [0usize, 5, 31] {
            assert_eq!(hf_rows[(64 + i) * 576..][..576], stored.data[(64 + 2 * i) * 576..][..576]);
            assert_eq!(hf_rows[(96 + i) * 576..][..576], stored.data[(64 + 2 * i + 1) * 576..][..576]);
        }
        // Streaming rows agree with the whole tensor.
        let rows = model.tensor_f32_rows(hf, 60..70).unwrap();
        assert_eq!(rows, hf_rows[60 * 576..70 * 576]);
    }
}

fn tokenizer(model: &GgufModel) -> Tokenizer {
    let json = model.tokenizer_json().unwrap().expect("the file has a tokenizer");
    Tokenizer::from_str(&json).expect("tokenizer.json loads")
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

#[test]
fn tokenizer_ids_follow_the_vocabulary() {
    let Some(model) = open() else { return };
    let tok = tokenizer(&model);
    assert_eq!(tok.get_vocab_size(true), 49152);
    // Expected ids looked up in the GGUF's own token list: each word of this sentence is one
    // token (with Ġ marking a leading space), so BPE must land on exactly these.
    let tokens = model.file().metadata().get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    let tokens = tokens.as_strings().unwrap();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap_or_else(|| panic!("{t} in vocab")) as u32;
    let want: Vec<u32> = ["Hello", ",", "Ġworld", "!", "ĠHow", "Ġare", "Ġyou", "?"].iter().map(|t| id(t)).collect();
    assert_eq!(ids(&tok, "Hello, world! How are you?"), want);

    // ChatML: the control tokens are matched whole, "\n" is "Ċ".
    let chat = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>";
    let want: Vec<u32> =
        ["<|im_start|>", "user", "Ċ", "Hi", "<|im_end|>", "Ċ", "<|im_start|>"].iter().map(|t| id(t)).collect();
    assert_eq!((want[0], want[4]), (1, 2));
    assert_eq!(ids(&tok, chat), want);
    // No BOS is added even when special tokens are requested (add_bos_token is false).
    assert_eq!(tok.encode("hello", true).unwrap().get_ids(), &[id("hello")]);
}

#[test]
fn tokenizer_round_trips_text() {
    let Some(model) = open() else { return };
    let tok = tokenizer(&model);
    for s in [
        "héllo 日本語 🙂",
        "Hello, world! How are you?",
        "  leading and trailing  ",
        "tabs\tand\nnewlines\r\n",
        "numbers 1234567890 and $3.50",
        "emoji 👩‍👩‍👧 and combining é",
        "<|im_start|>system\nYou are nice.<|im_end|>\n",
        "",
    ] {
        let ids = ids(&tok, s);
        assert_eq!(tok.decode(&ids, false).unwrap(), s, "{s:?}");
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let Some(model) = open() else { return };
    let tok = tokenizer(&model);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/smollm2_tokenizer_ref.json");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let as_ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let strings = reference["strings"].as_array().unwrap();
    assert!(strings.len() >= 10);
    for case in strings {
        let text = case["text"].as_str().unwrap();
        assert_eq!(ids(&tok, text), as_ids(&case["ids"]), "{text:?}");
    }
    let chat = &reference["chat"];
    assert_eq!(ids(&tok, chat["text"].as_str().unwrap()), as_ids(&chat["ids"]));
}

#[test]
fn weights_match_transformers_bit_for_bit() {
    let Some(model) = open() else { return };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf/smollm2_tensor_ref.json");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tensors = reference["tensors"].as_object().unwrap();
    assert!(tensors.len() >= 8);
    let mut checked = 0;
    for (name, want) in tensors {
        let t = model.tensor(name).unwrap_or_else(|| panic!("{name} is mapped"));
        let shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{name}");
        let data = model.tensor_f32(name).unwrap();
        let row_len = shape.get(1).copied().unwrap_or(shape[0]);
        for (row, bits) in want["first_cols_f32_bits"].as_object().unwrap() {
            let row: usize = row.parse().unwrap();
            for (col, b) in bits.as_array().unwrap().iter().enumerate() {
                let got = data[row * row_len + col].to_bits();
                assert_eq!(u64::from(got), b.as_u64().unwrap(), "{name}[{row}, {col}]");
                checked += 1;
            }
        }
    }
    assert!(checked > 500);
}
