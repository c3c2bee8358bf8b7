//! Making one output tensor's parts. Float tensors are read and quantized in chunks of whole
//! blocks (4-bit) or whole rows (int8), and each chunk's codes go to the file at once, so a
//! worker holds one chunk as f32 plus the tensor's small parts (block scales), never the
//! tensor. Only the kernels' scalar quantizers are used: the output is byte-identical on every
//! CPU.

use crate::error::{ConvertError, Result};
use crate::plan::Job;
use crate::source::TensorSource;
use lowbit_format::{PlannedTensor, Scheme, TensorSink};
use lowbit_kernels::{
    fourbit, quantize_4bit_weighted, quantize_int8, Absmax, ColumnImportance, FourBitOptions, NestedRule,
};

/// Elements converted per chunk: 4 Mi elements = 16 MiB as f32.
pub(crate) const CHUNK_ELEMS: usize = 1 << 22;

fn kernel(name: &str) -> impl Fn(lowbit_kernels::KernelError) -> ConvertError + '_ {
    move |source| ConvertError::Kernel { tensor: name.to_string(), source }
}

fn le_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The 4-bit parts of a float tensor. Chunks are whole blocks of the flattened tensor, so the
/// codes and block scales equal one [`quantize_4bit`] call over the whole tensor; the double
/// quantization (which needs the mean of all scales) runs once at the end, on the scales only.
#[allow(clippy::too_many_arguments)]
fn fourbit_parts(
    src: &dyn TensorSource,
    name: &str,
    n: usize,
    scheme: &Scheme,
    rule: NestedRule,
    scale_search: bool,
    importance: Option<&[f32]>,
    sink: &mut TensorSink,
) -> Result<()> {
    let Scheme::FourBit { kind, blocksize, nested, .. } = scheme else {
        unreachable!("fourbit_parts is called for 4-bit schemes")
    };
    let blocksize = *blocksize as usize;
    let kind = match kind {
        lowbit_format::FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4,
        lowbit_format::FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4,
    };
    let opts = FourBitOptions { kind, blocksize, double_quant: false, nested_rule: rule, scale_search };
    // A multiple of the block size, and even, so each chunk's codes fill whole bytes.
    let chunk = (CHUNK_ELEMS / blocksize).max(1) * blocksize;
    let mut absmax = Vec::with_capacity(n.div_ceil(blocksize));
    let mut x = Vec::new();
    for start in (0..n).step_by(chunk) {
        src.read_f32(name, start, chunk.min(n - start), &mut x)?;
        let importance =
            importance.map(|per_column| ColumnImportance { per_column, first_column: start % per_column.len() });
        let q = quantize_4bit_weighted(&x, &opts, importance).map_err(kernel(name))?;
        sink.write(0, &q.codes)?;
        match q.absmax {
            Absmax::F32(a) => absmax.extend(a),
            Absmax::Nested { .. } => unreachable!("double_quant is off per chunk"),
        }
    }
    match nested {
        None => sink.write(1, &le_bytes(&absmax))?,
        Some(nd) => match fourbit::nest_absmax(&absmax, nd.blocksize as usize, rule) {
            Absmax::Nested { codes, nested_absmax, offset, .. } => {
                sink.write(1, &codes)?;
                sink.write(2, &le_bytes(&nested_absmax))?;
                sink.write(3, &offset.to_le_bytes())?;
            }
            Absmax::F32(_) => unreachable!("nest_absmax nests"),
        },
    }
    Ok(())
}

