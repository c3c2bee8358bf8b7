//! bitsandbytes checkpoints saved by transformers (tests/data/bnb, made by
//! scripts/make_bnb_checkpoints.py): converting a pre-quantized folder takes its tensors over
//! byte for byte, and gives exactly what converting the unquantized `source/` with the same
//! settings gives. bitsandbytes quantized these on the CPU, whose double-quant codes follow its
//! lookup-table rule (`NestedRule::CpuLut`); with our default nearest rule only nested codes
//! differ. Also: dequantized conversion, `--keep` on quantized tensors, and corrupt quant states.
//!
//! Every test skips with a message when the data folder is absent.

mod common;

use common::*;
use lowbit_convert::{ConvertError, ConvertOptions, HeadChoice, QuantChoice};
use lowbit_format::{ModelFile, Scheme};
use lowbit_kernels::{Absmax, FourBitTensor, Int8Tensor, NestedRule};
use safetensors::Dtype;
use std::path::PathBuf;

const VARIANTS: [(&str, QuantChoice, bool); 4] = [
    ("nf4_dq", QuantChoice::Nf4, true),
    ("nf4", QuantChoice::Nf4, false),
    ("fp4_dq", QuantChoice::Fp4, true),
    ("int8", QuantChoice::Int8, false),
];

fn bnb(variant: &str) -> Option<PathBuf> {
    let p = data("bnb").join(variant);
    if p.join("model.safetensors").is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent (run scripts/make_bnb_checkpoints.py)", p.display());
        None
    }
}

fn all_present() -> bool {
    bnb("source").is_some() && VARIANTS.iter().all(|v| bnb(v.0).is_some())
}

fn is_quantized(s: &Scheme) -> bool {
    matches!(s, Scheme::FourBit { .. } | Scheme::Int8)
}

#[test]
fn prequantized_equals_our_quantization_of_the_source() {
    if !all_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (variant, quant, double_quant) in VARIANTS {
        let pre = tmp.path().join(format!("{variant}-pre.lowbit"));
        let ours = tmp.path().join(format!("{variant}-ours.lowbit"));
        // The options' scheme does not matter for a pre-quantized folder: nothing is redone.
        let s = run(&bnb(variant).unwrap(), &pre, &opts(QuantChoice::Nf4)).unwrap();
        assert!(s.quantized_params > 0);
        if quant != QuantChoice::Nf4 {
            assert!(s.warnings.iter().any(|w| w.contains("taken over")), "{variant}: {:?}", s.warnings);
        }
        // bitsandbytes leaves lm_head unquantized: compare with a conversion that keeps it too.
        let o = ConvertOptions {
            quant,
            double_quant,
            nested_rule: NestedRule::CpuLut,
            head: HeadChoice::Source,
            bnb_exact: true,
            ..Default::default()
        };
        run(&bnb("source").unwrap(), &ours, &o).unwrap();
        let (a, b) = (ModelFile::open(&pre).unwrap(), ModelFile::open(&ours).unwrap());
        assert!(a.verify().is_empty());
        assert_eq!(a.tensors().len(), b.tensors().len());
        let q = &a.metadata().quantization;
        assert_eq!(q.source_format, "bitsandbytes");
        assert_eq!((q.scheme.as_str(), q.double_quant), (quant.label(), double_quant), "{variant}: recorded settings");
        assert_eq!(q.int8_threshold, 6.0, "llm_int8_threshold from quantization_config");
        let mut quantized = 0;
        for t in b.tensors() {
            let u = a.tensor(&t.name).unwrap_or_else(|| panic!("{variant}: {} missing", t.name));
            assert_eq!(u.info.scheme, t.scheme, "{variant}: {} scheme", t.name);
            assert_eq!(u.info.shape, t.shape, "{variant}: {} shape", t.name);
            assert!(u.bytes == b.tensor(&t.name).unwrap().bytes, "{variant}: {} bytes differ", t.name);
            quantized += usize::from(is_quantized(&t.scheme));
        }
        assert_eq!(quantized, 14, "{variant}: 7 linear layers × 2");
        assert_eq!(a.metadata().config["quantization_config"]["quant_method"], "bitsandbytes", "config kept verbatim");
        assert_eq!(a.metadata().config["rope_theta"], 1e6, "rope_parameters folded in");
    }
}

#[test]
fn with_the_nearest_rule_only_nested_codes_differ() {
    if !all_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (variant, quant) in [("nf4_dq", QuantChoice::Nf4), ("fp4_dq", QuantChoice::Fp4)] {
        let pre = tmp.path().join(format!("{variant}-pre.lowbit"));
        let ours = tmp.path().join(format!("{variant}-nearest.lowbit"));
        run(&bnb(variant).unwrap(), &pre, &opts(quant)).unwrap();
        let o = ConvertOptions { head: HeadChoice::Source, bnb_exact: true, ..opts(quant) };
        run(&bnb("source").unwrap(), &ours, &o).unwrap();
        let (a, b) = (ModelFile::open(&pre).unwrap(), ModelFile::open(&ours).unwrap());
        let (mut differ, mut total) = (0, 0);
        for t in b.tensors().iter().filter(|t| is_quantized(&t.scheme)) {
            let (u, v) = (a.tensor(&t.name).unwrap(), b.tensor(&t.name).unwrap());
            for part in ["codes", "nested_absmax", "nested_offset"] {
                assert!(u.part(part).unwrap() == v.part(part).unwrap(), "{variant}: {} {part}", t.name);
            }
            let (x, y) = (u.part("absmax").unwrap(), v.part("absmax").unwrap());
            differ += x.iter().zip(y).filter(|(p, q)| p != q).count();
            total += x.len();
        }
        eprintln!("{variant}: nearest rule vs the checkpoint's CPU rule: {differ} of {total} nested codes differ");
        assert!(differ > 0 && differ * 50 < total, "{variant}: {differ} of {total}");
    }
}

