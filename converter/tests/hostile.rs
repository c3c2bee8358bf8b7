//! Bad inputs: each gives a clear, typed error naming the file or tensor, and leaves nothing
//! behind — no output file and no temporary file in the output folder.

mod common;

use common::*;
use lowbit_convert::{ConvertError, ConvertOptions, QuantChoice};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// Runs a conversion that must fail; checks the output folder stays empty.
fn fails_with(src: &Path, o: &ConvertOptions) -> ConvertError {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.lowbit");
    let err = run(src, &out, o).expect_err("conversion must fail");
    assert!(!out.exists(), "{err}: output left behind");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0, "{err}: temporary file left behind");
    assert!(!err.to_string().is_empty());
    err
}

fn fails(src: &Path) -> ConvertError {
    fails_with(src, &opts(QuantChoice::Nf4))
}

/// A valid f16 Mistral folder at `root/name`.
fn good(root: &Path, name: &str, shards: usize) -> PathBuf {
    let dir = root.join(name);
    write(&dir, &build(mistral(), 11), &Layout { shards, ..Default::default() });
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(p, cfg.to_string()).unwrap();
}

#[test]
fn missing_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 3);
    std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap();
    let e = fails(&d);
    assert!(matches!(&e, ConvertError::Missing(p) if p.ends_with("model-00002-of-00003.safetensors")), "{e}");
}

#[test]
fn index_listing_a_tensor_its_shard_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 2);
    let p = d.join("model.safetensors.index.json");
    let mut idx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    idx["weight_map"]["model.layers.9.extra.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&p, idx.to_string()).unwrap();
    let e = fails(&d);
    assert!(
        matches!(&e, ConvertError::BadSafetensors { problem, .. } if problem.contains("model.layers.9.extra.weight")),
        "{e}"
    );
    idx["weight_map"]["model.norm.weight"] = "../escape.safetensors".into();
    std::fs::write(&p, idx.to_string()).unwrap();
    assert!(matches!(fails(&d), ConvertError::BadJson { .. }));
    std::fs::write(&p, "{not json").unwrap();
    assert!(matches!(fails(&d), ConvertError::BadJson { .. }));
}

#[test]
fn truncated_and_padded_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    let f = d.join("model.safetensors");
    let full = std::fs::read(&f).unwrap();
    for len in [full.len() - 1, full.len() - 1000, 200, 9, 3, 0] {
        std::fs::write(&f, &full[..len]).unwrap();
        let e = fails(&d);
        assert!(matches!(&e, ConvertError::BadSafetensors { path, .. } if path == &f), "{len}: {e}");
    }
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 16]);
    std::fs::write(&f, &padded).unwrap();
    assert!(matches!(fails(&d), ConvertError::BadSafetensors { .. }));
}

/// A change to a file's bytes.
type Corruption = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn corrupt_header_json() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    let f = d.join("model.safetensors");
    let good_bytes = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(good_bytes[..8].try_into().unwrap()) as usize;
    let cases: Vec<Corruption> = vec![
        Box::new(|b| b[9] = b'!'),                                     // not JSON
        Box::new(|b| b[8] = b'['),                                     // not an object
        Box::new(move |b| b[8 + n / 2] = 0xff),                        // not UTF-8
        Box::new(|b| b[..8].copy_from_slice(&u64::MAX.to_le_bytes())), // absurd header length
        Box::new(|b| {
            let len = b.len() as u64;
            b[..8].copy_from_slice(&len.to_le_bytes())
        }),
    ];
    for (i, corrupt) in cases.iter().enumerate() {
        let mut b = good_bytes.clone();
        corrupt(&mut b);
        std::fs::write(&f, &b).unwrap();
        let e = fails(&d);
        assert!(matches!(&e, ConvertError::BadSafetensors { .. }), "case {i}: {e}");
    }
    // Offsets that overlap: shift one tensor's offsets inside the JSON text.
    let header = std::str::from_utf8(&good_bytes[8..8 + n]).unwrap();
    let moved = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[2,", 1);
    assert_ne!(moved, header);
    let mut b = good_bytes[..8].to_vec();
    b.extend_from_slice(moved.as_bytes());
    b.extend_from_slice(&good_bytes[8 + n..]);
    std::fs::write(&f, &b).unwrap();
    assert!(matches!(fails(&d), ConvertError::BadSafetensors { .. }));
}