/// The LLM.int8 parts of a float `[rows, cols]` tensor, whole rows at a time.
fn int8_parts(src: &dyn TensorSource, name: &str, rows: usize, cols: usize, sink: &mut TensorSink) -> Result<()> {
    let rows_per = (CHUNK_ELEMS / cols.max(1)).max(1);
    let mut cb = Vec::with_capacity(rows_per.min(rows) * cols);
    let mut scb = Vec::with_capacity(rows * 4);
    let mut x = Vec::new();
    for r0 in (0..rows).step_by(rows_per) {
        let nr = rows_per.min(rows - r0);
        src.read_f32(name, r0 * cols, nr * cols, &mut x)?;
        let q = quantize_int8(&x, nr, cols).map_err(kernel(name))?;
        cb.clear();
        cb.extend(q.cb.iter().map(|&v| v as u8));
        sink.write(0, &cb)?;
        scb.extend(q.scb.iter().flat_map(|v| v.to_le_bytes()));
    }
    sink.write(1, &scb)?;
    Ok(())
}

fn q8_parts(
    src: &dyn TensorSource,
    name: &str,
    rows: usize,
    cols: usize,
    blocksize: usize,
    sink: &mut TensorSink,
) -> Result<()> {
    let rows_per = (CHUNK_ELEMS / cols.max(1)).max(1);
    let mut qs = Vec::with_capacity(rows_per.min(rows) * cols);
    let mut scales = Vec::with_capacity(rows * cols / blocksize * 2);
    let mut x = Vec::new();
    for r0 in (0..rows).step_by(rows_per) {
        let nr = rows_per.min(rows - r0);
        src.read_f32(name, r0 * cols, nr * cols, &mut x)?;
        let q = lowbit_kernels::q8::quantize(&x, nr, cols, blocksize).map_err(kernel(name))?;
        qs.clear();
        qs.extend(q.qs.iter().map(|&v| v as u8));
        sink.write(0, &qs)?;
        scales.extend(q.scales.iter().flat_map(|v| v.to_le_bytes()));
    }
    sink.write(1, &scales)?;
    Ok(())
}

/// The block int5 parts of a float `[rows, cols]` tensor, whole rows at a time, each weight's
/// error weighted by its column's importance when there is one.
fn q5_parts(
    src: &dyn TensorSource,
    name: &str,
    rows: usize,
    cols: usize,
    importance: Option<&[f32]>,
    sink: &mut TensorSink,
) -> Result<()> {
    let rows_per = (CHUNK_ELEMS / cols.max(1)).max(1);
    let (mut qh, mut scales) = (Vec::with_capacity(rows * cols / 8), Vec::with_capacity(rows * cols / 16));
    let mut x = Vec::new();
    for r0 in (0..rows).step_by(rows_per) {
        let nr = rows_per.min(rows - r0);
        src.read_f32(name, r0 * cols, nr * cols, &mut x)?;
        let q = lowbit_kernels::q5::quantize(&x, nr, cols, importance).map_err(kernel(name))?;
        sink.write(0, &q.qs)?;
        qh.extend_from_slice(&q.qh);
        scales.extend(q.scales.iter().flat_map(|v| v.to_le_bytes()));
    }
    sink.write(1, &qh)?;
    sink.write(2, &scales)?;
    Ok(())
}

/// Appends `x` encoded as the dense `scheme`.
fn encode_dense(x: &[f32], scheme: &Scheme, out: &mut Vec<u8>) {
    match scheme {
        Scheme::F16 => out.extend(x.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes())),
        Scheme::Bf16 => out.extend(x.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())),
        _ => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
    }
}

fn dense_size(scheme: &Scheme) -> usize {
    match scheme {
        Scheme::F16 | Scheme::Bf16 => 2,
        _ => 4,
    }
}

/// The first element of `x` (starting at flat index `start`) that is not finite, or that
/// float16 cannot hold when `scheme` is float16, as an error: a model with NaN or infinite
/// weights produces NaN logits, which no later error explains.
fn check_dense(name: &str, start: usize, x: &[f32], scheme: &Scheme) -> Result<()> {
    let f16 = matches!(scheme, Scheme::F16);
    match x.iter().position(|&v| !v.is_finite() || (f16 && half::f16::from_f32(v).is_infinite())) {
        None => Ok(()),
        Some(i) => Err(ConvertError::NonFinite {
            tensor: name.to_string(),
            index: start + i,
            value: x[i],
            why: if x[i].is_finite() {
                ", too large for float16: keep the tensor in f32 (--keep) or convert to bf16"
            } else {
                ": the checkpoint is damaged"
            },
        }),
    }
}