/// The f32 weights a quantized tensor of `f` stands for (kernels' dequantization).
fn dequantized(f: &ModelFile, name: &str) -> Vec<f32> {
    let t = f.tensor(name).unwrap();
    let shape: Vec<usize> = t.info.shape.iter().map(|&d| d as usize).collect();
    let n = shape.iter().product();
    let mut out = vec![0f32; n];
    match &t.info.scheme {
        Scheme::Int8 => Int8Tensor {
            rows: shape[0],
            cols: shape[1],
            cb: t.part_i8("cb").unwrap().to_vec(),
            scb: f32s(t.part("scb").unwrap()),
        }
        .dequantize(&mut out)
        .unwrap(),
        Scheme::FourBit { kind, blocksize, nested, .. } => FourBitTensor {
            kind: match kind {
                lowbit_format::FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4,
                lowbit_format::FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4,
            },
            blocksize: *blocksize as usize,
            len: n,
            codes: t.part("codes").unwrap().to_vec(),
            absmax: match nested {
                None => Absmax::F32(f32s(t.part("absmax").unwrap())),
                Some(nd) => Absmax::Nested {
                    codes: t.part("absmax").unwrap().to_vec(),
                    nested_absmax: f32s(t.part("nested_absmax").unwrap()),
                    nested_blocksize: nd.blocksize as usize,
                    offset: f32s(t.part("nested_offset").unwrap())[0],
                },
            },
        }
        .dequantize(&mut out)
        .unwrap(),
        other => panic!("{name}: {other:?} is not quantized"),
    }
    out
}

#[test]
fn dequantized_conversion_and_keep_patterns() {
    if !all_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (variant, _, _) in VARIANTS {
        let src = bnb(variant).unwrap();
        let pre = tmp.path().join(format!("{variant}.lowbit"));
        run(&src, &pre, &opts(QuantChoice::Nf4)).unwrap();
        let pre = ModelFile::open(&pre).unwrap();
        let f32_out = tmp.path().join(format!("{variant}-f32.lowbit"));
        let s = run(&src, &f32_out, &opts(QuantChoice::F32)).unwrap();
        assert_eq!(s.quantized_params, 0);
        let dense = ModelFile::open(&f32_out).unwrap();
        assert_eq!(dense.metadata().quantization.scheme, "f32");
        for t in pre.tensors().iter().filter(|t| is_quantized(&t.scheme)) {
            let d = dense.tensor(&t.name).unwrap();
            assert_eq!(d.info.scheme, Scheme::F32);
            assert_eq!(f32s(d.part("data").unwrap()), dequantized(&pre, &t.name), "{variant}: {}", t.name);
        }
        // --keep on a pre-quantized tensor: dequantized into its original dtype (float16).
        let keep = tmp.path().join(format!("{variant}-keep.lowbit"));
        run(&src, &keep, &ConvertOptions { keep: vec!["*.down_proj.weight".into()], ..Default::default() }).unwrap();
        let k = ModelFile::open(&keep).unwrap();
        for t in k.tensors().iter().filter(|t| t.name.contains("_proj.weight")) {
            let down = t.name.ends_with("down_proj.weight");
            assert_eq!(t.scheme == Scheme::F16, down, "{variant}: {}", t.name);
            if down {
                let want: Vec<u8> =
                    dequantized(&pre, &t.name).iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
                assert!(k.tensor(&t.name).unwrap().part("data").unwrap() == want);
            }
        }
    }
}

/// Converts a copy of the `variant` folder edited by `f`; must fail without leaving a file.
fn broken(variant: &str, f: impl FnOnce(&mut Vec<RawTensor>)) -> ConvertError {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("in");
    copy_dir(&bnb(variant).unwrap(), &d);
    edit_tensors(&d, f);
    let out = tmp.path().join("out.lowbit");
    let e = run(&d, &out, &opts(QuantChoice::Nf4)).expect_err("must fail");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "{e}: temporary file left");
    e
}

const W: &str = "model.layers.0.mlp.down_proj.weight";

fn find<'a>(v: &'a mut [RawTensor], name: &str) -> &'a mut RawTensor {
    v.iter_mut().find(|t| t.0 == name).unwrap_or_else(|| panic!("{name}"))
}

