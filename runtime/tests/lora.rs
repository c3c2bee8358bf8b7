//! LoRA adapters at run time (`y = W x + s·B(A x)` beside the weights) against the same adapter
//! merged at conversion (which `converter/tests/lora.rs` checks against PEFT's
//! `merge_and_unload`): the same logits up to f32 rounding, prompt and decode, for plain LoRA and
//! for rsLoRA with rank and alpha patterns over all seven linears; a batch of sequences gets
//! each one's logits bit for bit; DoRA and modules_to_save are refused (they change the weights).

mod common;

use lowbit_convert::lora::{load_for_run_time, LoraSpec};
use lowbit_convert::{convert, ConvertOptions, QuantChoice};
use lowbit_format::ModelFile;
use lowbit_runtime::lora::{LoraAdapter, LoraDelta};
use lowbit_runtime::{Logits, Model};
use std::path::{Path, PathBuf};

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The h96 tiny model's folder and its f32 conversion in `dir`, opened.
fn h96_f32(dir: &Path) -> (PathBuf, ModelFile) {
    let src = data("tests/data/tiny/h96");
    let file = ModelFile::open(&common::convert_to(&src, QuantChoice::F32, dir)).unwrap();
    (src, file)
}

fn adapter(file: &ModelFile, dir: &Path) -> lowbit_convert::Result<LoraAdapter> {
    let shape_of = |name: &str| file.tensor(name).map(|t| t.info.shape.iter().map(|&d| d as usize).collect());
    load_for_run_time(&LoraSpec { dir: dir.to_path_buf(), scale: 1.0 }, &shape_of).map(to_runtime)
}

/// A loaded adapter as the runtime takes it.
fn to_runtime(
    (record, deltas): (lowbit_format::AdapterRecord, Vec<lowbit_convert::lora::RunTimeDelta>),
) -> LoraAdapter {
    let deltas =
        deltas.into_iter().map(|d| LoraDelta { target: d.target, a: d.a, b: d.b, r: d.r, scale: d.scale }).collect();
    LoraAdapter { name: record.name, deltas }
}