/// A dense tensor, converted chunk by chunk with round-to-nearest-even after every element is
/// checked to be finite. A tensor already in the output dtype comes out bit-exact, since a
/// finite f32, f16 or bf16 value survives the trip through f32 unchanged, and is read once.
fn dense_parts(src: &dyn TensorSource, name: &str, n: usize, scheme: &Scheme, sink: &mut TensorSink) -> Result<()> {
    let (mut x, mut out) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(CHUNK_ELEMS) {
        src.read_f32(name, start, CHUNK_ELEMS.min(n - start), &mut x)?;
        check_dense(name, start, &x, scheme)?;
        out.clear();
        encode_dense(&x, scheme, &mut out);
        sink.write(0, &out)?;
    }
    Ok(())
}

/// Makes the parts of `job`, in the scheme's part order, into `sink` (which the caller
/// finishes).
pub(crate) fn run_job(
    job: &Job,
    src: &dyn TensorSource,
    rule: NestedRule,
    scale_search: bool,
    importance: Option<&[f32]>,
    sink: &mut TensorSink,
) -> Result<()> {
    match job {
        Job::Bnb(b) => {
            for (i, part) in b.parts(src)?.iter().enumerate() {
                sink.write(i, part)?;
            }
            Ok(())
        }
        Job::BnbDense(b, scheme) => {
            let x = b.dequantize(src)?;
            check_dense(b.name(), 0, &x, scheme)?;
            let mut out = Vec::with_capacity(x.len() * dense_size(scheme));
            encode_dense(&x, scheme, &mut out);
            Ok(sink.write(0, &out)?)
        }
        Job::Float { name, shape, scheme, .. } => {
            let n: usize = shape.iter().product();
            match scheme {
                Scheme::FourBit { .. } => {
                    // Importance per input column, when there is one for this weight and it fits.
                    let cols = shape.last().copied().unwrap_or(0);
                    let importance = importance.filter(|v| v.len() == cols && cols > 0);
                    fourbit_parts(src, name, n, scheme, rule, scale_search, importance, sink)
                }
                Scheme::Int8 => int8_parts(src, name, shape[0], shape[1], sink),
                Scheme::Q8 { blocksize } => q8_parts(src, name, shape[0], shape[1], *blocksize as usize, sink),
                Scheme::Q5 { .. } => {
                    let importance = importance.filter(|v| v.len() == shape[1]);
                    q5_parts(src, name, shape[0], shape[1], importance, sink)
                }
                _ => dense_parts(src, name, n, scheme, sink),
            }
        }
    }
}

/// Bytes `job` holds at most while it runs: a bitsandbytes tensor's source and output whole
/// (plus the tensor as f32 when it is dequantized); a float tensor one chunk as f32, as source
/// bytes and as output, plus the parts after the first, which are kept until the end (block
/// scales: a small fraction of the tensor).
pub(crate) fn memory_need(job: &Job, src: &dyn TensorSource, planned: &PlannedTensor) -> u64 {
    let n: u64 = job.shape().iter().map(|&d| d as u64).product();
    let whole = planned.info.length;
    match job {
        Job::Bnb(b) => b.source_bytes(src) + whole,
        Job::BnbDense(b, _) => n * 4 + b.source_bytes(src) + whole,
        Job::Float { dtype, .. } => {
            let first = planned.parts.first().map_or(0, |p| p.len);
            n.min(CHUNK_ELEMS as u64) * (4 + dtype.size() as u64 + 4) + (whole - first)
        }
    }
}
