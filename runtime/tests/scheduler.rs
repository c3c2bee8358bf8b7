//! The continuous-batching scheduler on real models: requests running together produce exactly
//! what each produces alone (greedy and seeded sampling, `n` completions sharing one prefill,
//! prompts longer than a prefill chunk), slots are reused after completion and cancellation,
//! the queue is bounded, bad requests are refused, and stop strings, logprobs and
//! `max_tokens: 0` behave as OpenAI's API describes.

mod common;

use lowbit_convert::QuantChoice;
use lowbit_runtime::batch::{BatchOptions, Event, FinishReason, Request, Scheduler, SubmitError, Usage};
use lowbit_runtime::{generate, Engine, RuntimeOptions, Sampler, SamplerConfig};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug, Default, Clone, PartialEq)]
struct Choice {
    ids: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
    logprobs: Vec<(f32, Vec<(u32, f32)>)>,
}

/// Reads a request's events to the end.
fn collect(rx: &Receiver<Event>, n: usize) -> (Vec<Choice>, Usage) {
    let mut choices = vec![Choice::default(); n];
    loop {
        match rx.recv_timeout(Duration::from_secs(120)).expect("the scheduler answers") {
            Event::Token { choice, id, text, logprob } => {
                let c = &mut choices[choice];
                assert!(c.reason.is_none(), "a token after the end");
                c.ids.push(id);
                c.text += &text;
                if let Some(l) = logprob {
                    c.logprobs.push((l.logprob, l.top));
                }
            }
            Event::Done { choice, reason, text } => {
                choices[choice].text += &text;
                choices[choice].reason = Some(reason);
            }
            Event::PromptLogprobs { .. } => {}
            Event::Finished(usage) => return (choices, usage),
            Event::Failed(e) => panic!("request failed: {e}"),
        }
    }
}

fn tiny_file() -> &'static PathBuf {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny/gqa1");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sched-tiny");
        std::fs::create_dir_all(&dir).unwrap();
        // Every linear weight 4-bit: block int8 weights (the default nf4 has some) take the
        // integer route below 16 prompt tokens and f32 gemm above, so a prompt cut into chunks
        // of 4 would differ from one pass by more than reduction order, and this random model's
        // flat logits turn that into other greedy tokens.
        common::convert_to(&src, QuantChoice::Nf4Small, &dir)
    })
}

fn smollm2_file() -> Option<&'static PathBuf> {
    static F: OnceLock<Option<PathBuf>> = OnceLock::new();
    F.get_or_init(|| {
        let gguf = PathBuf::from(std::env::var_os("LOWBIT_SMOLLM2")?);
        // One folder reused by every run: a static never drops, so a folder per process would
        // leave a converted model behind each time.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sched-smollm2");
        std::fs::create_dir_all(&dir).unwrap();
        Some(common::convert_to(&gguf, QuantChoice::Nf4, &dir))
    })
    .as_ref()
}

fn engine(path: &Path) -> Arc<Engine> {
    Arc::new(Engine::open(path, &RuntimeOptions { threads: Some(2), ..Default::default() }).unwrap())
}

/// What `generate` gives for the prompt alone (the single-sequence path `lowbit run` takes).
fn alone(engine: &Engine, prompt: &[u32], max_tokens: usize, sampling: SamplerConfig) -> Vec<u32> {
    engine.run(|model| {
        let mut cache = model.new_cache(256);
        let mut sampler = Sampler::new(sampling).unwrap();
        generate(model, &mut cache, prompt, max_tokens, &mut sampler, engine.stop_ids(), |_| true).unwrap().0
    })
}

fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    (0..8u32).map(|i| (0..3 + 5 * i).map(|j| (j * 7 + i * 13 + 1) % vocab).collect()).collect()
}