#[test]
fn run_time_adapters_equal_merged_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (base_src, base) = h96_f32(tmp.path());
    let prompt: Vec<u32> = vec![1, 17, 33, 2, 90, 41, 5];
    for variant in ["plain", "patterns"] {
        let dir = data(&format!("../converter/tests/data/lora/{variant}"));
        let merged_path = tmp.path().join(format!("{variant}.lowbit"));
        let o = ConvertOptions {
            quant: QuantChoice::F32,
            lora: vec![LoraSpec { dir: dir.clone(), scale: 1.0 }],
            ..Default::default()
        };
        convert(&base_src, &merged_path, &o, &|_| {}).unwrap();
        let merged_file = ModelFile::open(&merged_path).unwrap();
        let merged = Model::new(&merged_file).unwrap();
        let mut with = Model::new(&base).unwrap();
        with.set_adapters(&[adapter(&base, &dir).unwrap()]).unwrap();
        let plain = Model::new(&base).unwrap();
        let (mut c1, mut c2, mut c3) = (merged.new_cache(64), with.new_cache(64), plain.new_cache(64));
        let a = merged.forward(&mut c1, &prompt, Logits::All).unwrap();
        let b = with.forward(&mut c2, &prompt, Logits::All).unwrap();
        let c = plain.forward(&mut c3, &prompt, Logits::All).unwrap();
        let close = |x: &[f32], y: &[f32], what: &str| {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert!((p - q).abs() <= 2e-4 * (1.0 + p.abs()), "{variant} {what} [{i}]: {p} vs {q}");
            }
        };
        close(&a, &b, "prompt");
        assert!(a.iter().zip(&c).any(|(p, q)| (p - q).abs() > 1e-3), "{variant}: the adapter changes the logits");
        for step in 0..4u32 {
            let a = merged.forward(&mut c1, &[step + 3], Logits::Last).unwrap();
            let b = with.forward(&mut c2, &[step + 3], Logits::Last).unwrap();
            close(&a, &b, "decode");
        }
        // Two sequences in one decode step: each one's logits bit for bit.
        let (mut d1, mut d2) = (with.new_cache(64), with.new_cache(64));
        with.forward(&mut d1, &prompt, Logits::Last).unwrap();
        with.forward(&mut d2, &prompt[..3], Logits::Last).unwrap();
        let (mut e1, mut e2) = (d1.clone(), d2.clone());
        let both = with.forward_decode(&mut [&mut d1, &mut d2], &[7, 8]).unwrap();
        let one = with.forward(&mut e1, &[7], Logits::Last).unwrap();
        let two = with.forward(&mut e2, &[8], Logits::Last).unwrap();
        let vocab = one.len();
        assert!(both[..vocab].iter().zip(&one).all(|(p, q)| p.to_bits() == q.to_bits()), "{variant} batch row 0");
        assert!(both[vocab..].iter().zip(&two).all(|(p, q)| p.to_bits() == q.to_bits()), "{variant} batch row 1");
    }
    for variant in ["dora", "save"] {
        let e = adapter(&base, &data(&format!("../converter/tests/data/lora/{variant}"))).unwrap_err().to_string();
        assert!(e.contains("merge this adapter at conversion"), "{variant}: {e}");
    }
    // An adapter for another model.
    std::fs::create_dir_all(tmp.path().join("o")).unwrap();
    let other = common::convert_to(&data("tests/data/tiny/gqa1"), QuantChoice::F32, &tmp.path().join("o"));
    let other = ModelFile::open(&other).unwrap();
    let e = adapter(&other, &data("../converter/tests/data/lora/plain")).unwrap_err().to_string();
    assert!(e.contains("does not have") || e.contains("do not fit"), "{e}");
}

