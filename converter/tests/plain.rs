//! Plain (unquantized) checkpoints built in the test, converted to every scheme and read back
//! with lowbit-format's reader: names, schemes and shapes; 4-bit and int8 data equal to the
//! kernels' quantizers run on the source; dense tensors bit-exact; metadata carrying config,
//! tokenizer, chat template, generation config and source digests.

mod common;

use common::*;
use lowbit_convert::{convert, ConvertOptions, HeadChoice, ProgressEvent, QuantChoice};
use lowbit_format::{FourBitKind, ModelFile, Nested, Scheme};
use lowbit_kernels::{quantize_4bit, quantize_int8, Absmax, FourBitOptions, NestedRule};
use safetensors::Dtype;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

const LINEAR: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn is_linear(name: &str) -> bool {
    name.ends_with(".weight") && LINEAR.iter().any(|l| name.contains(&format!(".{l}.")))
}

fn dense_scheme(d: Dtype) -> Scheme {
    match d {
        Dtype::F16 => Scheme::F16,
        Dtype::BF16 => Scheme::Bf16,
        _ => Scheme::F32,
    }
}

fn kernel_kind(k: FourBitKind) -> lowbit_kernels::FourBitKind {
    match k {
        FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4,
        FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4,
    }
}

/// Checks every tensor of `out` against the source values (as read back from `dtype`).
fn check_tensors(out: &Path, tiny: &Tiny, dtype: Dtype, o: &ConvertOptions) {
    let f = ModelFile::open(out).unwrap();
    assert!(f.verify().is_empty(), "checksums");
    let names: BTreeSet<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    let want: BTreeSet<&str> = tiny.tensors.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, want);
    let layers = f.metadata().config["num_hidden_layers"].as_u64().unwrap() as usize;
    for (name, shape, x) in &tiny.tensors {
        let t = f.tensor(name).unwrap();
        assert_eq!(t.info.shape, shape.iter().map(|&d| d as u64).collect::<Vec<_>>(), "{name}");
        let src = round_trip(x, dtype);
        let quantized = is_linear(name) || (o.quantize_all && (name.contains("embed") || name.contains("lm_head")));
        let tied = !tiny.tensors.iter().any(|t| t.0 == "lm_head.weight");
        let head = name == "lm_head.weight" || (tied && name == "model.embed_tokens.weight");
        let expect_scheme = match o.quant {
            QuantChoice::F16 => Scheme::F16,
            QuantChoice::Bf16 => Scheme::Bf16,
            QuantChoice::F32 => Scheme::F32,
            // The 8-bit head: block int8 where its rows are whole blocks of 32, LLM.int8 otherwise.
            _ if head && !quantized && o.head == HeadChoice::Int8 && shape[1] % 32 == 0 => Scheme::Q8 { blocksize: 32 },
            _ if head && !quantized && o.head == HeadChoice::Int8 => Scheme::Int8,
            _ if !quantized => dense_scheme(dtype),
            QuantChoice::Int8 => Scheme::Int8,
            QuantChoice::Q8 => Scheme::Q8 { blocksize: 32 },
            // q5-mix's 8-bit weights (v_proj) in blocks of 64 where the rows hold them.
            QuantChoice::Q5Mix if o.eight_bit(name, layers) && shape[1] % 64 == 0 => Scheme::Q8 { blocksize: 64 },
            QuantChoice::Q5 | QuantChoice::Q5Mix if !o.eight_bit(name, layers) && shape[1] % 32 == 0 => {
                Scheme::Q5 { blocksize: 32 }
            }
            // A recipe's 8-bit weights (nf4: v_proj, the last layer's MLP).
            _ if o.eight_bit(name, layers) && shape[1] % 32 == 0 => Scheme::Q8 { blocksize: 32 },
            _ if o.eight_bit(name, layers) => Scheme::Int8,
            // Its 5-bit ones (nf4: k_proj, the first and second-to-last layers' MLPs).
            _ if o.five_bit(name, layers) && shape[1] % 32 == 0 => Scheme::Q5 { blocksize: 32 },
            q => Scheme::FourBit {
                kind: if q == QuantChoice::Fp4 { FourBitKind::Fp4 } else { FourBitKind::Nf4 },
                blocksize: o.blocksize as u32,
                nested: o.double_quant.then_some(Nested { blocksize: 256 }),
                orig_dtype: match dtype {
                    Dtype::F16 => "float16",
                    Dtype::BF16 => "bfloat16",
                    _ => "float32",
                }
                .into(),
            },
        };
        assert_eq!(t.info.scheme, expect_scheme, "{name}");
        match &t.info.scheme {
            Scheme::F32 => assert!(t.part("data").unwrap() == encode(&src, Dtype::F32), "{name}: f32 bits"),
            Scheme::F16 => assert!(t.part("data").unwrap() == encode(&src, Dtype::F16), "{name}: f16 bits"),
            Scheme::Bf16 => assert!(t.part("data").unwrap() == encode(&src, Dtype::BF16), "{name}: bf16 bits"),
            Scheme::Int8 => {
                let q = quantize_int8(&src, shape[0], shape[1]).unwrap();
                let cb: Vec<u8> = q.cb.iter().map(|&v| v as u8).collect();
                assert!(t.part("cb").unwrap() == cb, "{name}: int8 codes");
                assert_eq!(f32s(t.part("scb").unwrap()), q.scb, "{name}: SCB");
            }
            Scheme::Q8 { blocksize } => {
                let q = lowbit_kernels::q8::quantize(&src, shape[0], shape[1], *blocksize as usize).unwrap();
                let qs: Vec<u8> = q.qs.iter().map(|&v| v as u8).collect();
                assert!(t.part("qs").unwrap() == qs, "{name}: q8 values");
                let scales: Vec<u8> = q.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                assert!(t.part("scales").unwrap() == scales, "{name}: q8 scales");
            }
            Scheme::Q5 { .. } => {
                let q = lowbit_kernels::q5::quantize(&src, shape[0], shape[1], None).unwrap();
                assert!(t.part("qs").unwrap() == q.qs, "{name}: q5 nibbles");
                assert!(t.part("qh").unwrap() == q.qh, "{name}: q5 fifth bits");
                let scales: Vec<u8> = q.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                assert!(t.part("scales").unwrap() == scales, "{name}: q5 scales");
            }
            Scheme::FourBit { kind, blocksize, nested, .. } => {
                let q = quantize_4bit(
                    &src,
                    &FourBitOptions {
                        kind: kernel_kind(*kind),
                        blocksize: *blocksize as usize,
                        double_quant: nested.is_some(),
                        nested_rule: o.nested_rule,
                        scale_search: !o.bnb_exact,
                    },
                )
                .unwrap();
                assert!(t.part("codes").unwrap() == q.codes, "{name}: 4-bit codes");
                match q.absmax {
                    Absmax::F32(a) => assert_eq!(f32s(t.part("absmax").unwrap()), a, "{name}: absmax"),
                    Absmax::Nested { codes, nested_absmax, offset, .. } => {
                        assert!(t.part("absmax").unwrap() == codes, "{name}: nested codes");
                        assert_eq!(f32s(t.part("nested_absmax").unwrap()), nested_absmax, "{name}: nested absmax");
                        assert_eq!(f32s(t.part("nested_offset").unwrap()), [offset], "{name}: offset");
                    }
                }
            }
        }
    }
}

