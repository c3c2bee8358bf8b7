//! `lowbit serve` end to end: the real binary on SmolLM2 nf4, on loopback with port 0, driven by
//! the official `openai` Python client and raw HTTP (serve_client.py: greedy answers equal to
//! `lowbit run`, streaming, concurrency, stop strings, `n`, scoring, every kind of bad request,
//! disconnects, a full queue), then stopped with SIGTERM, which must end it cleanly.
//!
//! Needs LOWBIT_SMOLLM2 (the GGUF) and LOWBIT_TEST_PYTHON (a Python with `openai`); scripts/test.sh
//! provides both (scripts/test-venv.sh makes the environment).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
}

/// A running server, killed if the test fails before stopping it.
struct Server {
    child: Child,
    url: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = bin()
            .args(["-t", "2", "serve", "-m", model.to_str().unwrap(), "--port", "0", "--model-name", "smollm2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lowbit serve starts");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(120)).expect("the server prints its address");
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Server { child, url, stderr: erx }
    }

    /// SIGTERM, then the exit status and everything it wrote to stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let log: Vec<String> = self.stderr.try_iter().collect();
        (status, log.join("\n"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with `openai` and SmolLM2 converted to nf4 in `dir`, or `None` (the test is then
/// skipped) when the environment lacks them.
fn python_and_model(dir: &Path) -> Option<(std::ffi::OsString, PathBuf)> {
    let (Some(python), Some(gguf)) = (std::env::var_os("LOWBIT_TEST_PYTHON"), std::env::var_os("LOWBIT_SMOLLM2"))
    else {
        eprintln!("SKIPPED: LOWBIT_TEST_PYTHON or LOWBIT_SMOLLM2 is not set (scripts/test.sh sets both)");
        return None;
    };
    let model = dir.join("smollm2.nf4.lowbit");
    let o = bin()
        .args(["convert"])
        .arg(&gguf)
        .args(["-o", model.to_str().unwrap(), "--quant", "nf4", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some((python, model))
}

#[test]
fn openai_client_against_the_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((python, model)) = python_and_model(tmp.path()) else { return };

    // What `lowbit run` answers (through the chat template, greedy).
    let prompt = "What is the capital of France? Answer in two sentences.";
    let o =
        bin().args(["run", "-m", model.to_str().unwrap(), "-p", prompt, "-n", "32", "--temp", "0"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let expected = tmp.path().join("expected.json");
    let json = serde_json::json!({ "prompt": prompt, "max_tokens": 32, "text": text });
    std::fs::write(&expected, json.to_string()).unwrap();

    let main =
        Server::start(&model, &["--api-key", "secret", "--parallel", "4", "--ctx", "512", "--max-body-kib", "64"]);
    let busy = Server::start(&model, &["--parallel", "1", "--queue", "1"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serve_client.py");
    let o = Command::new(python).arg(&script).args([&main.url, &busy.url]).arg(&expected).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "serve_client.py failed:\n{out}\n{err}");
    assert!(out.contains("all checks passed"), "{out}");

    for server in [main, busy] {
        let (status, log) = server.stop();
        assert!(status.success(), "exit on SIGTERM: {status}\n{log}");
        assert!(log.contains("shutting down"), "{log}");
        // One log line per request, with its token counts and times.
        assert!(log.contains("chat: prompt "), "{log}");
    }
}

/// `serve --lora NAME=DIR`: a request that names the adapter (as its model, or in `lora`) gets
/// what `lowbit run --lora DIR` answers, one that does not gets the base model's answer, also
/// when both run at once; /v1/models lists the adapter; an unknown one is a 400
/// (serve_lora_client.py).
#[test]
fn named_adapters_per_request() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((python, model)) = python_and_model(tmp.path()) else { return };
    // A synthetic PEFT adapter with SmolLM2's shapes on every linear.
    let adapter = tmp.path().join("story-lora");
    let o = bin()
        .args(["synth", "--preset", "smollm2-135m", "--adapter-rank", "8", "-o", adapter.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prompt = "Write one sentence about the sea.";
    let answer = |extra: &[&str]| {
        let o = bin()
            .args(["run", "-m", model.to_str().unwrap(), "-p", prompt, "-n", "24", "--temp", "0"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8(o.stdout).unwrap();
        text.strip_suffix('\n').unwrap_or(&text).to_string()
    };
    // At three times its trained strength, so the greedy answers part early on every ISA.
    let scaled = format!("{}:3", adapter.display());
    let (base, tuned) = (answer(&[]), answer(&["--lora", &scaled]));
    assert_ne!(base, tuned, "the adapter changes the greedy answer");
    let expected = tmp.path().join("expected.json");
    let json = serde_json::json!({ "prompt": prompt, "max_tokens": 24, "base": base, "tuned": tuned });
    std::fs::write(&expected, json.to_string()).unwrap();

    let spec = format!("story={scaled}");
    let server = Server::start(&model, &["--parallel", "2", "--ctx", "512", "--lora", &spec]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/serve_lora_client.py");
    let o = Command::new(python).arg(&script).arg(&server.url).arg(&expected).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "serve_lora_client.py failed:\n{out}\n{err}");
    assert!(out.contains("all checks passed"), "{out}");
    let (status, log) = server.stop();
    assert!(status.success(), "exit on SIGTERM: {status}\n{log}");
}

/// One POST of `body` (JSON) to `path` on `url` over HTTP/`version`, without a client library:
/// the whole reply, head and body.
fn raw_post(url: &str, path: &str, body: &serde_json::Value, version: &str) -> String {
    use std::io::{Read, Write};
    let host = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/{version}\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// [`raw_post`] over HTTP/1.1: the status and the parsed JSON reply.
fn post(url: &str, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let reply = raw_post(url, path, body, "1.1");
    let (head, json) = reply.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

/// llama-server's spellings of `serve`'s flags: `-np`, `--ctx-size`, `-ngl` (ignored), and `-n`
/// as the reply length of requests that give none (the tiny test model, no Python).
#[test]
fn llama_server_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../converter/tests/data/gguf/tiny.gguf");
    let model = tmp.path().join("tiny.lowbit");
    let o = bin().arg("convert").arg(&src).args(["-o", model.to_str().unwrap(), "-q"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let server = Server::start(&model, &["-np", "2", "--ctx-size", "64", "-ngl", "99", "-n", "5"]);
    let body = serde_json::json!({ "prompt": "hello", "ignore_eos": true });
    let (status, r) = post(&server.url, "/v1/completions", &body);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 5, "{r}");
    // A request's own max_tokens wins.
    let (status, r) = post(
        &server.url,
        "/v1/completions",
        &serde_json::json!({ "prompt": "hello", "ignore_eos": true, "max_tokens": 2 }),
    );
    assert_eq!((status, &r["usage"]["completion_tokens"]), (200, &serde_json::json!(2)), "{r}");
    // The OpenAI routes without /v1, as llama-server also serves them.
    let (status, r) = post(&server.url, "/completions", &serde_json::json!({ "prompt": "hello", "max_tokens": 3 }));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion", "{r}");
    // llama-server's own /completion: n_predict, content, tokens_predicted; streamed as its
    // `data:` objects, the last with "stop": true, and no [DONE].
    let native = serde_json::json!({ "prompt": "hello", "n_predict": 4, "ignore_eos": true, "temperature": 0 });
    let (status, r) = post(&server.url, "/completion", &native);
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["tokens_predicted"].as_u64(), r["stop"].as_bool()), (Some(4), Some(true)), "{r}");
    assert_eq!(r["stopped_limit"], true, "{r}");
    let content = r["content"].as_str().unwrap().to_string();
    let (status, r) = post(&server.url, "/completion", &serde_json::json!({ "prompt": "hello", "ignore_eos": true }));
    assert_eq!((status, &r["tokens_predicted"]), (200, &serde_json::json!(5)), "the -n default: {r}");
    let mut streamed = native.clone();
    streamed["stream"] = serde_json::json!(true);
    let events = post_sse(&server.url, "/completion", &streamed);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let parsed: Vec<serde_json::Value> = events.iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let last = parsed.last().unwrap();
    assert_eq!((last["stop"].as_bool(), last["tokens_predicted"].as_u64()), (Some(true), Some(4)), "{last}");
    assert_eq!((&last["stop_type"], &last["stopped_limit"]), (&serde_json::json!("limit"), &serde_json::json!(true)));
    let ids: Vec<u64> =
        parsed.iter().filter_map(|e| e["tokens"].as_array()).flatten().filter_map(|t| t.as_u64()).collect();
    assert_eq!(ids.len(), 4, "one token id per streamed token: {parsed:?}");
    let text: String = parsed.iter().filter_map(|e| e["content"].as_str()).collect();
    assert_eq!(text, content, "streamed text equals the whole reply");
    // A stop string taken from the greedy reply (its last character) ends it at its first
    // occurrence: stop_type "word".
    let word = content.chars().last().expect("a reply of four tokens has text").to_string();
    let mut stopped = native.clone();
    stopped["stop"] = serde_json::json!([word]);
    let (status, r) = post(&server.url, "/completion", &stopped);
    assert_eq!((status, &r["stop_type"]), (200, &serde_json::json!("word")), "{r}");
    assert_eq!(r["content"].as_str(), Some(&content[..content.find(&word).unwrap()]), "{r}");
    let (status, r) = post(&server.url, "/completion", &serde_json::json!({ "prompt": "hello", "n_predict": "x" }));
    assert_eq!(status, 400, "{r}");
    let (status, log) = server.stop();
    assert!(status.success(), "exit on SIGTERM: {status}\n{log}");
    assert!(log.contains("lowbit runs on the CPU: `-ngl 99` ignored"), "{log}");
}

/// [`post`] for a streamed reply: the payloads of its `data:` lines (over HTTP/1.0, so the body
/// comes unchunked and no event is split).
fn post_sse(url: &str, path: &str, body: &serde_json::Value) -> Vec<String> {
    raw_post(url, path, body, "1.0")
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}
