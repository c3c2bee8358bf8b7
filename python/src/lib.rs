//! `import lowbit`: a thin PyO3 layer over lowbit's batched engine, shaped like
//! llama-cpp-python's `Llama` so existing code switches with one import. Every call releases the
//! GIL while the engine works; calls from several Python threads run batched together.

#![forbid(unsafe_code)]

mod conversion;
mod py_json;
mod shapes;

use lowbit_runtime::batch::{BatchOptions, Event, Handle, Outcome, Request, Scheduler, SubmitError};
use lowbit_runtime::lora::{LoraAdapter, LoraDelta};
use lowbit_runtime::{Engine, KvType, Message, RuntimeOptions, SamplerConfig};
use py_json::{from_py, to_py};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyRuntimeError, PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde_json::{json, Value};
use shapes::Kind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

create_exception!(lowbit, LowbitError, PyException, "A model file or source lowbit cannot use.");

/// The seed llama-cpp-python takes to mean "a new random seed".
const DEFAULT_SEED: u64 = 0xFFFF_FFFF;

/// The engine and its scheduler, shared by every call until `close()`.
struct Inner {
    engine: Arc<Engine>,
    scheduler: Scheduler,
}

fn lowbit_err(e: impl std::fmt::Display) -> PyErr {
    LowbitError::new_err(e.to_string())
}

