//! Continuous batching over one shared model: `parallel` slots, each a sequence with its own KV
//! cache, sampler and stop state. Every step runs one chunk of one waiting prompt and one
//! decode pass over every sequence that has a token to feed ([`Model::forward_decode`]: the
//! weights are read once for all of them, and each sequence's tokens are the ones it would get
//! alone). Finished or cancelled sequences free their slot at once; queued requests take slots
//! as they free, in arrival order.

use super::request::{Event, FinishReason, Request, TokenLogprob, Usage};
use super::stop::StopText;
use crate::engine::Engine;
use crate::generate::TextStream;
use crate::kv_cache::KvCache;
use crate::model::{Logits, Model};
use crate::sampler::Sampler;
use crate::score::log_softmax;
use crate::text::TextCodec;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A prompt's chunk for a step: (job, first token, end).
type Chunk = (usize, usize, usize);

/// Most stop strings a request may give, and the longest one (bytes).
const MAX_STOPS: usize = 16;
const MAX_STOP_LEN: usize = 512;
/// Most alternatives a request may ask per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How the scheduler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOptions {
    /// Sequences decoded together (slots).
    pub parallel: usize,
    /// Positions per sequence (prompt and generated tokens).
    pub context: usize,
    /// Requests that may wait for a slot; more are refused.
    pub queue: usize,
    /// Prompt tokens prefilled per step, so a long prompt does not stall the others.
    pub prefill_chunk: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { parallel: 4, context: 2048, queue: 64, prefill_chunk: 256 }
    }
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Every slot is busy and the queue is full; try again later.
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// The request itself is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The scheduler has shut down.
    #[error("the scheduler has stopped")]
    Stopped,
}

/// Receives a request's events; returning `false` cancels the request (a client that went away).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Cancels a submitted request.
#[derive(Debug, Clone)]
pub struct Handle {
    cancel: Arc<AtomicBool>,
}

impl Handle {
    /// Stops the request at the next step and frees its slots; its sink hears nothing more.
    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }
}

/// Running counters, readable at any time.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests finished (all completions ended).
    pub requests: AtomicU64,
    /// Requests cancelled or failed.
    pub cancelled: AtomicU64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Slots in use.
    pub active_slots: AtomicUsize,
    /// Requests waiting for a slot.
    pub queued: AtomicUsize,
    /// Sum of finished requests' times to first token, in microseconds.
    pub ttft_us: AtomicU64,
    /// Decode steps run, and the sequences they carried (their ratio is the mean batch).
    pub decode_steps: AtomicU64,
    /// Sequence-steps decoded.
    pub decode_rows: AtomicU64,
    /// Time spent in decode steps, in microseconds.
    pub decode_us: AtomicU64,
}

struct Submission {
    req: Request,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    at: Instant,
}

/// The batched engine: submit requests from any thread; a scheduler thread runs them.
pub struct Scheduler {
    tx: Option<SyncSender<Submission>>,
    metrics: Arc<Metrics>,
    opts: BatchOptions,
    vocab: usize,
    has_codec: bool,
    /// Names of the adapters a request may pick.
    adapters: Vec<String>,
    abort: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Starts the scheduler thread over `engine`.
    pub fn start(engine: Arc<Engine>, opts: BatchOptions) -> crate::Result<Scheduler> {
        let bad = |m: String| Err(crate::RuntimeError::Options(m));
        if opts.parallel == 0 || opts.parallel > 256 {
            return bad(format!("parallel {} must be in 1..=256", opts.parallel));
        }
        let max = engine.model().config.max_position_embeddings;
        if opts.context == 0 || opts.context > max {
            return bad(format!("context {} must be in 1..={max} (the model's max_position_embeddings)", opts.context));
        }
        // A queue of 0 would be a rendezvous channel, which only meets an idle scheduler.
        if opts.prefill_chunk == 0 || opts.queue == 0 || opts.queue > 1 << 20 {
            return bad("the prefill chunk must be at least 1 and the queue between 1 and 2^20".into());
        }
        let (tx, rx) = mpsc::sync_channel(opts.queue);
        let metrics = Arc::new(Metrics::default());
        let abort = Arc::new(AtomicBool::new(false));
        let vocab = engine.model().config.vocab_size;
        let has_codec = engine.codec().is_ok();
        let adapters = engine.model().adapter_names().to_vec();
        let thread = {
            let (metrics, abort, opts) = (metrics.clone(), abort.clone(), opts.clone());
            std::thread::Builder::new()
                .name("lowbit-scheduler".into())
                .spawn(move || Loop::new(&engine, opts, metrics, abort).run(&engine, rx))
                .map_err(|e| crate::RuntimeError::Options(format!("cannot start the scheduler thread: {e}")))?
        };
        Ok(Scheduler { tx: Some(tx), metrics, opts, vocab, has_codec, adapters, abort, thread: Some(thread) })
    }

