//! The `lowbit` command line as a llama.cpp user types it: short flags, prompts from standard
//! input, a printed random seed that `--seed` repeats, the chat template by default, and honest
//! figures when nothing is generated.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
}

fn tiny(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../converter/tests/data/gguf/tiny.gguf");
    let out = dir.join("tiny.lowbit");
    let o =
        bin().args(["convert", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--quant", "nf4", "-q"]).output();
    assert!(o.unwrap().status.success());
    out
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn short_flags_stdin_prompts_and_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let m = m.to_str().unwrap();
    // -t, -c, -s and -n as llama.cpp spells them.
    let a =
        ok(bin().args(["-t", "1", "run", "-m", m, "-p", "hello", "-c", "64", "-n", "6", "--temp", "0.8", "-s", "7"]));
    let b =
        ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "6", "--temp", "0.8", "--seed", "7", "--threads", "1"]));
    assert_eq!(a.stdout, b.stdout, "the same seed gives the same text");
    // llama.cpp's long spellings, and its GPU flag, which is ignored with a note.
    let l = ok(bin().args([
        "-t",
        "1",
        "run",
        "-m",
        m,
        "-p",
        "hello",
        "--ctx-size",
        "64",
        "--n-predict",
        "6",
        "--temp",
        "0.8",
        "-s",
        "7",
        "-ngl",
        "99",
    ]));
    assert_eq!(l.stdout, a.stdout);
    assert!(stderr(&l).contains("note: lowbit runs on the CPU: `-ngl 99` ignored"), "{}", stderr(&l));
    // Without --seed a sampled run prints the seed it drew, and that seed repeats the run.
    let c = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "6", "--temp", "0.8"]));
    let err = stderr(&c);
    let seed = err.split("[seed ").nth(1).and_then(|s| s.split(']').next()).unwrap_or_else(|| panic!("no seed: {err}"));
    let d = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "6", "--temp", "0.8", "--seed", seed]));
    assert_eq!(c.stdout, d.stdout);
    // -f - reads the prompt from standard input: the same text as -p.
    let mut child = bin()
        .args(["run", "-m", m, "-f", "-", "-n", "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello").unwrap();
    let e = child.wait_with_output().unwrap();
    assert!(e.status.success(), "{}", stderr(&e));
    let f = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "6"]));
    assert_eq!(e.stdout, f.stdout);
    // A negative temperature is a bad temperature, not an unknown argument.
    let g = bin().args(["run", "-m", m, "-p", "hello", "--temp", "-1"]).output().unwrap();
    assert_eq!(g.status.code(), Some(2));
    assert!(stderr(&g).contains("temperature -1 must be ≥ 0"), "{}", stderr(&g));
}

#[test]
fn template_by_default_raw_on_request_and_no_tokens_no_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let m = m.to_str().unwrap();
    // The tiny model has a chat template: `run` uses it unless --raw, so the two prompts differ
    // (the templated one is longer) and --chat is the same as the default.
    let chat = stderr(&ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "1"])));
    let forced = stderr(&ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "1", "--chat"])));
    let raw = stderr(&ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "1", "--raw"])));
    let prompt_tokens = |s: &str| -> usize {
        s.split("prefill ").nth(1).and_then(|t| t.split(" tok").next()).and_then(|n| n.parse().ok()).unwrap()
    };
    assert!(prompt_tokens(&chat) > prompt_tokens(&raw), "{chat} / {raw}");
    assert_eq!(prompt_tokens(&chat), prompt_tokens(&forced));
    // -n 0 generates nothing and reports no speed out of thin air.
    let none = stderr(&ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "0"])));
    assert!(none.contains("prefill 0 tok, 0.0 tok/s | decode 0 tok, 0.0 tok/s"), "{none}");
}

