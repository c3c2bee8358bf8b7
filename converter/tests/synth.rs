//! Synthetic checkpoints (`lowbit synth`): the presets have the published tensor shapes, and a
//! shrunken one converts through the whole pipeline, sharded, with its tokenizer.

use lowbit_convert::{convert, ConvertOptions, QuantChoice};
use lowbit_format::ModelFile;
use std::path::Path;

fn run(
    src: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<lowbit_convert::ConvertSummary, lowbit_convert::ConvertError> {
    convert(src, out, opts, &|_| {})
}

fn opts(quant: QuantChoice) -> ConvertOptions {
    ConvertOptions { quant, ..Default::default() }
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
    assert_eq!(count("qwen2.5-14b"), 14_770_033_664);
    assert_eq!(count("smollm2-135m"), 134_515_008);
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

    // A synthetic adapter for the same shapes: every linear of both layers, merged at conversion
    // (recorded in the file) and loaded for run time.
    let adapter = tmp.path().join("adapter");
    let abytes = lowbit_convert::synth::synthesize_adapter(&cfg, &adapter, 4, 3, Some(2)).unwrap();
    // A: 4 × in, B: out × 4 for q, k, v, o (128/64 rows) and gate, up, down, in bf16.
    let per_layer = 4 * ((128 + 128) + (128 + 64) * 2 + (128 + 128) + (128 + 256) * 3);
    assert_eq!(abytes, 2 * 2 * per_layer as u64);
    let spec = lowbit_convert::lora::LoraSpec { dir: adapter.clone(), scale: 1.0 };
    let merged = tmp.path().join("m.lowbit");
    run(&dir, &merged, &ConvertOptions { lora: vec![spec.clone()], ..opts(QuantChoice::Nf4) }).unwrap();
    assert_eq!(ModelFile::open(&merged).unwrap().metadata().adapters.len(), 1);
    let (_, deltas) = lowbit_convert::lora::load_for_file(&spec, &f).unwrap();
    assert_eq!(deltas.len(), 2 * 7);
    assert!(lowbit_convert::synth::synthesize_adapter(&cfg, &adapter, 0, 3, None).is_err());
}
