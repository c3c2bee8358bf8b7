//! The conversion pipeline: open the source, plan every output tensor (and check it against
//! config.json), digest the source files, lay the output out, then convert tensors in parallel —
//! largest first, each read in bounded chunks — and write each in place as soon as it is done.
//!
//! Memory: a worker holds one chunk of its tensor as f32 and as output (written at once) plus
//! that tensor's block scales; a byte budget (twice the largest tensor's need, at least 1 GiB)
//! keeps several large tensors from being in flight at once on many-core machines. Threads: the current rayon pool (run the call inside
//! `ThreadPool::install` to use fewer).
//!
//! Atomicity: the format's writer fills a temporary file next to the output and renames it at
//! the end; any error drops the writer, which deletes the temporary file, so nothing appears at
//! the output path unless the conversion succeeded.

use crate::bnb::BnbTensor;
use crate::error::{ConvertError, Result};
use crate::plan::{plan_folder, plan_gguf, ConvertOptions, Job, Plan};
use crate::quantize::{memory_need, run_job};
use crate::source::gguf::GgufSource;
use crate::source::safetensors::SafetensorsSource;
use crate::source::{SrcDtype, TensorSource};
use lowbit_format::{Scheme, SourceDigest, TensorSpec, Writer};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Progress reports, for a byte-based progress bar. The work counted is every source file read
/// once for its digest, then every source tensor read once to convert it; the sum of all
/// [`ProgressEvent::Tensor`] bytes equals [`ProgressEvent::Start`]'s `total_bytes`.
/// Events come from several threads.
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// Conversion starts: `total_bytes` of work follow.
    Start {
        /// Bytes of source files to digest plus bytes of source tensors to convert.
        total_bytes: u64,
    },
    /// A piece of work is done: a tensor converted (named after it), or a stretch of a source
    /// file digested (named `sha256 <file>`).
    Tensor {
        /// What was done.
        name: String,
        /// Its bytes.
        bytes: u64,
    },
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// Bytes of the source files.
    pub input_bytes: u64,
    /// Bytes of the output file.
    pub output_bytes: u64,
    /// Parameters (elements) in the output.
    pub params: u64,
    /// Parameters in quantized (4-bit/int8) tensors.
    pub quantized_params: u64,
    /// Output bytes of those tensors (all their parts).
    pub quantized_bytes: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Things the user should know (missing tokenizer, skipped tensors, …).
    pub warnings: Vec<String>,
}

impl ConvertSummary {
    /// Output file bits per parameter (header and padding included).
    pub fn bits_per_weight(&self) -> f64 {
        self.output_bytes as f64 * 8.0 / self.params.max(1) as f64
    }

    /// Bits per parameter of the quantized tensors (scales included), if any.
    pub fn quantized_bits_per_weight(&self) -> Option<f64> {
        (self.quantized_params > 0).then(|| self.quantized_bytes as f64 * 8.0 / self.quantized_params as f64)
    }
}

/// Reports digest progress every this many bytes.
const DIGEST_REPORT: u64 = 64 << 20;

fn sha256_file(path: &Path, progress: &(dyn Fn(ProgressEvent) + Sync)) -> Result<SourceDigest> {
    let mut f = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let label = format!("sha256 {file}");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut unreported) = (0u64, 0u64);
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ConvertError::io(path, e)),
        };
        h.update(&buf[..n]);
        bytes += n as u64;
        unreported += n as u64;
        if unreported >= DIGEST_REPORT {
            progress(ProgressEvent::Tensor { name: label.clone(), bytes: unreported });
            unreported = 0;
        }
    }
    if unreported > 0 {
        progress(ProgressEvent::Tensor { name: label, bytes: unreported });
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(SourceDigest { file, bytes, sha256 })
}

/// A byte budget shared by the workers: a job waits until its estimate fits (a job larger than
/// the whole budget runs alone).
struct Budget {
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

struct Permit<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    fn new(limit: u64) -> Budget {
        Budget { limit, used: Mutex::new(0), freed: Condvar::new() }
    }