#[test]
fn every_scheme_from_each_source_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = build(mistral(), 1);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let dir = tmp.path().join(format!("{dtype:?}"));
        write(&dir, &tiny, &Layout { dtype, ..Default::default() });
        for q in [
            QuantChoice::Nf4,
            QuantChoice::Nf4Small,
            QuantChoice::Fp4,
            QuantChoice::Int8,
            QuantChoice::Q8,
            QuantChoice::Q5,
            QuantChoice::Q5Mix,
            QuantChoice::F16,
            QuantChoice::Bf16,
            QuantChoice::F32,
        ] {
            let out = tmp.path().join(format!("{dtype:?}-{}.lowbit", q.label()));
            // The head stays in source precision so the bits/weight below are the scheme's own
            // (`int8_head_tied_and_untied` covers the int8 head).
            let o = ConvertOptions { head: HeadChoice::Source, ..opts(q) };
            let s = run(&dir, &out, &o).unwrap_or_else(|e| panic!("{dtype:?} {q:?}: {e}"));
            check_tensors(&out, &tiny, dtype, &o);
            assert!(s.warnings.is_empty(), "{:?}", s.warnings);
            assert_eq!(s.tensors, tiny.tensors.len());
            assert_eq!(s.output_bytes, std::fs::metadata(&out).unwrap().len());
            assert_eq!(s.params, tiny.tensors.iter().map(|t| t.2.len() as u64).sum::<u64>());
            let m = ModelFile::open(&out).unwrap().metadata().clone();
            assert_eq!(m.quantization.scheme, q.label());
            assert_eq!(m.quantization.source_format, "safetensors");
            let blocksize = match q {
                QuantChoice::Nf4 | QuantChoice::Nf4Small | QuantChoice::Fp4 => Some(64),
                QuantChoice::Q8 | QuantChoice::Q5 | QuantChoice::Q5Mix => Some(32),
                _ => None,
            };
            assert_eq!(m.quantization.blocksize, blocksize);
            match q {
                QuantChoice::Nf4Small | QuantChoice::Fp4 => {
                    // 4 bits + (1 byte + 4/256) per 64 → ≈ 4.13 bits, plus part padding.
                    let bpw = s.quantized_bits_per_weight().unwrap();
                    assert!((4.1..4.3).contains(&bpw), "{bpw}");
                }
                // Between: k_proj, v_proj and the last layer's MLP (in this tiny model, much of the
                // whole) in 8 bits.
                QuantChoice::Nf4 => assert!((4.3..8.5).contains(&s.quantized_bits_per_weight().unwrap())),
                QuantChoice::Int8 => assert!((8.0..8.6).contains(&s.quantized_bits_per_weight().unwrap())),
                // 8 bits + 16 per 32.
                QuantChoice::Q8 => assert!((8.5..8.8).contains(&s.quantized_bits_per_weight().unwrap())),
                // 5 bits + 16 per 32.
                QuantChoice::Q5 => assert!((5.5..5.8).contains(&s.quantized_bits_per_weight().unwrap())),
                // Between: v_proj in 8 bits.
                QuantChoice::Q5Mix => assert!((5.5..8.5).contains(&s.quantized_bits_per_weight().unwrap())),
                _ => assert_eq!(s.quantized_params, 0),
            }
        }
    }
}

