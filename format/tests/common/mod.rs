//! Helpers shared by the integration tests: metadata, a spec list covering every scheme, a
//! deterministic RNG, a multi-threaded writer driver and header surgery for hostile files.
#![allow(dead_code)]

use lowbit_format::*;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn meta() -> Metadata {
    Metadata {
        architecture: "mistral".into(),
        config: serde_json::json!({"model_type": "mistral", "hidden_size": 8, "rope_theta": 1e6}),
        tokenizer_json: Some("{\"model\": {\"type\": \"BPE\"}, \"note\": \"quotes \\\" and é\"}".into()),
        tokenizer_config: Some(serde_json::json!({"bos_token": "<s>"})),
        chat_template: Some("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        generation_config: None,
        quantization: QuantSettings {
            scheme: "nf4".into(),
            blocksize: Some(64),
            double_quant: true,
            int8_threshold: 6.0,
            kept: vec!["lm_head".into(), "*norm*".into()],
            source_format: "safetensors".into(),
        },
        converter: ConverterInfo { name: "test".into(), version: "0".into() },
        sources: vec![SourceDigest { file: "model.safetensors".into(), bytes: 123, sha256: "ab".repeat(32) }],
        adapters: vec![AdapterRecord { name: "my-lora".into(), sha256: "cd".repeat(32), scale: 0.5 }],
    }
}

pub fn nf4(blocksize: u32, nested: bool) -> Scheme {
    Scheme::FourBit {
        kind: FourBitKind::Nf4,
        blocksize,
        nested: nested.then_some(Nested { blocksize: 256 }),
        orig_dtype: "bfloat16".into(),
    }
}

pub fn fp4(blocksize: u32, nested: bool) -> Scheme {
    Scheme::FourBit {
        kind: FourBitKind::Fp4,
        blocksize,
        nested: nested.then_some(Nested { blocksize: 256 }),
        orig_dtype: "float16".into(),
    }
}

fn spec(name: &str, scheme: Scheme, shape: &[u64]) -> TensorSpec {
    TensorSpec { name: name.into(), scheme, shape: shape.to_vec() }
}

/// Every scheme, odd sizes, an empty dense tensor, and tensors ≥ 1 MiB (page-aligned) placed
/// after small ones (so the 4096 rule actually has to move them).
pub fn specs() -> Vec<TensorSpec> {
    vec![
        spec("a.f32", Scheme::F32, &[3, 5]),
        spec("b.f16", Scheme::F16, &[7]),
        spec("c.bf16", Scheme::Bf16, &[2, 3, 4]),
        spec("d.int8", Scheme::Int8, &[4, 100]),
        spec("e.nf4", nf4(64, true), &[1024, 1100]),
        spec("f.fp4", fp4(128, false), &[3, 63]),
        spec("g.big_f32", Scheme::F32, &[512, 600]),
        spec("h.empty", Scheme::F32, &[0, 4]),
        spec("i.nf4_big", nf4(128, false), &[2048, 1100]),
        spec("j.fp4_nested", fp4(32, true), &[2, 3, 5, 700]),
        spec("k.bf16_big", Scheme::Bf16, &[1024, 513]),
    ]
}

/// SplitMix64: tiny, deterministic, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, len: u64) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Random bytes for every part of every planned tensor (seeded by tensor index, so the data does
/// not depend on write order).
pub fn part_data(plan: &[PlannedTensor], seed: u64) -> Vec<Vec<Vec<u8>>> {
    plan.iter()
        .enumerate()
        .map(|(i, t)| {
            let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0x1234_5678_9abc_def1));
            t.parts.iter().map(|p| rng.bytes(p.len)).collect()
        })
        .collect()
}

/// Writes `specs` to `path` from `threads` threads taking tensors in a shuffled order (`order_seed`);
/// returns the bytes written per tensor and part, and the summary.
pub fn write_file_with(
    path: &Path,
    specs: Vec<TensorSpec>,
    threads: usize,
    order_seed: u64,
) -> (Vec<Vec<Vec<u8>>>, WriteSummary) {
    let w = Writer::create(path, meta(), specs).unwrap();
    let data = part_data(w.tensors(), 42);
    let mut order: Vec<usize> = (0..data.len()).collect();
    Rng(order_seed).shuffle(&mut order);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let parts: Vec<&[u8]> = data[i].iter().map(Vec::as_slice).collect();
                w.write_tensor(i, &parts).unwrap();
            });
        }
    });
    let summary = w.finish().unwrap();
    (data, summary)
}

pub fn write_file(path: &Path) -> Vec<Vec<Vec<u8>>> {
    write_file_with(path, specs(), 4, 7).0
}

/// A valid file's bytes (written through the real writer).
pub fn valid_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    write_file(&path);
    std::fs::read(path).unwrap()
}

/// A small valid file (one tensor of each scheme, all tiny): fast to parse thousands of times.
pub fn small_valid_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.lowbit");
    let mut m = meta();
    m.tokenizer_json = None;
    let specs = vec![
        spec("a", Scheme::F32, &[3, 5]),
        spec("b", Scheme::F16, &[7]),
        spec("c", Scheme::Bf16, &[0]),
        spec("d", Scheme::Int8, &[2, 3]),
        spec("e", nf4(64, true), &[3, 70]),
        spec("f", fp4(32, false), &[33]),
    ];
    let w = Writer::create(&path, m, specs).unwrap();
    for (i, parts) in part_data(w.tensors(), 9).iter().enumerate() {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        w.write_tensor(i, &parts).unwrap();
    }
    w.finish().unwrap();
    std::fs::read(path).unwrap()
}

pub fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize
}

/// The header JSON of a file.
pub fn header_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&bytes[24..24 + header_len(bytes)]).unwrap()
}

/// Rewrites the header JSON with `edit` applied, keeping its length (so the data section stays
/// where it is). Returns `None` if the edited header no longer fits.
pub fn try_with_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Option<Vec<u8>> {
    let hlen = header_len(bytes);
    let mut h = header_value(bytes);
    edit(&mut h);
    let mut json = serde_json::to_vec(&h).unwrap();
    if json.len() > hlen {
        return None;
    }
    json.resize(hlen, b' ');
    let mut out = bytes.to_vec();
    out[24..24 + hlen].copy_from_slice(&json);
    Some(out)
}

pub fn with_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    try_with_header(bytes, edit).expect("edited header must fit")
}

/// A file made from scratch: preamble, `json` as the header, zero padding to 4096, then `data`.
pub fn raw_file(json: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = b"LOWBIT\0\0".to_vec();
    b.extend(1u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend((json.len() as u64).to_le_bytes());
    b.extend(json);
    b.resize((b.len() as u64).next_multiple_of(4096) as usize, 0);
    b.extend(data);
    b
}
