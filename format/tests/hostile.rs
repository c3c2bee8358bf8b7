//! Crafted hostile files: each bad field gives its specific typed error, never a panic.

mod common;

use common::*;
use lowbit_format::*;
use serde_json::json;
use std::sync::OnceLock;

fn good() -> &'static [u8] {
    static GOOD: OnceLock<Vec<u8>> = OnceLock::new();
    GOOD.get_or_init(valid_bytes)
}

fn parse_err(bytes: &[u8]) -> FormatError {
    match ModelFile::parse(bytes) {
        Ok(_) => panic!("accepted a hostile file"),
        Err(e) => e,
    }
}

fn edit(f: impl FnOnce(&mut serde_json::Value)) -> FormatError {
    parse_err(&with_header(good(), f))
}

#[test]
fn the_unedited_file_is_valid() {
    ModelFile::parse(good()).unwrap();
    // Re-serializing the header without changes keeps it valid, so every failure below is the
    // edit's doing.
    ModelFile::parse(&with_header(good(), |_| {})).unwrap();
}

#[test]
fn preamble_errors() {
    let mut b = good().to_vec();
    b[0] = b'X';
    assert!(matches!(parse_err(&b), FormatError::BadMagic { found } if &found == b"XOWBIT\0\0"));
    let mut b = good().to_vec();
    b[8] = 9;
    assert!(matches!(parse_err(&b), FormatError::UnsupportedVersion { version: 9 }));
    let mut b = good().to_vec();
    b[12] = 1;
    assert!(matches!(parse_err(&b), FormatError::ReservedNotZero { value: 1 }));
    let mut b = good().to_vec();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse_err(&b), FormatError::HeaderTooLarge { len: u64::MAX, .. }));
    let mut b = good().to_vec();
    b[16..24].copy_from_slice(&((256u64 << 20) + 1).to_le_bytes());
    assert!(matches!(parse_err(&b), FormatError::HeaderTooLarge { .. }));
    // Within the limit but beyond the end of the file.
    let mut b = good().to_vec();
    b[16..24].copy_from_slice(&(good().len() as u64).to_le_bytes());
    assert!(matches!(parse_err(&b), FormatError::Truncated { what: "header", .. }));
    for n in [0, 1, 8, 23] {
        assert!(matches!(parse_err(&good()[..n]), FormatError::Truncated { what: "preamble", needed: 24, .. }), "{n}");
    }
}