#[test]
fn metadata_carries_config_tokenizer_and_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let tiny = build(mistral(), 2);
    write(&dir, &tiny, &Layout::default());
    std::fs::write(dir.join("chat_template.jinja"), "{{ 'from the jinja file' }}").unwrap();
    let out = tmp.path().join("m.lowbit");
    let s = run(&dir, &out, &opts(QuantChoice::Nf4)).unwrap();
    let f = ModelFile::open(&out).unwrap();
    let m = f.metadata();
    assert_eq!(m.architecture, "mistral");
    assert_eq!(m.config, tiny.config, "config stored verbatim (it already had model_type and rope_theta)");
    assert_eq!(m.tokenizer_json.as_deref(), Some(TOKENIZER));
    assert_eq!(m.tokenizer_config.as_ref().unwrap()["bos_token"], "<unk>");
    assert_eq!(m.chat_template.as_deref(), Some("{{ 'from the jinja file' }}"), "chat_template.jinja wins");
    assert_eq!(m.generation_config.as_ref().unwrap()["eos_token_id"], 2);
    assert_eq!(m.converter.name, "lowbit");
    assert_eq!(m.converter.version, env!("CARGO_PKG_VERSION"));
    assert_eq!((m.quantization.double_quant, m.quantization.int8_threshold), (true, 6.0));
    let files: BTreeSet<&str> = m.sources.iter().map(|d| d.file.as_str()).collect();
    let want = [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "model.safetensors",
    ];
    assert_eq!(files, want.into_iter().collect());
    let mut input = 0;
    for d in &m.sources {
        let bytes = std::fs::read(dir.join(&d.file)).unwrap();
        let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((d.sha256.as_str(), d.bytes), (hex.as_str(), bytes.len() as u64), "{}", d.file);
        input += d.bytes;
    }
    assert_eq!(s.input_bytes, input);
    assert!(s.elapsed.as_nanos() > 0);

    // Without a chat_template.jinja the template comes from tokenizer_config.json.
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let out2 = tmp.path().join("m2.lowbit");
    run(&dir, &out2, &opts(QuantChoice::Nf4)).unwrap();
    assert_eq!(ModelFile::open(&out2).unwrap().metadata().chat_template.as_deref(), Some(TEMPLATE));
}

