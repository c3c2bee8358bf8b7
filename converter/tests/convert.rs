//! Conversion end to end: bitsandbytes checkpoints taken over losslessly, every scheme from a
//! plain checkpoint, sharded input, and every kind of bad input giving a clear error with nothing
//! left at the output path.

use lowbit_convert::{convert, ConvertError, ConvertOptions, QuantChoice};
use lowbit_format::{ModelFile, Scheme};
use lowbit_kernels::NestedRule;
use std::path::{Path, PathBuf};

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

fn run(src: &Path, out: &Path, opts: &ConvertOptions) -> Result<lowbit_convert::ConvertSummary, ConvertError> {
    convert(src, out, opts, &|_| {})
}

fn opts(quant: QuantChoice) -> ConvertOptions {
    ConvertOptions { quant, ..Default::default() }
}

#[test]
fn bitsandbytes_checkpoints_convert_losslessly() {
    let tmp = tempfile::tempdir().unwrap();
    // bitsandbytes quantized these on CPU, whose double-quant codes follow its lookup-table rule.
    for (variant, quant, double_quant) in [
        ("nf4_dq", QuantChoice::Nf4, true),
        ("nf4", QuantChoice::Nf4, false),
        ("fp4_dq", QuantChoice::Fp4, true),
        ("int8", QuantChoice::Int8, false),
    ] {
        let pre = tmp.path().join(format!("{variant}-pre.lowbit"));
        let ours = tmp.path().join(format!("{variant}-ours.lowbit"));
        let s = run(&data(&format!("bnb/{variant}")), &pre, &opts(QuantChoice::Nf4)).unwrap();
        assert!(s.quantized_params > 0);
        let o = ConvertOptions { quant, double_quant, nested_rule: NestedRule::CpuLut, ..Default::default() };
        run(&data("bnb/source"), &ours, &o).unwrap();
        let (a, b) = (ModelFile::open(&pre).unwrap(), ModelFile::open(&ours).unwrap());
        assert_eq!(a.metadata().quantization.source_format, "bitsandbytes");
        let mut quantized = 0;
        for t in b.tensors() {
            let u = a.tensor(&t.name).unwrap_or_else(|| panic!("{variant}: {} missing", t.name));
            assert_eq!(u.info.scheme, t.scheme, "{variant}: {} scheme", t.name);
            assert_eq!(u.info.shape, t.shape, "{variant}: {} shape", t.name);
            let mine = b.tensor(&t.name).unwrap();
            assert!(
                u.bytes == mine.bytes,
                "{variant}: {} bytes differ from our own quantization of the source",
                t.name
            );
            quantized += usize::from(matches!(t.scheme, Scheme::FourBit { .. } | Scheme::Int8));
        }
        assert_eq!(quantized, 14, "{variant}: 7 linear layers × 2");
        assert!(a.verify().is_empty());
    }
}

#[test]
fn every_scheme_from_a_plain_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    for q in
        [QuantChoice::F32, QuantChoice::F16, QuantChoice::Bf16, QuantChoice::Int8, QuantChoice::Nf4, QuantChoice::Fp4]
    {
        let out = tmp.path().join(format!("{}.lowbit", q.label()));
        let s = run(&data("bnb/source"), &out, &opts(q)).unwrap();
        let f = ModelFile::open(&out).unwrap();
        assert_eq!(f.tensors().len(), 21);
        assert_eq!(f.metadata().config["rope_theta"], 1e6, "rope_parameters folded into rope_theta");
        assert!(s.warnings.iter().any(|w| w.contains("tokenizer")), "no tokenizer.json is reported");
        let norm = f.tensor("model.norm.weight").unwrap();
        let q_proj = f.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
        match q {
            QuantChoice::F32 => assert_eq!(norm.info.scheme, Scheme::F32),
            QuantChoice::Bf16 => assert_eq!(norm.info.scheme, Scheme::Bf16),
            // Quantized files keep norms in the source dtype (float16 here).
            _ => assert_eq!(norm.info.scheme, Scheme::F16),
        }
        assert_eq!(q_proj.info.scheme.label(), q.label());
    }
}

/// Copies the tiny swa model into `dir`, split into two shards with an index.
fn sharded(dir: &Path) {
    let src = data("../../../runtime/tests/data/tiny/swa");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part.iter() {
            map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
}

#[test]
fn sharded_equals_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sharded");
    std::fs::create_dir(&dir).unwrap();
    sharded(&dir);
    let (one, two) = (tmp.path().join("one.lowbit"), tmp.path().join("two.lowbit"));
    run(&data("../../../runtime/tests/data/tiny/swa"), &one, &opts(QuantChoice::Nf4)).unwrap();
    run(&dir, &two, &opts(QuantChoice::Nf4)).unwrap();
    let (a, b) = (ModelFile::open(&one).unwrap(), ModelFile::open(&two).unwrap());
    for t in a.tensors() {
        assert!(a.tensor(&t.name).unwrap().bytes == b.tensor(&t.name).unwrap().bytes, "{}", t.name);
    }
    assert_eq!(b.metadata().sources.len(), 3, "two shards and config.json are digested");
}

