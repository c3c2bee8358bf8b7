//! Property tests standing in for the fuzz target: random byte mutations and random header field
//! values must give `Ok` or `Err` from `ModelFile::parse`, never a panic; and whatever is accepted
//! must really satisfy the layout rules and be readable through `ModelFile::open`.

mod common;

use common::*;
use lowbit_format::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::OnceLock;

fn small() -> &'static [u8] {
    static SMALL: OnceLock<Vec<u8>> = OnceLock::new();
    SMALL.get_or_init(small_valid_bytes)
}

/// Re-checks, independently of the validator, what an accepted file promises.
fn check_accepted(bytes: &[u8], h: &Header) {
    let len = bytes.len() as u64;
    let data_start = (24 + header_len(bytes) as u64).next_multiple_of(4096);
    let mut ranges = Vec::new();
    for t in &h.tensors {
        assert_eq!(t.length, t.scheme.byte_len(&t.shape).unwrap());
        assert!(t.offset >= data_start && t.offset + t.length <= len, "{t:?}");
        assert_eq!(t.offset % if t.length >= 1 << 20 { 4096 } else { 64 }, 0);
        ranges.push((t.offset, t.offset + t.length));
    }
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[1].0 >= w[0].1));
    let mut names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), h.tensors.len());
}

/// Opens accepted bytes from disk and touches every part through every typed view.
fn open_and_read_everything(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.lowbit");
    std::fs::write(&path, bytes).unwrap();
    let f = ModelFile::open(&path).expect("parse accepted it, open must too");
    for t in f.tensors() {
        let r = f.tensor(&t.name).unwrap();
        for p in r.parts() {
            let b = r.part(p.name).unwrap();
            assert_eq!(b.len() as u64, p.len);
            let _ = (r.part_f32(p.name), r.part_u16(p.name), r.part_i8(p.name), r.part_u8(p.name));
        }
    }
    let _ = f.verify();
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(|v| json!(v)),
        (0u64..70_000).prop_map(|v| json!(v)),
        (0u64..200).prop_map(|v| json!(v * 64)),
        // Inside the small file's data section: overlaps and misalignment become likely.
        (4096u64..4700).prop_map(|v| json!(v)),
        (64u64..74).prop_map(|v| json!(v * 64)),
        any::<i64>().prop_map(|v| json!(v)),
        (-1e6f64..1e6).prop_map(|v| json!(v)),
        "[a-z0-9_\\.]{0,10}".prop_map(|v| json!(v)),
        prop::collection::vec(0u64..5000, 0..6).prop_map(|v| json!(v)),
        prop::collection::vec(any::<u64>(), 0..3).prop_map(|v| json!(v)),
        Just(Value::Null),
        Just(json!({})),
        Just(json!(true)),
        Just(
            json!({"type": "fourbit", "kind": "nf4", "blocksize": 64, "nested": {"blocksize": 256}, "orig_dtype": "float32"})
        ),
        Just(json!({"type": "int8"})),
        Just(json!({"type": "f16"})),
        Just(json!("00000000")),
    ]
}

/// A place in the header to overwrite.
fn field() -> impl Strategy<Value = Vec<String>> {
    let tensor_field = prop_oneof![
        Just(vec!["name"]),
        Just(vec!["scheme"]),
        Just(vec!["scheme", "type"]),
        Just(vec!["scheme", "kind"]),
        Just(vec!["scheme", "blocksize"]),
        Just(vec!["scheme", "nested"]),
        Just(vec!["scheme", "nested", "blocksize"]),
        Just(vec!["scheme", "orig_dtype"]),
        Just(vec!["shape"]),
        Just(vec!["shape", "0"]),
        Just(vec!["shape", "1"]),
        Just(vec!["offset"]),
        Just(vec!["length"]),
        Just(vec!["crc32"]),
    ];
    prop_oneof![
        4 => (0usize..6, tensor_field).prop_map(|(i, f)| {
            let mut p = vec!["tensors".to_string(), i.to_string()];
            p.extend(f.iter().map(|s| s.to_string()));
            p
        }),
        1 => prop_oneof![
            Just(vec!["metadata".to_string(), "config".to_string()]),
            Just(vec!["metadata".to_string(), "architecture".to_string()]),
            Just(vec!["metadata".to_string(), "quantization".to_string()]),
            Just(vec!["tensors".to_string()]),
        ],
    ]
}

fn set(h: &mut Value, path: &[String], v: Value) {
    let mut cur = h;
    for (k, key) in path.iter().enumerate() {
        let last = k + 1 == path.len();
        let next = match (cur, key.parse::<usize>()) {
            (Value::Array(a), Ok(i)) if i < a.len() => &mut a[i],
            (Value::Object(o), _) => o.entry(key.clone()).or_insert(Value::Null),
            _ => return,
        };
        if last {
            *next = v;
            return;
        }
        cur = next;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_bytes_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        header_flips in prop::collection::vec((0usize..600, any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
        grow in prop::option::of(0usize..10_000),
    ) {
        let mut b = small().to_vec();
        for (at, val) in flips {
            let i = at.index(b.len());
            b[i] = val;
        }
        for (at, val) in header_flips {
            b[at] = val;
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len()));
        }
        if let Some(g) = grow {
            b.resize(b.len() + g, 0);
        }
        if let Ok(h) = ModelFile::parse(&b) {
            check_accepted(&b, &h);
        }
    }

    #[test]
    fn hostile_field_values_never_panic(edits in prop::collection::vec((field(), json_value()), 1..4)) {
        let edited = try_with_header(small(), |h| {
            for (path, v) in edits {
                set(h, &path, v);
            }
        });
        // Some edits (a huge string) no longer fit in the reserved header: nothing to test.
        if let Some(b) = edited {
            if let Ok(h) = ModelFile::parse(&b) {
                check_accepted(&b, &h);
                open_and_read_everything(&b);
            }
        }
    }

    #[test]
    fn arbitrary_header_text_never_panics(text in "\\PC{0,200}", raw in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ModelFile::parse(&raw_file(text.as_bytes(), &[]));
        let _ = ModelFile::parse(&raw_file(&raw, &[]));
    }
}

#[test]
fn the_small_file_is_accepted_and_readable() {
    let h = ModelFile::parse(small()).unwrap();
    check_accepted(small(), &h);
    open_and_read_everything(small());
}