fn submit_err(e: SubmitError) -> PyErr {
    match e {
        SubmitError::Invalid(why) => PyValueError::new_err(why),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// A quantized model, loaded and ready: llama-cpp-python's `Llama` interface.
#[pyclass(frozen, module = "lowbit")]
struct Llama {
    inner: RwLock<Option<Arc<Inner>>>,
    model_path: String,
    n_ctx: usize,
    seed: u64,
    calls: AtomicU64,
    metadata: Mutex<Option<Py<PyAny>>>,
}

impl Llama {
    fn inner(&self) -> PyResult<Arc<Inner>> {
        self.inner
            .read()
            .map_err(|_| PyRuntimeError::new_err("lowbit: internal lock poisoned"))?
            .clone()
            .ok_or_else(|| PyValueError::new_err("this Llama has been closed"))
    }

    /// The seed of a call: the caller's, else the constructor's, else a new one each call.
    fn seed(&self, given: Option<u64>) -> u64 {
        given.unwrap_or_else(|| {
            let n = self.calls.fetch_add(1, Relaxed);
            if self.seed == DEFAULT_SEED {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(n)
            } else {
                self.seed.wrapping_add(n)
            }
        })
    }

    /// Submits `req` and returns its events' receiver and handle.
    fn submit(&self, inner: &Inner, req: Request) -> PyResult<(Handle, Events)> {
        let (h, rx) = inner.scheduler.submit_channel(req).map_err(submit_err)?;
        Ok((h, Mutex::new(rx)))
    }
}

/// A request's events (in a mutex so the GIL-free wait can borrow them from any thread).
type Events = Mutex<Receiver<Event>>;

/// Waits for the next event with the GIL released, checking for Ctrl-C after every wait (at
/// most 50 ms, also while events keep arriving): an interrupt cancels the request and raises
/// KeyboardInterrupt.
fn next_event(py: Python<'_>, rx: &Events, handle: &Handle) -> PyResult<Option<Event>> {
    loop {
        let got = py.detach(|| match rx.lock() {
            Ok(r) => r.recv_timeout(Duration::from_millis(50)),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        });
        if let Err(e) = py.check_signals() {
            handle.cancel();
            return Err(e);
        }
        match got {
            Ok(e) => return Ok(Some(e)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Cancels a request when dropped unfinished (an exception part-way through a batch): nothing
/// keeps running that no one will read.
struct CancelOnDrop(Handle);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Every event of a request, gathered.
fn wait(py: Python<'_>, rx: &Events, handle: &Handle, n: usize) -> PyResult<Outcome> {
    let mut c = Outcome::new(n);
    while let Some(e) = next_event(py, rx, handle)? {
        if c.push(e).map_err(PyRuntimeError::new_err)? {
            return Ok(c);
        }
    }
    Err(PyRuntimeError::new_err("the engine stopped before the request finished"))
}

/// Sampling keyword arguments shared by the completion calls.
#[derive(Clone, Copy)]
struct Sampling {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    min_p: f32,
    repeat_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
}

impl Sampling {
    fn config(self, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed,
        }
    }
}

fn stops(stop: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    match stop {
        None => Ok(Vec::new()),
        Some(s) if s.is_none() => Ok(Vec::new()),
        Some(s) => {
            if let Ok(one) = s.extract::<String>() {
                Ok(vec![one])
            } else {
                s.extract::<Vec<String>>()
                    .map_err(|_| PyValueError::new_err("stop must be a string or a list of strings"))
            }
        }
    }
}

fn messages(v: &Value) -> PyResult<Vec<Message>> {
    let bad = |m: &str| PyValueError::new_err(m.to_string());
    let list =
        v.as_array().filter(|l| !l.is_empty()).ok_or_else(|| bad("messages must be a non-empty list of dicts"))?;
    list.iter()
        .map(|m| {
            let role =
                m.get("role").and_then(Value::as_str).ok_or_else(|| bad("every message needs a string 'role'"))?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| {
                        p.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("only text content parts are supported"))
                    })
                    .collect::<PyResult<String>>()?,
                Some(_) => return Err(bad("message content must be a string or a list of text parts")),
            };
            Ok(Message { role: role.to_string(), content })
        })
        .collect()
}

/// A reply's token budget: `None` or a negative count means until the context is full, as
/// llama-cpp-python's `max_tokens=None` / `-1` do; 0 generates nothing (with `echo` and
/// `logprobs`, the prompt is scored, as OpenAI's API does).
fn budget(max_tokens: Option<i64>, n_ctx: usize) -> usize {
    match max_tokens {
        Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
        _ => n_ctx,
    }
}

#[pymethods]
impl Llama {
    /// Loads `model_path`: a lowbit file, or a GGUF file / Hugging Face or bitsandbytes folder,
    /// converted once with `quant` into the cache (`LOWBIT_CACHE`, else `~/.cache/lowbit`).
    #[new]
    #[pyo3(signature = (model_path, n_ctx=2048, n_threads=None, seed=DEFAULT_SEED, verbose=false, n_parallel=4, quant="nf4", kv_type="f32", lora_path=None, lora_scale=1.0, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_path: PathBuf,
        n_ctx: usize,
        n_threads: Option<usize>,
        seed: u64,
        verbose: bool,
        n_parallel: usize,
        quant: &str,
        kv_type: &str,
        lora_path: Option<PathBuf>,
        lora_scale: f32,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Llama> {
        if let Some(dir) = &lora_path {
            // An adapter folder, or the adapter file `lowbit convert ADAPTER_DIR` makes.
            if !dir.exists() {
                return Err(PyFileNotFoundError::new_err(format!("{}: no such adapter folder or file", dir.display())));
            }
        }
        if !lora_scale.is_finite() {
            return Err(PyValueError::new_err("lora_scale must be a finite number"));
        }
        let kv_type = match KvType::from_name(kv_type) {
            Some(k) => k,
            None => return Err(PyValueError::new_err(format!("kv_type {kv_type:?} is not f32, f16 or q8"))),
        };
        if !model_path.exists() {
            return Err(PyFileNotFoundError::new_err(format!("{}: no such file or folder", model_path.display())));
        }
        if n_parallel == 0 || n_threads == Some(0) {
            return Err(PyValueError::new_err("n_parallel and n_threads must be at least 1"));
        }
        // 0: the model's trained context, as llama-cpp-python reads it.
        let n_ctx = if n_ctx == 0 { usize::MAX } else { n_ctx };
        let file = conversion::resolve(py, &model_path, quant, verbose)?;
        let inner = py.detach(|| -> Result<Inner, String> {
            // A PEFT adapter beside the weights, as llama-cpp-python's lora_path (a folder read
            // into memory, or an adapter file read in place; the model file untouched).
            let adapters = match &lora_path {
                None => Vec::new(),
                Some(dir) => {
                    let model = lowbit_format::ModelFile::open(&file).map_err(|e| e.to_string())?;
                    let spec = lowbit_convert::lora::LoraSpec { dir: dir.clone(), scale: lora_scale };
                    let (record, deltas) =
                        lowbit_convert::lora::load_for_file(&spec, &model).map_err(|e| e.to_string())?;
                    let deltas = deltas.into_iter().map(|d| LoraDelta {
                        target: d.target,
                        a: d.a,
                        b: d.b,
                        r: d.r,
                        scale: d.scale,
                    });
                    vec![LoraAdapter { name: record.name, deltas: deltas.collect() }]
                }
            };
            let engine = Arc::new(
                Engine::open(&file, &RuntimeOptions { threads: n_threads, kv_type, adapters, ..Default::default() })
                    .map_err(|e| e.to_string())?,
            );
            let trained = engine.model().config.max_position_embeddings;
            // Everything a caller submits may wait (generate_batch of any size): a queued request
            // holds only its prompt.
            let opts =
                BatchOptions { parallel: n_parallel, context: n_ctx.min(trained), queue: 1 << 20, prefill_chunk: 256 };
            let scheduler = Scheduler::start(engine.clone(), opts).map_err(|e| e.to_string())?;
            Ok(Inner { engine, scheduler })
        });
        let inner = inner.map_err(lowbit_err)?;
        let n_ctx = inner.scheduler.options().context;
        if verbose {
            eprintln!("lowbit: {} loaded, context {n_ctx}, {n_parallel} parallel sequences", file.display());
        }
        Ok(Llama {
            inner: RwLock::new(Some(Arc::new(inner))),
            model_path: model_path.display().to_string(),
            n_ctx,
            seed,
            calls: AtomicU64::new(0),
            metadata: Mutex::new(None),
        })
    }

    /// Context length per sequence.
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Vocabulary size.
    fn n_vocab(&self) -> PyResult<usize> {
        Ok(self.inner()?.engine.model().config.vocab_size)
    }

    /// The end-of-sequence token id (the tokenizer's, else the model config's first), or -1
    /// when the model names none.
    fn token_eos(&self) -> PyResult<i64> {
        let inner = self.inner()?;
        let codec = inner.engine.codec().ok();
        let id = codec
            .and_then(|c| c.eos_token().and_then(|t| c.token_id(t)))
            .or_else(|| inner.engine.model().config.eos_token_ids.first().copied());
        Ok(id.map_or(-1, i64::from))
    }

    /// The beginning-of-sequence token id (the tokenizer's, else the model config's), or -1 when
    /// the model names none.
    fn token_bos(&self) -> PyResult<i64> {
        let inner = self.inner()?;
        let codec = inner.engine.codec().ok();
        let id =
            codec.and_then(|c| c.bos_token().and_then(|t| c.token_id(t))).or(inner.engine.model().config.bos_token_id);
        Ok(id.map_or(-1, i64::from))
    }

    /// Nothing to reset: every call starts from its own prompt (llama-cpp-python's `reset`
    /// clears the state a `Llama` keeps between calls; this one keeps none).
    fn reset(&self) {}

    /// The model's metadata as strings (architecture, quantization, config.json entries).
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut cache = self.metadata.lock().map_err(|_| PyRuntimeError::new_err("lowbit: internal lock poisoned"))?;
        if let Some(m) = cache.as_ref() {
            return Ok(m.clone_ref(py));
        }
        let inner = self.inner()?;
        let meta = inner.engine.file().metadata();
        let mut out = serde_json::Map::new();
        out.insert("general.architecture".into(), json!(meta.architecture));
        out.insert("lowbit.quantization".into(), json!(serde_json::to_string(&meta.quantization).unwrap_or_default()));
        if let Some(cfg) = meta.config.as_object() {
            for (k, v) in cfg {
                let s = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                out.insert(format!("config.{k}"), json!(s));
            }
        }
        let m = to_py(py, &Value::Object(out))?;
        *cache = Some(m.clone_ref(py));
        Ok(m)
    }

    /// Token ids of `text` (bytes, UTF-8); `add_bos` applies the tokenizer's special tokens.
    #[pyo3(signature = (text, add_bos=true, special=false))]
    fn tokenize(&self, text: &[u8], add_bos: bool, special: bool) -> PyResult<Vec<u32>> {
        let _ = special;
        let text = std::str::from_utf8(text).map_err(|_| PyValueError::new_err("text is not UTF-8"))?;
        let inner = self.inner()?;
        let codec = inner.engine.codec().map_err(lowbit_err)?;
        codec.encode(text, add_bos).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The text of `tokens`, as bytes.
    #[pyo3(signature = (tokens, special=false))]
    fn detokenize<'py>(&self, py: Python<'py>, tokens: Vec<u32>, special: bool) -> PyResult<Bound<'py, PyBytes>> {
        let inner = self.inner()?;
        let vocab = inner.engine.model().config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(PyValueError::new_err(format!("token id {t} is outside the vocabulary (size {vocab})")));
        }
        let codec = inner.engine.codec().map_err(lowbit_err)?;
        let text = if special { codec.decode_with_special(&tokens) } else { codec.decode(&tokens) };
        Ok(PyBytes::new(py, text.map_err(lowbit_err)?.as_bytes()))
    }

    /// `create_completion`.
    #[pyo3(signature = (prompt, max_tokens=Some(16), temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0, stop=None, seed=None, stream=false, logprobs=None, echo=false, presence_penalty=0.0, frequency_penalty=0.0, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn __call__(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: Option<i64>,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        repeat_penalty: f32,
        stop: Option<&Bound<'_, PyAny>>,
        seed: Option<u64>,
        stream: bool,
        logprobs: Option<usize>,
        echo: bool,
        presence_penalty: f32,
        frequency_penalty: f32,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.create_completion(
            py,
            prompt,
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repeat_penalty,
            stop,
            seed,
            stream,
            logprobs,
            echo,
            presence_penalty,
            frequency_penalty,
            _kwargs,
        )
    }

    /// Completes `prompt` (a string or token ids): a `text_completion` dict, or with
    /// `stream=True` an iterator of chunks.
    #[pyo3(signature = (prompt, max_tokens=Some(16), temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0, stop=None, seed=None, stream=false, logprobs=None, echo=false, presence_penalty=0.0, frequency_penalty=0.0, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn create_completion(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: Option<i64>,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        repeat_penalty: f32,
        stop: Option<&Bound<'_, PyAny>>,
        seed: Option<u64>,
        stream: bool,
        logprobs: Option<usize>,
        echo: bool,
        presence_penalty: f32,
        frequency_penalty: f32,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let inner = self.inner()?;
        let codec = inner.engine.codec().map_err(lowbit_err)?;
        let (ids, text) = if let Ok(s) = prompt.extract::<String>() {
            (codec.encode(&s, true).map_err(|e| PyValueError::new_err(e.to_string()))?, s)
        } else if let Ok(ids) = prompt.extract::<Vec<u32>>() {
            let text = codec.decode(&ids).unwrap_or_default();
            (ids, text)
        } else {
            return Err(PyValueError::new_err("prompt must be a string or a list of token ids"));
        };
        let sampling =
            Sampling { temperature, top_p, top_k, min_p, repeat_penalty, presence_penalty, frequency_penalty };
        let req = Request {
            prompt: ids.clone(),
            max_tokens: budget(max_tokens, self.n_ctx),
            sampling: sampling.config(self.seed(seed)),
            stop: stops(stop)?,
            n: 1,
            logprobs,
            prompt_logprobs: if echo { logprobs } else { None },
            ignore_eos: false,
            adapter: None,
        };
        let (handle, rx) = self.submit(&inner, req)?;
        let kind = Kind::Completion { echo: echo.then_some(text), prompt_ids: ids, logprobs: logprobs.is_some() };
        let id = format!("cmpl-{}", self.calls.fetch_add(1, Relaxed));
        if stream {
            let it = Stream {
                rx: Mutex::new(Some((rx, handle))),
                kind,
                id,
                model: self.model_path.clone(),
                engine: inner.engine.clone(),
                pending: Mutex::new(Vec::new()),
                started: Mutex::new(false),
            };
            return Ok(Py::new(py, it)?.into_any());
        }
        let c = wait(py, &rx, &handle, 1)?;
        to_py(py, &shapes::whole(&kind, &id, &self.model_path, &c, inner.engine.codec().ok()))
    }

    /// Answers `messages` through the model's chat template: a `chat.completion` dict, or with
    /// `stream=True` an iterator of `chat.completion.chunk` dicts.
    #[pyo3(signature = (messages, max_tokens=None, temperature=0.2, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0, stop=None, seed=None, stream=false, logprobs=false, top_logprobs=None, presence_penalty=0.0, frequency_penalty=0.0, n=1, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn create_chat_completion(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        max_tokens: Option<i64>,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        repeat_penalty: f32,
        stop: Option<&Bound<'_, PyAny>>,
        seed: Option<u64>,
        stream: bool,
        logprobs: bool,
        top_logprobs: Option<usize>,
        presence_penalty: f32,
        frequency_penalty: f32,
        n: usize,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let inner = self.inner()?;
        let prompt = chat_prompt(&inner, &from_py(messages)?)?;
        let sampling =
            Sampling { temperature, top_p, top_k, min_p, repeat_penalty, presence_penalty, frequency_penalty };
        let req = Request {
            prompt,
            max_tokens: budget(max_tokens, self.n_ctx),
            sampling: sampling.config(self.seed(seed)),
            stop: stops(stop)?,
            n,
            logprobs: logprobs.then(|| top_logprobs.unwrap_or(0)),
            prompt_logprobs: None,
            ignore_eos: false,
            adapter: None,
        };
        let (handle, rx) = self.submit(&inner, req)?;
        let kind = Kind::Chat { logprobs };
        let id = format!("chatcmpl-{}", self.calls.fetch_add(1, Relaxed));
        if stream {
            let it = Stream {
                rx: Mutex::new(Some((rx, handle))),
                kind,
                id,
                model: self.model_path.clone(),
                engine: inner.engine.clone(),
                pending: Mutex::new(Vec::new()),
                started: Mutex::new(false),
            };
            return Ok(Py::new(py, it)?.into_any());
        }
        let c = wait(py, &rx, &handle, n)?;
        to_py(py, &shapes::whole(&kind, &id, &self.model_path, &c, inner.engine.codec().ok()))
    }

    /// Many prompts (strings, or message lists for chat) at once on the batched engine: one
    /// result dict per prompt, in order, each with `n` choices.
    #[pyo3(signature = (prompts, n=1, max_tokens=Some(16), temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0, stop=None, seed=None, presence_penalty=0.0, frequency_penalty=0.0))]
    #[allow(clippy::too_many_arguments)]
    fn generate_batch(
        &self,
        py: Python<'_>,
        prompts: &Bound<'_, PyAny>,
        n: usize,
        max_tokens: Option<i64>,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        repeat_penalty: f32,
        stop: Option<&Bound<'_, PyAny>>,
        seed: Option<u64>,
        presence_penalty: f32,
        frequency_penalty: f32,
    ) -> PyResult<Py<PyAny>> {
        let inner = self.inner()?;
        let codec = inner.engine.codec().map_err(lowbit_err)?;
        let list = match from_py(prompts)? {
            Value::Array(l) => l,
            _ => return Err(PyValueError::new_err("prompts must be a list of strings or of message lists")),
        };
        let sampling =
            Sampling { temperature, top_p, top_k, min_p, repeat_penalty, presence_penalty, frequency_penalty };
        let stop = stops(stop)?;
        // Every request is made before the first is submitted, so they reach the scheduler
        // together and their prompts share its first step's pass (submitting while tokenizing
        // left the first prompt to a pass of its own).
        let mut reqs = Vec::with_capacity(list.len());
        for p in &list {
            let (ids, kind) = match p {
                Value::String(s) => (
                    codec.encode(s, true).map_err(|e| PyValueError::new_err(e.to_string()))?,
                    Kind::Completion { echo: None, prompt_ids: Vec::new(), logprobs: false },
                ),
                Value::Array(_) => (chat_prompt(&inner, p)?, Kind::Chat { logprobs: false }),
                _ => return Err(PyValueError::new_err("each prompt must be a string or a list of messages")),
            };
            let req = Request {
                prompt: ids,
                max_tokens: budget(max_tokens, self.n_ctx),
                sampling: sampling.config(self.seed(seed)),
                stop: stop.clone(),
                n,
                ..Request::default()
            };
            reqs.push((req, kind));
        }
        let mut pending = Vec::with_capacity(reqs.len());
        for (req, kind) in reqs {
            let (handle, rx) = self.submit(&inner, req)?;
            pending.push((CancelOnDrop(handle), rx, kind));
        }
        let mut out = Vec::new();
        for (i, (handle, rx, kind)) in pending.iter().enumerate() {
            let c = wait(py, rx, &handle.0, n)?;
            out.push(shapes::whole(kind, &format!("batch-{i}"), &self.model_path, &c, Some(codec)));
        }
        to_py(py, &Value::Array(out))
    }

    /// Per-token log-probabilities of each completion given its prompt (the prompt tokenized
    /// with the BOS, the completion without), computed in one batched scoring pass each.
    fn score(&self, py: Python<'_>, prompts: Vec<String>, completions: Vec<String>) -> PyResult<Vec<Vec<f32>>> {
        if prompts.len() != completions.len() {
            return Err(PyValueError::new_err("prompts and completions must have the same length"));
        }
        let inner = self.inner()?;
        let codec = inner.engine.codec().map_err(lowbit_err)?;
        let mut pending = Vec::new();
        for (p, c) in prompts.iter().zip(&completions) {
            let mut ids = codec.encode(p, true).map_err(|e| PyValueError::new_err(e.to_string()))?;
            let start = ids.len();
            ids.extend(codec.encode(c, false).map_err(|e| PyValueError::new_err(e.to_string()))?);
            if start == 0 {
                return Err(PyValueError::new_err("a prompt must have at least one token"));
            }
            let req = Request { prompt: ids, max_tokens: 0, prompt_logprobs: Some(0), ..Request::default() };
            let (handle, rx) = self.submit(&inner, req)?;
            pending.push((CancelOnDrop(handle), rx, start));
        }
        let mut out = Vec::new();
        for (handle, rx, start) in &pending {
            let c = wait(py, rx, &handle.0, 1)?;
            // prompt_logprobs[k] is the log-probability of token k + 1.
            out.push(c.prompt_logprobs.iter().skip(start - 1).map(|l| l.logprob).collect());
        }
        Ok(out)
    }

    /// Frees the model now (its memory map and caches); later calls raise ValueError.
    fn close(&self) -> PyResult<()> {
        let taken = self.inner.write().map_err(|_| PyRuntimeError::new_err("lowbit: internal lock poisoned"))?.take();
        drop(taken);
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close()?;
        Ok(false)
    }
}