#[test]
fn missing_tokenizer_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write(&dir, &build(mistral(), 3), &Layout { tokenizer: false, ..Default::default() });
    let out = tmp.path().join("m.lowbit");
    let s = run(&dir, &out, &opts(QuantChoice::Int8)).unwrap();
    assert!(s.warnings.iter().any(|w| w.contains("tokenizer.json")), "{:?}", s.warnings);
    let f = ModelFile::open(&out).unwrap();
    assert!(f.metadata().tokenizer_json.is_none() && f.metadata().chat_template.is_none());
}

#[test]
fn odd_shapes_tied_embeddings_and_rope_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = build(odd_llama(), 4);
    let dir = tmp.path().join("odd");
    write(&dir, &tiny, &Layout { dtype: Dtype::BF16, ..Default::default() });
    for (q, blocksize, double_quant) in [
        (QuantChoice::Nf4, 64, true),
        (QuantChoice::Fp4, 32, false),
        (QuantChoice::Nf4, 128, true),
        (QuantChoice::Int8, 64, true),
    ] {
        let out = tmp.path().join(format!("odd-{}-{blocksize}.lowbit", q.label()));
        let o = ConvertOptions { quant: q, blocksize, double_quant, ..Default::default() };
        run(&dir, &out, &o).unwrap();
        check_tensors(&out, &tiny, Dtype::BF16, &o);
        let f = ModelFile::open(&out).unwrap();
        let c = &f.metadata().config;
        assert_eq!(c["rope_theta"], 500000.0, "rope_parameters folded into rope_theta");
        assert_eq!(c["rope_parameters"]["rope_theta"], 500000.0, "original keys kept");
        assert!(f.tensor("lm_head.weight").is_none(), "tied: no lm_head");
        assert_eq!(f.metadata().architecture, "llama");
    }
}

/// `--head int8`: the head (lm_head, or the embedding when tied) becomes LLM.int8 rows equal to
/// the kernels' quantizer on the source; an untied embedding stays in its source precision.
#[test]
fn int8_head_tied_and_untied() {
    let tmp = tempfile::tempdir().unwrap();
    for (cfg, seed) in [(mistral(), 9), (odd_llama(), 10)] {
        let tiny = build(cfg, seed);
        let dir = tmp.path().join(format!("m{seed}"));
        write(&dir, &tiny, &Layout { dtype: Dtype::BF16, ..Default::default() });
        for q in [QuantChoice::Nf4, QuantChoice::Int8, QuantChoice::F16] {
            let o = ConvertOptions { quant: q, head: HeadChoice::Int8, ..Default::default() };
            let out = tmp.path().join(format!("h{seed}-{}.lowbit", q.label()));
            run(&dir, &out, &o).unwrap();
            check_tensors(&out, &tiny, Dtype::BF16, &o);
            let f = ModelFile::open(&out).unwrap();
            let eight = |s: &Scheme| matches!(s, Scheme::Int8 | Scheme::Q8 { .. });
            let heads = f.tensors().iter().filter(|t| eight(&t.scheme) && !is_linear(&t.name)).count();
            assert_eq!(heads, if q == QuantChoice::F16 { 0 } else { 1 }, "{seed} {q:?}");
        }
    }
}