    fn acquire(&self, bytes: u64) -> Permit<'_> {
        let bytes = bytes.min(self.limit);
        // Holders never panic while holding the lock, but a poisoned count is still right.
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.limit {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
        Permit { budget: self, bytes }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.budget.used.lock().unwrap_or_else(|e| e.into_inner()) -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// Smallest memory budget: small models convert fully in parallel.
const MIN_BUDGET: u64 = 1 << 30;

/// Checks the output can go where asked, before any work is done.
fn check_output_folder(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(ConvertError::OutputFolder(dir.to_path_buf()));
    }
    if out.is_dir() {
        return Err(ConvertError::Config(format!("output {} is a folder, not a file name", out.display())));
    }
    Ok(())
}

/// Refuses an output path that is one of the source files.
fn check_not_a_source(out: &Path, sources: &[PathBuf]) -> Result<()> {
    if let Ok(o) = out.canonicalize() {
        if sources.iter().any(|s| s.canonicalize().is_ok_and(|s| s == o)) {
            return Err(ConvertError::Config(format!("output {} would replace a source file", out.display())));
        }
    }
    Ok(())
}

fn execute(
    plan: Plan,
    src: &dyn TensorSource,
    out: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(ProgressEvent) + Sync),
    start: Instant,
) -> Result<ConvertSummary> {
    let Plan { mut metadata, jobs, warnings, files } = plan;
    check_not_a_source(out, &files)?;
    if let Some(m) = &opts.imatrix {
        check_imatrix(m, &jobs)?;
    }
    let file_bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let job_bytes: Vec<u64> = jobs
        .iter()
        .map(|j| match j {
            Job::Float { name, .. } => src.get(name).map_or(0, |t| t.bytes),
            Job::Bnb(b) | Job::BnbDense(b, _) => b.source_bytes(src),
        })
        .collect();
    progress(ProgressEvent::Start { total_bytes: file_bytes + job_bytes.iter().sum::<u64>() });

    // The header records the digests, so they come first (each file streamed once).
    metadata.sources = files.par_iter().map(|f| sha256_file(f, progress)).collect::<Result<Vec<_>>>()?;
    let input_bytes = metadata.sources.iter().map(|s| s.bytes).sum();

    let specs: Vec<TensorSpec> = jobs
        .iter()
        .map(|j| TensorSpec {
            name: j.name().to_string(),
            scheme: j.scheme(),
            shape: j.shape().iter().map(|&d| d as u64).collect(),
        })
        .collect();
    let writer = Writer::create(out, metadata, specs)?;
    let need: Vec<u64> = jobs.iter().zip(writer.tensors()).map(|(j, t)| memory_need(j, src, t)).collect();
    let budget = Budget::new(need.iter().copied().max().unwrap_or(0).saturating_mul(2).max(MIN_BUDGET));

    // Largest first, so the last tensors to finish are small ones; workers pull from the queue.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(need[i]));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = rayon::current_num_threads().min(jobs.len()).max(1);
    (0..workers).into_par_iter().try_for_each(|_| -> Result<()> {
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= order.len() || failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let i = order[k];
            let _permit = budget.acquire(need[i]);
            let importance = opts.imatrix.as_deref().and_then(|m| m.get(jobs[i].name()));
            let done = writer.tensor_sink(i).map_err(Into::into).and_then(|mut sink| {
                run_job(&jobs[i], src, opts.nested_rule, !opts.bnb_exact, importance, &mut sink)?;
                Ok(sink.finish()?)
            });
            if let Err(e) = done {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            progress(ProgressEvent::Tensor { name: jobs[i].name().to_string(), bytes: job_bytes[i] });
        }
    })?;

    let (mut params, mut qparams, mut qbytes) = (0u64, 0u64, 0u64);
    for t in writer.tensors() {
        let n: u64 = t.info.shape.iter().product();
        params += n;
        if !t.info.scheme.is_dense() {
            qparams += n;
            qbytes += t.parts.iter().map(|p| p.len).sum::<u64>();
        }
    }
    let tensors = writer.tensors().len();
    let written = writer.finish()?;
    Ok(ConvertSummary {
        input_bytes,
        output_bytes: written.bytes,
        params,
        quantized_params: qparams,
        quantized_bytes: qbytes,
        tensors,
        elapsed: start.elapsed(),
        warnings,
    })
}

/// Whether the file `path` is a GGUF file: by extension, or by its magic bytes.
fn is_gguf(path: &Path) -> Result<bool> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Ok(true);
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