/// Runs a conversion expected to fail and checks that nothing is left behind.
fn fails(src: &Path, what: &str) -> ConvertError {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.lowbit");
    let err = run(src, &out, &opts(QuantChoice::Nf4)).expect_err(what);
    assert!(!out.exists(), "{what}: output left behind");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0, "{what}: temporary file left behind");
    assert!(!err.to_string().is_empty());
    err
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_inputs_give_clear_errors_and_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let base = data("bnb/source");

    let d = tmp.path().join("missing-shard");
    std::fs::create_dir(&d).unwrap();
    sharded(&d);
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    assert!(matches!(fails(&d, "missing shard"), ConvertError::Missing(_)));

    let d = tmp.path().join("truncated");
    copy_dir(&base, &d);
    let f = d.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 100).unwrap();
    assert!(matches!(fails(&d, "truncated"), ConvertError::BadSafetensors { .. }));

    let d = tmp.path().join("corrupt");
    copy_dir(&base, &d);
    let mut b = std::fs::read(d.join("model.safetensors")).unwrap();
    b[10] = b'!';
    std::fs::write(d.join("model.safetensors"), &b).unwrap();
    assert!(matches!(fails(&d, "corrupt header"), ConvertError::BadSafetensors { .. }));

    let d = tmp.path().join("no-config");
    copy_dir(&base, &d);
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert!(matches!(fails(&d, "no config"), ConvertError::Missing(_)));

    let d = tmp.path().join("shape");
    copy_dir(&base, &d);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = 200.into();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    assert!(matches!(fails(&d, "shape vs config"), ConvertError::ShapeMismatch { .. }));

    let d = tmp.path().join("dtype");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(base.join("config.json"), d.join("config.json")).unwrap();
    let bytes = std::fs::read(base.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ints: Vec<u8> = vec![0u8; 128 * 8];
    let mut views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != "model.norm.weight").collect();
    views.push((
        "model.norm.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![128], &ints).unwrap(),
    ));
    safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
    assert!(matches!(fails(&d, "int64 weight"), ConvertError::UnsupportedDtype { .. }));

    let d = tmp.path().join("missing-tensor");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(base.join("config.json"), d.join("config.json")).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != "lm_head.weight").collect();
    safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
    assert!(matches!(fails(&d, "missing lm_head"), ConvertError::MissingTensor(_)));

    // Output into a folder that does not exist.
    let err = run(&base, &tmp.path().join("nope/out.lowbit"), &opts(QuantChoice::Nf4)).unwrap_err();
    assert!(matches!(err, ConvertError::Format(_)), "{err}");
}

#[test]
fn synthetic_presets_have_the_real_shapes() {
    let presets = lowbit_convert::synth::presets();
    let count = |name: &str| -> u64 {
        let p = presets.iter().find(|p| p.name == name).unwrap();
        lowbit_convert::synth::tensor_shapes(&p.config)
            .unwrap()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    };
    // Published parameter counts (FORMATS.md §G.2).
    assert_eq!(count("mistral-7b-v0.1"), 7_241_732_096);
    assert_eq!(count("mistral-7b-v0.3"), 7_248_023_552);
    assert_eq!(count("qwen2.5-0.5b"), 494_032_768);
}

#[test]
fn synthetic_checkpoint_converts_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = lowbit_convert::synth::presets().into_iter().find(|p| p.name == "mistral-7b-v0.1").unwrap().config;
    // Same names and structure, small dimensions.
    for (k, v) in [
        ("hidden_size", 128),
        ("intermediate_size", 256),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
        ("head_dim", 32),
        ("vocab_size", 300),
    ] {
        cfg[k] = v.into();
    }
    let dir = tmp.path().join("synth");
    // Tiny shards so the index path is exercised.
    let bytes = lowbit_convert::synth::synthesize(&cfg, &dir, 7, Some(2), 200_000).unwrap();
    assert!(dir.join("model.safetensors.index.json").exists());
    let out = tmp.path().join("s.lowbit");
    let s = run(&dir, &out, &opts(QuantChoice::Nf4)).unwrap();
    assert!(s.input_bytes > bytes);
    let f = ModelFile::open(&out).unwrap();
    assert!(f.metadata().tokenizer_json.is_some());
    assert_eq!(f.tensors().len(), 3 + 2 * 9);
}
