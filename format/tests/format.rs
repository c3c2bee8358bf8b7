//! Round trips and hostile files: every bad field gives its typed error, never a panic.

use lowbit_format::*;
use proptest::prelude::*;
use std::path::Path;

fn meta() -> Metadata {
    Metadata {
        architecture: "mistral".into(),
        config: serde_json::json!({"model_type": "mistral", "hidden_size": 8}),
        tokenizer_json: Some("{}".into()),
        tokenizer_config: None,
        chat_template: Some("{{ messages }}".into()),
        generation_config: None,
        quantization: QuantSettings::default(),
        converter: ConverterInfo { name: "test".into(), version: "0".into() },
        sources: vec![],
    }
}

fn specs() -> Vec<TensorSpec> {
    let nf4 = Scheme::FourBit {
        kind: FourBitKind::Nf4,
        blocksize: 64,
        nested: Some(Nested { blocksize: 256 }),
        orig_dtype: "bfloat16".into(),
    };
    let fp4 = Scheme::FourBit { kind: FourBitKind::Fp4, blocksize: 128, nested: None, orig_dtype: "float16".into() };
    vec![
        TensorSpec { name: "a.f32".into(), scheme: Scheme::F32, shape: vec![3, 5] },
        TensorSpec { name: "b.f16".into(), scheme: Scheme::F16, shape: vec![7] },
        TensorSpec { name: "c.bf16".into(), scheme: Scheme::Bf16, shape: vec![2, 3, 4] },
        TensorSpec { name: "d.int8".into(), scheme: Scheme::Int8, shape: vec![4, 100] },
        TensorSpec { name: "e.nf4".into(), scheme: nf4, shape: vec![1024, 1100] },
        TensorSpec { name: "f.fp4".into(), scheme: fp4, shape: vec![3, 63] },
    ]
}

/// Deterministic bytes for part `p` of tensor `t`.
fn fill(t: usize, p: usize, len: u64) -> Vec<u8> {
    (0..len).map(|i| (i as usize * 31 + t * 7 + p * 13) as u8).collect()
}

fn write_file(path: &Path) {
    let w = Writer::create(path, meta(), specs()).unwrap();
    let plan: Vec<Vec<u64>> = w.tensors().iter().map(|t| t.parts.iter().map(|p| p.len).collect()).collect();
    // Several threads, reverse order: placement is fixed up front.
    std::thread::scope(|s| {
        for (i, lens) in plan.iter().enumerate().rev() {
            let w = &w;
            s.spawn(move || {
                let data: Vec<Vec<u8>> = lens.iter().enumerate().map(|(p, &l)| fill(i, p, l)).collect();
                let parts: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                w.write_tensor(i, &parts).unwrap();
            });
        }
    });
    w.finish().unwrap();
}

#[test]
fn round_trip_every_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    write_file(&path);
    let f = ModelFile::open(&path).unwrap();
    assert_eq!(f.metadata(), &meta());
    assert!(f.verify().is_empty());
    for (i, spec) in specs().iter().enumerate() {
        let t = f.tensor(&spec.name).unwrap();
        assert_eq!(t.info.shape, spec.shape);
        assert_eq!(t.info.offset % if t.info.length >= 1 << 20 { 4096 } else { 64 }, 0);
        for (p, layout) in spec.scheme.parts(&spec.name, &spec.shape).unwrap().iter().enumerate() {
            assert_eq!(
                t.part(layout.name).unwrap(),
                fill(i, p, layout.len).as_slice(),
                "{} {}",
                spec.name,
                layout.name
            );
        }
    }
    assert!(f.tensor("nope").is_none());
    assert_eq!(f.tensor("a.f32").unwrap().part_f32("data").unwrap().len(), 15);
    assert!(matches!(f.tensor("a.f32").unwrap().part("cb"), Err(FormatError::NoSuchPart { .. })));
    // Nothing but the output is left in the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    {
        let w = Writer::create(&path, meta(), specs()).unwrap();
        w.write_tensor(0, &[&[0u8; 60]]).unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let w = Writer::create(&path, meta(), specs()).unwrap();
    assert!(matches!(w.write_tensor(0, &[&[0u8; 59]]), Err(FormatError::LengthMismatch { .. })));
    assert!(w.write_tensor(99, &[]).is_err());
    assert!(matches!(w.finish(), Err(FormatError::Writer(_))));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let dup = vec![specs()[0].clone(), specs()[0].clone()];
    assert!(matches!(Writer::create(&path, meta(), dup), Err(FormatError::DuplicateTensor(_))));
    assert!(Writer::create(&dir.path().join("missing/x.lowbit"), meta(), specs()).is_err());
}

