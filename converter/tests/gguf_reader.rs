//! The GGUF reader against crafted and hostile files: every malformed input must be a typed
//! error naming what is wrong — never a panic, never an allocation sized by a lying header.

use lowbit_convert::gguf::{Array, GgmlType, GgufError, GgufFile, GgufModel, GgufWriter, Value};
use proptest::prelude::*;

/// A small valid file using every value type, a nested array, and two tensors. The last tensor's
/// data is exactly 32 bytes (one alignment unit), so the file ends where the data ends and every
/// strict prefix is missing something.
fn crafted() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("general.alignment", Value::U32(32))
        .kv("a.u8", Value::U8(7))
        .kv("a.i8", Value::I8(-7))
        .kv("a.u16", Value::U16(700))
        .kv("a.i16", Value::I16(-700))
        .kv("a.u32", Value::U32(70000))
        .kv("a.i32", Value::I32(-70000))
        .kv("a.u64", Value::U64(1 << 40))
        .kv("a.i64", Value::I64(-(1 << 40)))
        .kv("a.f32", Value::F32(0.5))
        .kv("a.f64", Value::F64(-0.25))
        .kv("a.bool", Value::Bool(true))
        .kv("a.str", Value::String("héllo".into()))
        .kv("a.strs", Value::Array(Array::String(vec!["x".into(), "".into(), "日本".into()])))
        .kv("a.floats", Value::Array(Array::F32(vec![1.0, -2.0])))
        .kv("a.nested", Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::Bool(vec![false, true])])));
    let q8: Vec<u8> =
        (0..2).flat_map(|b| [0x00, 0x3c].into_iter().chain((0..32).map(move |i| (i * 3 + b) as u8))).collect();
    w.tensor("q8", &[32, 2], GgmlType::Q8_0, q8);
    let f: Vec<u8> = (0..8).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    w.tensor("f32", &[8], GgmlType::F32, f);
    w.to_bytes()
}

fn err(bytes: &[u8]) -> GgufError {
    GgufFile::parse(bytes).expect_err("must be rejected")
}

/// GGUF string bytes.
fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// Header: magic, version, tensor count, kv count.
fn head(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&tensors.to_le_bytes());
    v.extend_from_slice(&kvs.to_le_bytes());
    v
}

#[test]
fn crafted_file_round_trips() {
    let bytes = crafted();
    let f = GgufFile::parse(&bytes).unwrap();
    let m = f.metadata();
    assert_eq!(m.len(), 17);
    assert_eq!(m.get("a.i8"), Some(&Value::I8(-7)));
    assert_eq!(m.get("a.u64").and_then(Value::as_u64), Some(1 << 40));
    assert_eq!(m.get("a.i64").and_then(Value::as_i64), Some(-(1 << 40)));
    assert_eq!(m.get("a.f32").and_then(Value::as_f64), Some(0.5));
    assert_eq!(m.get("a.bool").and_then(Value::as_bool), Some(true));
    assert_eq!(m.get("a.str").and_then(Value::as_str), Some("héllo"));
    let strs = m.get("a.strs").and_then(Value::as_array).and_then(Array::as_strings).unwrap();
    assert_eq!(strs, ["x", "", "日本"]);
    assert_eq!(
        m.get("a.nested"),
        Some(&Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::Bool(vec![false, true])])))
    );
    let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
    assert_eq!(keys[..3], ["general.architecture", "general.alignment", "a.u8"]);

    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.header().data_offset % 32, 0);
    let q8 = f.tensor_f32("q8").unwrap();
    assert_eq!(q8.shape, vec![2, 32]);
    // d = 1.0 (f16 0x3c00), so values are the int8 codes.
    assert_eq!(q8.data[..4], [0.0, 3.0, 6.0, 9.0]);
    assert_eq!(q8.data[32 + 1], 4.0);
    assert_eq!(q8.data[63], f32::from(((31 * 3 + 1) as u8) as i8));
    assert_eq!(f.tensor_f32("f32").unwrap().data, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
    assert_eq!(f.tensors()[1].start + 32, bytes.len() as u64);
}

