//! The `lowbit` binary against hostile input and faults: each case must end with a clear
//! one-line error and exit code 2 — never a panic (exit 101), a hang, or a file left at the
//! output path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
}

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

/// Runs and expects a clean failure whose message contains `needle`.
fn fails(cmd: &mut Command, needle: &str) -> Output {
    let out = cmd.output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, got {:?}; stderr: {err}", out.status);
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    out
}

fn convert(src: &Path, out: &Path, quant: &str) {
    let o = bin()
        .args(["convert", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quant", quant, "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn only_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// A one-layer Mistral-shaped checkpoint with random weights (and the synthesizer's tokenizer)
/// in `dir`.
fn tiny_checkpoint(dir: &Path) {
    let mut cfg = lowbit_convert::synth::presets().into_iter().find(|p| p.name == "mistral-7b-v0.1").unwrap().config;
    for (k, v) in [
        ("hidden_size", 64),
        ("intermediate_size", 128),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
        ("head_dim", 16),
        ("vocab_size", 300),
    ] {
        cfg[k] = v.into();
    }
    lowbit_convert::synth::synthesize(&cfg, dir, 1, Some(1), 1 << 30).unwrap();
}

#[test]
fn runtime_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("tiny.lowbit");
    convert(&data("converter/tests/data/gguf/tiny.gguf"), &m, "nf4");
    let m = m.to_str().unwrap();
    fails(bin().args(["logits", "-m", m, "--tokens", "1,2,300000", "--out", "/dev/null"]), "outside the vocabulary");
    fails(bin().args(["--threads", "0", "run", "-m", m, "-p", "hi"]), "--threads");
    // The tiny GGUF has full attention: a context of 4 cannot hold a longer prompt.
    fails(
        bin().args(["run", "-m", m, "--ctx", "4", "-p", "a prompt longer than four tokens"]),
        "do not fit in the context",
    );
    let bad = tmp.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9").unwrap();
    fails(bin().args(["run", "-m", m, "-f", bad.to_str().unwrap()]), "not UTF-8");
    let nope = tmp.path().join("nope.lowbit");
    fails(bin().args(["run", "-m", nope.to_str().unwrap(), "-p", "x"]), "nope.lowbit");
    // A source that does not exist is named once, as missing, not as an incomplete checkpoint.
    let out = fails(
        bin().args([
            "convert",
            tmp.path().join("no-such-model").to_str().unwrap(),
            "-o",
            tmp.path().join("o.lowbit").to_str().unwrap(),
        ]),
        "no-such-model: no such file or folder",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("no-such-model").count(), 1, "{err}");
    assert!(!err.contains("incomplete"), "{err}");
    fails(bin().args(["inspect", tmp.path().to_str().unwrap()]), "not a regular file");
    let env_bad = bin().env("LOWBIT_ISA", "sse9").args(["cpu"]).output().unwrap();
    assert_eq!(env_bad.status.code(), Some(2));
    fails(bin().env("LOWBIT_PREFETCH", "t7").args(["cpu"]), "unknown prefetch hint");
    let hint = bin().env("LOWBIT_PREFETCH", "nta").args(["cpu"]).output().unwrap();
    assert!(String::from_utf8_lossy(&hint.stdout).contains("weight prefetch: nta"));
}

#[test]
fn unknown_template_variable_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    tiny_checkpoint(&dir);
    let tc = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ bos_token }}{{ no_such_variable }}"});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    let m = tmp.path().join("t.lowbit");
    convert(&dir, &m, "int8");
    fails(bin().args(["run", "-m", m.to_str().unwrap(), "--chat", "-p", "hi"]), "chat template");
}

/// A tokenizer.json whose decoder is not valid JSON makes the tokenizers library panic: the
/// conversion warns, and running the file is a clean error with no panic message on stderr.
#[test]
fn a_tokenizer_that_panics_its_library_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    tiny_checkpoint(&dir);
    let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,
        "post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offset, "content"s":true},
        "model":{"type":"WordLevel","vocab":{"<unk>":0},"unk_token":"<unk>"}}"#;
    std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
    let m = tmp.path().join("t.lowbit");
    let o =
        bin().args(["convert", dir.to_str().unwrap(), "-o", m.to_str().unwrap(), "--quant", "int8"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("tokenizer.json does not load") && !err.contains("panicked"), "{err}");
    fails(bin().args(["run", "-m", m.to_str().unwrap(), "-p", "hi"]), "tokenizer.json is malformed");
}

#[test]
fn llm_int8_code_outside_its_range_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.lowbit");
    convert(&data("converter/tests/data/gguf/tiny.gguf"), &m, "int8");
    let file = lowbit_format::ModelFile::open(&m).unwrap();
    let info = file.header().tensors.iter().find(|t| matches!(t.scheme, lowbit_format::Scheme::Int8)).unwrap().clone();
    drop(file);
    // The first code of the first int8 tensor (its `cb` part comes first) set to -128.
    let mut bytes = std::fs::read(&m).unwrap();
    bytes[info.offset as usize] = 0x80;
    let bad = tmp.path().join("bad.lowbit");
    std::fs::write(&bad, &bytes).unwrap();
    let out = fails(bin().args(["run", "-m", bad.to_str().unwrap(), "-p", "hi", "-n", "1"]), "-128 at row 0, column 0");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&info.name));
}

