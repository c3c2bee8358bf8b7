//! `lowbit batch`: offline generation for a JSONL file of requests on the batched engine,
//! results written one line per request in input order, resumable.

use crate::args::BatchArgs;
use crate::stats;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lowbit_runtime::batch::{BatchOptions, Event, Request, Scheduler, SubmitError};
use lowbit_runtime::{Message, RuntimeOptions, SamplerConfig, TextCodec};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

/// The request fields a line may carry (others are an error, so a typo is not ignored).
const FIELDS: &[&str] = &[
    "id",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "n",
    "logprobs",
];

pub fn run(a: BatchArgs, threads: Option<usize>) -> Result<()> {
    anyhow::ensure!(a.out != a.input, "the output must not be the input file");
    let input = open_input(&a.input)?;
    let total = count_lines(&a.input)?;
    let done = if a.resume { finished_ids(&a.out)? } else { HashSet::new() };
    let mut out = open_output(&a.out, a.resume)?;

    let t0 = Instant::now();
    let engine = Arc::new(super::engine(
        &a.model,
        &RuntimeOptions {
            threads,
            fourbit_exact: a.sample.exact,
            kv_type: a.sample.kv_type.kv(),
            adapters: super::adapters(&a.model, &a.sample.lora)?,
            ..RuntimeOptions::default()
        },
    )?);
    let codec = engine.codec().ok();
    // As llama.cpp does, a context past what the model was trained for is cut to it.
    let trained = engine.model().config.max_position_embeddings;
    if a.sample.ctx > trained && !a.quiet {
        eprintln!("[context {} is more than the model's {trained} positions: using {trained}]", a.sample.ctx);
    }
    let opts = BatchOptions {
        parallel: a.parallel,
        context: a.sample.ctx.min(trained),
        queue: a.parallel * 2,
        prefill_chunk: a.prefill_chunk,
    };
    engine.model().set_profiling(a.sample.profile);
    let sched = Scheduler::start(engine.clone(), opts)?;
    let seed = a.sample.seed.unwrap_or(0);
    let defaults = SamplerConfig {
        temperature: a.sample.temp,
        top_k: a.sample.top_k,
        top_p: a.sample.top_p,
        min_p: a.sample.min_p,
        repetition_penalty: a.sample.repeat_penalty,
        presence_penalty: a.sample.presence_penalty,
        frequency_penalty: a.sample.frequency_penalty,
        seed,
    };

    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(total as u64) };
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} requests {msg} [{elapsed_precise}<{eta_precise}]",
    )?);
    // Results come back in completion order; they are written in input order.
    let (tx, rx) = mpsc::channel::<(usize, Value)>();
    let mut ready: BTreeMap<usize, Value> = BTreeMap::new();
    let (mut next_out, mut submitted, mut failed, mut skipped, mut generated) = (0usize, 0usize, 0usize, 0usize, 0u64);
    let mut write_ready = |ready: &mut BTreeMap<usize, Value>, next_out: &mut usize| -> Result<()> {
        while let Some(v) = ready.remove(next_out) {
            if v.get("error").is_some() {
                failed += 1;
            }
            generated += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
            writeln!(out, "{v}").and_then(|_| out.flush()).with_context(|| format!("writing {}", a.out.display()))?;
            *next_out += 1;
            bar.inc(1);
            bar.set_message(format!("{:.1} tok/s", generated as f64 / t0.elapsed().as_secs_f64()));
        }
        Ok(())
    };
    let line_limit = (a.sample.ctx as u64).saturating_mul(64).saturating_add(1 << 20);
    let mut lines = BoundedLines { reader: input, limit: line_limit };
    let mut index = 0usize;
    while let Some(line) = lines.next_line().with_context(|| format!("reading {}", a.input.display()))? {
        index += 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(&line, index, codec, &defaults, a.sample.budget());
        let id = parsed.as_ref().map_or_else(|(id, _)| id.clone(), |(id, _)| id.clone());
        if done.contains(&id.to_string()) {
            skipped += 1;
            bar.inc(1);
            continue;
        }
        let slot = submitted;
        submitted += 1;
        let req = match parsed {
            Ok((_, req)) => Request { ignore_eos: a.sample.ignore_eos, ..req },
            Err((_, why)) => {
                ready.insert(slot, json!({ "id": id, "error": why }));
                write_ready(&mut ready, &mut next_out)?;
                continue;
            }
        };
        let n = req.n;
        loop {
            let sink = collector(slot, id.clone(), n, tx.clone());
            match sched.submit(req.clone(), sink) {
                Ok(_) => break,
                // Every slot busy and the queue full: wait for a result, then try again.
                Err(SubmitError::QueueFull(_)) => {
                    let (i, v) = rx.recv().context("the scheduler stopped")?;
                    ready.insert(i, v);
                    write_ready(&mut ready, &mut next_out)?;
                }
                Err(e) => {
                    ready.insert(slot, json!({ "id": id, "error": e.to_string() }));
                    break;
                }
            }
        }
        while let Ok((i, v)) = rx.try_recv() {
            ready.insert(i, v);
        }
        write_ready(&mut ready, &mut next_out)?;
    }
    while next_out < submitted {
        let (i, v) = rx.recv().context("the scheduler stopped")?;
        ready.insert(i, v);
        write_ready(&mut ready, &mut next_out)?;
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "[{submitted} requests{}: {generated} tokens generated in {secs:.1} s, {:.1} tok/s | parallel {} | peak RSS {}]",
        if skipped > 0 { format!(" ({skipped} already in the output skipped)") } else { String::new() },
        generated as f64 / secs,
        a.parallel,
        stats::peak_rss().map(stats::human).unwrap_or_else(|| "?".into())
    );
    if a.sample.profile {
        let m = sched.metrics();
        let (steps, rows) = (m.decode_steps.load(Relaxed), m.decode_rows.load(Relaxed));
        eprintln!(
            "[{steps} decode steps carried {rows} sequence-steps, {:.2} a step]",
            rows as f64 / steps.max(1) as f64
        );
        super::run::report_profile(engine.model());
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {submitted} requests failed; their lines in {} carry an \"error\" field",
        a.out.display()
    );
    Ok(())
}