#[test]
fn version_2_is_read_too() {
    let mut w = GgufWriter::new();
    w.version(2).kv("k", Value::U32(1));
    assert_eq!(GgufFile::parse(&w.to_bytes()).unwrap().header().version, 2);
}

#[test]
fn bad_magic_and_versions() {
    assert!(matches!(err(b""), GgufError::BadMagic { .. }));
    assert!(matches!(err(b"GGU"), GgufError::BadMagic { .. }));
    assert!(matches!(err(b"GGML\x03\0\0\0"), GgufError::BadMagic { .. }));
    for v in [0u32, 1, 4, 0x0300_0000] {
        assert!(matches!(err(&head(v, 0, 0)), GgufError::UnsupportedVersion { version } if version == v));
    }
    assert!(GgufFile::parse(&head(3, 0, 0)).is_ok());
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = crafted();
    assert!(GgufFile::parse(&bytes).is_ok());
    for n in 0..bytes.len() {
        assert!(GgufFile::parse(&bytes[..n]).is_err(), "prefix of {n} bytes parsed");
    }
}

#[test]
fn huge_string_length_is_rejected_without_allocating() {
    let mut b = head(3, 0, 1);
    b.extend_from_slice(&(1u64 << 63).to_le_bytes());
    b.extend_from_slice(&[b'k'; 64]);
    assert!(matches!(err(&b), GgufError::StringTooLong { len, .. } if len == 1 << 63));
    // A string value with a length just past the end.
    let mut b = head(3, 0, 1);
    b.extend(gstr(b"k"));
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 63).to_le_bytes());
    b.extend_from_slice(&[b'a'; 64]);
    assert!(matches!(err(&b), GgufError::Truncated { needed, .. } if needed == 1 << 63));
}

#[test]
fn huge_array_counts_are_rejected_before_allocating() {
    for (elem, count) in [(0u32, 1u64 << 40), (8, 3_000_000_000), (9, u64::MAX), (12, 1 << 61)] {
        let mut b = head(3, 0, 1);
        b.extend(gstr(b"big"));
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&elem.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        match err(&b) {
            GgufError::CountTooLarge { what, count: c, .. } => {
                assert!(what.contains("big"), "{what}");
                assert_eq!(c, count);
            }
            e => panic!("{e}"),
        }
    }
    // Header counts too.
    assert!(matches!(err(&head(3, 1 << 40, 0)), GgufError::CountTooLarge { .. }));
    assert!(matches!(err(&head(3, 0, u64::MAX)), GgufError::CountTooLarge { .. }));
}

#[test]
fn nesting_is_bounded() {
    let mut b = head(3, 0, 1);
    b.extend(gstr(b"deep"));
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..20 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&[0; 64]);
    assert!(matches!(err(&b), GgufError::NestingTooDeep { key, .. } if key == "deep"));
}

#[test]
fn bad_values_are_named() {
    let kv = |ty: u32, value: &[u8]| {
        let mut b = head(3, 0, 1);
        b.extend(gstr(b"the.key"));
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(value);
        b
    };
    assert!(matches!(err(&kv(13, &[0; 8])), GgufError::BadValueType { key, type_id: 13 } if key == "the.key"));
    assert!(matches!(err(&kv(7, &[2])), GgufError::BadBool { byte: 2, .. }));
    assert!(
        matches!(err(&kv(8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe])), GgufError::BadUtf8 { what } if what.contains("the.key"))
    );
    assert!(matches!(err(&kv(4, &[1, 2])), GgufError::Truncated { what, .. } if what.contains("the.key")));

    let mut w = GgufWriter::new();
    w.kv("same", Value::U8(1)).kv("same", Value::U8(2));
    assert!(matches!(err(&w.to_bytes()), GgufError::DuplicateKey { key } if key == "same"));
    for bad in [0u32, 3, 48] {
        let mut b = head(3, 0, 1);
        b.extend(gstr(b"general.alignment"));
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&bad.to_le_bytes());
        assert!(matches!(err(&b), GgufError::BadAlignment { value } if value == u64::from(bad)));
    }
}

