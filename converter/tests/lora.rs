//! PEFT LoRA adapters merged at conversion, against PEFT's own `merge_and_unload` (reference
//! data from `scripts/make_lora_ref.py`, peft 0.21.2): plain LoRA, rsLoRA with rank and alpha
//! patterns over all seven linears, DoRA with a regex `target_modules`, and `layers_to_transform`
//! with `modules_to_save`; the user's scale; the record in the output; bad adapters.

use lowbit_convert::lora::LoraSpec;
use lowbit_convert::{convert, ConvertOptions, QuantChoice};
use lowbit_format::ModelFile;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn base() -> PathBuf {
    data("../runtime/tests/data/tiny/h96")
}

fn f32_with(out: &Path, lora: Vec<LoraSpec>) -> lowbit_convert::Result<ModelFile> {
    let opts = ConvertOptions { quant: QuantChoice::F32, lora, ..ConvertOptions::default() };
    convert(&base(), out, &opts, &|_| {})?;
    Ok(ModelFile::open(out).unwrap())
}

fn tensor(f: &ModelFile, name: &str) -> Vec<f32> {
    f.tensor(name).unwrap_or_else(|| panic!("{name}")).part_f32("data").unwrap().to_vec()
}

fn reference(variant: &str) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(data(&format!("tests/data/lora/{variant}/merged.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            (name, t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn merges_equal_peft_merge_and_unload() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = f32_with(&tmp.path().join("base.lowbit"), vec![]).unwrap();
    for variant in ["plain", "patterns", "dora", "save"] {
        let dir = data(&format!("tests/data/lora/{variant}"));
        let f =
            f32_with(&tmp.path().join(format!("{variant}.lowbit")), vec![LoraSpec { dir: dir.clone(), scale: 1.0 }])
                .unwrap();
        let want = reference(variant);
        assert!(!want.is_empty());
        for (name, w) in &want {
            let got = tensor(&f, name);
            assert_eq!(got.len(), w.len(), "{variant} {name}");
            for (i, (&g, &w)) in got.iter().zip(w).enumerate() {
                assert!((g - w).abs() <= 2e-6 + 2e-6 * w.abs(), "{variant} {name}[{i}]: {g} vs PEFT's {w}");
            }
        }
        // Everything PEFT did not change is the base's, bit for bit.
        for t in plain.tensors() {
            if !want.iter().any(|(n, _)| n == &t.name) {
                assert_eq!(tensor(&f, &t.name), tensor(&plain, &t.name), "{variant} {} changed", t.name);
            }
        }
        let rec = &f.metadata().adapters;
        let sha: String = Sha256::digest(std::fs::read(dir.join("adapter_model.safetensors")).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            (rec.len(), rec[0].name.as_str(), rec[0].sha256.as_str(), rec[0].scale),
            (1, variant, sha.as_str(), 1.0)
        );
    }
}

#[test]
fn scale_multiplies_the_update_and_adapters_stack_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let base = f32_with(&tmp.path().join("base.lowbit"), vec![]).unwrap();
    let dir = data("tests/data/lora/plain");
    let half =
        f32_with(&tmp.path().join("half.lowbit"), vec![format!("{}:0.5", dir.display()).parse().unwrap()]).unwrap();
    let two = f32_with(
        &tmp.path().join("two.lowbit"),
        vec![LoraSpec { dir: dir.clone(), scale: 0.5 }, LoraSpec { dir: dir.clone(), scale: 0.5 }],
    )
    .unwrap();
    for (name, full) in reference("plain") {
        let b = tensor(&base, &name);
        for (i, ((&h, &t), (&w, &b))) in
            tensor(&half, &name).iter().zip(&tensor(&two, &name)).zip(full.iter().zip(&b)).enumerate()
        {
            let want_half = b + 0.5 * (w - b);
            assert!((h - want_half).abs() <= 1e-5 * (1.0 + w.abs()), "{name}[{i}]: {h} vs {want_half}");
            assert!((t - w).abs() <= 1e-5 * (1.0 + w.abs()), "{name}[{i}] twice at 0.5: {t} vs {w}");
        }
    }
    assert_eq!(two.metadata().adapters.len(), 2);
}

#[test]
fn quantized_output_and_bad_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    // Merged before quantizing: an nf4 file of the merged model converts and differs from the base's.
    let opts = |lora| ConvertOptions { quant: QuantChoice::Nf4, lora, ..ConvertOptions::default() };
    convert(
        &base(),
        &tmp.path().join("nf4.lowbit"),
        &opts(vec![LoraSpec { dir: data("tests/data/lora/dora"), scale: 1.0 }]),
        &|_| {},
    )
    .unwrap();
    let fail = |dir: &Path| {
        let e = convert(
            &base(),
            &tmp.path().join("x.lowbit"),
            &opts(vec![LoraSpec { dir: dir.to_path_buf(), scale: 1.0 }]),
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(!tmp.path().join("x.lowbit").exists(), "no output for {e}");
        e
    };
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(data("tests/data/lora/plain").join(f), d.join(f)).unwrap();
        }
        d
    };
    let pickled = copy("pickled");
    std::fs::rename(pickled.join("adapter_model.safetensors"), pickled.join("adapter_model.bin")).unwrap();
    assert!(fail(&pickled).contains("save the adapter with safetensors"));
    assert!(fail(&tmp.path().join("nowhere")).contains("not a folder"));
    let wrong_r = copy("wrong_r");
    let cfg = std::fs::read_to_string(wrong_r.join("adapter_config.json")).unwrap().replace("\"r\": 4", "\"r\": 8");
    std::fs::write(wrong_r.join("adapter_config.json"), cfg).unwrap();
    assert!(fail(&wrong_r).contains("rank 4 in the weights, 8 in adapter_config.json"));
    let biased = copy("bias");
    let cfg = std::fs::read_to_string(biased.join("adapter_config.json"))
        .unwrap()
        .replace("\"lora_bias\": false", "\"lora_bias\": true");
    std::fs::write(biased.join("adapter_config.json"), cfg).unwrap();
    assert!(fail(&biased).contains("lora_bias is set"));
    // A NaN in the adapter's weights: refused when merging, and when the folder is converted on
    // its own (which checks values as it copies them), each with no output.
    let nan = copy("nan");
    let st = nan.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let (name, dtype) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, t)| t["data_offsets"][0] == 0)
        .map(|(n, t)| (n.clone(), t["dtype"].as_str().unwrap().to_string()))
        .unwrap();
    let at = 8 + header_len;
    match dtype.as_str() {
        "F32" => bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
        _ => bytes[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes()), // NaN in bf16 and f16
    }
    std::fs::write(&st, bytes).unwrap();
    let e = fail(&nan);
    assert!(e.contains(&name) && e.contains("element 0 is NaN"), "{e}");
    let out = tmp.path().join("nan.adapter.lowbit");
    let e = convert(&nan, &out, &ConvertOptions::default(), &|_| {}).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("element 0 is NaN") && !out.exists(), "{e}");
    // An adapter for another model: its tensors do not fit.
    let e = convert(
        &data("../runtime/tests/data/tiny/gqa1"),
        &tmp.path().join("y.lowbit"),
        &opts(vec![LoraSpec { dir: data("tests/data/lora/patterns"), scale: 1.0 }]),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("do not fit") || e.contains("does not have"), "{e}");
}

