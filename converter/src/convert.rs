//! The conversion pipeline: read the source's config and tensor list, decide every output
//! tensor's scheme, lay the file out, then convert tensors in parallel — each in bounded chunks
//! read with positional reads — and write them in place. Memory stays at a few chunks per
//! thread however large the model is.

use crate::bnb::{self, BnbTensor};
use crate::config::{normalise, Dims};
use crate::error::{ConvertError, Result};
use crate::plan::{dense, ConvertOptions, QuantChoice};
use crate::source::{decode_f32, safetensors::SafetensorsSource, SrcDtype, TensorSource};
use lowbit_format::{ConverterInfo, Metadata, QuantSettings, Scheme, SourceDigest, TensorSpec, Writer};
use lowbit_kernels::{fourbit, quantize_4bit, quantize_int8, Absmax, FourBitOptions, NestedRule};
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Elements converted per chunk: 16 Mi elements ≈ 64 MiB as f32 per thread.
const CHUNK_ELEMS: usize = 1 << 24;

/// Progress reports.
#[derive(Debug, Clone)]
pub enum ProgressEvent {
    /// Conversion starts; `total_bytes` of tensor data will be read.
    Start {
        /// Bytes of source tensor data.
        total_bytes: u64,
    },
    /// A tensor is done.
    Tensor {
        /// Its name.
        name: String,
        /// Source bytes it accounted for.
        bytes: u64,
    },
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    /// Bytes of source files.
    pub input_bytes: u64,
    /// Bytes of the output file.
    pub output_bytes: u64,
    /// Parameters in the output.
    pub params: u64,
    /// Parameters in quantized (4-bit/int8) tensors.
    pub quantized_params: u64,
    /// Output bytes of those tensors.
    pub quantized_bytes: u64,
    /// Tensors written.
    pub tensors: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Things the user should know (missing tokenizer, skipped tensors, …).
    pub warnings: Vec<String>,
}

/// One output tensor and how to make it.
enum Job {
    /// Converted from a float source tensor.
    Plain { name: String, dtype: SrcDtype, shape: Vec<usize>, scheme: Scheme },
    /// Taken over from a bitsandbytes checkpoint.
    Bnb(BnbTensor),
    /// Dequantized by a GGUF source, then stored.
    Gguf { name: String, shape: Vec<usize>, scheme: Scheme },
}

impl Job {
    fn name(&self) -> &str {
        match self {
            Job::Plain { name, .. } | Job::Gguf { name, .. } => name,
            Job::Bnb(b) => b.name(),
        }
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| ConvertError::BadJson { what: path.display().to_string(), problem: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConvertError::io(path, e)),
    }
}

fn sha256_file(path: &Path) -> Result<SourceDigest> {
    let mut f = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| ConvertError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(SourceDigest { file, bytes, sha256 })
}

/// The 4-bit parts of a float tensor, quantized chunk by chunk. Chunks are whole blocks of the
/// flat array, so the codes and first-level scales equal one call over the whole tensor; the
/// double quantization (which needs the mean of all scales) runs once at the end.
fn fourbit_parts(
    src: &dyn TensorSource,
    name: &str,
    dtype: SrcDtype,
    n: usize,
    scheme: &Scheme,
    rule: NestedRule,
) -> Result<Vec<Vec<u8>>> {
    let (kind, blocksize, nested) = match scheme {
        Scheme::FourBit { kind, blocksize, nested, .. } => (*kind, *blocksize as usize, *nested),
        _ => unreachable!("called for 4-bit schemes"),
    };
    let kind = match kind {
        lowbit_format::FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4,
        lowbit_format::FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4,
    };
    let opts = FourBitOptions { kind, blocksize, double_quant: false, nested_rule: NestedRule::Nearest };
    let chunk = (CHUNK_ELEMS / blocksize).max(1) * blocksize;
    let mut codes = Vec::with_capacity(n.div_ceil(2));
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    let mut x = Vec::new();
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        decode_f32(dtype, &src.read_raw(name, start, len)?, &mut x);
        let q = quantize_4bit(&x, &opts).map_err(|e| ConvertError::Kernel { tensor: name.into(), source: e })?;
        codes.extend_from_slice(&q.codes);
        match q.absmax {
            Absmax::F32(a) => absmax.extend(a),
            Absmax::Nested { .. } => unreachable!("double_quant is off per chunk"),
        }
    }
    Ok(match nested {
        None => vec![codes, absmax.iter().flat_map(|a| a.to_le_bytes()).collect()],
        Some(nd) => match fourbit::nest_absmax(&absmax, nd.blocksize as usize, rule) {
            Absmax::Nested { codes: c, nested_absmax, offset, .. } => {
                vec![
                    codes,
                    c,
                    nested_absmax.iter().flat_map(|a| a.to_le_bytes()).collect(),
                    offset.to_le_bytes().to_vec(),
                ]
            }
            Absmax::F32(_) => unreachable!("nest_absmax nests"),
        },
    })
}