/// A chat whose context fills up drops its oldest turns and goes on; a message that cannot fit
/// at all is refused and the chat goes on; /clear and /exit work; each turn reports its own
/// figures.
#[test]
fn chat_survives_a_full_context() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let mut child = bin()
        .args(["chat", "-m", m.to_str().unwrap(), "-c", "96", "-n", "8", "--ignore-eos", "--system", "be brief"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let long = "word ".repeat(200);
    let input = format!(
        "one two three\nfour five six\nseven eight nine\nten eleven\n{long}\n/clear\nagain\n/exit\nnever read\n"
    );
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the context was full: dropped"), "{err}");
    assert!(err.contains("does not fit"), "{err}");
    assert!(err.contains("[conversation cleared]"), "{err}");
    assert_eq!(err.matches("[prefill ").count(), 5, "five answered turns: {err}");
    assert!(!err.contains("[load "), "turns report their own figures: {err}");
    // No limit (-n -1): every reply runs to the context's end, turn after turn.
    let mut child = bin()
        .args(["chat", "-m", m.to_str().unwrap(), "-c", "64", "-n", "-1", "--ignore-eos"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"one two\nthree four\nfive\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("[prefill ").count(), 3, "three answered turns: {err}");
}

/// docs/CLI.md keeps up with `--help`: every subcommand has its section and every long flag a
/// subcommand's help lists appears in the file.
#[test]
fn cli_doc_lists_every_subcommand_and_flag() {
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/CLI.md")).unwrap();
    let help = String::from_utf8(ok(bin().arg("--help")).stdout).unwrap();
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 8, "{help}");
    for c in &commands {
        assert!(doc.contains(&format!("## `{c}`")), "docs/CLI.md has no section for `{c}`");
        let sub = String::from_utf8(ok(bin().args([c.as_str(), "--help"])).stdout).unwrap();
        for flag in sub.split_whitespace().filter(|w| w.starts_with("--") && w.len() > 2) {
            let flag = flag.trim_end_matches([',', '.', ')', ']']);
            assert!(doc.contains(flag), "docs/CLI.md does not mention {flag} of `{c}`");
        }
    }
}

/// Every `lowbit …` command line in the README and docs/ARCHITECTURE.md names a real
/// subcommand, and every long flag it uses is one that subcommand's `--help` lists: the
/// documentation cannot drift from the tool.
#[test]
fn readme_commands_use_real_subcommands_and_flags() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for doc in ["README.md", "docs/ARCHITECTURE.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for line in text.lines().map(str::trim).filter(|l| l.starts_with("lowbit ")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(&sub) = words.get(1) else { continue };
            let help = bin().args([sub, "--help"]).output().unwrap();
            assert!(help.status.success(), "{doc}: `{line}` names no subcommand {sub:?}");
            let help = String::from_utf8(help.stdout).unwrap();
            for w in words.iter().take_while(|w| !w.starts_with('#')).filter(|w| w.starts_with("--")) {
                let flag = w.trim_start_matches(['[', '(']).split(['=', ']', ')', '|']).next().unwrap();
                if flag.len() > 2 {
                    assert!(
                        help.contains(flag),
                        "{doc}: `{line}` uses {flag}, which `lowbit {sub} --help` does not list"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} command lines found");
}

/// `--json`: `run` prints one object whose text is what the streamed run prints, `inspect` one
/// object with the RAM estimate, `perplexity` one with the figures of its text lines.
#[test]
fn json_output_of_run_inspect_and_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let m = m.to_str().unwrap();
    let streamed = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "6", "--temp", "0"]));
    let o = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "6", "--temp", "0", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let text = String::from_utf8(streamed.stdout).unwrap();
    // The stream holds back a character cut off by the last token; the whole text shows it as
    // U+FFFD.
    assert_eq!(v["text"].as_str().unwrap().trim_end_matches('\u{FFFD}'), text.strip_suffix('\n').unwrap());
    assert_eq!(v["token_ids"].as_array().unwrap().len() as u64, v["generated_tokens"].as_u64().unwrap());
    // -n -1 (llama.cpp's "no limit") runs until the context is full, which ends the reply
    // ("length") instead of failing; the plain run says so on standard error.
    let full = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "-1", "-c", "24", "--ignore-eos", "--json"]));
    let f: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
    let used = f["prompt_tokens"].as_u64().unwrap() + f["generated_tokens"].as_u64().unwrap();
    // Every position holds a token; the last one sampled needs no slot of its own.
    assert_eq!((used, f["finish_reason"].as_str()), (25, Some("length")), "{f}");
    let full = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "100", "-c", "24", "--ignore-eos"]));
    assert!(stderr(&full).contains("the context is full"), "{}", stderr(&full));
    let bad = bin().args(["run", "-m", m, "-p", "hello", "-n", "-2"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("-1 for no limit"), "{}", stderr(&bad));
    let o = ok(bin().args(["inspect", m, "--json", "--ctx", "64", "--parallel", "2", "--kv-type", "f16"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ram"]["parallel"], 2);
    assert_eq!(v["ram"]["kv_type"], "f16");
    assert!(v["ram"]["total"].as_u64().unwrap() > v["file_bytes"].as_u64().unwrap());
    assert!(v["bits_per_weight"].as_f64().unwrap() > 4.0);
    // A q8 cache: a byte per value plus an f16 scale per 32, against f16's two bytes.
    let q8 = ok(bin().args(["inspect", m, "--json", "--ctx", "64", "--parallel", "2", "--kv-type", "q8"]));
    let q8: serde_json::Value = serde_json::from_slice(&q8.stdout).unwrap();
    let (kq, kf) = (q8["ram"]["kv_cache"].as_u64().unwrap(), v["ram"]["kv_cache"].as_u64().unwrap());
    assert!(kq < kf && kq * 2 > kf, "q8 {kq} bytes against f16 {kf}");
    // run with a q8 cache, greedy: a reply of the asked length.
    let o = ok(bin().args(["run", "-m", m, "-p", "hello", "-n", "6", "--temp", "0", "--json", "--kv-type", "q8"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["generated_tokens"].as_u64().unwrap() > 0);
    // perplexity: the object's figure is the text line's; against its own logits, KL 0.
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "one two three four five six seven eight nine ten eleven twelve ".repeat(8)).unwrap();
    let t = text.to_str().unwrap();
    let base = tmp.path().join("base.npy");
    let plain = ok(bin().args(["perplexity", "-m", m, "-f", t, "-c", "16", "--chunks", "3"]));
    let o = ok(bin().args(["perplexity", "-m", m, "-f", t, "-c", "16", "--chunks", "3", "--json"]));
    ok(bin().args([
        "perplexity",
        "-m",
        m,
        "-f",
        t,
        "-c",
        "16",
        "--chunks",
        "3",
        "--save-logits",
        base.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let line = String::from_utf8(plain.stdout).unwrap();
    assert!(
        line.starts_with(&format!(
            "perplexity: {:.4} over {} tokens",
            v["perplexity"].as_f64().unwrap(),
            v["scored_tokens"]
        )),
        "{line}"
    );
    assert_eq!((v["chunks"].as_u64(), v["ctx"].as_u64()), (Some(3), Some(16)));
    // The total is the chunks' (equal counts per chunk): the geometric mean of their perplexities.
    let per: Vec<f64> = v["per_chunk"].as_array().unwrap().iter().map(|c| c["perplexity"].as_f64().unwrap()).collect();
    assert_eq!(per.len(), 3);
    let mean = (per.iter().map(|p| p.ln()).sum::<f64>() / 3.0).exp();
    assert!((mean - v["perplexity"].as_f64().unwrap()).abs() < 1e-9, "{per:?} {v}");
    let o = ok(bin().args([
        "perplexity",
        "-m",
        m,
        "-f",
        t,
        "-c",
        "16",
        "--chunks",
        "3",
        "--json",
        "--kl-base",
        base.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert!(v["kl_divergence"].as_f64().unwrap().abs() < 1e-3, "{v}");
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
}

/// `run` and `chat` take a GGUF file directly: converted once into the cache, then reused; a
/// GGUF given where a lowbit file is needed says what it is and what to run.
#[test]
fn gguf_runs_directly_through_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../converter/tests/data/gguf/tiny.gguf");
    let gguf = gguf.to_str().unwrap();
    let cache = tmp.path().join("cache");
    let run = || {
        bin()
            .env("LOWBIT_CACHE", &cache)
            .args(["run", "-m", gguf, "-p", "hello", "-n", "4", "--temp", "0", "--quant", "int8"])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stderr(&first).contains("converted"), "{}", stderr(&first));
    let second = run();
    assert!(stderr(&second).contains("using the int8 conversion"), "{}", stderr(&second));
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(std::fs::read_dir(cache.join("converted")).unwrap().count(), 1);
    let o = bin().args(["inspect", gguf]).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("it is a GGUF file"), "{}", stderr(&o));
}

/// `lowbit batch`: results in input order, greedy text equal to `lowbit run --raw`, a bad line
/// reported in its place (and in the exit status) without stopping the others, and `--resume`
/// finishing an interrupted output.
#[test]
fn batch_runs_a_jsonl_file_in_order_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let m = m.to_str().unwrap();
    let input = tmp.path().join("in.jsonl");
    let lines = [
        r#"{"id": "a", "prompt": "hello", "max_tokens": 8}"#,
        r#"{"id": "b", "prompt": "the cat sat on", "max_tokens": 8, "temperature": 0.7, "seed": 3, "n": 2}"#,
        r#"{"id": "c", "prompt": "hello", "max_tokens": 8, "colour": 1}"#,
        r#"{"prompt": "one two three", "max_tokens": 5, "logprobs": 2}"#,
        "",
        r#"{"id": "e", "prompt": "world", "max_tokens": 8}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = tmp.path().join("out.jsonl");
    let run = |extra: &[&str]| {
        bin()
            .args(["batch", "-m", m, "-i", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--parallel", "3"])
            .args(["--temp", "0", "-q"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2), "one line is bad: {}", stderr(&o));
    assert!(stderr(&o).contains("1 of 5 requests failed"), "{}", stderr(&o));
    let results = |path: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let full = results(&out);
    let ids: Vec<String> = full.iter().map(|v| v["id"].to_string()).collect();
    assert_eq!(
        ids,
        [r#""a""#, r#""b""#, r#""c""#, "4", r#""e""#],
        "input order; a line without an id is named by its number"
    );
    assert!(full[2]["error"].as_str().unwrap().contains("unknown field \"colour\""), "{}", full[2]);
    assert_eq!(full[1]["choices"].as_array().unwrap().len(), 2);
    assert_eq!(
        full[3]["choices"][0]["logprobs"].as_array().unwrap().len(),
        full[3]["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for (v, prompt) in [(&full[0], "hello"), (&full[4], "world")] {
        let alone = ok(bin().args(["run", "-m", m, "-p", prompt, "--raw", "-n", "8", "--temp", "0"]));
        let text = String::from_utf8(alone.stdout).unwrap();
        assert_eq!(text.strip_suffix('\n').unwrap(), v["choices"][0]["text"].as_str().unwrap(), "{prompt}");
    }
    // An interrupted run: two finished lines and half of the third. --resume keeps the two,
    // drops the cut line and runs the rest.
    let text = std::fs::read_to_string(&out).unwrap();
    let keep: usize = text.split_inclusive('\n').take(2).map(str::len).sum();
    std::fs::write(&out, &text[..keep + 10]).unwrap();
    let o = run(&["--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 already in the output skipped"), "{}", stderr(&o));
    let resumed = results(&out);
    assert_eq!(resumed.len(), 5);
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["choices"], b["choices"], "greedy and seeded results repeat");
    }
    // Resuming a finished output reruns only the failed line, which keeps one line.
    let o = run(&["--resume"]);
    assert!(stderr(&o).contains("4 already in the output skipped"), "{}", stderr(&o));
    let again = results(&out);
    assert_eq!(again.len(), 5, "{again:?}");
    assert_eq!(again.iter().filter(|v| v["id"] == "c").count(), 1);
    // Without --resume an existing output is started afresh.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(results(&out).len(), 5);
}

/// `imatrix` reads a text through a model and writes the mean x² of every linear weight's input
/// columns; `convert --imatrix` weights the 4-bit search with it (other codes than without), and
/// refuses a file made for another model.
#[test]
fn imatrix_then_convert_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../converter/tests/data/gguf/tiny.gguf");
    let f32_file = tmp.path().join("f32.lowbit");
    ok(bin().args(["convert", gguf.to_str().unwrap(), "-o", f32_file.to_str().unwrap(), "--quant", "f32", "-q"]));
    let text = tmp.path().join("calib.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog and then runs away ".repeat(20)).unwrap();
    let im = tmp.path().join("tiny.imatrix");
    let o = ok(bin().args([
        "imatrix",
        "-m",
        f32_file.to_str().unwrap(),
        "-f",
        text.to_str().unwrap(),
        "-o",
        im.to_str().unwrap(),
        "-c",
        "16",
    ]));
    let layers = lowbit_format::ModelFile::open(&f32_file)
        .unwrap()
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with("self_attn.q_proj.weight"))
        .count();
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{} weights", 7 * layers)), "{o:?}");
    let (plain, weighted) = (tmp.path().join("plain.lowbit"), tmp.path().join("weighted.lowbit"));
    ok(bin().args(["convert", gguf.to_str().unwrap(), "-o", plain.to_str().unwrap(), "-q"]));
    ok(bin().args([
        "convert",
        gguf.to_str().unwrap(),
        "-o",
        weighted.to_str().unwrap(),
        "-q",
        "--imatrix",
        im.to_str().unwrap(),
    ]));
    let (a, b) = (lowbit_format::ModelFile::open(&plain).unwrap(), lowbit_format::ModelFile::open(&weighted).unwrap());
    // The importance steers nf4 (q_proj) and block int5 (layer 0's MLP, in 5 bits by
    // `nf4`'s recipe) alike.
    for (name, part) in
        [("model.layers.0.self_attn.q_proj.weight", "codes"), ("model.layers.0.mlp.down_proj.weight", "qs")]
    {
        assert!(a.tensor(name).unwrap().part(part).unwrap() != b.tensor(name).unwrap().part(part).unwrap(), "{name}");
    }
    // A model of another shape: refused, and no file is left.
    let other = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/data/tiny/h96");
    let out = tmp.path().join("other.lowbit");
    let o = bin()
        .args([
            "convert",
            other.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-q",
            "--imatrix",
            im.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("importance file"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// `--lora` at run time: accepted by the commands that run a model, changes what it computes,
/// and an adapter for another model is refused with the reason.
#[test]
fn run_time_lora_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let m = tmp.path().join("h96.lowbit");
    ok(bin().args([
        "convert",
        root.join("runtime/tests/data/tiny/h96").to_str().unwrap(),
        "-o",
        m.to_str().unwrap(),
        "-q",
        "--quant",
        "f32",
    ]));
    let adapter = root.join("converter/tests/data/lora/plain");
    let (plain, with) = (tmp.path().join("plain.npy"), tmp.path().join("with.npy"));
    let m = m.to_str().unwrap();
    ok(bin().args(["logits", "-m", m, "--tokens", "1,5,9,2", "--out", plain.to_str().unwrap()]));
    ok(bin().args([
        "logits",
        "-m",
        m,
        "--tokens",
        "1,5,9,2",
        "--out",
        with.to_str().unwrap(),
        "--lora",
        adapter.to_str().unwrap(),
    ]));
    assert!(std::fs::read(&plain).unwrap() != std::fs::read(&with).unwrap());
    // The adapter converted on its own gives the same logits; as a model it is refused.
    let file = tmp.path().join("plain.adapter.lowbit");
    ok(bin().args(["convert", adapter.to_str().unwrap(), "-o", file.to_str().unwrap(), "-q"]));
    let from_file = tmp.path().join("from-file.npy");
    ok(bin()
        .args(["logits", "-m", m, "--tokens", "1,5,9,2", "--out", from_file.to_str().unwrap(), "--lora"])
        .arg(&file));
    assert_eq!(std::fs::read(&with).unwrap(), std::fs::read(&from_file).unwrap());
    let o = bin().args(["run", "-m", file.to_str().unwrap(), "-p", "x", "-n", "2"]).output().unwrap();
    assert!(o.status.code() == Some(2) && stderr(&o).contains("LoRA adapter file"), "{}", stderr(&o));
    let i = bin().args(["inspect", file.to_str().unwrap()]).output().unwrap();
    assert!(i.status.success() && String::from_utf8_lossy(&i.stdout).contains("target weights"));
    let tiny = tiny(tmp.path());
    let o = bin()
        .args(["run", "-m", tiny.to_str().unwrap(), "-p", "x", "-n", "2", "--lora", adapter.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("do not fit the base weight"), "{}", stderr(&o));
}
