//! Batch invariance: sequences decoding together in one `forward_decode` get, at every step,
//! the same logits bit for bit as each decoding alone through `forward` — for every scheme, for a
//! sliding-window model whose ring wraps mid-batch, for grouped-query heads and tied embeddings,
//! and for the real SmolLM2 converted to nf4, int8 and q8.

mod common;

use lowbit_convert::QuantChoice;
use lowbit_format::ModelFile;
use lowbit_runtime::{KvCache, KvType, Logits, Model};
use std::path::PathBuf;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Prefills `prompts` one by one and, into other caches, all of two tokens or more in one
/// `forward_prompts` (asking every other prompt for all its logits): each prompt's logits must
/// be those it gets alone. Then decodes `steps` greedy tokens for all of them together (from the
/// jointly filled caches) and, from the caches filled one by one, for each alone; every step's
/// logits must be identical.
fn check(model: &Model, prompts: &[Vec<u32>], steps: usize, what: &str) {
    let vocab = model.config.vocab_size;
    let mut alone: Vec<KvCache> = Vec::new();
    let mut next = Vec::new();
    for p in prompts {
        let mut cache = model.new_cache(256);
        let logits = model.forward(&mut cache, p, Logits::Last).unwrap();
        next.push(common::argmax(&logits) as u32);
        alone.push(cache);
    }
    let mut together: Vec<KvCache> = prompts.iter().map(|_| model.new_cache(256)).collect();
    let long: Vec<usize> = (0..prompts.len()).filter(|&i| prompts[i].len() > 1).collect();
    let which: Vec<Logits> = (0..long.len()).map(|j| if j % 2 == 1 { Logits::All } else { Logits::Last }).collect();
    {
        let mut caches: Vec<&mut KvCache> =
            together.iter_mut().enumerate().filter(|(i, _)| long.contains(i)).map(|(_, c)| c).collect();
        let toks: Vec<&[u32]> = long.iter().map(|&i| &prompts[i][..]).collect();
        let joint = model.forward_prompts(&mut caches, &toks, &which).unwrap();
        for ((&i, w), got) in long.iter().zip(&which).zip(&joint) {
            let want = model.forward(&mut model.new_cache(256), &prompts[i], *w).unwrap();
            assert!(bits(got) == bits(&want), "{what}: prompt {i} ({w:?}) differs prefilled beside the others");
        }
    }
    for (i, cache) in together.iter_mut().enumerate().filter(|(i, _)| !long.contains(i)) {
        model.forward(cache, &prompts[i], Logits::Last).unwrap();
    }
    for step in 0..steps {
        let mut refs: Vec<&mut KvCache> = together.iter_mut().collect();
        let batch = model.forward_decode(&mut refs, &next).unwrap();
        assert_eq!(batch.len(), prompts.len() * vocab);
        for (i, cache) in alone.iter_mut().enumerate() {
            let one = model.forward(cache, &[next[i]], Logits::Last).unwrap();
            let row = &batch[i * vocab..(i + 1) * vocab];
            assert!(bits(row) == bits(&one), "{what}: sequence {i} differs at step {step}");
        }
        for (i, row) in batch.chunks(vocab).enumerate() {
            next[i] = common::argmax(row) as u32;
        }
    }
    for (a, b) in together.iter().zip(&alone) {
        assert_eq!(a.len, b.len);
    }
}

fn tiny(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny").join(variant)
}

#[test]
fn tiny_models_decode_the_same_in_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Prompts of different lengths, so the sequences sit at different positions (and, with
    // the window of 5, at different places in their rings).
    // Nine of them: a group of eight (the eight-token kernels) and one more.
    let mut prompts: Vec<Vec<u32>> =
        vec![vec![1, 5, 9], vec![2, 7, 11, 13, 17, 19, 23], vec![4], vec![3, 8, 30, 31, 6]];
    prompts.extend((0..5u32).map(|i| (i..i + 2 + i).map(|t| (t * 7 + 3) % 32).collect::<Vec<u32>>()));
    for variant in ["swa", "gqa1", "tied"] {
        for quant in [
            QuantChoice::F32,
            QuantChoice::Bf16,
            QuantChoice::Nf4,
            QuantChoice::Nf4Small,
            QuantChoice::Fp4,
            QuantChoice::Int8,
            QuantChoice::Q8,
        ] {
            let sub = dir.path().join(format!("{variant}-{}", quant.label()));
            std::fs::create_dir_all(&sub).unwrap();
            let path = common::convert_to(&tiny(variant), quant, &sub);
            let file = ModelFile::open(&path).unwrap();
            let mut model = Model::new(&file).unwrap();
            check(&model, &prompts, 12, &format!("{variant} {}", quant.label()));
            // The f16 and q8 caches too (their rows are converted per head before the same
            // kernels).
            for kv in [KvType::F16, KvType::Q8] {
                model.set_kv_type(kv);
                check(&model, &prompts, 12, &format!("{variant} {} kv {}", quant.label(), kv.name()));
            }
        }
    }
}