/// A file with one tensor info written by hand after a `general.alignment` of 32.
fn one_tensor(name: &[u8], dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = head(3, 1, 0);
    b.extend(gstr(name));
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len().next_multiple_of(32) + data, 0);
    b
}

#[test]
fn tensor_infos_are_validated() {
    assert!(GgufFile::parse(&one_tensor(b"t", &[4, 2], 0, 0, 32)).is_ok());
    let e = err(&one_tensor(b"t", &[4, 2], 0, 0, 31));
    assert!(matches!(e, GgufError::DataOutOfBounds { ref tensor, size: 32, .. } if tensor == "t"), "{e}");
    assert!(matches!(err(&one_tensor(b"t", &[4, 2], 0, 64, 32)), GgufError::DataOutOfBounds { .. }));
    assert!(matches!(err(&one_tensor(b"t", &[4, 2], 0, u64::MAX - 31, 32)), GgufError::DataOutOfBounds { .. }));
    assert!(matches!(err(&one_tensor(b"t", &[4, 2], 0, 8, 64)), GgufError::Misaligned { offset: 8, align: 32, .. }));
    assert!(matches!(err(&one_tensor(b"t", &[1, 1, 1, 1, 1], 0, 0, 32)), GgufError::TooManyDims { n_dims: 5, .. }));
    assert!(matches!(err(&one_tensor(b"t", &[1 << 32, 1 << 32, 1 << 32], 0, 0, 32)), GgufError::DimsOverflow { .. }));
    // Fits in u64 but not in ggml's int64_t.
    assert!(matches!(err(&one_tensor(b"t", &[1 << 32, 1 << 31], 0, 0, 32)), GgufError::DimsOverflow { .. }));
    // Elements fit, bytes do not.
    assert!(matches!(err(&one_tensor(b"t", &[1 << 31, 1 << 31], 0, 0, 32)), GgufError::DimsOverflow { .. }));
    for ty in [4u32, 5, 31, 99, u32::MAX] {
        assert!(
            matches!(err(&one_tensor(b"t", &[4], ty, 0, 32)), GgufError::UnknownType { type_id, .. } if type_id == ty)
        );
    }
    assert!(matches!(err(&one_tensor(b"t", &[48], 8, 0, 64)), GgufError::PartialBlock { ne0: 48, block_len: 32, .. }));
    assert!(matches!(err(&one_tensor(&[b'x'; 65], &[4], 0, 0, 32)), GgufError::StringTooLong { len: 65, .. }));

    let mut w = GgufWriter::new();
    w.tensor("t", &[8], GgmlType::F32, vec![0; 32]).tensor("t", &[8], GgmlType::F32, vec![0; 32]);
    assert!(matches!(err(&w.to_bytes()), GgufError::DuplicateTensor { tensor } if tensor == "t"));
}

#[test]
fn known_but_unsupported_types_parse_and_refuse_to_dequantize() {
    let f = GgufFile::parse(&one_tensor(b"q5", &[32], 6, 0, 32)).unwrap();
    assert_eq!(f.tensors()[0].ty, GgmlType::Q5_0);
    match f.tensor_f32("q5") {
        Err(GgufError::UnsupportedType { tensor, type_id: 6, type_name: "Q5_0" }) => assert_eq!(tensor, "q5"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_reports_io_errors_and_maps_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    assert!(matches!(GgufFile::open(&missing), Err(GgufError::Io { .. })));
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty), Err(GgufError::BadMagic { .. })));
    let good = dir.path().join("good.gguf");
    std::fs::write(&good, crafted()).unwrap();
    let f = GgufFile::open(&good).unwrap();
    assert_eq!(f.path(), Some(good.as_path()));
    assert_eq!(f.tensor_f32("f32").unwrap().data[7], 3.5);
}