#[test]
fn unsupported_dtypes() {
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, size) in [(Dtype::I64, 8), (Dtype::F8_E4M3, 1), (Dtype::F64, 8), (Dtype::U8, 1)] {
        let d = good(tmp.path(), &format!("{dtype:?}"), 1);
        edit_tensors(&d, |v| {
            let t = v.iter_mut().find(|t| t.0 == "model.layers.0.mlp.up_proj.weight").unwrap();
            t.1 = dtype;
            t.3 = vec![0; t.2.iter().product::<usize>() * size];
        });
        let e = fails(&d);
        assert!(
            matches!(&e, ConvertError::UnsupportedDtype { tensor, dtype: dt }
                if tensor == "model.layers.0.mlp.up_proj.weight" && *dt == format!("{dtype:?}")),
            "{e}"
        );
    }
}

#[test]
fn shapes_contradicting_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    for (key, value, tensor) in [
        ("intermediate_size", 200, "model.layers.0.mlp.down_proj.weight"),
        ("hidden_size", 48, "lm_head.weight"),
        ("num_key_value_heads", 4, "model.layers.0.self_attn.k_proj.weight"),
        ("head_dim", 8, "model.layers.0.self_attn.k_proj.weight"),
        ("vocab_size", 99, "lm_head.weight"),
    ] {
        let d2 = tmp.path().join(key);
        copy_dir(&d, &d2);
        edit_config(&d2, |c| c[key] = value.into());
        let e = fails(&d2);
        match &e {
            ConvertError::ShapeMismatch { tensor: t, .. } => assert_eq!(t, tensor, "{key}"),
            other => panic!("{key}: {other}"),
        }
        assert!(e.to_string().contains(tensor));
    }
    // Fewer layers in the config than in the checkpoint.
    let d2 = tmp.path().join("layers");
    copy_dir(&d, &d2);
    edit_config(&d2, |c| c["num_hidden_layers"] = 1.into());
    assert!(matches!(fails(&d2), ConvertError::Contradiction { tensor, .. } if tensor.starts_with("model.layers.1.")));
    // More layers in the config than in the checkpoint.
    let d2 = tmp.path().join("more-layers");
    copy_dir(&d, &d2);
    edit_config(&d2, |c| c["num_hidden_layers"] = 3.into());
    assert!(matches!(fails(&d2), ConvertError::MissingTensor(t) if t.starts_with("model.layers.2.")));
    // A bias Mistral does not have.
    let d2 = tmp.path().join("bias");
    copy_dir(&d, &d2);
    edit_tensors(&d2, |v| v.push(("model.layers.0.self_attn.q_proj.bias".into(), Dtype::F16, vec![64], vec![0; 128])));
    assert!(matches!(fails(&d2), ConvertError::Contradiction { .. }));
}

#[test]
fn missing_files_and_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    let d2 = tmp.path().join("no-config");
    copy_dir(&d, &d2);
    std::fs::remove_file(d2.join("config.json")).unwrap();
    assert!(matches!(fails(&d2), ConvertError::Missing(p) if p.ends_with("config.json")));
    let d2 = tmp.path().join("no-weights");
    copy_dir(&d, &d2);
    std::fs::remove_file(d2.join("model.safetensors")).unwrap();
    assert!(matches!(fails(&d2), ConvertError::Missing(_)));
    assert!(matches!(fails(&tmp.path().join("nowhere")), ConvertError::NoSource(_)));
    // The weights file instead of its folder.
    assert!(matches!(fails(&d.join("model.safetensors")), ConvertError::Config(_)));
    let d2 = tmp.path().join("no-lm-head");
    copy_dir(&d, &d2);
    edit_tensors(&d2, |v| v.retain(|t| t.0 != "lm_head.weight"));
    assert!(matches!(fails(&d2), ConvertError::MissingTensor(t) if t == "lm_head.weight"));
}