#[test]
fn header_text_errors() {
    // Invalid UTF-8 inside the header.
    let mut b = good().to_vec();
    b[30] = 0xFF;
    assert!(matches!(parse_err(&b), FormatError::HeaderUtf8 { valid_up_to: 6 }));
    // Valid UTF-8, invalid JSON.
    let mut b = good().to_vec();
    b[24] = b'[';
    assert!(matches!(parse_err(&b), FormatError::HeaderJson { .. }));
    // A header of zero bytes.
    assert!(matches!(parse_err(&raw_file(b"", &[])), FormatError::HeaderJson { .. }));
    // JSON of the wrong shape.
    assert!(matches!(parse_err(&raw_file(b"[]", &[])), FormatError::HeaderJson { .. }));
    assert!(matches!(parse_err(&raw_file(br#"{"metadata": {}, "tensors": []}"#, &[])), FormatError::HeaderJson { .. }));
    // NUL padding inside header_len is not JSON whitespace.
    let mut h = br#"{"metadata": {"architecture": "x", "config": {}}, "tensors": []}"#.to_vec();
    assert!(ModelFile::parse(&raw_file(&h, &[])).is_ok());
    h.push(0);
    assert!(matches!(parse_err(&raw_file(&h, &[])), FormatError::HeaderJson { .. }));
    // Nesting 100,000 deep hits the parser's depth limit instead of the stack's.
    let deep = format!(
        r#"{{"metadata": {{"architecture": "x", "config": {{"a": {}{}}}}}, "tensors": []}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(matches!(parse_err(&raw_file(deep.as_bytes(), &[])), FormatError::HeaderJson { .. }));
}

#[test]
fn metadata_errors() {
    assert!(matches!(
        edit(|h| h["metadata"]["config"] = json!([1, 2])),
        FormatError::BadMetadata { field: "config", .. }
    ));
    assert!(matches!(edit(|h| h["metadata"]["tokenizer_config"] = json!("x")), FormatError::BadMetadata { .. }));
    assert!(matches!(edit(|h| h["metadata"]["architecture"] = json!(5)), FormatError::HeaderJson { .. }));
    assert!(matches!(
        edit(|h| {
            h["metadata"].as_object_mut().unwrap().remove("architecture");
        }),
        FormatError::HeaderJson { .. }
    ));
    // Optional fields may be missing (older files).
    let b = with_header(good(), |h| {
        for k in ["tokenizer_json", "quantization", "sources", "converter", "chat_template"] {
            h["metadata"].as_object_mut().unwrap().remove(k);
        }
    });
    let parsed = ModelFile::parse(&b).unwrap();
    assert_eq!(parsed.metadata.quantization, QuantSettings::default());
}

#[test]
fn bounds_errors() {
    // Offset + length overflows u64.
    assert!(matches!(
        edit(|h| h["tensors"][0]["offset"] = json!(u64::MAX - 3)),
        FormatError::OutOfBounds { ref tensor, end: u64::MAX, .. } if tensor == "a.f32"
    ));
    // Inside the header / preamble.
    assert!(matches!(edit(|h| h["tensors"][0]["offset"] = json!(64)), FormatError::OutOfBounds { .. }));
    // Past the end of the file.
    let len = good().len() as u64;
    assert!(matches!(
        edit(|h| h["tensors"][1]["offset"] = json!(len.next_multiple_of(64))),
        FormatError::OutOfBounds { ref tensor, .. } if tensor == "b.f16"
    ));
    // Straddling the end.
    assert!(matches!(
        edit(|h| h["tensors"][6]["offset"] = json!((len - 1) / 4096 * 4096)),
        FormatError::OutOfBounds { ref tensor, .. } if tensor == "g.big_f32"
    ));
    // A negative or fractional offset is not a u64.
    assert!(matches!(edit(|h| h["tensors"][1]["offset"] = json!(-64)), FormatError::HeaderJson { .. }));
    assert!(matches!(edit(|h| h["tensors"][1]["offset"] = json!(4096.5)), FormatError::HeaderJson { .. }));
}

#[test]
fn overlap_and_alignment_errors() {
    assert!(matches!(
        edit(|h| h["tensors"][1]["offset"] = h["tensors"][0]["offset"].clone()),
        // Same start: the shorter one sorts first.
        FormatError::Overlap { ref a, ref b } if (a.as_str(), b.as_str()) == ("b.f16", "a.f32")
    ));
    // d.int8 is 464 bytes (cb 400, padding, scb 16). A tensor inside it, and one straddling its
    // end, both overlap it.
    assert!(matches!(
        edit(|h| h["tensors"][1]["offset"] = json!(h["tensors"][3]["offset"].as_u64().unwrap() + 128)),
        FormatError::Overlap { ref a, ref b } if (a.as_str(), b.as_str()) == ("d.int8", "b.f16")
    ));
    assert!(matches!(
        edit(|h| h["tensors"][0]["offset"] = json!(h["tensors"][3]["offset"].as_u64().unwrap() + 448)),
        FormatError::Overlap { ref a, ref b } if (a.as_str(), b.as_str()) == ("d.int8", "a.f32")
    ));
    assert!(matches!(
        edit(|h| {
            let off = h["tensors"][1]["offset"].as_u64().unwrap();
            h["tensors"][1]["offset"] = json!(off + 1)
        }),
        FormatError::Misaligned { ref tensor, align: 64, .. } if tensor == "b.f16"
    ));
    // A tensor ≥ 1 MiB must be page aligned; 64 is not enough.
    assert!(matches!(
        edit(|h| {
            let off = h["tensors"][6]["offset"].as_u64().unwrap();
            h["tensors"][6]["offset"] = json!(off + 64)
        }),
        FormatError::Misaligned { ref tensor, align: 4096, .. } if tensor == "g.big_f32"
    ));
}

#[test]
fn shape_and_length_errors() {
    assert!(matches!(
        edit(|h| h["tensors"][0]["shape"] = json!([1u64 << 40, 1u64 << 40])),
        FormatError::ShapeOverflow { ref tensor, .. } if tensor == "a.f32"
    ));
    assert!(matches!(
        edit(|h| h["tensors"][0]["shape"] = json!([u64::MAX, u64::MAX])),
        FormatError::ShapeOverflow { .. }
    ));
    assert!(matches!(edit(|h| h["tensors"][0]["shape"] = json!([])), FormatError::BadShape { .. }));
    assert!(matches!(edit(|h| h["tensors"][0]["shape"] = json!([1, 1, 1, 3, 5])), FormatError::BadShape { .. }));
    assert!(matches!(edit(|h| h["tensors"][3]["shape"] = json!([400])), FormatError::BadShape { .. }));
    // Shape changed, length not: the sizes disagree.
    assert!(matches!(
        edit(|h| h["tensors"][0]["shape"] = json!([3, 6])),
        FormatError::LengthMismatch { ref tensor, expected: 72, got: 60 } if tensor == "a.f32"
    ));
    // Length changed, shape not.
    assert!(matches!(
        edit(|h| h["tensors"][0]["length"] = json!(64)),
        FormatError::LengthMismatch { expected: 60, got: 64, .. }
    ));
    assert!(matches!(edit(|h| h["tensors"][0]["length"] = json!(u64::MAX)), FormatError::LengthMismatch { .. }));
}

#[test]
fn zero_sized_tensors_only_for_dense_schemes() {
    // Dense: an empty tensor is fine (the test file has one, h.empty).
    let b = with_header(good(), |h| {
        h["tensors"][1]["shape"] = json!([0]);
        h["tensors"][1]["length"] = json!(0);
        h["tensors"][1]["crc32"] = json!("00000000");
    });
    let parsed = ModelFile::parse(&b).unwrap();
    assert_eq!(parsed.tensors[1].length, 0);
    // Quantized: refused, whatever the length says.
    for i in [3, 4, 5] {
        assert!(matches!(
            edit(|h| {
                h["tensors"][i]["shape"] = json!([0, 64]);
                h["tensors"][i]["length"] = json!(0);
            }),
            FormatError::BadShape { .. }
        ));
    }
}

#[test]
fn scheme_errors() {
    assert!(matches!(edit(|h| h["tensors"][0]["scheme"] = json!({"type": "q9_9"})), FormatError::HeaderJson { .. }));
    assert!(matches!(edit(|h| h["tensors"][0]["scheme"] = json!("f32")), FormatError::HeaderJson { .. }));
    assert!(matches!(edit(|h| h["tensors"][4]["scheme"]["kind"] = json!("nf3")), FormatError::HeaderJson { .. }));
    assert!(matches!(
        edit(|h| h["tensors"][4]["scheme"]["blocksize"] = json!(48)),
        FormatError::BadBlocksize { which: "blocksize", blocksize: 48, .. }
    ));
    assert!(matches!(
        edit(|h| h["tensors"][4]["scheme"]["nested"]["blocksize"] = json!(0)),
        FormatError::BadBlocksize { which: "nested blocksize", .. }
    ));
    assert!(matches!(
        edit(|h| h["tensors"][4]["scheme"]["orig_dtype"] = json!("int4")),
        FormatError::BadOrigDtype { .. }
    ));
    // Dropping `nested` changes the parts (absmax u8 → f32), so the length no longer matches.
    assert!(matches!(edit(|h| h["tensors"][4]["scheme"]["nested"] = json!(null)), FormatError::LengthMismatch { .. }));
}

#[test]
fn name_and_checksum_errors() {
    assert!(matches!(
        edit(|h| h["tensors"][1]["name"] = h["tensors"][0]["name"].clone()),
        FormatError::DuplicateTensor { ref name } if name == "a.f32"
    ));
    for bad in ["xyz", "0123456", "012345678", "DEADBEEF", "dead beef"] {
        assert!(matches!(
            edit(|h| h["tensors"][0]["crc32"] = json!(bad)),
            FormatError::BadChecksum { ref value, .. } if value == bad
        ));
    }
    assert!(matches!(edit(|h| h["tensors"][0]["crc32"] = json!(1234)), FormatError::HeaderJson { .. }));
}

#[test]
fn file_truncated_after_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    write_file(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // One byte short: the last tensor no longer fits.
    f.set_len(len - 1).unwrap();
    assert!(
        matches!(ModelFile::open(&path), Err(FormatError::OutOfBounds { ref tensor, .. }) if tensor == "k.bf16_big")
    );
    // Cut inside the header.
    f.set_len(100).unwrap();
    assert!(matches!(ModelFile::open(&path), Err(FormatError::Truncated { what: "header", available: 100, .. })));
    // Cut inside the preamble, and empty.
    for n in [10, 0] {
        f.set_len(n).unwrap();
        assert!(matches!(ModelFile::open(&path), Err(FormatError::Truncated { what: "preamble", .. })));
    }
}

#[test]
fn paths_that_are_not_model_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(ModelFile::open(dir.path()), Err(FormatError::NotAFile { .. })));
    assert!(matches!(ModelFile::open(&dir.path().join("absent")), Err(FormatError::Io { .. })));
    let txt = dir.path().join("x.txt");
    std::fs::write(&txt, "hello, this is not a model file at all").unwrap();
    assert!(matches!(ModelFile::open(&txt), Err(FormatError::BadMagic { .. })));
    // A FIFO would block `open` forever; it must be refused without opening it.
    let fifo = dir.path().join("fifo");
    if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        assert!(matches!(ModelFile::open(&fifo), Err(FormatError::NotAFile { .. })));
    }
}

#[test]
fn verify_names_the_corrupted_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    write_file(&path);
    let (int8_off, nf4_pad) = {
        let f = ModelFile::open(&path).unwrap();
        let d = f.tensor("d.int8").unwrap().info.offset;
        // A padding byte between e.nf4's `absmax` and `nested_absmax` parts.
        let e = f.tensor("e.nf4").unwrap();
        let absmax = e.parts()[1];
        (d, e.info.offset + absmax.offset + absmax.len)
    };
    let mut b = std::fs::read(&path).unwrap();
    b[int8_off as usize + 3] ^= 0x40;
    b[nf4_pad as usize] = 1;
    std::fs::write(&path, &b).unwrap();
    let f = ModelFile::open(&path).unwrap();
    let bad = f.verify();
    let names: Vec<&str> = bad.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["d.int8", "e.nf4"]);
    assert_ne!(bad[0].expected, bad[0].actual);
    assert_eq!(bad[0].expected, f.tensor("d.int8").unwrap().info.crc32);
    assert!(matches!(
        f.verify_checksums(),
        Err(FormatError::ChecksumMismatch { ref tensor, count: 2, .. }) if tensor == "d.int8"
    ));
}