#[test]
fn corrupt_and_truncated_files() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m.lowbit");
    convert(&data("runtime/tests/data/tiny/swa"), &m, "nf4");
    let bytes = std::fs::read(&m).unwrap();
    // Flip a byte well inside the data section: verify names the tensor.
    let flipped = tmp.path().join("flipped.lowbit");
    let mut b = bytes.clone();
    let at = b.len() - 1000;
    b[at] ^= 0xFF;
    std::fs::write(&flipped, &b).unwrap();
    let out = fails(bin().args(["verify", flipped.to_str().unwrap()]), "failed verification");
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch: tensor "));
    // Truncated after the converter wrote it.
    let cut = tmp.path().join("cut.lowbit");
    std::fs::write(&cut, &bytes[..bytes.len() - 5000]).unwrap();
    fails(bin().args(["inspect", cut.to_str().unwrap()]), "outside the data section");
    std::fs::write(&cut, &bytes[..10]).unwrap();
    fails(bin().args(["inspect", cut.to_str().unwrap()]), "truncated");
}

#[test]
fn file_size_limit_gives_a_clear_error_and_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.lowbit");
    // 64 KiB limit; the nf4 file is about 114 KiB.
    let script = format!(
        "ulimit -f 64; exec {} convert {} -o {} --quant nf4 -q",
        env!("CARGO_BIN_EXE_lowbit"),
        data("runtime/tests/data/tiny/swa").display(),
        out.display()
    );
    fails(Command::new("bash").args(["-c", &script]), "no space left");
    assert!(only_entries(tmp.path()).is_empty(), "left behind: {:?}", only_entries(tmp.path()));
}

#[test]
fn killed_conversion_leaves_nothing_at_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("big");
    // One layer of Mistral-7B plus its embeddings: large enough that conversion takes seconds.
    let cfg = lowbit_convert::synth::presets().into_iter().find(|p| p.name == "mistral-7b-v0.1").unwrap().config;
    lowbit_convert::synth::synthesize(&cfg, &dir, 3, Some(1), 1 << 30).unwrap();
    let out = tmp.path().join("out.lowbit");
    let mut child = bin().args(["convert", dir.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.exists(), "a killed conversion left a file at the output path");
    // Only the hidden temporary file may remain.
    for name in only_entries(tmp.path()) {
        assert!(name == "big" || name.starts_with(".out.lowbit.tmp-"), "unexpected {name}");
    }
}

/// Arguments that used to hang, abort or quietly do the wrong thing.
#[test]
fn argument_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny.lowbit");
    convert(&data("converter/tests/data/gguf/tiny.gguf"), &model, "nf4");
    let m = model.to_str().unwrap();
    // Ten thousand workers used to take minutes to start.
    fails(bin().args(["--threads", "10000", "run", "-m", m, "-p", "hi"]), "per core");
    fails(bin().args(["--threads", "10000", "cpu"]), "per core");
    // An allocation that cannot succeed is an error, not an abort.
    fails(bin().args(["cpu", "--bandwidth", "100000000000"]), "cannot allocate");
    fails(bin().args(["cpu", "--bandwidth", "18446744073709551615"]), "--bandwidth");
    // The output may not be the model being read; the model stays as it was.
    let before = std::fs::read(&model).unwrap();
    fails(bin().args(["logits", "-m", m, "--tokens", "1,2", "--out", m]), "also an input");
    assert_eq!(std::fs::read(&model).unwrap(), before);
    // A base saved with another chunk length is refused, not read out of step.
    let base = tmp.path().join("base.npy");
    let text = data("data/genesis-kjv.txt");
    let t = text.to_str().unwrap();
    let ok = bin()
        .args(["perplexity", "-m", m, "-f", t, "-c", "16", "--chunks", "3", "--save-logits", base.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    fails(
        bin().args(["perplexity", "-m", m, "-f", t, "-c", "32", "--chunks", "3", "--kl-base", base.to_str().unwrap()]),
        "same text, -c and --chunks",
    );
    fails(bin().args(["perplexity", "-m", m, "-f", t, "--save-logits", t]), "also an input");
    assert!(std::fs::metadata(&text).unwrap().len() > 30_000, "the text was not overwritten");
}

/// A model file truncated by another process while `run` has it mapped: a message naming the
/// file and exit status 2, not a bare SIGBUS.
#[cfg(target_os = "linux")]
#[test]
fn model_truncated_while_mapped_is_reported() {
    use std::io::Write;
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("victim.lowbit");
    convert(&data("converter/tests/data/gguf/tiny.gguf"), &m, "nf4");
    // The prompt comes from stdin, which `run` reads after mapping the model.
    let mut child = bin()
        .args(["run", "-m", m.to_str().unwrap(), "-f", "-", "-n", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let maps = format!("/proc/{}/maps", child.id());
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&maps).unwrap_or_default().contains("victim.lowbit") {
        assert!(start.elapsed().as_secs() < 60, "the model was never mapped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Keep the header's first page; every tensor is past it.
    std::fs::OpenOptions::new().write(true).open(&m).unwrap().set_len(4096).unwrap();
    // The child may touch a tensor and fail before it reads stdin; a closed pipe is then
    // expected, and the outcome checked below is the same.
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"hello");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "status {:?}; stderr: {err}", out.status);
    assert!(err.contains("victim.lowbit could not be read while in use"), "{err}");
}

/// Output piped into a reader that stops early ends the process quietly (SIGPIPE, as `cat`
/// does), not with a panic in `println!`.
#[cfg(unix)]
#[test]
fn closed_stdout_is_not_a_panic() {
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("tiny.lowbit");
    convert(&data("converter/tests/data/gguf/tiny.gguf"), &m, "nf4");
    let mut child = bin()
        .args(["inspect", m.to_str().unwrap(), "--tensors"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
