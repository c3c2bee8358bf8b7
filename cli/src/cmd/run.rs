//! `lowbit run` and `lowbit chat`.

use crate::args::{ChatArgs, RunArgs, SampleArgs};
use crate::stats;
use anyhow::{Context, Result};
use lowbit_runtime::{
    generate, generate_with_progress, Conversation, Engine, GenStats, KvCache, Message, Model, RuntimeOptions, Sampler,
    SamplerConfig, TextCodec, TextStream,
};
use std::io::{BufRead, Write};
use std::time::Instant;

/// The sampler; without `--seed` a new seed each run, printed when it matters (sampling), so
/// `--seed N` repeats the run.
fn sampler(a: &SampleArgs) -> Result<Sampler> {
    let seed = a.seed.unwrap_or_else(|| {
        use std::hash::{BuildHasher, RandomState};
        // RandomState is seeded from the OS once per process: a fresh 64-bit value each run.
        RandomState::new().hash_one(std::time::SystemTime::now())
    });
    let s = Sampler::new(SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repeat_penalty,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        seed,
    })?;
    if a.temp > 0.0 && a.seed.is_none() {
        eprintln!("[seed {seed}]");
    }
    Ok(s)
}

/// Reads a prompt file (`-`: standard input), refusing one too large to fit `ctx` tokens before
/// it is all read (a token rarely covers more than a few dozen bytes).
fn read_prompt(path: &std::path::Path, ctx: usize) -> Result<String> {
    use std::io::Read;
    let limit = (ctx as u64).saturating_mul(64).saturating_add(1 << 20);
    let mut bytes = Vec::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().lock().take(limit + 1).read_to_end(&mut bytes)
    } else {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        anyhow::ensure!(!meta.is_dir(), "{} is a directory, not a prompt file", path.display());
        std::fs::File::open(path).and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
    };
    read.with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= limit,
        "the prompt in {} is over {limit} bytes, more than a context of {ctx} tokens can hold (raise --ctx)",
        path.display()
    );
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))
}

/// The per-operation table of `--profile`, per prefill pass and per decode step (the head runs
/// once per pass, so its call count is the number of passes).
pub fn report_profile(model: &Model) {
    let r = model.profile_report();
    let passes = |phase| r.ops.iter().find(|o| o.phase == phase && o.op.starts_with("matmul head")).map(|o| o.calls);
    eprintln!("[profile, lowbit_kernels {} level]\n{}", lowbit_kernels::kernels().label(), r.table(passes));
    model.profiler().reset();
}

fn report(load_secs: f64, s: &GenStats) {
    if s.context_full {
        eprintln!("\n[the context is full: stopped after {} tokens (raise --ctx for more)]", s.generated);
    }
    eprintln!(
        "\n[load {:.0} ms | prefill {} tok, {:.1} tok/s | decode {} tok, {:.1} tok/s | peak RSS {}]",
        load_secs * 1e3,
        s.prompt_tokens,
        s.prefill_tps(),
        s.generated,
        s.decode_tps(),
        stats::peak_rss().map(stats::human).unwrap_or_else(|| "?".into())
    );
}

/// Opens the model for `run` and `chat`, timing the load.
fn open(path: &std::path::Path, threads: Option<usize>, a: &SampleArgs) -> Result<(Engine, f64)> {
    let path = &super::model_path(path, a.quant)?;
    let t = Instant::now();
    let adapters = super::adapters(path, &a.lora)?;
    let engine = super::engine(
        path,
        &RuntimeOptions {
            threads,
            fourbit_exact: a.exact,
            kv_type: a.kv_type.kv(),
            adapters,
            ..RuntimeOptions::default()
        },
    )?;
    Ok((engine, t.elapsed().as_secs_f64()))
}