/// Writes a PEFT LoRA adapter (r = 4, α = 8) for the bitsandbytes fixtures' model (hidden 128,
/// 4 heads × 32, 2 kv heads, intermediate 192, 2 layers) on q_proj, v_proj and down_proj, with
/// seeded random A and B; returns its folder and each target's (name, A, B, rows, cols).
type Target = (String, Vec<f32>, Vec<f32>, usize, usize);
fn qlora_adapter(dir: &Path) -> Vec<Target> {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    let r = 4;
    let mut targets = Vec::new();
    for l in 0..2 {
        for (module, rows, cols) in
            [("self_attn.q_proj", 128, 128), ("self_attn.v_proj", 64, 128), ("mlp.down_proj", 128, 192)]
        {
            let a: Vec<f32> = (0..r * cols).map(|_| next()).collect();
            let b: Vec<f32> = (0..rows * r).map(|_| next()).collect();
            targets.push((format!("model.layers.{l}.{module}"), a, b, rows, cols));
        }
    }
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = targets
        .iter()
        .flat_map(|(m, a, b, rows, cols)| {
            [
                (format!("base_model.model.{m}.lora_A.weight"), vec![r, *cols], bytes(a)),
                (format!("base_model.model.{m}.lora_B.weight"), vec![*rows, r], bytes(b)),
            ]
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    let cfg = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "use_rslora": false, "use_dora": false, "lora_bias": false, "bias": "none", "fan_in_fan_out": false}"#;
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    targets
}

/// A QLoRA fine-tune: the adapter merged into a bitsandbytes NF4 (double-quant) or LLM.int8
/// base, as PEFT's `merge_and_unload` does for `Linear4bit` / `Linear8bitLt`. The merged weight
/// is the base dequantized as bitsandbytes does plus (α/r)·B·A — checked against that sum
/// computed here from the base's dequantized conversion — and is quantized again into the
/// base's own scheme (bitsandbytes' quantizer byte for byte with `--bnb-exact`); every tensor the
/// adapter leaves alone stays the pre-quantized one, byte for byte.
#[test]
fn merges_into_a_bitsandbytes_base() {
    use lowbit_format::Scheme;
    use lowbit_kernels::{quantize_4bit, quantize_int8, Absmax, FourBitKind, FourBitOptions, NestedRule};
    let tmp = tempfile::tempdir().unwrap();
    let targets = qlora_adapter(&tmp.path().join("qlora"));
    let spec = vec![LoraSpec { dir: tmp.path().join("qlora"), scale: 1.0 }];
    for variant in ["nf4_dq", "int8"] {
        let src = data(&format!("tests/data/bnb/{variant}"));
        if !src.join("model.safetensors").is_file() {
            eprintln!("skipping: {} is absent", src.display());
            return;
        }
        let conv = |name: &str, quant: QuantChoice, lora: Vec<LoraSpec>| {
            let out = tmp.path().join(format!("{variant}-{name}.lowbit"));
            let o =
                ConvertOptions { quant, lora, bnb_exact: true, nested_rule: NestedRule::CpuLut, ..Default::default() };
            convert(&src, &out, &o, &|_| {}).unwrap();
            ModelFile::open(&out).unwrap()
        };
        let deq = conv("deq", QuantChoice::F32, vec![]);
        let merged = conv("merged", QuantChoice::F32, spec.clone());
        let kept = conv("kept", QuantChoice::Nf4, vec![]);
        let requant = conv("requant", QuantChoice::Nf4, spec.clone());
        assert_eq!(requant.metadata().adapters.len(), 1);
        let mut expected = std::collections::HashMap::new();
        for (m, a, b, rows, cols) in &targets {
            let name = format!("{m}.weight");
            let w = tensor(&deq, &name);
            let got = tensor(&merged, &name);
            let mut want = w.clone();
            for r in 0..*rows {
                for c in 0..*cols {
                    let d: f32 = (0..4).map(|k| b[r * 4 + k] * a[k * cols + c]).sum();
                    want[r * cols + c] += 2.0 * d;
                }
            }
            for (i, (g, x)) in got.iter().zip(&want).enumerate() {
                assert!((g - x).abs() <= 1e-5 * (1.0 + x.abs()), "{variant} {name}[{i}]: {g} vs {x}");
            }
            assert!(got != w, "{variant} {name}: the adapter changed it");
            expected.insert(name, (got, *rows, *cols));
        }
        let mut requantized = 0;
        for t in kept.tensors() {
            let new = requant.tensor(&t.name).unwrap();
            let Some((w, rows, cols)) = expected.get(&t.name) else {
                let old = kept.tensor(&t.name).unwrap();
                for p in old.parts() {
                    assert!(new.part(p.name).unwrap() == old.part(p.name).unwrap(), "{variant} {}", t.name);
                }
                continue;
            };
            assert_eq!(new.info.scheme, t.scheme, "{variant} {}: the base's scheme", t.name);
            requantized += 1;
            match &t.scheme {
                Scheme::FourBit { .. } => {
                    let q = quantize_4bit(
                        w,
                        &FourBitOptions {
                            kind: FourBitKind::Nf4,
                            blocksize: 64,
                            double_quant: true,
                            nested_rule: NestedRule::CpuLut,
                            scale_search: false,
                        },
                    )
                    .unwrap();
                    assert!(new.part("codes").unwrap() == q.codes, "{variant} {}", t.name);
                    let Absmax::Nested { codes, .. } = q.absmax else { panic!("nested") };
                    assert!(new.part("absmax").unwrap() == codes, "{variant} {}", t.name);
                }
                Scheme::Int8 => {
                    let q = quantize_int8(w, *rows, *cols).unwrap();
                    assert!(new.part("cb").unwrap() == q.cb.iter().map(|&c| c as u8).collect::<Vec<_>>(), "{}", t.name);
                }
                other => panic!("{variant} {}: {other:?}", t.name),
            }
        }
        assert_eq!(requantized, targets.len(), "{variant}");
    }
}