/// A line's request and its id (the line's `"id"`, else its line number), or the id and why
/// the line is unusable.
fn parse_line(
    line: &str,
    index: usize,
    codec: Option<&TextCodec>,
    defaults: &SamplerConfig,
    max_tokens: usize,
) -> Result<(Value, Request), (Value, String)> {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return Err((json!(index), format!("line {index} is not JSON: {e}"))),
    };
    let Value::Object(o) = v else { return Err((json!(index), format!("line {index} is not a JSON object"))) };
    let id = o.get("id").cloned().unwrap_or(json!(index));
    request(&o, codec, defaults, max_tokens).map(|r| (id.clone(), r)).map_err(|e| (id, e))
}

fn request(
    o: &Map<String, Value>,
    codec: Option<&TextCodec>,
    d: &SamplerConfig,
    max_tokens: usize,
) -> Result<Request, String> {
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field {k:?} (known: {})", FIELDS.join(", ")));
    }
    let codec = codec.ok_or("the model file has no tokenizer")?;
    let num = |k: &str, default: f64| -> Result<f64, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or(format!("{k} must be a number")),
        }
    };
    let count = |k: &str, default: usize| -> Result<usize, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or(format!("{k} must be a non-negative integer")),
        }
    };
    let prompt = match (o.get("prompt"), o.get("messages")) {
        (Some(Value::String(p)), None) => codec.encode(p, true).map_err(|e| e.to_string())?,
        (None, Some(Value::Array(ms))) => {
            if !codec.has_template() {
                return Err("\"messages\" need a chat template, and the model file has none".into());
            }
            let msgs = ms
                .iter()
                .map(|m| match (m.get("role").and_then(Value::as_str), m.get("content").and_then(Value::as_str)) {
                    (Some(role), Some(content)) => Ok(Message { role: role.into(), content: content.into() }),
                    _ => Err("each message needs a string \"role\" and \"content\"".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if msgs.is_empty() {
                return Err("\"messages\" is empty".into());
            }
            let text = codec.apply_chat_template(&msgs, true).map_err(|e| e.to_string())?;
            codec.encode(&text, false).map_err(|e| e.to_string())?
        }
        _ => return Err("give either \"prompt\" (a string) or \"messages\" (a list)".into()),
    };
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or("stop must be a string or a list of strings".to_string()))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("stop must be a string or a list of strings".into()),
    };
    let logprobs = match o.get("logprobs") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("logprobs must be a non-negative integer")? as usize),
    };
    let seed = match o.get("seed") {
        None | Some(Value::Null) => d.seed,
        Some(v) => v.as_u64().ok_or("seed must be a non-negative integer")?,
    };
    let sampling = SamplerConfig {
        temperature: num("temperature", d.temperature as f64)? as f32,
        top_p: num("top_p", d.top_p as f64)? as f32,
        top_k: count("top_k", d.top_k)?,
        min_p: num("min_p", d.min_p as f64)? as f32,
        repetition_penalty: num("repeat_penalty", d.repetition_penalty as f64)? as f32,
        presence_penalty: num("presence_penalty", d.presence_penalty as f64)? as f32,
        frequency_penalty: num("frequency_penalty", d.frequency_penalty as f64)? as f32,
        seed,
    };
    Ok(Request {
        prompt,
        max_tokens: count("max_tokens", max_tokens)?,
        sampling,
        stop,
        n: count("n", 1)?,
        logprobs,
        prompt_logprobs: None,
        ignore_eos: false,
        adapter: None,
    })
}