#[test]
fn bad_configs_and_options() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    for (i, edit) in [
        (|c: &mut serde_json::Value| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"])) as fn(&mut _),
        |c| c["num_attention_heads"] = "four".into(),
        |c| c["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4}),
        // Values taken on trust before: a billion layers, a non-positive or non-numeric RoPE
        // base, a negative or string epsilon, a huge vocabulary.
        |c| c["num_hidden_layers"] = 1_000_000_000u64.into(),
        |c| c["rope_theta"] = 0.0.into(),
        |c| c["rope_theta"] = (-1e4).into(),
        |c| c["rms_norm_eps"] = (-1e-6).into(),
        |c| c["rms_norm_eps"] = "tiny".into(),
        |c| c["vocab_size"] = (1u64 << 40).into(),
    ]
    .into_iter()
    .enumerate()
    {
        let d2 = tmp.path().join(format!("cfg{i}"));
        copy_dir(&d, &d2);
        edit_config(&d2, edit);
        assert!(matches!(fails(&d2), ConvertError::Config(_)), "case {i}");
    }
    let d2 = tmp.path().join("cfg-json");
    copy_dir(&d, &d2);
    std::fs::write(d2.join("config.json"), "{").unwrap();
    assert!(matches!(fails(&d2), ConvertError::BadJson { .. }));
    std::fs::write(d2.join("config.json"), "[1, 2]").unwrap();
    assert!(matches!(fails(&d2), ConvertError::BadJson { .. }));
    let d2 = tmp.path().join("gen-json");
    copy_dir(&d, &d2);
    std::fs::write(d2.join("generation_config.json"), "[]").unwrap();
    assert!(matches!(fails(&d2), ConvertError::BadJson { .. }));
    assert!(matches!(
        fails_with(&d, &ConvertOptions { blocksize: 100, ..Default::default() }),
        ConvertError::Config(_)
    ));
}

#[test]
fn non_finite_weights_are_refused_by_the_quantizer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    edit_tensors(&d, |v| {
        let t = v.iter_mut().find(|t| t.0 == "model.layers.1.mlp.gate_proj.weight").unwrap();
        t.3[100..102].copy_from_slice(&half::f16::NAN.to_le_bytes());
    });
    let e = fails(&d);
    assert!(
        matches!(&e, ConvertError::Kernel { tensor, .. } if tensor == "model.layers.1.mlp.gate_proj.weight"),
        "{e}"
    );
    // Tensors stored unquantized are checked too: a NaN in a norm kept in float16 beside nf4
    // layers, an infinity in a layer converted to f32 (both went through without a word).
    let d = good(tmp.path(), "norm", 1);
    edit_tensors(&d, |v| {
        let t = v.iter_mut().find(|t| t.0 == "model.layers.0.input_layernorm.weight").unwrap();
        t.3[6..8].copy_from_slice(&half::f16::NAN.to_le_bytes());
    });
    let e = fails(&d);
    assert!(
        matches!(&e, ConvertError::NonFinite { tensor, index: 3, .. } if tensor == "model.layers.0.input_layernorm.weight"),
        "{e}"
    );
    let d = good(tmp.path(), "inf", 1);
    edit_tensors(&d, |v| {
        let t = v.iter_mut().find(|t| t.0 == "model.layers.1.mlp.up_proj.weight").unwrap();
        t.3[0..2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    });
    for quant in [QuantChoice::F32, QuantChoice::F16] {
        let e = fails_with(&d, &ConvertOptions { quant, ..Default::default() });
        assert!(matches!(&e, ConvertError::NonFinite { index: 0, .. }), "{e}");
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}

#[test]
fn output_folder_missing_or_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    let out = tmp.path().join("nope/out.lowbit");
    let e = run(&d, &out, &opts(QuantChoice::Nf4)).unwrap_err();
    assert!(matches!(&e, ConvertError::OutputFolder(p) if p.ends_with("nope")), "{e}");
    assert!(!tmp.path().join("nope").exists());
    let e = run(&d, tmp.path(), &opts(QuantChoice::Nf4)).unwrap_err();
    assert!(matches!(e, ConvertError::Config(_)), "{e}");
    let e = run(&d, &d.join("model.safetensors"), &opts(QuantChoice::Nf4)).unwrap_err();
    assert!(matches!(e, ConvertError::Config(_)), "{e}");
    assert!(d.join("model.safetensors").metadata().unwrap().len() > 1000, "source untouched");
}

#[test]
fn failure_leaves_an_existing_output_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let d = good(tmp.path(), "m", 1);
    std::fs::remove_file(d.join("config.json")).unwrap();
    let out = tmp.path().join("out.lowbit");
    std::fs::write(&out, b"previous").unwrap();
    assert!(run(&d, &out, &opts(QuantChoice::Nf4)).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
}

/// Side files that are not regular files, or far larger than such a file can be, are refused
/// before they are read: `/dev/zero` behind config.json or tokenizer.json used to fill memory,
/// a FIFO to hang the conversion.
#[test]
fn side_files_are_regular_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, name) in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors.index.json",
    ]
    .into_iter()
    .enumerate()
    {
        let d = good(tmp.path(), &format!("zero{i}"), if name.contains("index") { 2 } else { 1 });
        let p = d.join(name);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        let e = fails(&d);
        // An index that is not a regular file is not taken for one: the folder then lacks its
        // single-file model.safetensors.
        let want = if name.contains("index") { "missing" } else { "not a regular file" };
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
    let d = good(tmp.path(), "fifo", 1);
    let p = d.join("chat_template.jinja");
    let status = std::process::Command::new("mkfifo").arg(&p).status().unwrap();
    assert!(status.success());
    let e = fails(&d);
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let d = good(tmp.path(), "huge", 1);
    // A sparse 200 MB tokenizer.json: over the cap without writing the bytes.
    std::fs::File::create(d.join("tokenizer.json")).unwrap().set_len(200 << 20).unwrap();
    let e = fails(&d);
    assert!(e.to_string().contains("more than the"), "{e}");
}
