//! The writer's contract: atomic output, no litter on failure, and typed errors for misuse.

mod common;

use common::*;
use lowbit_format::*;
use std::path::Path;

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Writes every tensor of `w` with its correct random data.
fn write_all(w: &Writer) {
    for (i, parts) in part_data(w.tensors(), 1).iter().enumerate() {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        w.write_tensor(i, &parts).unwrap();
    }
}

#[test]
fn temp_file_is_hidden_next_to_the_output_and_sized() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    let w = Writer::create(&path, meta(), specs()).unwrap();
    let tmp = w.temp_path().to_path_buf();
    assert_eq!(tmp.parent(), Some(dir.path()));
    let name = tmp.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(&format!(".m.lowbit.tmp-{}-", std::process::id())), "{name}");
    assert_eq!(std::fs::metadata(&tmp).unwrap().len(), w.file_len());
    assert!(!path.exists());
    // Two writers for one output at once do not collide.
    let w2 = Writer::create(&path, meta(), specs()).unwrap();
    assert_ne!(w2.temp_path(), tmp);
}

#[test]
fn dropping_an_unfinished_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    {
        let _w = Writer::create(&path, meta(), specs()).unwrap();
    }
    assert!(entries(dir.path()).is_empty());
    {
        let w = Writer::create(&path, meta(), specs()).unwrap();
        w.write_tensor(0, &[&[0u8; 60]]).unwrap();
        assert_eq!(entries(dir.path()).len(), 1);
    }
    assert!(entries(dir.path()).is_empty());
    assert!(!path.exists());
}

#[test]
fn finish_with_a_missing_tensor_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    let w = Writer::create(&path, meta(), specs()).unwrap();
    let data = part_data(w.tensors(), 1);
    for (i, parts) in data.iter().enumerate() {
        if i != 2 && i != 5 {
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            w.write_tensor(i, &parts).unwrap();
        }
    }
    match w.finish() {
        Err(FormatError::NotWritten { tensor, missing }) => assert_eq!((tensor.as_str(), missing), ("c.bf16", 2)),
        other => panic!("{other:?}"),
    }
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn failed_finish_keeps_the_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    std::fs::write(&path, b"previous model").unwrap();
    let w = Writer::create(&path, meta(), specs()).unwrap();
    assert!(w.finish().is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"previous model");
    assert_eq!(entries(dir.path()), ["m.lowbit"]);
    // A successful one replaces it.
    let w = Writer::create(&path, meta(), specs()).unwrap();
    write_all(&w);
    w.finish().unwrap();
    assert!(ModelFile::open(&path).unwrap().verify().is_empty());
    assert_eq!(entries(dir.path()), ["m.lowbit"]);
}

#[test]
fn wrong_parts_are_typed_errors_and_the_tensor_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    let w = Writer::create(&path, meta(), specs()).unwrap();
    // a.f32 [3, 5]: one part of 60 bytes.
    assert!(matches!(
        w.write_tensor(0, &[&[0u8; 59]]),
        Err(FormatError::PartLength { ref tensor, part: "data", expected: 60, got: 59 }) if tensor == "a.f32"
    ));
    assert!(matches!(w.write_tensor(0, &[&[0u8; 60], &[]]), Err(FormatError::PartCount { expected: 1, got: 2, .. })));
    // d.int8 [4, 100]: cb then scb; swapped parts are caught by their lengths.
    assert!(matches!(
        w.write_tensor(3, &[&[0u8; 16], &[0u8; 400]]),
        Err(FormatError::PartLength { part: "cb", expected: 400, got: 16, .. })
    ));
    assert!(matches!(w.write_tensor(99, &[]), Err(FormatError::NoSuchTensor { index: 99, count: 11 })));
    // None of that counted as a write.
    write_all(&w);
    assert!(
        matches!(w.write_tensor(0, &[&[0u8; 60]]), Err(FormatError::AlreadyWritten { ref tensor }) if tensor == "a.f32")
    );
    w.finish().unwrap();
    assert!(ModelFile::open(&path).unwrap().verify().is_empty());
}