/// A sink that assembles a request's result line and sends it with its input position.
fn collector(slot: usize, id: Value, n: usize, tx: mpsc::Sender<(usize, Value)>) -> lowbit_runtime::batch::Sink {
    let mut choices: Vec<Value> =
        (0..n).map(|i| json!({ "index": i, "text": "", "finish_reason": null, "token_ids": [] })).collect();
    let mut logprobs: Vec<Vec<Value>> = vec![Vec::new(); n];
    Box::new(move |e| {
        match e {
            Event::Token { choice, id, text, logprob } => {
                let c = &mut choices[choice];
                c["text"] = Value::String(c["text"].as_str().unwrap_or_default().to_string() + &text);
                c["token_ids"].as_array_mut().expect("made above").push(json!(id));
                if let Some(l) = logprob {
                    let top: Map<String, Value> = l.top.iter().map(|&(t, lp)| (t.to_string(), json!(lp))).collect();
                    logprobs[choice].push(json!({ "token_id": id, "logprob": l.logprob, "top": top }));
                }
            }
            Event::Done { choice, reason, text } => {
                let c = &mut choices[choice];
                c["text"] = Value::String(c["text"].as_str().unwrap_or_default().to_string() + &text);
                c["finish_reason"] = json!(reason.as_str());
                if !logprobs[choice].is_empty() {
                    c["logprobs"] = Value::Array(std::mem::take(&mut logprobs[choice]));
                }
            }
            Event::PromptLogprobs { .. } => {}
            Event::Finished(u) => {
                let usage = json!({
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "time_to_first_token_ms": u.time_to_first_token.as_secs_f64() * 1e3,
                    "total_ms": u.total.as_secs_f64() * 1e3,
                });
                let line = json!({ "id": id, "choices": std::mem::take(&mut choices), "usage": usage });
                let _ = tx.send((slot, line));
            }
            Event::Failed(why) => {
                let _ = tx.send((slot, json!({ "id": id, "error": why })));
            }
        }
        true
    })
}

fn open_input(path: &std::path::Path) -> Result<BufReader<std::fs::File>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    Ok(BufReader::new(std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?))
}

/// Non-empty lines, for the progress bar.
fn count_lines(path: &std::path::Path) -> Result<usize> {
    let mut n = 0;
    for chunk in open_input(path)?.split(b'\n') {
        if !chunk.with_context(|| format!("reading {}", path.display()))?.iter().all(u8::is_ascii_whitespace) {
            n += 1;
        }
    }
    Ok(n)
}

/// Ids of the requests an earlier run finished. The output is rewritten (through a temporary
/// file) with those lines only: error lines, whose requests run again, and a last line cut off
/// by an interruption go, so every id ends up with one line.
fn finished_ids(path: &std::path::Path) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let Ok(meta) = std::fs::metadata(path) else { return Ok(ids) };
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut kept = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n').filter(|l| l.ends_with(b"\n")) {
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(line) {
            if let (Some(id), None) = (o.get("id"), o.get("error")) {
                if ids.insert(id.to_string()) {
                    kept.extend_from_slice(line);
                }
            }
        }
    }
    if kept.len() != text.len() {
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, &kept)
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("rewriting {}", path.display()))?;
    }
    Ok(ids)
}

fn open_output(path: &std::path::Path, append: bool) -> Result<std::io::BufWriter<std::fs::File>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.seek(std::io::SeekFrom::End(0))?;
    Ok(std::io::BufWriter::new(f))
}

/// Lines of at most `limit` bytes (a longer one is an error, not an unbounded read).
struct BoundedLines {
    reader: BufReader<std::fs::File>,
    limit: u64,
}

impl BoundedLines {
    fn next_line(&mut self) -> Result<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.reader).take(self.limit + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        anyhow::ensure!(
            buf.len() as u64 <= self.limit,
            "a line is over {} bytes, more than a context of --ctx tokens can hold",
            self.limit
        );
        String::from_utf8(buf).map(Some).map_err(|_| anyhow::anyhow!("a line is not UTF-8 text"))
    }
}