#[test]
fn decode_step_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::convert_to(&tiny("gqa1"), QuantChoice::F32, dir.path());
    let file = ModelFile::open(&path).unwrap();
    let model = Model::new(&file).unwrap();
    let (mut a, mut b) = (model.new_cache(4), model.new_cache(4));
    assert!(model.forward_decode(&mut [&mut a, &mut b], &[1]).is_err(), "one token for two caches");
    assert!(model.forward_decode(&mut [&mut a], &[u32::MAX]).is_err(), "token outside the vocabulary");
    model.forward(&mut b, &[1, 2, 3, 4], Logits::Last).unwrap();
    assert!(model.forward_decode(&mut [&mut a, &mut b], &[1, 1]).is_err(), "a full cache");
    assert_eq!(a.len, 0, "a refused step leaves every cache as it was");
    assert!(model.forward_decode(&mut [], &[]).unwrap().is_empty());
    // A joint prefill: one cache and choice per prompt, two tokens or more each, room in every
    // cache; a refused pass leaves every cache as it was.
    let (mut c, mut d) = (model.new_cache(4), model.new_cache(4));
    let two: &[u32] = &[1, 2];
    assert!(model.forward_prompts(&mut [&mut c], &[two, two], &[Logits::Last; 2]).is_err(), "two prompts, one cache");
    assert!(model.forward_prompts(&mut [&mut c, &mut d], &[two, &[1]], &[Logits::Last; 2]).is_err(), "one token");
    assert!(model.forward_prompts(&mut [&mut c, &mut d], &[two, two], &[Logits::Last]).is_err(), "one choice");
    assert!(
        model.forward_prompts(&mut [&mut c, &mut d], &[two, &[1, 2, 3, 4, 5]], &[Logits::Last; 2]).is_err(),
        "a prompt past its cache"
    );
    assert!(
        model.forward_prompts(&mut [&mut c, &mut d], &[two, &[1, 99_999]], &[Logits::Last; 2]).is_err(),
        "bad token"
    );
    assert_eq!((c.len, d.len), (0, 0));
    let out = model.forward_prompts(&mut [&mut c, &mut d], &[two, &[3, 4, 5]], &[Logits::Last, Logits::All]).unwrap();
    assert_eq!((out[0].len(), out[1].len()), (model.config.vocab_size, 3 * model.config.vocab_size));
    assert_eq!((c.len, d.len), (2, 3));
}

#[test]
fn smollm2_decodes_the_same_in_a_batch() {
    let Some(gguf) = std::env::var_os("LOWBIT_SMOLLM2").map(PathBuf::from) else {
        eprintln!("SKIPPED: LOWBIT_SMOLLM2 is not set (scripts/test.sh sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prompts: Vec<Vec<u32>> = vec![
        (1..40).collect(),
        vec![504, 3458, 282, 4649, 314],
        (200..207).collect(),
        vec![9, 10],
        (1000..1100).step_by(3).collect(),
    ];
    // Eleven: a group of eight (the eight-token kernels), a pair and one more.
    let mut prompts = prompts;
    prompts.extend((0..6u32).map(|i| (300 + 50 * i..310 + 53 * i).collect::<Vec<u32>>()));
    for quant in [QuantChoice::Nf4, QuantChoice::Nf4Small, QuantChoice::Int8, QuantChoice::Q8] {
        let path = common::convert_to(&gguf, quant, dir.path());
        let file = ModelFile::open(&path).unwrap();
        let model = Model::new(&file).unwrap();
        check(&model, &prompts, 6, &format!("SmolLM2 {}", quant.label()));
    }
}

/// A context longer than one decode attention piece (512 keys): decoding token by token after
/// a long prompt gives, within float rounding, the logits one pass over the whole text gives (the
/// pieces' partial softmaxes merge into the whole one), and a sequence that long decodes beside a
/// short one with the bits it has alone.
#[test]
fn long_contexts_decode_in_pieces() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["gqa1", "tied"] {
        let path = common::convert_to(&tiny(variant), QuantChoice::F32, dir.path());
        let file = ModelFile::open(&path).unwrap();
        let model = Model::new(&file).unwrap();
        let vocab = model.config.vocab_size;
        let text: Vec<u32> = (0..1100u32).map(|i| (i * 37 + i / 7) % 250 + 1).collect();
        let (head, tail) = text.split_at(1090);
        let whole = model.forward(&mut model.new_cache(1200), &text, Logits::All).unwrap();
        let mut cache = model.new_cache(1200);
        model.forward(&mut cache, head, Logits::Last).unwrap();
        let mut short = model.new_cache(1200);
        model.forward(&mut short, &[5, 6, 7], Logits::Last).unwrap();
        for (i, &t) in tail.iter().enumerate() {
            let mut alone = cache.clone();
            let one = model.forward(&mut alone, &[t], Logits::Last).unwrap();
            let want = &whole[(1090 + i) * vocab..(1091 + i) * vocab];
            let worst = one.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-3, "{variant} position {}: |Δlogit| {worst}", 1090 + i);
            let batch = model.forward_decode(&mut [&mut cache, &mut short], &[t, 9]).unwrap();
            assert!(
                bits(&batch[..vocab]) == bits(&one),
                "{variant} position {}: differs beside a short sequence",
                1090 + i
            );
        }
    }
}
