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
    // A bitsandbytes 4-bit base: refused as such (its packed codes are not the weights).
    let e = convert(
        &data("tests/data/bnb/nf4"),
        &tmp.path().join("z.lowbit"),
        &opts(vec![LoraSpec { dir: data("tests/data/lora/plain"), scale: 1.0 }]),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("merging into a bitsandbytes checkpoint is not supported"), "{e}");
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