fn int8_parts(src: &dyn TensorSource, name: &str, dtype: SrcDtype, rows: usize, cols: usize) -> Result<Vec<Vec<u8>>> {
    let rows_per = (CHUNK_ELEMS / cols.max(1)).max(1);
    let mut cb = Vec::with_capacity(rows * cols);
    let mut scb = Vec::with_capacity(rows * 4);
    let mut x = Vec::new();
    for r0 in (0..rows).step_by(rows_per) {
        let nr = rows_per.min(rows - r0);
        decode_f32(dtype, &src.read_raw(name, r0 * cols, nr * cols)?, &mut x);
        let q = quantize_int8(&x, nr, cols).map_err(|e| ConvertError::Kernel { tensor: name.into(), source: e })?;
        cb.extend(q.cb.iter().map(|&v| v as u8));
        scb.extend(q.scb.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(vec![cb, scb])
}

fn encode_dense(x: &[f32], scheme: &Scheme) -> Vec<u8> {
    match scheme {
        Scheme::F16 => x.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        Scheme::Bf16 => x.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        _ => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn dense_parts(src: &dyn TensorSource, name: &str, dtype: SrcDtype, n: usize, scheme: &Scheme) -> Result<Vec<Vec<u8>>> {
    let same = matches!(
        (dtype, scheme),
        (SrcDtype::F32, Scheme::F32) | (SrcDtype::F16, Scheme::F16) | (SrcDtype::Bf16, Scheme::Bf16)
    );
    if same {
        return Ok(vec![src.read_raw(name, 0, n)?]);
    }
    let mut out = Vec::with_capacity(n * 4);
    let mut x = Vec::new();
    for start in (0..n).step_by(CHUNK_ELEMS) {
        let len = CHUNK_ELEMS.min(n - start);
        decode_f32(dtype, &src.read_raw(name, start, len)?, &mut x);
        out.extend(encode_dense(&x, scheme));
    }
    Ok(vec![out])
}

/// A prepared conversion: everything known, nothing written yet.
pub(crate) struct Plan {
    metadata: Metadata,
    jobs: Vec<Job>,
    warnings: Vec<String>,
    files: Vec<PathBuf>,
}

fn check_shape(dims: &Dims, name: &str, shape: &[usize]) -> Result<()> {
    match dims.expected(name) {
        Some(e) if e != shape => {
            Err(ConvertError::ShapeMismatch { tensor: name.into(), shape: shape.to_vec(), expected: e })
        }
        _ => Ok(()),
    }
}

fn settings(opts: &ConvertOptions, source_format: &str) -> QuantSettings {
    let four = matches!(opts.quant, QuantChoice::Nf4 | QuantChoice::Fp4);
    QuantSettings {
        scheme: opts.quant.label().into(),
        blocksize: four.then_some(opts.blocksize as u32),
        double_quant: four && opts.double_quant,
        int8_threshold: opts.int8_threshold,
        kept: opts.keep.clone(),
        source_format: source_format.into(),
    }
}

fn plan_folder(dir: &Path, src: &SafetensorsSource, opts: &ConvertOptions) -> Result<Plan> {
    let cfg_path = dir.join("config.json");
    let mut config = read_json(&cfg_path)?.ok_or_else(|| ConvertError::Missing(cfg_path.clone()))?;
    let dims = normalise(&mut config)?;
    let tied = config.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    let mut warnings = Vec::new();
    let tokenizer_json = match std::fs::read_to_string(dir.join("tokenizer.json")) {
        Ok(t) => Some(t),
        Err(_) => {
            warnings.push("no tokenizer.json: the file will only accept token ids (lowbit logits --tokens)".into());
            None
        }
    };
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let chat_template = std::fs::read_to_string(dir.join("chat_template.jinja")).ok().or_else(|| {
        tokenizer_config.as_ref().and_then(|c| c.get("chat_template")).and_then(Value::as_str).map(str::to_string)
    });
    let generation_config = read_json(&dir.join("generation_config.json"))?;

    let index = src.index();
    let pre = bnb::detect(src, &index)?;
    let pre_names: std::collections::HashSet<String> = pre.iter().map(|b| b.name().to_string()).collect();
    let mut jobs: Vec<Job> = Vec::new();
    for b in pre {
        let shape = match &b {
            BnbTensor::FourBit { shape, .. } | BnbTensor::Int8 { shape, .. } => shape.clone(),
        };
        check_shape(&dims, b.name(), &shape)?;
        jobs.push(Job::Bnb(b));
    }
    for (name, dtype, shape) in src.list() {
        if pre_names.contains(&name) || bnb::is_aux(&name) {
            continue;
        }
        if !matches!(dtype, SrcDtype::F32 | SrcDtype::F16 | SrcDtype::Bf16) {
            return Err(ConvertError::UnsupportedDtype {
                tensor: name.clone(),
                dtype: src.dtype_name(&name).unwrap_or("?").to_string(),
            });
        }
        if dims.expected(&name).is_none() {
            warnings.push(format!("tensor {name} is not part of the architecture; stored as it is"));
        }
        check_shape(&dims, &name, &shape)?;
        let orig = dtype.torch_name();
        let scheme = opts.scheme_for(&name, shape.len(), dense(dtype), orig);
        jobs.push(Job::Plain { name, dtype, shape, scheme });
    }
    let have: std::collections::HashSet<&str> = jobs.iter().map(Job::name).collect();
    if let Some(m) = dims.required(tied).into_iter().find(|r| !have.contains(r.as_str())) {
        return Err(ConvertError::MissingTensor(m));
    }
    let source_format = if !pre_names.is_empty() { "bitsandbytes" } else { "safetensors" };
    let architecture = config.get("model_type").and_then(Value::as_str).unwrap_or("llama").to_string();
    let metadata = Metadata {
        architecture,
        config,
        tokenizer_json,
        tokenizer_config,
        chat_template,
        generation_config,
        quantization: settings(opts, source_format),
        converter: ConverterInfo { name: "lowbit".into(), version: env!("CARGO_PKG_VERSION").into() },
        sources: Vec::new(),
    };
    let mut files = src.files();
    files.push(cfg_path);
    Ok(Plan { metadata, jobs, warnings, files })
}

fn job_shape(job: &Job) -> Vec<usize> {
    match job {
        Job::Plain { shape, .. } | Job::Gguf { shape, .. } => shape.clone(),
        Job::Bnb(BnbTensor::FourBit { shape, .. } | BnbTensor::Int8 { shape, .. }) => shape.clone(),
    }
}

fn job_scheme(job: &Job) -> Scheme {
    match job {
        Job::Plain { scheme, .. } | Job::Gguf { scheme, .. } => scheme.clone(),
        Job::Bnb(BnbTensor::FourBit { scheme, .. }) => scheme.clone(),
        Job::Bnb(BnbTensor::Int8 { .. }) => Scheme::Int8,
    }
}

fn run_job(
    job: &Job,
    src: &dyn TensorSource,
    index: &HashMap<String, (SrcDtype, Vec<usize>)>,
    rule: NestedRule,
) -> Result<Vec<Vec<u8>>> {
    let (name, dtype, shape, scheme) = match job {
        Job::Bnb(b) => return b.parts(src, index),
        Job::Plain { name, dtype, shape, scheme } => (name, *dtype, shape, scheme),
        // GGUF sources hand out their tensors dequantized to f32.
        Job::Gguf { name, shape, scheme } => (name, SrcDtype::F32, shape, scheme),
    };
    let n: usize = shape.iter().product();
    match scheme {
        Scheme::FourBit { .. } => fourbit_parts(src, name, dtype, n, scheme, rule),
        Scheme::Int8 => int8_parts(src, name, dtype, shape[0], shape[1]),
        _ => dense_parts(src, name, dtype, n, scheme),
    }
}

fn execute(
    plan: Plan,
    src: &dyn TensorSource,
    out: &Path,
    rule: NestedRule,
    progress: &(dyn Fn(ProgressEvent) + Sync),
    start: Instant,
) -> Result<ConvertSummary> {
    let Plan { mut metadata, jobs, warnings, files } = plan;
    let index: HashMap<String, (SrcDtype, Vec<usize>)> = src.list().into_iter().map(|(n, d, s)| (n, (d, s))).collect();
    // Digests first (the header needs them); hashing streams each file once with a 1 MiB buffer.
    metadata.sources = files.par_iter().map(|f| sha256_file(f)).collect::<Result<Vec<_>>>()?;
    let input_bytes = metadata.sources.iter().map(|s| s.bytes).sum();
    let specs: Vec<TensorSpec> = jobs
        .iter()
        .map(|j| TensorSpec {
            name: j.name().to_string(),
            scheme: job_scheme(j),
            shape: job_shape(j).iter().map(|&d| d as u64).collect(),
        })
        .collect();
    let writer = Writer::create(out, metadata, specs)?;
    let src_bytes = |j: &Job| -> u64 {
        let n: usize = job_shape(j).iter().product();
        match j {
            Job::Plain { dtype, .. } => (n * dtype.size()) as u64,
            _ => n as u64 / 2,
        }
    };
    progress(ProgressEvent::Start { total_bytes: jobs.iter().map(src_bytes).sum() });
    // Largest first, so the last task to finish is a small one.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(src_bytes(&jobs[i])));
    let done = AtomicU64::new(0);
    order.par_iter().with_max_len(1).try_for_each(|&i| -> Result<()> {
        let parts = run_job(&jobs[i], src, &index, rule)?;
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        writer.write_tensor(i, &refs)?;
        done.fetch_add(src_bytes(&jobs[i]), Ordering::Relaxed);
        progress(ProgressEvent::Tensor { name: jobs[i].name().to_string(), bytes: src_bytes(&jobs[i]) });
        Ok(())
    })?;
    let (mut params, mut qparams, mut qbytes) = (0u64, 0u64, 0u64);
    for t in writer.tensors() {
        let n: u64 = t.info.shape.iter().product();
        params += n;
        if matches!(t.info.scheme, Scheme::FourBit { .. } | Scheme::Int8) {
            qparams += n;
            qbytes += t.info.length;
        }
    }
    let tensors = writer.tensors().len();
    let summary = writer.finish()?;
    Ok(ConvertSummary {
        input_bytes,
        output_bytes: summary.bytes,
        params,
        quantized_params: qparams,
        quantized_bytes: qbytes,
        tensors,
        elapsed: start.elapsed(),
        warnings,
    })
}

/// Converts `src` (a Hugging Face folder or a `.gguf` file) into the lowbit file `out`.
/// On any error nothing is left at `out`.
pub fn convert(
    src: &Path,
    out: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(ProgressEvent) + Sync),
) -> Result<ConvertSummary> {
    let start = Instant::now();
    lowbit_kernels::fourbit::check_blocksize(opts.blocksize).map_err(|e| ConvertError::Config(e.to_string()))?;
    if src.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let g = crate::source::gguf::GgufSource::open(src)?;
        let plan = crate::source::gguf::plan(&g, src, opts)?;
        return execute(plan, &g, out, opts.nested_rule, progress, start);
    }
    if !src.is_dir() {
        return Err(ConvertError::Missing(src.to_path_buf()));
    }
    let source = SafetensorsSource::open(src)?;
    let plan = plan_folder(src, &source, opts)?;
    execute(plan, &source, out, opts.nested_rule, progress, start)
}

/// Builds a plan from parts (used by the GGUF source).
pub(crate) fn make_plan(
    metadata: Metadata,
    jobs: Vec<(String, Vec<usize>, Scheme)>,
    warnings: Vec<String>,
    files: Vec<PathBuf>,
) -> Plan {
    Plan {
        metadata,
        jobs: jobs.into_iter().map(|(name, shape, scheme)| Job::Gguf { name, shape, scheme }).collect(),
        warnings,
        files,
    }
}

/// Quantization settings for a plan (used by the GGUF source).
pub(crate) fn quant_settings(opts: &ConvertOptions, source_format: &str) -> QuantSettings {
    settings(opts, source_format)
}