fn chat_prompt(inner: &Inner, messages_value: &Value) -> PyResult<Vec<u32>> {
    let codec = inner.engine.codec().map_err(lowbit_err)?;
    if !codec.has_template() {
        return Err(PyValueError::new_err("this model has no chat template; use create_completion"));
    }
    let msgs = messages(messages_value)?;
    let text = codec.apply_chat_template(&msgs, true).map_err(|e| PyValueError::new_err(e.to_string()))?;
    codec.encode(&text, false).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The iterator `stream=True` returns: chunks as they are generated. Dropping it (or breaking
/// out of the loop) cancels the generation.
#[pyclass(frozen, module = "lowbit")]
struct Stream {
    rx: Mutex<Option<(Events, Handle)>>,
    kind: Kind,
    id: String,
    model: String,
    engine: Arc<Engine>,
    pending: Mutex<Vec<Value>>,
    started: Mutex<bool>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(Some((_, handle))) = self.rx.get_mut().map(|g| g.take()) {
            handle.cancel();
        }
    }
}

#[pymethods]
impl Stream {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let lock = |e| PyRuntimeError::new_err(format!("lowbit: {e}"));
        loop {
            if let Some(v) = self.pending.lock().map_err(|_| lock("lock poisoned"))?.pop() {
                return to_py(py, &v);
            }
            // Never wait for this lock with the GIL held while another thread waits inside it
            // with the GIL released: that would deadlock.
            let mut guard = match self.rx.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(PyRuntimeError::new_err("this stream is being read by another thread"))
                }
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(lock("lock poisoned")),
            };
            let Some((rx, handle)) = guard.as_ref() else { return Err(PyStopIteration::new_err(())) };
            let mut started = self.started.lock().map_err(|_| lock("lock poisoned"))?;
            let first = !*started;
            *started = true;
            drop(started);
            let event = next_event(py, rx, handle)?;
            let codec = self.engine.codec().ok();
            let (mut chunks, end) = match event {
                Some(Event::Failed(why)) => {
                    *guard = None;
                    return Err(PyRuntimeError::new_err(why));
                }
                Some(e) => shapes::chunks(&self.kind, &self.id, &self.model, e, first, codec),
                None => (Vec::new(), true),
            };
            if end {
                *guard = None;
            }
            drop(guard);
            chunks.reverse();
            self.pending.lock().map_err(|_| lock("lock poisoned"))?.extend(chunks);
        }
    }
}