/// Converts `src` — a Hugging Face folder (config.json plus `model.safetensors` or a sharded
/// `model.safetensors.index.json`; bitsandbytes pre-quantized ones are taken over losslessly) or a
/// `.gguf` file — into the lowbit file `out`. `progress` is called from several threads.
///
/// On any error nothing is left at `out` (an existing file there is untouched).
pub fn convert(
    src: &Path,
    out: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(ProgressEvent) + Sync),
) -> Result<ConvertSummary> {
    let start = Instant::now();
    opts.validate()?;
    check_output_folder(out)?;
    if !src.exists() {
        return Err(ConvertError::NoSource(src.to_path_buf()));
    }
    if src.is_file() {
        if !is_gguf(src)? {
            return Err(ConvertError::Config(format!(
                "{} is neither a GGUF file nor a folder: give the folder holding config.json and the safetensors",
                src.display()
            )));
        }
        let g = GgufSource::open(src)?;
        let plan = plan_gguf(&g, opts)?;
        return execute_merged(plan, &g, out, opts, progress, start);
    }
    if !src.is_dir() {
        return Err(ConvertError::Missing(src.to_path_buf()));
    }
    if crate::lora_file::is_adapter_folder(src) {
        // A PEFT adapter on its own: an adapter file for `--lora` (its pairs as stored).
        if !opts.lora.is_empty() {
            return Err(ConvertError::Config(format!(
                "{} is a LoRA adapter: it converts on its own (no --lora), or merges into a base with convert BASE --lora {}",
                src.display(),
                src.display()
            )));
        }
        check_not_a_source(out, &[src.join("adapter_model.safetensors")])?;
        let spec = crate::lora::LoraSpec { dir: src.to_path_buf(), scale: 1.0 };
        return crate::lora_file::convert_adapter(&spec, out);
    }
    let source = SafetensorsSource::open(src)?;
    let plan = plan_folder(src, &source, opts)?;
    execute_merged(plan, &source, out, opts, progress, start)
}

/// An importance file must fit the 4-bit and 5-bit weights it names and name at least one of them.
fn check_imatrix(m: &crate::imatrix::Imatrix, jobs: &[Job]) -> Result<()> {
    let mut used = 0;
    for j in jobs {
        let Job::Float { name, shape, scheme: Scheme::FourBit { .. } | Scheme::Q5 { .. }, .. } = j else { continue };
        let Some(v) = m.get(name) else { continue };
        let cols = shape.last().copied().unwrap_or(0);
        if v.len() != cols {
            return Err(ConvertError::Config(format!(
                "the importance file has {} columns for {name}, which has {cols}: it was made for another model",
                v.len()
            )));
        }
        used += 1;
    }
    if used == 0 {
        return Err(ConvertError::Config(
            "the importance file covers none of the weights quantized to 4 or 5 bits (made for another model, or --quant is not nf4/fp4/q5)".into(),
        ));
    }
    Ok(())
}

/// [`execute`], through the LoRA adapters of `opts` when there are any.
fn execute_merged(
    mut plan: Plan,
    src: &dyn TensorSource,
    out: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(ProgressEvent) + Sync),
    start: Instant,
) -> Result<ConvertSummary> {
    if opts.lora.is_empty() {
        return execute(plan, src, out, opts, progress, start);
    }
    // A bitsandbytes checkpoint's quantized weights, which adapters may change too (QLoRA).
    let quantized: HashMap<String, BnbTensor> = plan
        .jobs
        .iter()
        .filter_map(|j| match j {
            Job::Bnb(b) | Job::BnbDense(b, _) => Some((b.name().to_string(), b.clone())),
            Job::Float { .. } => None,
        })
        .collect();
    let adapters = opts.lora.iter().map(|spec| crate::lora::load(spec, src, &quantized)).collect::<Result<Vec<_>>>()?;
    let merged = crate::lora::Merged::new(src, adapters, quantized);
    plan.metadata.adapters = merged.records();
    // A changed bitsandbytes weight is read merged, as f32, and quantized again into its own
    // scheme (or the dense one asked for).
    for job in &mut plan.jobs {
        let (b, scheme) = match job {
            Job::Bnb(b) if merged.changes(b.name()) => (b.clone(), b.scheme()),
            Job::BnbDense(b, s) if merged.changes(b.name()) => (b.clone(), s.clone()),
            _ => continue,
        };
        *job = Job::Float { name: b.name().to_string(), dtype: SrcDtype::F32, shape: b.shape().to_vec(), scheme };
    }
    execute(plan, &merged, out, opts, progress, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn budget_bounds_what_is_in_flight() {
        let budget = Budget::new(100);
        let in_flight = AtomicU64::new(0);
        let peak = AtomicU64::new(0);
        (0..64u64).into_par_iter().for_each(|i| {
            let bytes = 10 + i % 50;
            let _p = budget.acquire(bytes);
            let now = in_flight.fetch_add(bytes, Ordering::SeqCst) + bytes;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(200));
            in_flight.fetch_sub(bytes, Ordering::SeqCst);
        });
        assert!(peak.load(Ordering::SeqCst) <= 100);
        // Larger than the whole budget: runs alone instead of waiting forever.
        drop(budget.acquire(1000));
    }
}