#[test]
fn concurrent_requests_equal_their_alone_runs() {
    let e = engine(tiny_file());
    let vocab = e.model().config.vocab_size as u32;
    let s =
        Scheduler::start(e.clone(), BatchOptions { parallel: 3, context: 256, queue: 16, prefill_chunk: 64 }).unwrap();
    let sampled = |i: usize| SamplerConfig { temperature: 0.9, top_p: 0.95, seed: 40 + i as u64, ..Default::default() };
    let mut pending = Vec::new();
    for (i, p) in prompts(vocab).into_iter().enumerate() {
        // Half greedy, half seeded sampling; 8 requests over 3 slots, so most wait their turn.
        let sampling = if i % 2 == 0 { SamplerConfig::default() } else { sampled(i) };
        let req = Request { prompt: p.clone(), max_tokens: 20, sampling, ..Default::default() };
        let (_, rx) = s.submit_channel(req).unwrap();
        pending.push((p, sampling, rx));
    }
    for (p, sampling, rx) in pending {
        let (choices, usage) = collect(&rx, 1);
        assert_eq!(choices[0].ids, alone(&e, &p, 20, sampling), "prompt of {} tokens", p.len());
        assert_eq!(usage.prompt_tokens, p.len());
        assert_eq!(usage.completion_tokens, choices[0].ids.len());
    }
    let m = s.metrics();
    assert_eq!(m.requests.load(std::sync::atomic::Ordering::Relaxed), 8);
    let (steps, rows) = (
        m.decode_steps.load(std::sync::atomic::Ordering::Relaxed),
        m.decode_rows.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(rows > steps, "decode steps carried more than one sequence ({rows} rows in {steps} steps)");
}

#[test]
fn n_completions_share_one_prefill_and_match_their_seeds() {
    let e = engine(tiny_file());
    let s =
        Scheduler::start(e.clone(), BatchOptions { parallel: 4, context: 256, queue: 4, prefill_chunk: 4 }).unwrap();
    // Longer than several prefill chunks: the alone run prefills in one pass, so compare with
    // the scheduler's own single-completion runs, and with `generate` for the greedy case.
    let prompt: Vec<u32> = (1..30).collect();
    let sampling = SamplerConfig { temperature: 1.0, seed: 9, ..Default::default() };
    let req = Request { prompt: prompt.clone(), max_tokens: 12, sampling, n: 3, ..Default::default() };
    let (_, rx) = s.submit_channel(req.clone()).unwrap();
    let (choices, usage) = collect(&rx, 3);
    assert_eq!(usage.prompt_tokens, prompt.len(), "prefilled once");
    assert_eq!(s.metrics().prompt_tokens.load(std::sync::atomic::Ordering::Relaxed), prompt.len() as u64);
    for (i, c) in choices.iter().enumerate() {
        let one = Request { n: 1, sampling: SamplerConfig { seed: 9 + i as u64, ..sampling }, ..req.clone() };
        let (_, rx) = s.submit_channel(one).unwrap();
        assert_eq!(collect(&rx, 1).0[0].ids, c.ids, "choice {i}");
    }
    assert!(choices.iter().any(|c| c.ids != choices[0].ids), "seeds differ, so do completions");
    let greedy = Request { sampling: SamplerConfig::default(), n: 1, ..req };
    let (_, rx) = s.submit_channel(greedy).unwrap();
    let got = collect(&rx, 1).0.remove(0).ids;
    // Chunked prefill reduces in another order than one pass; the greedy tokens still agree.
    assert_eq!(got, alone(&e, &prompt, 12, SamplerConfig::default()));
}

#[test]
fn queue_is_bounded_and_cancelled_requests_free_their_slot() {
    let e = engine(tiny_file());
    let s =
        Scheduler::start(e.clone(), BatchOptions { parallel: 1, context: 256, queue: 1, prefill_chunk: 64 }).unwrap();
    // Tokens that never stop on their own (the tiny model's EOS may come up: ignore by length).
    let long = Request { prompt: vec![1, 2, 3], max_tokens: 200, ..Default::default() };
    let (a, rx_a) = s.submit_channel(long.clone()).unwrap();
    assert!(matches!(rx_a.recv_timeout(Duration::from_secs(60)).unwrap(), Event::Token { .. }), "A runs");
    // A holds the only slot; B waits in the queue of 1; C is refused.
    let (_b, rx_b) = s.submit_channel(Request { max_tokens: 3, ..long.clone() }).unwrap();
    let mut refused = false;
    for _ in 0..3 {
        match s.submit_channel(Request { max_tokens: 3, ..long.clone() }) {
            Err(SubmitError::QueueFull(1)) => {
                refused = true;
                break;
            }
            // The scheduler may have taken B already (it waits beside A); then C fills the queue.
            Ok((h, _rx)) => h.cancel(),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "a full queue refuses");
    a.cancel();
    let (choices, _) = collect(&rx_b, 1);
    assert!(choices[0].ids.len() <= 3 && choices[0].reason.is_some());
    // A client that goes away (its receiver dropped) cancels too.
    let (_, rx) = s.submit_channel(long.clone()).unwrap();
    rx.recv_timeout(Duration::from_secs(60)).unwrap();
    drop(rx);
    let (_, rx) = s.submit_channel(Request { max_tokens: 2, ..long }).unwrap();
    assert!(collect(&rx, 1).0[0].reason.is_some(), "the slot was freed");
    assert!(s.metrics().cancelled.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let e = engine(tiny_file());
    let vocab = e.model().config.vocab_size as u32;
    let s = Scheduler::start(e, BatchOptions { parallel: 2, context: 16, queue: 2, prefill_chunk: 8 }).unwrap();
    let ok = Request { prompt: vec![1, 2], ..Default::default() };
    let cases = [
        Request { prompt: vec![], ..ok.clone() },
        Request { prompt: vec![1; 17], ..ok.clone() },
        Request { prompt: vec![vocab], ..ok.clone() },
        Request { n: 0, ..ok.clone() },
        Request { n: 3, ..ok.clone() },
        Request { logprobs: Some(21), ..ok.clone() },
        Request { stop: vec!["x".into()], ..ok.clone() }, // the tiny model has no tokenizer
        Request { sampling: SamplerConfig { temperature: -1.0, ..Default::default() }, ..ok.clone() },
        Request { sampling: SamplerConfig { top_p: 2.0, ..Default::default() }, ..ok.clone() },
    ];
    for req in cases {
        match s.submit_channel(req.clone()) {
            Err(SubmitError::Invalid(why)) => assert!(!why.is_empty()),
            other => panic!("{req:?} was not refused: {:?}", other.map(|_| ())),
        }
    }
    // The context fills: generation ends with `length` at 16 positions.
    let (_, rx) = s.submit_channel(Request { prompt: vec![1; 10], max_tokens: 100, ..ok.clone() }).unwrap();
    let (c, _) = collect(&rx, 1);
    assert!(c[0].ids.len() <= 7, "{} tokens after a 10-token prompt in a context of 16", c[0].ids.len());
    // max_tokens 0: nothing generated, no slot taken.
    let (_, rx) = s.submit_channel(Request { max_tokens: 0, n: 2, ..ok }).unwrap();
    let (c, usage) = collect(&rx, 2);
    assert!(c.iter().all(|c| c.ids.is_empty() && c.reason == Some(FinishReason::Length)));
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (2, 0));
    // Options out of range.
    let e = engine(tiny_file());
    assert!(Scheduler::start(e.clone(), BatchOptions { parallel: 0, ..Default::default() }).is_err());
    assert!(Scheduler::start(e.clone(), BatchOptions { queue: 0, ..Default::default() }).is_err());
    assert!(Scheduler::start(e, BatchOptions { context: usize::MAX, ..Default::default() }).is_err());
}

#[test]
fn text_stop_strings_and_logprobs_on_smollm2() {
    let Some(path) = smollm2_file() else {
        eprintln!("SKIPPED: LOWBIT_SMOLLM2 is not set (scripts/test.sh sets it)");
        return;
    };
    let e = engine(path);
    let codec = e.codec().unwrap();
    let prompt = codec.encode("The three primary colors are", true).unwrap();
    let s =
        Scheduler::start(e.clone(), BatchOptions { parallel: 4, context: 512, queue: 4, prefill_chunk: 256 }).unwrap();
    let req = Request { prompt: prompt.clone(), max_tokens: 24, logprobs: Some(3), ..Default::default() };
    let (_, rx) = s.submit_channel(req.clone()).unwrap();
    let (c, _) = collect(&rx, 1);
    let full = &c[0];
    assert_eq!(full.ids, alone(&e, &prompt, 24, SamplerConfig::default()));
    assert_eq!(full.text, codec.decode(&full.ids).unwrap(), "streamed text is the decoded text");
    for (lp, top) in &full.logprobs {
        // Greedy: the chosen token is the most likely one, and the top list is sorted.
        assert_eq!(top.len(), 3);
        assert_eq!(*lp, top[0].1);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1) && *lp <= 0.0);
    }
    // A stop string in the middle of the text (spanning tokens or not): the text ends before it.
    let words: Vec<&str> = full.text.split_inclusive(' ').collect();
    assert!(words.len() > 4, "{:?}", full.text);
    let stop = format!("{}{}", words[2], words[3].trim_end());
    let cut = full.text.find(&stop).unwrap();
    let (_, rx) = s.submit_channel(Request { stop: vec!["never appears".into(), stop.clone()], ..req }).unwrap();
    let (c, _) = collect(&rx, 1);
    assert_eq!(c[0].reason, Some(FinishReason::StopString));
    assert_eq!(c[0].reason.map(FinishReason::as_str), Some("stop"), "OpenAI's name for it");
    assert_eq!(c[0].text, full.text[..cut], "stop string {stop:?}");
}