/// Converts `src` (Hugging Face folder, bitsandbytes checkpoint, GGUF file) into a lowbit file
/// at `dst`; `progress(done, total)` is called as tensors finish.
#[pyfunction]
#[pyo3(signature = (src, dst, quant="nf4", progress=None))]
fn convert(py: Python<'_>, src: PathBuf, dst: PathBuf, quant: &str, progress: Option<Py<PyAny>>) -> PyResult<()> {
    conversion::convert_file(py, &src, &dst, quant, progress)
}

/// A lowbit file's summary: architecture, tensors, bits per weight and the RAM to run it at
/// `n_ctx` positions.
#[pyfunction]
#[pyo3(signature = (path, n_ctx=4096))]
fn inspect(py: Python<'_>, path: PathBuf, n_ctx: usize) -> PyResult<Py<PyAny>> {
    to_py(py, &conversion::inspect(&path, n_ctx)?)
}

#[pymodule]
fn lowbit(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The tokenizers library panics on some malformed tokenizer.json parts; the runtime catches
    // that and raises a malformed-tokenizer error, so keep the library's panic message off
    // stderr. The hook belongs to this extension's own Rust code; other panics report as before.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.location().is_some_and(|l| l.file().contains("/tokenizers-")) {
            report(info)
        }
    }));
    m.add_class::<Llama>()?;
    m.add_class::<Stream>()?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add("LowbitError", m.py().get_type::<LowbitError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