    /// The options it runs with.
    pub fn options(&self) -> &BatchOptions {
        &self.opts
    }

    /// The names of the adapters a request may pick ([`Request::adapter`]).
    pub fn adapter_names(&self) -> &[String] {
        &self.adapters
    }

    /// The live counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Checks `req` and queues it; `sink` hears its events from the scheduler thread (keep it
    /// quick: a slow sink holds up every sequence).
    pub fn submit(&self, req: Request, sink: Sink) -> Result<Handle, SubmitError> {
        self.check(&req)?;
        let tx = self.tx.as_ref().ok_or(SubmitError::Stopped)?;
        let cancel = Arc::new(AtomicBool::new(false));
        let sub = Submission { req, sink, cancel: cancel.clone(), at: Instant::now() };
        self.metrics.queued.fetch_add(1, Relaxed);
        match tx.try_send(sub) {
            Ok(()) => Ok(Handle { cancel }),
            Err(e) => {
                self.metrics.queued.fetch_sub(1, Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull(self.opts.queue),
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }

    /// [`Scheduler::submit`] with the events delivered to a channel.
    pub fn submit_channel(&self, req: Request) -> Result<(Handle, Receiver<Event>), SubmitError> {
        let (tx, rx) = mpsc::channel();
        let handle = self.submit(req, Box::new(move |e| tx.send(e).is_ok()))?;
        Ok((handle, rx))
    }

    fn check(&self, r: &Request) -> Result<(), SubmitError> {
        let bad = |m: String| Err(SubmitError::Invalid(m));
        if r.prompt.is_empty() {
            return bad("the prompt is empty".into());
        }
        if r.prompt.len() > self.opts.context {
            return bad(format!(
                "the prompt has {} tokens, more than the context of {}",
                r.prompt.len(),
                self.opts.context
            ));
        }
        if let Some(&id) = r.prompt.iter().find(|&&id| id as usize >= self.vocab) {
            return bad(format!("token id {id} is outside the vocabulary (size {})", self.vocab));
        }
        if r.n == 0 || r.n > self.opts.parallel {
            return bad(format!("n = {} must be between 1 and the {} parallel slots", r.n, self.opts.parallel));
        }
        if r.stop.len() > MAX_STOPS || r.stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
            return bad(format!("at most {MAX_STOPS} stop strings of at most {MAX_STOP_LEN} bytes"));
        }
        if !r.stop.is_empty() && !self.has_codec {
            return bad("stop strings need a tokenizer, and the model file has none".into());
        }
        if r.logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) || r.prompt_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
            return bad(format!("top logprobs must be at most {MAX_TOP_LOGPROBS}"));
        }
        if let Some(a) = &r.adapter {
            if !self.adapters.contains(&a.name) {
                return bad(if self.adapters.is_empty() {
                    format!("no adapter is loaded (asked for {:?})", a.name)
                } else {
                    format!("no adapter is named {:?} (loaded: {})", a.name, self.adapters.join(", "))
                });
            }
            if !a.scale.is_finite() {
                return bad("an adapter's scale must be a finite number".into());
            }
        }
        Sampler::new(r.sampling).map_err(|e| SubmitError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// Stops taking requests and waits for the scheduler thread: `finish` lets the running and
    /// queued requests complete; otherwise they end with [`Event::Failed`].
    pub fn shutdown(mut self, finish: bool) {
        self.stop(finish);
    }

    fn stop(&mut self, finish: bool) {
        if !finish {
            self.abort.store(true, Relaxed);
        }
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// One completion of a request.
struct Seq {
    cache: KvCache,
    sampler: Sampler,
    history: Vec<u32>,
    generated: usize,
    stream: TextStream,
    stop: StopText,
    /// The token to feed at the next decode step.
    next: Option<u32>,
    done: bool,
}

struct Job {
    req: Request,
    sink: Sink,
    cancel: Arc<AtomicBool>,
    submitted: Instant,
    queued: Duration,
    /// Completions; the first is created at admission and prefilled, the others copy its cache.
    seqs: Vec<Seq>,
    prefilled: usize,
    completion_tokens: usize,
    first_token: Option<Duration>,
}

impl Job {
    /// Slots held: all `n` from admission until each completion ends.
    fn slots(&self) -> usize {
        if self.seqs.len() < self.req.n {
            self.req.n
        } else {
            self.seqs.iter().filter(|s| !s.done).count()
        }
    }

    fn send(&mut self, e: Event) {
        if !(self.sink)(e) {
            self.cancel.store(true, Relaxed);
        }
    }
}

/// What a step needs besides the jobs.
struct Ctx<'e> {
    codec: Option<&'e TextCodec>,
    stop_ids: Vec<u32>,
    metrics: Arc<Metrics>,
}

struct Loop<'e> {
    opts: BatchOptions,
    ctx: Ctx<'e>,
    abort: Arc<AtomicBool>,
    jobs: Vec<Job>,
    waiting: Option<Submission>,
    /// Caches of ended sequences, kept for the next ones (their memory stays allocated).
    spare: Vec<KvCache>,
}

impl<'e> Loop<'e> {
    fn new(engine: &'e Engine, opts: BatchOptions, metrics: Arc<Metrics>, abort: Arc<AtomicBool>) -> Loop<'e> {
        let ctx = Ctx { codec: engine.codec().ok(), stop_ids: engine.stop_ids().to_vec(), metrics };
        Loop { opts, ctx, abort, jobs: Vec::new(), waiting: None, spare: Vec::new() }
    }

    fn free_slots(&self) -> usize {
        self.opts.parallel - self.jobs.iter().map(Job::slots).sum::<usize>()
    }

    fn run(mut self, engine: &Engine, rx: Receiver<Submission>) {
        let mut open = true;
        loop {
            if self.abort.load(Relaxed) {
                return self.fail_all(&rx, "the scheduler is shutting down");
            }
            // Take submissions: block when there is nothing to do, else only while a slot is free.
            if open && self.jobs.is_empty() && self.waiting.is_none() {
                match rx.recv() {
                    Ok(s) => self.take(s),
                    Err(_) => open = false,
                }
            }
            while open && self.waiting.is_none() && self.free_slots() > 0 {
                match rx.try_recv() {
                    Ok(s) => self.take(s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
                self.admit(engine.model());
            }
            self.admit(engine.model());
            self.reap();
            if self.jobs.is_empty() {
                if !open && self.waiting.is_none() {
                    return;
                }
                continue;
            }
            engine.run(|model| self.step(model));
            self.reap();
        }
    }

    fn take(&mut self, s: Submission) {
        self.ctx.metrics.queued.fetch_sub(1, Relaxed);
        self.waiting = Some(s);
    }

    /// Starts the waiting request if its completions' slots are free.
    fn admit(&mut self, model: &Model) {
        let Some(s) = self.waiting.take() else { return };
        if s.cancel.load(Relaxed) {
            self.ctx.metrics.cancelled.fetch_add(1, Relaxed);
            return;
        }
        if self.free_slots() < s.req.n {
            self.waiting = Some(s);
            return;
        }
        let mut job = Job {
            queued: s.at.elapsed(),
            seqs: Vec::with_capacity(s.req.n),
            req: s.req,
            sink: s.sink,
            cancel: s.cancel,
            submitted: s.at,
            prefilled: 0,
            completion_tokens: 0,
            first_token: None,
        };
        if job.req.max_tokens == 0 && job.req.prompt_logprobs.is_none() {
            for choice in 0..job.req.n {
                job.send(Event::Done { choice, reason: FinishReason::Length, text: String::new() });
            }
            let usage =
                Usage { prompt_tokens: job.req.prompt.len(), total: job.submitted.elapsed(), ..Usage::default() };
            job.send(Event::Finished(usage));
            self.ctx.metrics.requests.fetch_add(1, Relaxed);
            return;
        }
        let seq = new_seq(&mut self.spare, self.opts.context, model, &job, 0);
        job.seqs.push(seq);
        self.jobs.push(job);
    }

    /// Removes finished and cancelled jobs, keeping their caches.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.jobs.len() {
            let j = &self.jobs[i];
            let cancelled = j.cancel.load(Relaxed);
            let finished = j.seqs.len() == j.req.n && j.seqs.iter().all(|s| s.done);
            if !(cancelled || finished) {
                i += 1;
                continue;
            }
            let mut job = self.jobs.remove(i);
            let m = &self.ctx.metrics;
            if finished && !cancelled {
                let usage = Usage {
                    prompt_tokens: job.req.prompt.len(),
                    completion_tokens: job.completion_tokens,
                    time_to_first_token: job.first_token.unwrap_or_default(),
                    total: job.submitted.elapsed(),
                    queued: job.queued,
                };
                m.requests.fetch_add(1, Relaxed);
                m.ttft_us.fetch_add(usage.time_to_first_token.as_micros() as u64, Relaxed);
                job.send(Event::Finished(usage));
            } else {
                m.cancelled.fetch_add(1, Relaxed);
            }
            self.spare.extend(job.seqs.into_iter().map(|s| s.cache));
        }
        self.spare.truncate(self.opts.parallel);
        self.ctx.metrics.active_slots.store(self.jobs.iter().map(Job::slots).sum(), Relaxed);
    }

    /// Ends every request with an error (shutdown without finishing).
    fn fail_all(mut self, rx: &Receiver<Submission>, why: &str) {
        let pending = self.waiting.take().into_iter().chain(rx.try_iter());
        for mut s in pending.collect::<Vec<_>>() {
            (s.sink)(Event::Failed(why.into()));
        }
        self.ctx.metrics.queued.store(0, Relaxed);
        for mut job in self.jobs.drain(..) {
            job.send(Event::Failed(why.into()));
        }
    }

    /// Prefill chunks of the waiting prompts, oldest first, up to `prefill_chunk` tokens in all
    /// (at least one chunk), in one pass ([`Model::forward_prompts`]), then one decode pass over
    /// every sequence with a token to feed. A burst of short prompts so joins the decode batch
    /// in one step instead of one a step, its weights read once, and the running sequences wait
    /// for no more prompt tokens a step than before. Each prompt is cut into chunks at the same
    /// places whatever else is waiting, and the joint pass gives each chunk the bits it gets
    /// alone, so a prompt's results do not depend on its neighbours.
    fn step(&mut self, model: &Model) {
        let mut budget = self.opts.prefill_chunk;
        let mut chunks: Vec<Chunk> = Vec::new();
        for (j, job) in self.jobs.iter().enumerate() {
            if job.prefilled >= job.req.prompt.len() || job.cancel.load(Relaxed) {
                continue;
            }
            let end = (job.prefilled + self.opts.prefill_chunk).min(job.req.prompt.len());
            let chunk = end - job.prefilled;
            if chunk > budget && !chunks.is_empty() {
                break;
            }
            chunks.push((j, job.prefilled, end));
            budget = budget.saturating_sub(chunk);
            if budget == 0 {
                break;
            }
        }
        self.prefill(model, &chunks);
        // Cancellation can arrive from another thread at any time: decide once who runs.
        let live: Vec<bool> = self.jobs.iter().map(|j| !j.cancel.load(Relaxed)).collect();
        let rows: Vec<(usize, usize)> = self
            .jobs
            .iter()
            .enumerate()
            .filter(|&(ji, _)| live[ji])
            .flat_map(|(ji, j)| {
                j.seqs.iter().enumerate().filter(|(_, s)| s.next.is_some()).map(move |(si, _)| (ji, si))
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let tokens: Vec<u32> = rows.iter().map(|&(j, s)| self.jobs[j].seqs[s].next.expect("selected")).collect();
        let start = Instant::now();
        let result = {
            let mut caches: Vec<&mut KvCache> = self
                .jobs
                .iter_mut()
                .zip(&live)
                .filter(|(_, &live)| live)
                .flat_map(|(j, _)| j.seqs.iter_mut().filter(|s| s.next.is_some()).map(|s| &mut s.cache))
                .collect();
            model.forward_decode(&mut caches, &tokens)
        };
        let m = &self.ctx.metrics;
        m.decode_steps.fetch_add(1, Relaxed);
        m.decode_rows.fetch_add(rows.len() as u64, Relaxed);
        m.decode_us.fetch_add(start.elapsed().as_micros() as u64, Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                // Nothing in a checked request leads here; fail them rather than loop on it.
                for (job, _) in self.jobs.iter_mut().zip(&live).filter(|(_, &live)| live) {
                    job.send(Event::Failed(format!("decode failed: {e}")));
                    job.cancel.store(true, Relaxed);
                }
                return;
            }
        };
        let vocab = logits.len() / rows.len();
        for (&(j, s), row) in rows.iter().zip(logits.chunks(vocab)) {
            self.jobs[j].seqs[s].next = None;
            accept(&self.ctx, &mut self.jobs[j], s, row);
        }
    }

    /// Runs the chunks `(job, start, end)` of their prompts: those of two tokens or more in one
    /// joint pass, a one-token chunk (a decode step) alone.
    fn prefill(&mut self, model: &Model, chunks: &[Chunk]) {
        let which = |job: &Job| if job.req.prompt_logprobs.is_some() { Logits::All } else { Logits::Last };
        let (joint, single): (Vec<_>, Vec<_>) = chunks.iter().copied().partition(|&(_, s, e)| e - s > 1);
        let (joint, mut alone) = if joint.len() > 1 { (joint, single) } else { (Vec::new(), chunks.to_vec()) };
        let mut results: Vec<(Chunk, Result<Vec<f32>, String>)> = Vec::new();
        if !joint.is_empty() {
            let mut caches = Vec::with_capacity(joint.len());
            let mut prompts = Vec::with_capacity(joint.len());
            let mut choices = Vec::with_capacity(joint.len());
            for (j, job) in self.jobs.iter_mut().enumerate() {
                if let Some(&(_, s, e)) = joint.iter().find(|c| c.0 == j) {
                    choices.push(which(job));
                    prompts.push(&job.req.prompt[s..e]);
                    caches.push(&mut job.seqs[0].cache);
                }
            }
            // `joint` is in job order, as the caches are.
            match model.forward_prompts(&mut caches, &prompts, &choices) {
                Ok(all) => results.extend(joint.iter().copied().zip(all.into_iter().map(Ok))),
                // A refused joint pass leaves every cache as it was: each chunk then runs alone,
                // so only a faulty one fails (checked requests do not get here).
                Err(_) => alone.extend(joint),
            }
        }
        for &(j, s, e) in &alone {
            let job = &mut self.jobs[j];
            let w = which(job);
            let r = model.forward(&mut job.seqs[0].cache, &job.req.prompt[s..e], w).map_err(|e| e.to_string());
            results.push(((j, s, e), r));
        }
        results.sort_by_key(|r| r.0 .0);
        for ((j, start, end), logits) in results {
            self.after_chunk(model, j, start, end, logits);
        }
    }

    /// What follows a prompt chunk's pass: prompt logprobs, and after the last chunk the first
    /// token of every completion.
    fn after_chunk(&mut self, model: &Model, j: usize, start: usize, end: usize, logits: Result<Vec<f32>, String>) {
        let job = &mut self.jobs[j];
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                job.send(Event::Failed(format!("prefill failed: {e}")));
                job.cancel.store(true, Relaxed);
                return;
            }
        };
        job.prefilled = end;
        self.ctx.metrics.prompt_tokens.fetch_add((end - start) as u64, Relaxed);
        let vocab = model.config.vocab_size;
        if let Some(k) = job.req.prompt_logprobs {
            // Row r predicts the prompt token at position start + r + 1.
            let prompt = &job.req.prompt;
            let items: Vec<TokenLogprob> = logits
                .chunks(vocab)
                .enumerate()
                .filter_map(|(r, row)| prompt.get(start + r + 1).map(|&id| token_logprob(row, id, k)))
                .collect();
            job.send(Event::PromptLogprobs { start: start + 1, items });
        }
        if end < job.req.prompt.len() {
            return;
        }
        let last = &logits[logits.len() - vocab..];
        if job.req.max_tokens == 0 {
            // Scoring only: every completion ends before its first token.
            for choice in 0..job.req.n {
                if choice > 0 {
                    let seq = new_seq(&mut self.spare, self.opts.context, model, job, choice);
                    job.seqs.push(seq);
                }
                job.seqs[choice].done = true;
                job.send(Event::Done { choice, reason: FinishReason::Length, text: String::new() });
            }
            return;
        }
        for choice in 1..job.req.n {
            let mut seq = new_seq(&mut self.spare, self.opts.context, model, job, choice);
            seq.cache.clone_from(&job.seqs[0].cache);
            job.seqs.push(seq);
        }
        for s in 0..job.seqs.len() {
            accept(&self.ctx, job, s, last);
        }
    }
}

/// Generated tokens a new sequence's cache makes room for up front.
const RESERVE_AHEAD: usize = 128;

/// Completion `choice` of `job`, with a cache from `spare` (or a new one).
fn new_seq(spare: &mut Vec<KvCache>, context: usize, model: &Model, job: &Job, choice: usize) -> Seq {
    let mut cache = spare.pop().unwrap_or_else(|| model.new_cache(context));
    cache.clear();
    // Room for the prompt and the completion's first tokens at once: growing step by step as
    // it decodes cost a batch step page faults and copies in every layer. (Not the whole
    // `max_tokens` up front: many completions end long before it.) The other choices start
    // from a copy of the first one's cache, room included.
    if choice == 0 {
        cache.reserve(job.req.prompt.len().saturating_add(job.req.max_tokens.min(RESERVE_AHEAD)));
    }
    let pick = job.req.adapter.as_ref().and_then(|a| Some((model.adapter_index(&a.name)?, a.scale)));
    cache.set_adapter(pick).expect("an empty cache, a scale checked at submission");
    let sampling = crate::SamplerConfig { seed: job.req.sampling.seed.wrapping_add(choice as u64), ..job.req.sampling };
    Seq {
        cache,
        sampler: Sampler::new(sampling).expect("checked at submission"),
        history: job.req.prompt.clone(),
        generated: 0,
        stream: TextStream::default(),
        stop: StopText::new(&job.req.stop),
        next: None,
        done: false,
    }
}

/// Samples completion `s`'s next token from `logits` and reports it; ends the completion at an
/// end-of-sequence id, a stop string, `max_tokens` or a full context.
fn accept(ctx: &Ctx, job: &mut Job, s: usize, logits: &[f32]) {
    let seq = &mut job.seqs[s];
    let id = seq.sampler.sample(logits, &seq.history, job.req.prompt.len());
    if !job.req.ignore_eos && ctx.stop_ids.contains(&id) {
        let text = seq.stop.finish();
        seq.done = true;
        return job.send(Event::Done { choice: s, reason: FinishReason::Stop, text });
    }
    seq.history.push(id);
    seq.generated += 1;
    job.completion_tokens += 1;
    ctx.metrics.generated_tokens.fetch_add(1, Relaxed);
    job.first_token.get_or_insert_with(|| job.submitted.elapsed());
    let logprob = job.req.logprobs.map(|k| token_logprob(logits, id, k));
    let piece = ctx.codec.and_then(|c| seq.stream.push(c, id).ok().flatten()).unwrap_or_default();
    let (text, hit) = seq.stop.push(&piece);
    let end = if hit {
        Some(FinishReason::StopString)
    } else if seq.generated >= job.req.max_tokens || !seq.cache.fits(1) {
        Some(FinishReason::Length)
    } else {
        seq.next = Some(id);
        None
    };
    let tail = if end.is_some() { seq.stop.finish() } else { String::new() };
    seq.done = end.is_some();
    job.send(Event::Token { choice: s, id, text, logprob });
    if let Some(reason) = end {
        job.send(Event::Done { choice: s, reason, text: tail });
    }
}

fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let lp = log_softmax(logits);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in lp.iter().enumerate() {
        if top.len() < k || top.last().is_some_and(|&(_, w)| v > w) {
            let at = top.partition_point(|&(_, w)| w >= v);
            top.insert(at, (i as u32, v));
            top.truncate(k);
        }
    }
    TokenLogprob { logprob: lp[id as usize], top }
}
