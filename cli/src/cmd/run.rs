//! `lowbit run` and `lowbit chat`.

use crate::args::{ChatArgs, RunArgs, SampleArgs};
use crate::stats;
use anyhow::{Context, Result};
use lowbit_kernels::MatmulOptions;
use lowbit_runtime::{generate, GenStats, KvCache, Message, Model, Sampler, SamplerConfig, TextCodec, TextStream};
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

/// Ids that end generation: the config's EOS ids plus the tokenizer's eos token and, for
/// ChatML models, `<|im_end|>`.
fn stop_ids(model: &Model, codec: &TextCodec) -> Vec<u32> {
    let mut ids = model.config.eos_token_ids.clone();
    for t in [codec.eos_token(), Some("<|im_end|>"), Some("</s>")].into_iter().flatten() {
        if let Some(id) = codec.token_id(t) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
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

fn stream_generate(
    model: &Model,
    codec: &TextCodec,
    cache: &mut KvCache,
    prompt: &[u32],
    a: &SampleArgs,
    sampler: &mut Sampler,
) -> Result<(Vec<u32>, GenStats)> {
    let stop = if a.ignore_eos { Vec::new() } else { stop_ids(model, codec) };
    let mut stream = TextStream::default();
    let mut out = std::io::stdout().lock();
    let mut err = None;
    let res = generate(model, cache, prompt, a.max_tokens, sampler, &stop, |id| match stream.push(codec, id) {
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

pub fn run(a: RunArgs) -> Result<()> {
    let t = Instant::now();
    let (file, _) = super::open(&a.model)?;
    let mut model = Model::new(&file)?;
    model.set_options(MatmulOptions { fourbit_exact: a.sample.exact, ..model.options() });
    let codec = TextCodec::from_metadata(file.metadata())?;
    let load = t.elapsed().as_secs_f64();
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
    let mut cache = model.new_cache(a.sample.ctx);
    let mut s = sampler(&a.sample)?;
    model.set_profiling(a.sample.profile);
    let (_, st) = stream_generate(&model, &codec, &mut cache, &prompt, &a.sample, &mut s)?;
    println!();
    report(load, &st);
    if a.sample.profile {
        report_profile(&model);
    }
    Ok(())
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let t = Instant::now();
    let (file, _) = super::open(&a.model)?;
    let mut model = Model::new(&file)?;
    model.set_options(MatmulOptions { fourbit_exact: a.sample.exact, ..model.options() });
    let codec = TextCodec::from_metadata(file.metadata())?;
    anyhow::ensure!(codec.has_template(), "this model file has no chat template; use `lowbit run`");
    let load = t.elapsed().as_secs_f64();
    eprintln!("[loaded in {:.0} ms; empty line or Ctrl-D ends the chat]", load * 1e3);
    let mut msgs = Vec::new();
    if let Some(s) = &a.system {
        msgs.push(Message { role: "system".into(), content: s.clone() });
    }
    let mut cache = model.new_cache(a.sample.ctx);
    // The KV cache keeps every earlier turn: each turn only prefills the tokens that are new
    // since the last one (the template renders the whole conversation; its prefix is unchanged).
    let mut fed: Vec<u32> = Vec::new();
    let mut s = sampler(&a.sample)?;
    model.set_profiling(a.sample.profile);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        msgs.push(Message { role: "user".into(), content: line.trim_end().to_string() });
        let ids = codec.encode(&codec.apply_chat_template(&msgs, true)?, false)?;
        let common = fed.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if common < fed.len() {
            // The template re-rendered earlier text differently: start over.
            cache = model.new_cache(a.sample.ctx);
            fed.clear();
        }
        let new = &ids[fed.len()..];
        let (reply, st) = stream_generate(&model, &codec, &mut cache, new, &a.sample, &mut s)?;
        println!();
        fed.extend_from_slice(new);
        fed.extend_from_slice(&reply);
        report(load, &st);
        if a.sample.profile {
            report_profile(&model);
        }
        msgs.push(Message { role: "assistant".into(), content: codec.decode(&reply)? });
    }
    Ok(())
}