/// A tiny llama-architecture file (2 heads of 4, 1 kv head) exercising the model layer too.
fn crafted_model() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("llama.embedding_length", Value::U32(32))
        .kv("llama.block_count", Value::U32(1))
        .kv("llama.feed_forward_length", Value::U32(32))
        .kv("llama.attention.head_count", Value::U32(2))
        .kv("llama.attention.head_count_kv", Value::U32(1))
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", Value::Array(Array::String(vec!["a".into(), "b".into(), "ab".into()])))
        .kv("tokenizer.ggml.merges", Value::Array(Array::String(vec!["a b".into()])));
    let f32s = |n: usize| (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect::<Vec<u8>>();
    let q8 = |rows: usize| {
        (0..rows).flat_map(|r| [0, 0x3c].into_iter().chain((0..32).map(move |i| (r + i) as u8))).collect()
    };
    w.tensor("token_embd.weight", &[32, 3], GgmlType::F32, f32s(96))
        .tensor("blk.0.attn_q.weight", &[32, 8], GgmlType::Q8_0, q8(8))
        .tensor("blk.0.attn_k.weight", &[32, 4], GgmlType::Q8_0, q8(4))
        .tensor("blk.0.attn_norm.weight", &[32], GgmlType::F32, f32s(32));
    w.to_bytes()
}

/// Everything a converter would do with a parsed file; must not panic whatever the input.
fn exercise(bytes: &[u8]) {
    let Ok(f) = GgufFile::parse(bytes) else { return };
    for t in f.tensors() {
        let _ = f.tensor_f32(&t.name);
    }
    if let Ok(m) = GgufModel::from_file(f) {
        let _ = m.config();
        let _ = m.tokenizer_config();
        let _ = m.tokenizer_json();
        for t in m.tensors() {
            let _ = m.tensor_f32(&t.name);
            let _ = m.tensor_f32_rows(&t.name, 0..1);
        }
    }
}

#[test]
fn crafted_model_maps() {
    let m = GgufModel::from_file(GgufFile::parse(&crafted_model()).unwrap()).unwrap();
    assert_eq!(m.config()["head_dim"], 4);
    let q = m.tensor_f32("model.layers.0.self_attn.q_proj.weight").unwrap();
    // Row r of the Q8_0 data starts at value r; HF row 1 is GGUF row 2 (head_dim 4: [0,2,1,3]).
    let firsts: Vec<f32> = q.chunks(32).map(|r| r[0]).collect();
    assert_eq!(firsts, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    assert!(m.tokenizer_json().unwrap().is_some());
    exercise(&crafted_model());
}

#[test]
fn every_truncation_of_a_model_is_an_error() {
    let bytes = crafted_model();
    for n in 0..bytes.len() {
        if GgufFile::parse(&bytes[..n]).is_ok() {
            // Only the final padding after the last tensor may go.
            let f = GgufFile::parse(&bytes).unwrap();
            let end = f.tensors().iter().map(|t| t.start + t.size).max().unwrap();
            assert!(n as u64 >= end, "prefix of {n} bytes parsed");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        for base in [crafted(), crafted_model()] {
            let mut bytes = base;
            for (at, byte) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *byte;
            }
            exercise(&bytes);
        }
    }

    #[test]
    fn mutated_lengths_never_panic(at in any::<prop::sample::Index>(), value in prop_oneof![
        any::<u64>(), Just(u64::MAX), Just(1u64 << 63), Just(1u64 << 40), 0u64..4096,
    ]) {
        // Overwrite 8 bytes with a hostile u64, wherever a length or count may be.
        let mut bytes = crafted_model();
        let i = at.index(bytes.len() - 8);
        bytes[i..i + 8].copy_from_slice(&value.to_le_bytes());
        exercise(&bytes);
    }
}