fn set_state(v: &mut [RawTensor], edit: impl FnOnce(&mut serde_json::Value)) {
    let t = find(v, &format!("{W}.quant_state.bitsandbytes__nf4"));
    let mut qs: serde_json::Value = serde_json::from_slice(&t.3).unwrap();
    edit(&mut qs);
    t.3 = qs.to_string().into_bytes();
    t.2 = vec![t.3.len()];
}

fn bad_state(e: &ConvertError) -> bool {
    matches!(e, ConvertError::BadQuantState { tensor, .. } if tensor.starts_with("model.layers.0.mlp.down_proj"))
}

/// An edit of a checkpoint's tensor list.
type Edit<'a> = Box<dyn FnOnce(&mut Vec<RawTensor>) + 'a>;

#[test]
fn corrupt_quant_states_are_refused() {
    if bnb("nf4_dq").is_none() || bnb("int8").is_none() {
        return;
    }
    let qs = format!("{W}.quant_state.bitsandbytes__nf4");
    let cases: Vec<(&str, Edit)> = vec![
        ("JSON", Box::new(|v| find(v, &qs).3[0] = b'x')),
        ("shape", Box::new(|v| set_state(v, |s| s["shape"] = serde_json::json!([128, 100])))),
        ("shape rank", Box::new(|v| set_state(v, |s| s["shape"] = serde_json::json!([128, 192, 1])))),
        ("shape type", Box::new(|v| set_state(v, |s| s["shape"] = serde_json::json!([128, "192"])))),
        ("huge shape", Box::new(|v| set_state(v, |s| s["shape"] = serde_json::json!([u64::MAX, 4])))),
        ("blocksize", Box::new(|v| set_state(v, |s| s["blocksize"] = 48.into()))),
        ("blocksize vs absmax", Box::new(|v| set_state(v, |s| s["blocksize"] = 128.into()))),
        ("quant_type", Box::new(|v| set_state(v, |s| s["quant_type"] = "fp4".into()))),
        ("dtype", Box::new(|v| set_state(v, |s| s["dtype"] = "int32".into()))),
        ("offset", Box::new(|v| set_state(v, |s| s["nested_offset"] = "x".into()))),
        ("nested blocksize", Box::new(|v| set_state(v, |s| s["nested_blocksize"] = 7.into()))),
        ("no offset", Box::new(|v| set_state(v, |s| drop(s.as_object_mut().unwrap().remove("nested_offset"))))),
        ("quant_map", Box::new(|v| find(v, &format!("{W}.quant_map")).3[4] ^= 1)),
        ("nested_quant_map", Box::new(|v| find(v, &format!("{W}.nested_quant_map")).3[40] ^= 1)),
        (
            "bf16 absmax",
            Box::new(|v| {
                let t = find(v, &format!("{W}.absmax"));
                (t.1, t.2, t.3) = (Dtype::BF16, vec![2, 192], vec![0; 768]);
            }),
        ),
        (
            "nan nested absmax",
            Box::new(|v| find(v, &format!("{W}.nested_absmax")).3[..4].copy_from_slice(&f32::NAN.to_le_bytes())),
        ),
        ("packed length", Box::new(|v| find(v, W).3.truncate(100))),
        ("no quant state", Box::new(|v| v.retain(|t| t.0 != qs))),
    ];
    for (what, edit) in cases {
        let e = broken("nf4_dq", |v| {
            edit(v);
            // Keep the shapes consistent with the (possibly shortened) data.
            for t in v.iter_mut() {
                let n: usize = t.2.iter().product::<usize>() * (t.1.bitsize() / 8);
                if n != t.3.len() {
                    t.2 = vec![t.3.len() / (t.1.bitsize() / 8)];
                }
            }
        });
        assert!(bad_state(&e), "{what}: {e}");
        eprintln!("{what}: {e}");
    }
    let e = broken("nf4_dq", |v| v.retain(|t| t.0 != format!("{W}.absmax")));
    assert!(matches!(e, ConvertError::MissingTensor(ref t) if t == &format!("{W}.absmax")), "{e}");

    let scb = "model.layers.0.mlp.down_proj.SCB";
    let e = broken("int8", |v| {
        let t = find(v, scb);
        t.3.truncate(4 * 100);
        t.2 = vec![100];
    });
    assert!(bad_state(&e), "{e}");
    let e = broken("int8", |v| find(v, "model.layers.0.mlp.down_proj.weight_format").3[0] = 1);
    assert!(bad_state(&e), "{e}");
    let e = broken("int8", |v| v.retain(|t| t.0 != scb));
    assert!(bad_state(&e), "int8 weight without SCB: {e}");
    let e = broken("int8", |v| find(v, scb).3[..4].copy_from_slice(&f32::INFINITY.to_le_bytes()));
    assert!(bad_state(&e), "{e}");
}

#[test]
fn shapes_are_checked_against_config() {
    let Some(src) = bnb("nf4_dq") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("in");
    copy_dir(&src, &d);
    let p = d.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["intermediate_size"] = 96.into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = run(&d, &tmp.path().join("o.lowbit"), &opts(QuantChoice::Nf4)).unwrap_err();
    assert!(matches!(&e, ConvertError::ShapeMismatch { tensor, .. } if tensor.contains("mlp.")), "{e}");
}