#[allow(clippy::too_many_arguments)]
fn stream_generate(
    model: &Model,
    codec: &TextCodec,
    stop_ids: &[u32],
    cache: &mut KvCache,
    prompt: &[u32],
    a: &SampleArgs,
    sampler: &mut Sampler,
) -> Result<(Vec<u32>, GenStats)> {
    let stop = if a.ignore_eos { &[][..] } else { stop_ids };
    let mut stream = TextStream::default();
    let mut out = std::io::stdout().lock();
    let mut err = None;
    let bar = PrefillBar::new(prompt.len());
    let on_prefill = |done: usize, layers: usize| bar.layer(done, layers);
    let res = generate_with_progress(model, cache, prompt, a.max_tokens, sampler, stop, &on_prefill, |id| {
        bar.clear();
        match stream.push(codec, id) {
            Ok(Some(piece)) => {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                true
            }
            Ok(None) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    });
    bar.clear();
    let res = res?;
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(res)
}

/// A progress bar on standard error for a prompt that takes a while to read: hidden at first
/// and drawn only once the prompt has taken a second and standard error is a terminal, so short
/// prompts and piped output see nothing.
struct PrefillBar {
    bar: indicatif::ProgressBar,
    start: Instant,
    tty: bool,
}

impl PrefillBar {
    fn new(tokens: usize) -> PrefillBar {
        use std::io::IsTerminal;
        let bar = indicatif::ProgressBar::hidden();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "reading the prompt ({msg} tokens) {bar:30} layer {pos}/{len} {elapsed}",
            )
            .expect("valid template"),
        );
        bar.set_message(tokens.to_string());
        PrefillBar { bar, start: Instant::now(), tty: std::io::stderr().is_terminal() }
    }

    fn layer(&self, done: usize, layers: usize) {
        if self.bar.is_hidden() && self.tty && self.start.elapsed().as_secs_f32() >= 1.0 && done < layers {
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.bar.set_length(layers as u64);
        self.bar.set_position(done as u64);
    }

    fn clear(&self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

pub fn run(mut a: RunArgs, threads: Option<usize>) -> Result<()> {
    a.sample.max_tokens = a.sample.budget();
    let (engine, load) = open(&a.model, threads, &a.sample)?;
    let codec = engine.codec()?;
    let text = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => read_prompt(f, a.sample.ctx)?,
        (None, None) => anyhow::bail!("give a prompt with -p TEXT or -f FILE (-f - reads standard input)"),
    };
    anyhow::ensure!(!a.chat || codec.has_template(), "this model file has no chat template; leave out --chat");
    anyhow::ensure!(
        a.system.is_none() || (codec.has_template() && !a.raw),
        "--system goes into the chat template; it needs a model with one, without --raw"
    );
    // As llama.cpp's conversation mode: an instruct model gets its template unless asked not to
    // (given raw text it usually ends its turn at once).
    let prompt = if (a.chat || codec.has_template()) && !a.raw {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message { role: "system".into(), content: s.clone() });
        }
        msgs.push(Message { role: "user".into(), content: text });
        let rendered = codec.apply_chat_template(&msgs, true)?;
        codec.encode(&rendered, false)?
    } else {
        codec.encode(&text, true)?
    };
    let mut s = sampler(&a.sample)?;
    engine.run(|model| -> Result<()> {
        let mut cache = model.new_cache(a.sample.ctx);
        model.set_profiling(a.sample.profile);
        if a.json {
            // One object on stdout, nothing streamed.
            let stop = if a.sample.ignore_eos { &[][..] } else { engine.stop_ids() };
            let (ids, st) = generate(model, &mut cache, &prompt, a.sample.max_tokens, &mut s, stop, |_| true)?;
            let out = serde_json::json!({
                "text": codec.decode(&ids)?,
                "token_ids": ids,
                "prompt_tokens": st.prompt_tokens,
                "generated_tokens": st.generated,
                "finish_reason": if st.context_full || st.generated >= a.sample.max_tokens { "length" } else { "stop" },
                "load_ms": load * 1e3,
                "prefill_ms": st.prefill.as_secs_f64() * 1e3,
                "decode_ms": st.decode.as_secs_f64() * 1e3,
                "prefill_tokens_per_s": st.prefill_tps(),
                "decode_tokens_per_s": st.decode_tps(),
                "peak_rss_bytes": stats::peak_rss(),
            });
            println!("{out}");
            return Ok(());
        }
        let (_, st) = stream_generate(model, codec, engine.stop_ids(), &mut cache, &prompt, &a.sample, &mut s)?;
        println!();
        report(load, &st);
        if a.sample.profile {
            report_profile(model);
        }
        Ok(())
    })
}