fn valid_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    write_file(&path);
    std::fs::read(path).unwrap()
}

/// Rewrites the header JSON with `edit` applied (keeping the data section where it is).
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let hlen = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&bytes[24..24 + hlen]).unwrap();
    edit(&mut h);
    let mut json = serde_json::to_vec(&h).unwrap();
    assert!(json.len() <= hlen, "edited header must fit");
    json.resize(hlen, b' ');
    let mut out = bytes.to_vec();
    out[24..24 + hlen].copy_from_slice(&json);
    out
}

#[test]
fn hostile_files_give_typed_errors() {
    let good = valid_bytes();
    assert!(ModelFile::parse(&good).is_ok());
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::BadMagic)));
    let mut b = good.clone();
    b[8] = 9;
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::UnsupportedVersion(9))));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::HeaderTooLarge(_))));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(good.len() as u64).to_le_bytes());
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::Truncated { .. })));
    let mut b = good.clone();
    b[30] = 0xFF;
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::Header(_))));
    assert!(matches!(ModelFile::parse(&good[..10]), Err(FormatError::Truncated { .. })));
    // Truncated after writing: the last tensor no longer fits.
    assert!(matches!(ModelFile::parse(&good[..good.len() - 1]), Err(FormatError::OutOfBounds { .. })));
    let b = with_header(&good, |h| h["tensors"][0]["offset"] = serde_json::json!(u64::MAX - 3));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::OutOfBounds { .. })));
    let b = with_header(&good, |h| h["tensors"][0]["offset"] = serde_json::json!(16));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::OutOfBounds { .. })));
    let b = with_header(&good, |h| {
        let off = h["tensors"][1]["offset"].as_u64().unwrap();
        h["tensors"][1]["offset"] = serde_json::json!(off + 1)
    });
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::Misaligned { .. })));
    let b = with_header(&good, |h| h["tensors"][1]["offset"] = h["tensors"][0]["offset"].clone());
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::Overlap { .. })));
    let b = with_header(&good, |h| h["tensors"][0]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::BadShape { .. })));
    let b = with_header(&good, |h| h["tensors"][0]["shape"] = serde_json::json!([3, 0]));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::BadShape { .. })));
    let b = with_header(&good, |h| h["tensors"][0]["shape"] = serde_json::json!([3, 6]));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::LengthMismatch { .. })));
    let b = with_header(&good, |h| h["tensors"][0]["scheme"] = serde_json::json!({"type": "q9_9"}));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::Header(_))));
    let b = with_header(&good, |h| h["tensors"][1]["name"] = h["tensors"][0]["name"].clone());
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::DuplicateTensor(_))));
    let b = with_header(&good, |h| h["tensors"][0]["crc32"] = serde_json::json!("xyz"));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::BadChecksum { .. })));
    let b = with_header(&good, |h| h["tensors"][4]["scheme"]["blocksize"] = serde_json::json!(48));
    assert!(matches!(ModelFile::parse(&b), Err(FormatError::BadScheme { .. })));
}

#[test]
fn verify_names_the_corrupted_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    write_file(&path);
    let f = ModelFile::open(&path).unwrap();
    let off = f.tensor("d.int8").unwrap().info.offset as usize;
    drop(f);
    let mut b = std::fs::read(&path).unwrap();
    b[off + 3] ^= 0x40;
    std::fs::write(&path, &b).unwrap();
    let bad = ModelFile::open(&path).unwrap().verify();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].name, "d.int8");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn mutated_files_never_panic(flips in prop::collection::vec((0usize..8192, any::<u8>()), 1..8), cut in any::<Option<usize>>()) {
        let mut b = VALID.with(|v| v.clone());
        for (at, val) in flips {
            let n = b.len();
            b[at % n] = val;
        }
        if let Some(c) = cut {
            let n = b.len();
            b.truncate(c % n);
        }
        let _ = ModelFile::parse(&b);
    }
}

thread_local! {
    static VALID: Vec<u8> = valid_bytes();
}
