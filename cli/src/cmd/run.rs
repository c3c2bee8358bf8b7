//! `lowbit run` and `lowbit chat`.

use crate::args::{ChatArgs, RunArgs, SampleArgs};
use crate::stats;
use anyhow::{Context, Result};
use lowbit_runtime::{
    generate, Conversation, Engine, GenStats, KvCache, Message, Model, RuntimeOptions, Sampler, SamplerConfig,
    TextCodec, TextStream,
};
use std::io::{BufRead, Write};
use std::time::Instant;

fn sampler(a: &SampleArgs) -> Result<Sampler> {
    Ok(Sampler::new(SamplerConfig {
        temperature: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repeat_penalty,
        seed: a.seed,
    })?)
}

/// The per-operation table of `--profile`, per prefill pass and per decode step (the head runs
/// once per pass, so its call count is the number of passes).
fn report_profile(model: &Model) {
    let r = model.profile_report();
    let passes = |phase| r.ops.iter().find(|o| o.phase == phase && o.op.starts_with("matmul head")).map(|o| o.calls);
    eprintln!("[profile, lowbit_kernels {} level]\n{}", lowbit_kernels::kernels().label(), r.table(passes));
    model.profiler().reset();
}

fn report(load_secs: f64, s: &GenStats) {
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
    let t = Instant::now();
    let engine = Engine::open(path, &RuntimeOptions { threads, fourbit_exact: a.exact })
        .with_context(|| format!("opening {}", path.display()))?;
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
    let res = generate(model, cache, prompt, a.max_tokens, sampler, stop, |id| match stream.push(codec, id) {
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
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(res)
}

pub fn run(a: RunArgs, threads: Option<usize>) -> Result<()> {
    let (engine, load) = open(&a.model, threads, &a.sample)?;
    let codec = engine.codec()?;
    let text = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", f.display()))?
        }
        (None, None) => anyhow::bail!("give a prompt with -p TEXT or -f FILE"),
    };
    let prompt = if a.chat {
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
        let (_, st) = stream_generate(model, codec, engine.stop_ids(), &mut cache, &prompt, &a.sample, &mut s)?;
        println!();
        report(load, &st);
        if a.sample.profile {
            report_profile(model);
        }
        Ok(())
    })
}

pub fn chat(a: ChatArgs, threads: Option<usize>) -> Result<()> {
    let (engine, load) = open(&a.model, threads, &a.sample)?;
    let codec = engine.codec()?;
    anyhow::ensure!(codec.has_template(), "this model file has no chat template; use `lowbit run`");
    eprintln!("[loaded in {:.0} ms; empty line or Ctrl-D ends the chat]", load * 1e3);
    let mut s = sampler(&a.sample)?;
    engine.run(|model| -> Result<()> {
        model.set_profiling(a.sample.profile);
        // The KV cache keeps every earlier turn: each turn prefills only what is new.
        let mut conv = Conversation::new(model, a.system.as_deref(), a.sample.ctx);
        let stdin = std::io::stdin();
        loop {
            eprint!("> ");
            std::io::stderr().flush()?;
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            let (new, cache) = conv.user_turn(model, codec, line.trim_end())?;
            let (reply, st) = stream_generate(model, codec, engine.stop_ids(), cache, &new, &a.sample, &mut s)?;
            println!();
            report(load, &st);
            if a.sample.profile {
                report_profile(model);
            }
            conv.assistant_turn(codec, &new, &reply)?;
        }
        Ok(())
    })
}