pub fn chat(mut a: ChatArgs, threads: Option<usize>) -> Result<()> {
    a.sample.max_tokens = a.sample.budget();
    let (engine, load) = open(&a.model, threads, &a.sample)?;
    let codec = engine.codec()?;
    anyhow::ensure!(codec.has_template(), "this model file has no chat template; use `lowbit run`");
    eprintln!(
        "[loaded in {:.0} ms; /clear forgets the conversation, /exit or an empty line ends it, a line ending in \\ continues on the next]",
        load * 1e3
    );
    let mut s = sampler(&a.sample)?;
    engine.run(|model| -> Result<()> {
        model.set_profiling(a.sample.profile);
        // The KV cache keeps every earlier turn: each turn prefills only what is new.
        let mut conv = Conversation::new(model, a.system.as_deref(), a.sample.ctx);
        let stdin = std::io::stdin();
        loop {
            eprint!("> ");
            std::io::stderr().flush()?;
            let Some(text) = read_turn(&mut stdin.lock(), a.sample.ctx)? else { break };
            match text.trim() {
                "" | "/exit" => break,
                "/clear" => {
                    conv.clear(model);
                    eprintln!("[conversation cleared]");
                    continue;
                }
                _ => {}
            }
            let dropped = conv.dropped_messages();
            let new = match conv.user_turn(model, codec, &text, a.sample.max_tokens.min(a.sample.ctx / 2)) {
                Ok(turn) => turn,
                Err(e @ lowbit_runtime::RuntimeError::ContextFull { .. }) => {
                    eprintln!("[this message does not fit: {e}; try a shorter one or a larger --ctx]");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if conv.dropped_messages() > dropped {
                eprintln!("[the context was full: dropped the {} oldest messages]", conv.dropped_messages() - dropped);
            }
            // Without a sliding window the reply may use only what the context has left.
            let cache = conv.cache();
            let budget = if cache.fits(new.len().saturating_add(a.sample.max_tokens)) {
                a.sample.max_tokens
            } else {
                cache.capacity().saturating_sub(cache.len + new.len())
            };
            let turn = SampleArgs { max_tokens: budget, ..a.sample.clone() };
            let (reply, st) = stream_generate(model, codec, engine.stop_ids(), cache, &new, &turn, &mut s)?;
            println!();
            report_turn(&st);
            if a.sample.profile {
                report_profile(model);
            }
            conv.assistant_turn(codec, &new, &reply)?;
        }
        Ok(())
    })
}

/// One message from the chat's input: lines ending in `\` continue on the next. `None` at the
/// end of the input. At most what a context of `ctx` tokens can hold is read.
fn read_turn(input: &mut impl BufRead, ctx: usize) -> Result<Option<String>> {
    use std::io::Read;
    let limit = (ctx as u64).saturating_mul(64).saturating_add(1 << 20);
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let left = limit + 1 - text.len() as u64;
        if input.by_ref().take(left).read_line(&mut line)? == 0 {
            return Ok((!text.is_empty()).then_some(text));
        }
        anyhow::ensure!(
            (text.len() + line.len()) as u64 <= limit,
            "a message of over {limit} bytes cannot fit the context"
        );
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_suffix('\\') {
            Some(part) => {
                text.push_str(part);
                text.push('\n');
            }
            None => {
                text.push_str(line);
                return Ok(Some(text));
            }
        }
    }
}

/// A chat turn's figures (the load time was printed once, at the start).
fn report_turn(s: &GenStats) {
    eprintln!(
        "[prefill {} tok, {:.1} tok/s | decode {} tok, {:.1} tok/s]",
        s.prompt_tokens,
        s.prefill_tps(),
        s.generated,
        s.decode_tps()
    );
}