#[test]
fn prompt_logprobs_score_a_text_across_prefill_chunks() {
    let e = engine(tiny_file());
    let s = Scheduler::start(e.clone(), BatchOptions { parallel: 2, context: 64, queue: 2, prefill_chunk: 5 }).unwrap();
    let prompt: Vec<u32> = (0..23).map(|i| (i * 11 + 3) % 60).collect();
    let req = Request { prompt: prompt.clone(), max_tokens: 0, prompt_logprobs: Some(2), ..Default::default() };
    let (_, rx) = s.submit_channel(req).unwrap();
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::PromptLogprobs { start, items } => {
                assert_eq!(start, got.len() + 1, "in order, from position 1");
                got.extend(items);
            }
            Event::Done { reason, .. } => assert_eq!(reason, FinishReason::Length),
            Event::Finished(u) => {
                assert_eq!((u.prompt_tokens, u.completion_tokens), (23, 0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got.len(), 22);
    // One pass over the whole text gives the same scores up to the route: the file's q8 head
    // multiplies chunks of fewer than 16 tokens on the integer route (activations quantized per
    // block of 32; this model's rows are one block) and longer runs through f32 gemm, which
    // moved a log-probability by up to 0.013 here; a misplaced position moves it by far more.
    let want = e.run(|m| lowbit_runtime::score::completion_logprobs(m, &prompt[..1], &prompt[1..]).unwrap());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g.logprob - w).abs() < 0.05, "position {}: {} vs {w}", i + 1, g.logprob);
        assert_eq!(g.top.len(), 2);
        assert!(g.top[0].1 >= g.logprob);
    }
}