#[test]
fn quantize_all_keep_patterns_and_nested_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = build(mistral(), 5);
    let dir = tmp.path().join("m");
    write(&dir, &tiny, &Layout::default());
    let o = ConvertOptions { quantize_all: true, nested_rule: NestedRule::CpuLut, ..Default::default() };
    let out = tmp.path().join("all.lowbit");
    run(&dir, &out, &o).unwrap();
    check_tensors(&out, &tiny, Dtype::F16, &o);

    let o =
        ConvertOptions { keep: vec!["*.down_proj.weight".into(), "layers.1.self_attn".into()], ..Default::default() };
    let out = tmp.path().join("keep.lowbit");
    run(&dir, &out, &o).unwrap();
    let f = ModelFile::open(&out).unwrap();
    for t in f.tensors() {
        let kept = t.name.ends_with("down_proj.weight")
            || t.name.contains("layers.1.self_attn")
            || (!is_linear(&t.name) && t.name != "lm_head.weight");
        assert_eq!(t.scheme.is_dense(), kept, "{}", t.name);
    }
    assert_eq!(f.metadata().quantization.kept, o.keep);
}

#[test]
fn qwen2_biases_are_kept_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = build(qwen2(), 6);
    let dir = tmp.path().join("q");
    write(&dir, &tiny, &Layout { dtype: Dtype::F32, ..Default::default() });
    let out = tmp.path().join("q.lowbit");
    let o = opts(QuantChoice::Nf4);
    run(&dir, &out, &o).unwrap();
    check_tensors(&out, &tiny, Dtype::F32, &o);
    let f = ModelFile::open(&out).unwrap();
    assert_eq!(f.tensor("model.layers.1.self_attn.k_proj.bias").unwrap().info.scheme, Scheme::F32);
    assert_eq!(f.metadata().architecture, "qwen2");
}

#[test]
fn sharded_equals_single_file_and_progress_adds_up() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = build(mistral(), 7);
    let (one, three) = (tmp.path().join("one"), tmp.path().join("three"));
    write(&one, &tiny, &Layout::default());
    write(&three, &tiny, &Layout { shards: 3, ..Default::default() });
    let (a, b) = (tmp.path().join("one.lowbit"), tmp.path().join("three.lowbit"));
    run(&one, &a, &opts(QuantChoice::Nf4)).unwrap();
    let events = Mutex::new(Vec::new());
    convert(&three, &b, &opts(QuantChoice::Nf4), &|e| events.lock().unwrap().push(e)).unwrap();
    let (fa, fb) = (ModelFile::open(&a).unwrap(), ModelFile::open(&b).unwrap());
    for t in fa.tensors() {
        assert!(fa.tensor(&t.name).unwrap().bytes == fb.tensor(&t.name).unwrap().bytes, "{}", t.name);
        assert_eq!(fb.tensor(&t.name).unwrap().info.scheme, t.scheme);
    }
    let shards: Vec<&str> =
        fb.metadata().sources.iter().map(|s| s.file.as_str()).filter(|f| f.starts_with("model")).collect();
    assert_eq!(
        shards,
        [
            "model.safetensors.index.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors"
        ]
    );
    // Progress: one Start with the total, then pieces adding up to it.
    let events = events.into_inner().unwrap();
    let ProgressEvent::Start { total_bytes } = events[0] else { panic!("first event is Start") };
    let done: u64 = events[1..]
        .iter()
        .map(|e| match e {
            ProgressEvent::Tensor { bytes, .. } => *bytes,
            ProgressEvent::Start { .. } => panic!("one Start"),
        })
        .sum();
    assert_eq!(done, total_bytes);
    let tensor_events = events
        .iter()
        .filter(|e| matches!(e, ProgressEvent::Tensor { name, .. } if !name.starts_with("sha256")))
        .count();
    assert_eq!(tensor_events, tiny.tensors.len());
}

#[test]
fn output_is_deterministic_and_replaces_an_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write(&dir, &build(mistral(), 8), &Layout::default());
    let out = tmp.path().join("m.lowbit");
    std::fs::write(&out, b"old").unwrap();
    run(&dir, &out, &opts(QuantChoice::Fp4)).unwrap();
    let first = std::fs::read(&out).unwrap();
    // One thread or many, same bytes.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| run(&dir, &out, &opts(QuantChoice::Fp4))).unwrap();
    assert!(std::fs::read(&out).unwrap() == first);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2, "no temporary files left");
}
