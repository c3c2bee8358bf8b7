//! Tiny random Mistral models made by transformers (scripts/make_tiny_mistral.py): our f32
//! conversion must reproduce transformers' logits at every position (max |Δ| ≤ 1e-3) and its
//! greedy continuation, including a sliding window shorter than the sequence (and a decode that
//! runs past it), one kv head, a hidden size that is not a multiple of 64, bf16 weights, tied
//! embeddings and rope_theta 1e6. int8 and nf4 conversions are held to a KL bound.

mod common;

use common::{argmax, convert_to, mean_kl, read};
use lowbit_convert::QuantChoice;
use lowbit_format::ModelFile;
use lowbit_runtime::{generate, Logits, Model, Sampler, SamplerConfig};
use std::path::PathBuf;

fn data(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny").join(variant)
}

fn check_variant(variant: &str) {
    let dir = data(variant);
    let reference = dir.join("reference.safetensors");
    let (_, ids) = read(&reference, "input_ids");
    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    let (lshape, want) = read(&reference, "logits");
    let vocab = lshape[1];
    let (_, greedy) = read(&reference, "greedy_ids");
    let greedy: Vec<u32> = greedy.iter().map(|&v| v as u32).collect();
    let tmp = tempfile::tempdir().unwrap();

    let f32_path = convert_to(&dir, QuantChoice::F32, tmp.path());
    let file = ModelFile::open(&f32_path).unwrap();
    let model = Model::new(&file).unwrap();
    let mut cache = model.new_cache(64);
    let got = model.forward(&mut cache, &ids, Logits::All).unwrap();
    assert_eq!(got.len(), want.len());
    let max_diff = got.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(max_diff <= 1e-3, "{variant}: max |Δlogit| = {max_diff}");
    // Greedy continuation through the KV cache, one token at a time.
    let mut cache = model.new_cache(64);
    let mut sampler = Sampler::new(SamplerConfig::default()).unwrap();
    let (out, _) = generate(&model, &mut cache, &ids, greedy.len(), &mut sampler, &[], |_| true).unwrap();
    assert_eq!(out, greedy, "{variant}: greedy continuation differs");
    let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();

    // Random weights with a large spread quantize worse than trained ones: these bounds catch a
    // broken scheme (several nats), not a small regression; the measured values are printed.
    for (quant, bound) in [(QuantChoice::Int8, 0.02), (QuantChoice::Nf4, 1.0)] {
        let path = convert_to(&dir, quant, tmp.path());
        let file = ModelFile::open(&path).unwrap();
        // The exact float path (prefill), and the integer 4-bit route both as prefill (tiles of
        // tokens) and as decode (every position fed one token at a time). `fourbit_exact` does
        // nothing to int8, which runs prefill and decode only.
        let runs: &[(bool, bool)] = match quant {
            QuantChoice::Nf4 => &[(true, false), (false, false), (false, true)],
            _ => &[(true, false), (false, true)],
        };
        let mut kl_exact = f64::NAN;
        for &(exact, one_by_one) in runs {
            let mut model = Model::new(&file).unwrap();
            model.set_options(lowbit_kernels::MatmulOptions { fourbit_exact: exact, ..model.options() });
            let mut cache = model.new_cache(64);
            let got: Vec<f32> = if one_by_one {
                ids.iter().flat_map(|&t| model.forward(&mut cache, &[t], Logits::Last).unwrap()).collect()
            } else {
                model.forward(&mut cache, &ids, Logits::All).unwrap()
            };
            let kl = mean_kl(&want32, &got, vocab);
            let top1 = (0..ids.len())
                .filter(|&r| argmax(&got[r * vocab..(r + 1) * vocab]) == argmax(&want32[r * vocab..(r + 1) * vocab]))
                .count();
            eprintln!(
                "{variant} {} (exact 4-bit path: {exact}, one token at a time: {one_by_one}): mean KL {kl:.5}, top-1 {top1}/{}",
                quant.label(),
                ids.len()
            );
            assert!(kl < bound, "{variant} {}: mean KL {kl} ≥ {bound}", quant.label());
            if exact {
                kl_exact = kl;
            } else if quant == QuantChoice::Nf4 {
                // What the integer route may cost over the exact path on the same file: the bound
                // above cannot see that. It grows with the quantization noise already there:
                // with the default (searched) 4-bit scales, −0.001 to +0.0023 nats on the models
                // whose nf4 KL is 0.06–0.15, +0.011 on `tied`, whose nf4 KL is 0.50 (2.3 %).
                assert!(kl <= kl_exact * 1.05 + 0.005, "{variant} nf4 integer route: mean KL {kl} vs exact {kl_exact}");
            }
        }
    }
}

macro_rules! variants {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check_variant(stringify!($name));
        }
    )*};
}

variants!(swa, gqa1, h96, bf16, tied, theta1e6);

/// Models quantized by bitsandbytes through transformers (scripts/make_bnb_checkpoints.py, on
/// CPU, compute dtype float32) against the logits transformers computed with them: our
/// conversion of those checkpoints reproduces them to float32 summation-order noise (measured
/// ≤ 1e-5; bound 1e-4 on logits of spread ≈ 1), int8 outlier decomposition included. 4-bit
/// weights run the exact float path here (what bitsandbytes computes); the faster integer route
/// is held to KL bounds in `check_variant`.
#[test]
fn bitsandbytes_models_match_transformers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../converter/tests/data/bnb");
    let tmp = tempfile::tempdir().unwrap();
    for (variant, bound) in [("nf4_dq", 1e-4), ("nf4", 1e-4), ("fp4_dq", 1e-4), ("int8", 1e-4)] {
        let dir = root.join(variant);
        let reference = dir.join("reference.safetensors");
        let (_, ids) = read(&reference, "input_ids");
        let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
        let (_, want) = read(&reference, "logits");
        let out = tmp.path().join(format!("{variant}.lowbit"));
        lowbit_convert::convert(&dir, &out, &Default::default(), &|_| {}).unwrap();
        let file = ModelFile::open(&out).unwrap();
        let mut model = Model::new(&file).unwrap();
        model.set_options(lowbit_kernels::MatmulOptions { fourbit_exact: true, ..model.options() });
        let mut cache = model.new_cache(64);
        let got = model.forward(&mut cache, &ids, Logits::All).unwrap();
        let max_diff = got.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        eprintln!("{variant}: max |Δlogit| vs transformers+bitsandbytes = {max_diff:.2e}");
        assert!(max_diff <= bound, "{variant}: max |Δlogit| = {max_diff}");
    }
}
