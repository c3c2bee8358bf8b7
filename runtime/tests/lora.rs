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

fn adapter(file: &ModelFile, dir: &Path) -> lowbit_convert::Result<LoraAdapter> {
    let shape_of = |name: &str| file.tensor(name).map(|t| t.info.shape.iter().map(|&d| d as usize).collect());
    let (record, deltas) = load_for_run_time(&LoraSpec { dir: dir.to_path_buf(), scale: 1.0 }, &shape_of)?;
    let deltas =
        deltas.into_iter().map(|d| LoraDelta { target: d.target, a: d.a, b: d.b, r: d.r, scale: d.scale }).collect();
    Ok(LoraAdapter { name: record.name, deltas })
}

#[test]
fn run_time_adapters_equal_merged_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let base_src = data("tests/data/tiny/h96");
    let base = common::convert_to(&base_src, QuantChoice::F32, tmp.path());
    let base = ModelFile::open(&base).unwrap();
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