/// A bf16 adapter (how PEFT usually saves them) and an f16 one, converted to adapter files, are
/// read in place in their own dtype and give the folder's logits bit for bit, prompt and decode.
#[test]
fn half_precision_adapter_files_run_in_place_with_the_folders_bits() {
    use lowbit_convert::lora::load_for_file;
    use safetensors::{tensor::TensorView, Dtype, SafeTensors};
    let tmp = tempfile::tempdir().unwrap();
    let (base_src, base) = h96_f32(tmp.path());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base_src.join("config.json")).unwrap()).unwrap();
    let bf16_dir = tmp.path().join("bf16");
    lowbit_convert::synth::synthesize_adapter(&cfg, &bf16_dir, 4, 7, None).unwrap();
    // The same adapter in f16: every value converted (the synthetic values are small).
    let f16_dir = tmp.path().join("f16");
    std::fs::create_dir_all(&f16_dir).unwrap();
    std::fs::copy(bf16_dir.join("adapter_config.json"), f16_dir.join("adapter_config.json")).unwrap();
    let raw = std::fs::read(bf16_dir.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&raw).unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(t.dtype(), Dtype::BF16);
            let bytes = t
                .data()
                .chunks_exact(2)
                .flat_map(|c| {
                    let v = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                    half::f16::from_f32(v).to_le_bytes()
                })
                .collect();
            (name, t.shape().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = halves
        .iter()
        .map(|(n, shape, b)| (n.clone(), TensorView::new(Dtype::F16, shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &f16_dir.join("adapter_model.safetensors")).unwrap();
    let plain = Model::new(&base).unwrap();
    let prompt: Vec<u32> = vec![1, 17, 33, 2, 90, 41, 5];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (dir, scheme) in [(&bf16_dir, lowbit_format::Scheme::Bf16), (&f16_dir, lowbit_format::Scheme::F16)] {
        let file = dir.with_extension("lowbit");
        convert(dir, &file, &ConvertOptions::default(), &|_| {}).unwrap();
        let spec = |dir: &Path| LoraSpec { dir: dir.to_path_buf(), scale: 0.7 };
        let from_folder = to_runtime(load_for_file(&spec(dir), &base).unwrap());
        let from_file = to_runtime(load_for_file(&spec(&file), &base).unwrap());
        let mapped = ModelFile::open(&file).unwrap();
        assert!(mapped.tensors().iter().all(|t| t.scheme == scheme), "{scheme:?}: kept in its dtype");
        assert!(from_file.deltas.iter().all(|d| matches!(d.b, lowbit_format::AdapterValues::InFile { .. })));
        let mut a = Model::new(&base).unwrap();
        a.set_adapters(&[from_folder]).unwrap();
        let mut b = Model::new(&base).unwrap();
        b.set_adapters(&[from_file]).unwrap();
        let (mut ca, mut cb, mut cp) = (a.new_cache(32), b.new_cache(32), plain.new_cache(32));
        let la = a.forward(&mut ca, &prompt, Logits::All).unwrap();
        let lb = b.forward(&mut cb, &prompt, Logits::All).unwrap();
        assert_eq!(bits(&la), bits(&lb), "{scheme:?} prompt");
        let lp = plain.forward(&mut cp, &prompt, Logits::All).unwrap();
        assert!(la.iter().zip(&lp).any(|(x, y)| (x - y).abs() > 1e-4), "{scheme:?}: the adapter changes the logits");
        for step in 0..3u32 {
            let t = [7 + step];
            let la = a.forward(&mut ca, &t, Logits::All).unwrap();
            let lb = b.forward(&mut cb, &t, Logits::All).unwrap();
            assert_eq!(bits(&la), bits(&lb), "{scheme:?} decode step {step}");
        }
    }
}

/// An adapter converted on its own (`lowbit convert ADAPTER_DIR`) loads to the folder's updates
/// bit for bit (pairs, ranks, resolved scalings, times a scale given at load), so it runs the
/// same; against another model, or as a model, it is refused with the reason; DoRA does not
/// convert on its own.
#[test]
fn adapter_files_hold_the_folders_updates() {
    use lowbit_convert::lora::load_for_file;
    let tmp = tempfile::tempdir().unwrap();
    let base = common::convert_to(&data("tests/data/tiny/h96"), QuantChoice::F32, tmp.path());
    let base = ModelFile::open(&base).unwrap();
    for variant in ["plain", "patterns"] {
        let dir = data(&format!("../converter/tests/data/lora/{variant}"));
        let out = tmp.path().join(format!("{variant}.adapter.lowbit"));
        convert(&dir, &out, &ConvertOptions::default(), &|_| {}).unwrap();
        // Scales that round differently if the file's scaling were computed another way.
        for scale in [1.0f32, 0.5, 0.3, 0.9, 3.7] {
            let (rf, from_folder) = load_for_file(&LoraSpec { dir: dir.clone(), scale }, &base).unwrap();
            let (rl, from_file) = load_for_file(&LoraSpec { dir: out.clone(), scale }, &base).unwrap();
            assert_eq!(rf, rl, "{variant}: the record");
            assert_eq!(from_folder.len(), from_file.len());
            for (x, y) in from_folder.iter().zip(&from_file) {
                assert_eq!((&x.target, x.r, x.scale.to_bits()), (&y.target, y.r, y.scale.to_bits()), "{variant}");
                let bits = |v: &lowbit_format::AdapterValues| {
                    v.to_f32().expect("float values").iter().map(|f| f.to_bits()).collect::<Vec<_>>()
                };
                assert!(matches!(y.a, lowbit_format::AdapterValues::InFile { .. }), "used in place");
                assert_eq!(bits(&x.a), bits(&y.a), "{variant} {} A", x.target);
                assert_eq!(bits(&x.b), bits(&y.b), "{variant} {} B", x.target);
            }
        }
        // As a model: refused, saying what it is.
        let file = ModelFile::open(&out).unwrap();
        let Err(e) = Model::new(&file) else { panic!("an adapter file is not a model") };
        let e = e.to_string();
        assert!(e.contains("LoRA adapter file") && e.contains("--lora"), "{e}");
    }
    // Against another model.
    let out = tmp.path().join("plain.adapter.lowbit");
    std::fs::create_dir_all(tmp.path().join("o")).unwrap();
    let other = common::convert_to(&data("tests/data/tiny/gqa1"), QuantChoice::F32, &tmp.path().join("o"));
    let other = ModelFile::open(&other).unwrap();
    let e = load_for_file(&LoraSpec { dir: out.clone(), scale: 1.0 }, &other).unwrap_err().to_string();
    assert!(e.contains("does not have") || e.contains("needs"), "{e}");
    // A model file where an adapter is expected.
    let model_path = tmp.path().join("o").read_dir().unwrap().next().unwrap().unwrap().path();
    let e = load_for_file(&LoraSpec { dir: model_path, scale: 1.0 }, &base).unwrap_err().to_string();
    assert!(e.contains("not an adapter"), "{e}");
    // Crafted adapter files: each refused with the tensor or field named.
    let good = ModelFile::open(&out).unwrap();
    let rewrite = |name: &str, edit: &dyn Fn(&mut lowbit_format::Metadata, &str, &mut Vec<u8>)| -> String {
        let path = tmp.path().join(name);
        let mut meta = good.metadata().clone();
        let mut datas: Vec<(lowbit_format::TensorSpec, Vec<u8>)> = good
            .tensors()
            .iter()
            .map(|t| {
                let spec = lowbit_format::TensorSpec {
                    name: t.name.clone(),
                    scheme: t.scheme.clone(),
                    shape: t.shape.clone(),
                };
                (spec, good.tensor(&t.name).unwrap().part("data").unwrap().to_vec())
            })
            .collect();
        for (spec, data) in datas.iter_mut() {
            edit(&mut meta, &spec.name, data);
        }
        let w = lowbit_format::Writer::create(&path, meta, datas.iter().map(|d| d.0.clone()).collect()).unwrap();
        for (i, (_, data)) in datas.iter().enumerate() {
            w.write_tensor(i, &[data]).unwrap();
        }
        w.finish().unwrap();
        load_for_file(&LoraSpec { dir: path, scale: 1.0 }, &base).unwrap_err().to_string()
    };
    let first = good.tensors()[0].name.clone();
    let e = rewrite("nan.lowbit", &|_, name, data| {
        if name == first {
            // The first element of the first tensor (f32 in this fixture) becomes NaN.
            data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
    });
    assert!(e.contains(&first) && e.contains("NaN"), "{e}");
    let target = first.trim_end_matches(".lora_a").trim_end_matches(".lora_b").to_string();
    let e = rewrite("rank.lowbit", &|meta, _, _| {
        meta.config["lora"]["targets"][&target]["r"] = 3.into();
    });
    assert!(e.contains(&target) && e.contains("rank 3"), "{e}");
    let e = rewrite("scale.lowbit", &|meta, _, _| {
        meta.config["lora"]["targets"][&target]["alpha"] = "big".into();
    });
    assert!(e.contains("not a finite number"), "{e}");
    let e = rewrite("empty.lowbit", &|meta, _, _| {
        meta.config["lora"]["targets"] = serde_json::json!({});
    });
    assert!(e.contains("no targets"), "{e}");
    // An adapter file cannot be merged at conversion (its folder can).
    let o = ConvertOptions {
        quant: QuantChoice::F32,
        lora: vec![LoraSpec { dir: out.clone(), scale: 1.0 }],
        ..Default::default()
    };
    let e = convert(&data("tests/data/tiny/h96"), &tmp.path().join("m.lowbit"), &o, &|_| {}).unwrap_err().to_string();
    assert!(e.contains("applied at run time"), "{e}");
    // DoRA changes the weights: merged at conversion only.
    let e = convert(
        &data("../converter/tests/data/lora/dora"),
        &tmp.path().join("d.lowbit"),
        &ConvertOptions::default(),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("merge this adapter at conversion"), "{e}");
    assert!(!tmp.path().join("d.lowbit").exists());
}

/// Writes a PEFT adapter (r = 4, α = 8, seeded) on q_proj, v_proj and down_proj of both layers
/// of the bitsandbytes fixtures' model (hidden 128, 2 kv heads of 32, intermediate 192).
fn qlora_adapter(dir: &Path) {
    let mut seed = 0x51ed270b27a3f1c5u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for l in 0..2 {
        for (module, rows, cols) in
            [("self_attn.q_proj", 128, 128), ("self_attn.v_proj", 64, 128), ("mlp.down_proj", 128, 192)]
        {
            let m = format!("base_model.model.model.layers.{l}.{module}");
            let a: Vec<u8> = (0..4 * cols).flat_map(|_| next().to_le_bytes()).collect();
            let b: Vec<u8> = (0..rows * 4).flat_map(|_| next().to_le_bytes()).collect();
            data.push((format!("{m}.lora_A.weight"), vec![4, cols], a));
            data.push((format!("{m}.lora_B.weight"), vec![rows, 4], b));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}"#,
    )
    .unwrap();
}

/// QLoRA as PEFT runs it: a bitsandbytes NF4 (double-quant) checkpoint, kept 4-bit, with the
/// exact float path and the adapter at run time, against the base dequantized as bitsandbytes
/// does with the adapter merged in f32 (`convert --quant f32 --lora`): the same logits up to
/// summation order.
#[test]
fn qlora_at_run_time_equals_the_dequantized_merge() {
    let src = data("../converter/tests/data/bnb/nf4_dq");
    if !src.join("model.safetensors").is_file() {
        eprintln!("skipping: {} is absent", src.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qlora");
    qlora_adapter(&dir);
    let kept = tmp.path().join("kept.lowbit");
    convert(&src, &kept, &ConvertOptions::default(), &|_| {}).unwrap();
    let merged = tmp.path().join("merged.lowbit");
    let o = ConvertOptions {
        quant: QuantChoice::F32,
        lora: vec![LoraSpec { dir: dir.clone(), scale: 1.0 }],
        ..Default::default()
    };
    convert(&src, &merged, &o, &|_| {}).unwrap();
    let (kept, merged) = (ModelFile::open(&kept).unwrap(), ModelFile::open(&merged).unwrap());
    assert!(kept.tensors().iter().any(|t| matches!(t.scheme, lowbit_format::Scheme::FourBit { .. })), "kept 4-bit");
    let mut q = Model::new(&kept).unwrap();
    q.set_options(lowbit_kernels::MatmulOptions { fourbit_exact: true, ..q.options() });
    q.set_adapters(&[adapter(&kept, &dir).unwrap()]).unwrap();
    let m = Model::new(&merged).unwrap();
    let prompt: Vec<u32> = vec![1, 40, 7, 200, 13, 99];
    let (mut cq, mut cm) = (q.new_cache(32), m.new_cache(32));
    let a = q.forward(&mut cq, &prompt, Logits::All).unwrap();
    let b = m.forward(&mut cm, &prompt, Logits::All).unwrap();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "[{i}]: {x} vs {y}");
    }
    for tok in [5u32, 6, 7] {
        let a = q.forward(&mut cq, &[tok], Logits::Last).unwrap();
        let b = m.forward(&mut cm, &[tok], Logits::Last).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "decode: {x} vs {y}");
        }
    }
}

/// Named adapters, picked per sequence: a sequence that picks one gets the logits of a model
/// with that adapter always applied, bit for bit, a sequence that picks none the base's, also
/// when both share one decode step; a multiplier of 0.5 equals the adapter loaded at scale 0.5;
/// picking on a cache that holds positions, a non-finite scale or two adapters of one name are
/// refused.
#[test]
fn named_adapters_are_picked_per_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let base = common::convert_to(&data("tests/data/tiny/h96"), QuantChoice::F32, tmp.path());
    let base = ModelFile::open(&base).unwrap();
    let dir = data("../converter/tests/data/lora/plain");
    let mut lora = adapter(&base, &dir).unwrap();
    lora.name = "story".into();
    let mut served = Model::new(&base).unwrap();
    served.set_named_adapters(&[], std::slice::from_ref(&lora)).unwrap();
    let mut always = Model::new(&base).unwrap();
    always.set_adapters(std::slice::from_ref(&lora)).unwrap();
    let plain = Model::new(&base).unwrap();
    assert_eq!(served.adapter_names(), ["story".to_string()]);
    let idx = served.adapter_index("story").unwrap();
    assert_eq!(served.adapter_index("other"), None);

    let prompt: Vec<u32> = vec![1, 17, 33, 2, 90, 41, 5];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // Alone: the pick gives the always-applied model's logits, no pick the base's.
    let (mut with, mut without) = (served.new_cache(64), served.new_cache(64));
    with.set_adapter(Some((idx, 1.0))).unwrap();
    let (mut a_ref, mut p_ref) = (always.new_cache(64), plain.new_cache(64));
    assert_eq!(
        bits(&served.forward(&mut with, &prompt, Logits::Last).unwrap()),
        bits(&always.forward(&mut a_ref, &prompt, Logits::Last).unwrap())
    );
    assert_eq!(
        bits(&served.forward(&mut without, &prompt[..4], Logits::Last).unwrap()),
        bits(&plain.forward(&mut p_ref, &prompt[..4], Logits::Last).unwrap())
    );
    // Side by side in decode steps.
    for step in 0..3u32 {
        let both = served.forward_decode(&mut [&mut with, &mut without], &[step + 7, step + 9]).unwrap();
        let one = always.forward(&mut a_ref, &[step + 7], Logits::Last).unwrap();
        let two = plain.forward(&mut p_ref, &[step + 9], Logits::Last).unwrap();
        let vocab = one.len();
        assert_eq!(bits(&both[..vocab]), bits(&one), "step {step}: the sequence with the adapter");
        assert_eq!(bits(&both[vocab..]), bits(&two), "step {step}: the sequence without");
        assert_ne!(bits(&one), bits(&two));
    }
    // A multiplier: the adapter at half strength, as if loaded at scale 0.5.
    let half = {
        let shape_of = |name: &str| base.tensor(name).map(|t| t.info.shape.iter().map(|&d| d as usize).collect());
        let loaded = load_for_run_time(&LoraSpec { dir: dir.clone(), scale: 0.5 }, &shape_of).unwrap();
        LoraAdapter { name: "half".into(), ..to_runtime(loaded) }
    };
    let mut halved = Model::new(&base).unwrap();
    halved.set_adapters(&[half]).unwrap();
    let (mut c1, mut c2) = (served.new_cache(64), halved.new_cache(64));
    c1.set_adapter(Some((idx, 0.5))).unwrap();
    let x = served.forward(&mut c1, &prompt, Logits::Last).unwrap();
    let y = halved.forward(&mut c2, &prompt, Logits::Last).unwrap();
    assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-4 * (1.0 + p.abs())));
    // Refusals.
    assert!(c1.set_adapter(None).is_err(), "a cache that holds positions keeps its adapter");
    assert!(c1.set_adapter(Some((idx, 0.5))).is_ok(), "the same pick again is fine");
    let mut fresh = served.new_cache(8);
    assert!(fresh.set_adapter(Some((idx, f32::NAN))).is_err());
    let mut twice = Model::new(&base).unwrap();
    assert!(twice.set_named_adapters(&[], &[lora.clone(), lora]).unwrap_err().to_string().contains("two adapters"));
}