#[test]
fn racing_writes_of_one_tensor_let_exactly_one_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    let w = Writer::create(&path, meta(), specs()).unwrap();
    let big = w.tensors().iter().position(|t| t.info.name == "g.big_f32").unwrap();
    let data = vec![7u8; w.tensors()[big].info.length as usize];
    let ok = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| w.write_tensor(big, &[&data]).is_ok())).collect();
        hs.into_iter().map(|h| h.join().unwrap() as usize).sum::<usize>()
    });
    assert_eq!(ok, 1);
}

#[test]
fn bad_specs_are_refused_before_any_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.lowbit");
    let dup = vec![specs()[0].clone(), specs()[1].clone(), specs()[0].clone()];
    assert!(
        matches!(Writer::create(&path, meta(), dup), Err(FormatError::DuplicateTensor { ref name }) if name == "a.f32")
    );
    let bad = vec![TensorSpec { name: "w".into(), scheme: nf4(48, false), shape: vec![64] }];
    assert!(matches!(Writer::create(&path, meta(), bad), Err(FormatError::BadBlocksize { .. })));
    let bad = vec![TensorSpec { name: "w".into(), scheme: Scheme::Int8, shape: vec![64] }];
    assert!(matches!(Writer::create(&path, meta(), bad), Err(FormatError::BadShape { .. })));
    let bad = vec![TensorSpec { name: "w".into(), scheme: Scheme::F32, shape: vec![1 << 40, 1 << 40] }];
    assert!(matches!(Writer::create(&path, meta(), bad), Err(FormatError::ShapeOverflow { .. })));
    let mut m = meta();
    m.config = serde_json::json!(null);
    assert!(matches!(Writer::create(&path, m, specs()), Err(FormatError::BadMetadata { field: "config", .. })));
    assert!(entries(dir.path()).is_empty());
    assert!(matches!(
        Writer::create(&dir.path().join("missing/x.lowbit"), meta(), specs()),
        Err(FormatError::Io { .. })
    ));
}

/// Every tensor written in pieces (parts interleaved, each in three pieces) gives the file that
/// whole-part writes give, byte for byte (checksums included); a sink dropped before it finished
/// leaves its tensor unwritten, and a part overfilled or left short is a typed error.
#[test]
fn tensors_written_in_pieces_equal_whole_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, pieces) = (dir.path().join("whole.lowbit"), dir.path().join("pieces.lowbit"));
    let w = Writer::create(&whole, meta(), specs()).unwrap();
    write_all(&w);
    w.finish().unwrap();
    let w = Writer::create(&pieces, meta(), specs()).unwrap();
    let data = part_data(w.tensors(), 1);
    {
        let mut s = w.tensor_sink(0).unwrap();
        s.write(0, &data[0][0][..10]).unwrap();
        // Dropped unfinished: the tensor is not written, and can be started again.
    }
    for (i, parts) in data.iter().enumerate() {
        let mut s = w.tensor_sink(i).unwrap();
        assert!(matches!(w.tensor_sink(i), Err(FormatError::AlreadyWritten { .. })));
        for third in 0..3 {
            for (p, bytes) in parts.iter().enumerate().rev() {
                let (a, b) = (bytes.len() * third / 3, bytes.len() * (third + 1) / 3);
                s.write(p, &bytes[a..b]).unwrap();
            }
        }
        if let Some(first) = parts.first().filter(|b| !b.is_empty()) {
            assert!(matches!(s.write(0, &first[..1]), Err(FormatError::PartLength { .. })));
        }
        s.finish().unwrap();
    }
    w.finish().unwrap();
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&pieces).unwrap());
    // A part left short fails `finish`, and the tensor stays unwritten.
    let w = Writer::create(&dir.path().join("short.lowbit"), meta(), specs()).unwrap();
    let mut s = w.tensor_sink(0).unwrap();
    s.write(0, &[0u8; 59]).unwrap();
    assert!(matches!(s.finish(), Err(FormatError::PartLength { expected: 60, got: 59, .. })));
    w.write_tensor(0, &[&[0u8; 60]]).unwrap();
}
