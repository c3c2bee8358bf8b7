//! Matrix products against stored weights: `out[t][r] = Σ_c x[t][c] · W[r][c]` for `m` tokens.
//!
//! Decode (`m == 1`) streams each weight row once through a dot-product kernel, spread over rows
//! with rayon. Prefill (`m > 1`) works on tiles of rows: 4-bit weights on the integer route run
//! 4 × 4 row × token VNNI tiles against activations quantized once per call and write their
//! results in place; int8 runs integer dot products the same way (LLM.int8 activations); other
//! quantized tiles (and 4-bit on the exact path) are dequantized into a small per-thread buffer
//! and multiplied with `gemm` — never a dequantized copy of the whole matrix. Those last two
//! produce results row-major per weight row (`outT`, rows × m) so every rayon task owns a
//! contiguous slice, then transposed.

use crate::dispatch::Kernels;
use crate::error::{KernelError, Result};
use crate::grid::Grid;
use crate::int8::{quantize_activations, Int8Activations, INV_127, MM_DEQUANT_SCALE};
use crate::lined::Lined;
use crate::pairs::{TokenPairs, GROUP};
use crate::panel::{Panel, PANEL_TOKENS};
use crate::weight::{nested_runs, AbsmaxRef, FourBitRef, Int8Ref, Q5Ref, Q8Ref, Weight};
use half::slice::HalfFloatSliceExt;

/// Options of a matrix product.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulOptions {
    /// LLM.int8 outlier threshold: activation columns with |x| ≥ threshold are computed in
    /// floating point. 0 turns the decomposition off. bitsandbytes' default through transformers is 6.0.
    pub int8_threshold: f32,
    /// 4-bit decode path. `false` (default): the integer route — activations quantized to int8
    /// in blocks aligned with the weight blocks, levels looked up as int8, exact integer block
    /// sums (llama.cpp's IQ4_NL approach; several times faster on CPUs without fast float
    /// permutes). `true`: the exact float path — every weight dequantized to its bitsandbytes
    /// f32 value and multiplied in f32. Prefill (m > 1) takes the integer route too where the
    /// ISA has its tile kernel (AVX-512 VNNI, blocks of 64), with the same per-block activation
    /// quantization as decode; an earlier per-token int8 route (one scale per token) lost too
    /// much on tokens with outlier activations.
    pub fourbit_exact: bool,
}

impl Default for MatmulOptions {
    fn default() -> Self {
        MatmulOptions { int8_threshold: 6.0, fourbit_exact: false }
    }
}

/// Weight rows per task in decode; small enough to balance 2–16 threads on 1024-row
/// matrices, big enough that a task's fixed costs (its block factors, the calls) stay small
/// next to its rows even when they are only 576 wide (docs/PERFORMANCE.md).
pub(crate) const DECODE_ROWS_PER_TASK: usize = 32;
/// Elements dequantized at a time per thread in prefill (4 MiB of f32). Big tiles matter: gemm
/// packs the activations again for every tile, which small tiles pay over and over.
const PREFILL_TILE_ELEMS: usize = 1 << 20;
/// Below this many multiply-adds a call stays on the calling thread.
pub(crate) const PARALLEL_MIN_WORK: usize = 1 << 16;

/// `out (m × rows) = x (m × cols) · Wᵀ` with the process-wide kernels.
pub fn matmul(out: &mut [f32], w: &Weight, x: &[f32], m: usize, opts: &MatmulOptions) -> Result<()> {
    matmul_with(crate::kernels(), out, w, x, m, opts)
}

/// [`matmul`] of several weights over the same prompt (q, k and v; gate and up): `out` holds
/// each weight's `m × rows` result, one after the other, each what [`matmul`] gives for it.
/// 4-bit weights on the integer route share one quantization of `x` and one parallel loop.
pub fn matmul_many(out: &mut [f32], ws: &[&Weight], x: &[f32], m: usize, opts: &MatmulOptions) -> Result<()> {
    matmul_many_with(crate::kernels(), out, ws, x, m, opts)
}

/// [`matmul_many`] with explicit kernels.
pub fn matmul_many_with(
    k: &Kernels,
    out: &mut [f32],
    ws: &[&Weight],
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
) -> Result<()> {
    check_joint_out(out, ws, m)?;
    let tiles: Option<Vec<&FourBitRef>> = ws
        .iter()
        .map(|w| match w {
            Weight::FourBit(w4) if m > 1 && fourbit_tiles(k, w4, opts) => Some(w4),
            _ => None,
        })
        .collect();
    let mut from = 0;
    let mut parallel = false;
    for w in ws {
        let len = m * w.rows();
        let Some(p) = check_shapes(w, &mut out[from..from + len], x, m)? else {
            // Nothing to compute for this one (its part is final): the joint loop cannot run.
            return per_weight(k, out, ws, x, m, opts);
        };
        parallel |= p;
        from += len;
    }
    match tiles {
        Some(w4s)
            if !w4s.is_empty() && w4s.iter().all(|w| w.cols == w4s[0].cols && w.blocksize == w4s[0].blocksize) =>
        {
            fourbit_q8_matmul_many(k, out, &w4s, x, m, parallel);
            Ok(())
        }
        _ => per_weight(k, out, ws, x, m, opts),
    }
}

/// One [`matmul_with`] per weight into its part of `out`, except that block int8 weights side
/// by side (k and v beside a 4-bit q) that a matrix unit takes share one call, as the 4-bit
/// tiles do.
fn per_weight(k: &Kernels, out: &mut [f32], ws: &[&Weight], x: &[f32], m: usize, opts: &MatmulOptions) -> Result<()> {
    let (mut from, mut i) = (0, 0);
    while i < ws.len() {
        let mut run: Vec<Int8Rows> = ws[i..]
            .iter()
            .map_while(|w| Int8Rows::of(w).filter(|w8| q8_panels(k, w8.rows(), w8.blocksize(), m)))
            .collect();
        if let Some(&first) = run.first() {
            let same =
                run.iter().take_while(|w| w.cols() == first.cols() && w.blocksize() == first.blocksize()).count();
            run.truncate(same);
        }
        if !run.is_empty() {
            let len: usize = run.iter().map(|w8| m * w8.rows()).sum();
            let mut parallel = false;
            let mut at = from;
            for w in &ws[i..i + run.len()] {
                let part = m * w.rows();
                parallel |= check_shapes(w, &mut out[at..at + part], x, m)?.unwrap_or(false);
                at += part;
            }
            q8_panel_matmul(k, &mut out[from..from + len], &run, x, m, parallel);
            (from, i) = (from + len, i + run.len());
            continue;
        }
        let len = m * ws[i].rows();
        matmul_with(k, &mut out[from..from + len], ws[i], x, m, opts)?;
        (from, i) = (from + len, i + 1);
    }
    Ok(())
}

/// Checks that `out` holds each weight's `m × rows` results, one weight after the other.
pub(crate) fn check_joint_out(out: &[f32], ws: &[&Weight], m: usize) -> Result<()> {
    let mut total = 0usize;
    for w in ws {
        let overflow = || KernelError::Overflow { op: "matmul", rows: w.rows(), cols: m };
        total = total.checked_add(m.checked_mul(w.rows()).ok_or_else(overflow)?).ok_or_else(overflow)?;
    }
    if out.len() != total {
        return Err(KernelError::ShapeMismatch { op: "matmul", what: "out", expected: total, got: out.len() });
    }
    Ok(())
}

/// Whether a prompt's product with `w` runs the 4-bit integer tiles.
/// Blocks of 64, or of 32 in rows of whole 64-weight steps (two blocks to each step).
pub(crate) fn fourbit_tiles(k: &Kernels, w: &FourBitRef, opts: &MatmulOptions) -> bool {
    let blocks = match w.blocksize {
        64 => rows_block_aligned(w) && k.has_fourbit_q8_tile(false),
        32 => w.cols.is_multiple_of(64) && k.has_fourbit_q8_tile(true),
        _ => false,
    };
    !opts.fourbit_exact && blocks
}

/// `out (rows) = W · x` for one token.
pub fn matvec(out: &mut [f32], w: &Weight, x: &[f32], opts: &MatmulOptions) -> Result<()> {
    matmul_with(crate::kernels(), out, w, x, 1, opts)
}

/// `out (m × rows) = x (m × cols) · Wᵀ` for `m` independent decode tokens: every row of `out` is
/// bit for bit what [`matvec`] gives for that row of `x` alone, whatever the other rows are (a
/// batch of sequences decodes the same tokens as each would alone), while each weight row is
/// read from memory once for all `m`. [`matmul`] instead treats the rows as one prompt (LLM.int8
/// shares outlier columns between them; tiles reduce in their own order).
pub fn matmul_rows(out: &mut [f32], w: &Weight, x: &[f32], m: usize, opts: &MatmulOptions) -> Result<()> {
    matmul_rows_with(crate::kernels(), out, w, x, m, opts)
}

/// [`matmul_rows`] with explicit kernels.
pub fn matmul_rows_with(
    k: &Kernels,
    out: &mut [f32],
    w: &Weight,
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
) -> Result<()> {
    matmul_rows_many_with(k, out, &[w], x, m, opts)
}

/// [`matmul_rows`] of several weights over the same `x` (q, k and v; gate and up): `out` holds
/// each weight's `m × rows` result, one after the other. The same bits as one call per weight,
/// with the activations prepared once where the weights share a scheme and one parallel loop
/// over all their rows, so the threads meet once instead of once per weight (small weights
/// spend as long meeting as computing).
pub fn matmul_rows_many(out: &mut [f32], ws: &[&Weight], x: &[f32], m: usize, opts: &MatmulOptions) -> Result<()> {
    matmul_rows_many_with(crate::kernels(), out, ws, x, m, opts)
}

/// [`matmul_rows_many`] with explicit kernels.
pub fn matmul_rows_many_with(
    k: &Kernels,
    out: &mut [f32],
    ws: &[&Weight],
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
) -> Result<()> {
    rows_many_checked(k, out, ws, x, m, opts, None)
}

/// What [`matmul_rows_many_then`] runs on each finished piece of a product, inside the parallel
/// loop that made it: `(weight index in ws, first row of the piece, piece)`, the piece holding
/// `rows × m` results, a row's `m` tokens together (for `m == 1`, the rows of `out` in place).
/// The pieces of one call never overlap; each row is in exactly one.
pub type RowsThen<'a> = dyn Fn(usize, usize, &mut [f32]) + Sync + 'a;

/// [`matmul_rows_many`], then `then` on each finished piece of rows while it is in cache, in
/// the same parallel loop (a low-rank update beside the weight costs no second meeting of the
/// threads). What `then` writes is in the result.
pub fn matmul_rows_many_then(
    out: &mut [f32],
    ws: &[&Weight],
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
    then: &RowsThen<'_>,
) -> Result<()> {
    rows_many_checked(crate::kernels(), out, ws, x, m, opts, Some(then))
}

fn rows_many_checked(
    k: &Kernels,
    out: &mut [f32],
    ws: &[&Weight],
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
    then: Option<&RowsThen<'_>>,
) -> Result<()> {
    check_joint_out(out, ws, m)?;
    let (mut from, mut work) = (0, 0usize);
    for w in ws {
        let len = m * w.rows();
        check_shapes(w, &mut out[from..from + len], x, m)?;
        work = work.saturating_add(len.saturating_mul(w.cols()));
        from += len;
    }
    // No tokens, no columns (`check_shapes` has zeroed the outputs) or no rows: nothing to do. A
    // weight without rows among others is an empty stretch of the joint loop.
    if work > 0 {
        crate::decode::rows_many(k, out, ws, x, m, opts, work >= PARALLEL_MIN_WORK, then);
    }
    Ok(())
}

/// Checks the shapes of a product; `None` when there is nothing to compute (`out` is then
/// final), else whether the work is worth spreading over threads.
fn check_shapes(w: &Weight, out: &mut [f32], x: &[f32], m: usize) -> Result<Option<bool>> {
    w.validate()?;
    let (rows, cols) = (w.rows(), w.cols());
    let check = |what, expected: Option<usize>, got| match expected {
        Some(e) if e == got => Ok(()),
        _ => Err(KernelError::ShapeMismatch { op: "matmul", what, expected: expected.unwrap_or(usize::MAX), got }),
    };
    check("x", m.checked_mul(cols), x.len())?;
    check("out", m.checked_mul(rows), out.len())?;
    if m == 0 || rows == 0 {
        return Ok(None);
    }
    if cols == 0 {
        out.fill(0.0);
        return Ok(None);
    }
    Ok(Some(m.saturating_mul(rows).saturating_mul(cols) >= PARALLEL_MIN_WORK))
}

/// [`matmul`] with explicit kernels (tests and benches use this to run every ISA).
pub fn matmul_with(k: &Kernels, out: &mut [f32], w: &Weight, x: &[f32], m: usize, opts: &MatmulOptions) -> Result<()> {
    let Some(parallel) = check_shapes(w, out, x, m)? else { return Ok(()) };
    let (rows, cols) = (w.rows(), w.cols());
    if m == 1 {
        crate::decode::rows(k, out, w, x, 1, opts, parallel);
        return Ok(());
    }
    if let Weight::F32 { data, .. } = w {
        gemm_f32(k, out, data, x, m, rows, cols, parallel);
        return Ok(());
    }
    // Block int8 prefill of a few tokens runs decode's row kernels for each (the same numbers
    // as decode); from Q8_GEMM_MIN tokens on, dequantized tiles through f32 gemm are faster (the
    // integer route pays a convert and an FMA per 32 weights and token).
    // Block int5 runs as block int8 does, its rows unpacked by each task.
    if let Some(w8) = Int8Rows::of(w) {
        if m < Q8_GEMM_MIN {
            crate::decode::rows(k, out, w, x, m, opts, parallel);
            return Ok(());
        }
        if q8_panels(k, w8.rows(), w8.blocksize(), m) {
            q8_panel_matmul(k, out, &[w8], x, m, parallel);
            return Ok(());
        }
    }
    if let Weight::FourBit(w4) = w {
        if fourbit_tiles(k, w4, opts) {
            fourbit_q8_matmul(k, out, w4, x, m, parallel);
            return Ok(());
        }
    }
    let prefill = if parallel { Par::Team } else { Par::Serial };
    with_scratch(rows * m, |out_t| {
        match w {
            Weight::Int8(w8) => int8_rows(k, out_t, w8, x, m, opts, prefill),
            _ => tiled_dequant_gemm(out_t, w, x, m, prefill),
        }
        transpose_into(k, out, out_t, rows, m);
    });
    Ok(())
}

/// Largest product (rows × tokens) whose row-major result goes through the calling thread's
/// kept buffer: 4 MiB of f32, SmolLM2's gate and up over 680 tokens.
const SCRATCH_MAX: usize = 1 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on a buffer of `n` floats whose contents are unspecified (every product writes every
/// element; `products_write_every_output_element` checks it): the calling thread's kept buffer
/// up to [`SCRATCH_MAX`], a new one beyond. A fresh `vec![0; n]` per call cost LLM.int8's
/// two-thread prefill 5 % in zeroing, on one thread while the other waited.
pub(crate) fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    if n > SCRATCH_MAX {
        return f(&mut vec![0f32; n]);
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
            f(&mut buf[..n])
        }
        // A product inside a product on this thread (none does so today) gets its own buffer.
        Err(_) => f(&mut vec![0f32; n]),
    })
}

/// `out (m × rows)` from `out_t (rows × m)`, tokens in chunks on the team (a prompt's product
/// waited for this on one thread).
pub(crate) fn transpose_into(k: &Kernels, out: &mut [f32], out_t: &[f32], rows: usize, m: usize) {
    if rows == 0 {
        return;
    }
    // Up to 16 tokens a task, but at least one task per thread: a decode step's head over
    // 16 sequences (49152 × 16) was one task, on one thread while the others waited.
    let threads = rayon::current_num_threads().max(1);
    let tokens = m.div_ceil(threads).clamp(1, 16);
    crate::team::for_each_chunk_mut(
        out,
        tokens * rows,
        || (),
        |_, i, out| {
            let t0 = i * tokens;
            let nt = out.len() / rows;
            k.transpose(&out_t[t0..], m, out, rows, rows, nt);
        },
    );
}

/// How a loop over row chunks runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Par {
    /// On the calling thread.
    Serial,
    /// Over the spinning team of the pool's size ([`crate::team`]): decode, where calls are
    /// short and rayon's wake-ups took a tenth of each, and prefill, whose loops follow each
    /// other with short serial gaps (norms, rope) in which rayon's workers fell asleep, to be
    /// woken for the next loop (SmolLM2 prefill: 290 wake-ups a prompt, 1.84 of 2 cores busy).
    Team,
}

impl Par {
    /// `f(state, i)` for every task `i < n`: on the team, or in turn on the calling thread, each
    /// thread with a state from `init`.
    pub(crate) fn tasks<S>(
        self,
        n: usize,
        init: impl Fn() -> S + Sync + Send,
        f: impl Fn(&mut S, usize) + Sync + Send,
    ) {
        match self {
            Par::Team => crate::team::for_each_task(n, init, f),
            Par::Serial => {
                let mut state = init();
                (0..n).for_each(|i| f(&mut state, i));
            }
        }
    }
}

/// Runs `f(first_row, rows_chunk)` over `chunk`-row pieces of `out`, in parallel as asked.
pub(crate) fn for_row_chunks<S: Send>(
    out: &mut [f32],
    per_row: usize,
    chunk: usize,
    par: Par,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) {
    let step = chunk * per_row;
    match par {
        Par::Team => crate::team::for_each_chunk_mut(out, step, init, |s, i, c| f(s, i * chunk, c)),
        Par::Serial => {
            let mut s = init();
            out.chunks_mut(step).enumerate().for_each(|(i, c)| f(&mut s, i * chunk, c));
        }
    }
}

/// Whether every row of a 4-bit weight starts on a block boundary (and so on a byte boundary),
/// which the SIMD row kernels need. Mistral's and Llama's shapes always are.
pub(crate) fn rows_block_aligned(w: &FourBitRef) -> bool {
    w.cols.is_multiple_of(w.blocksize)
}

/// Activations of `m` tokens (plus zero padding) quantized to int8 in blocks, de-interleaved like
/// the codes, in flat token-major buffers ([`Kernels::quantize_q8`]); each token's codes start
/// on a cache line, and no buffer shares a line with anything a thread writes ([`Lined`]).
pub(crate) struct BlockQ8 {
    qe: Lined<i8>,
    qo: Lined<i8>,
    /// `|qe|`, `|qo|` where asked for (the eight-token AVX2 tile takes them), else empty.
    aqe: Lined<i8>,
    aqo: Lined<i8>,
    xs: Lined<f32>,
    sum: Lined<i32>,
    /// Sums of each half block where asked for (blocks of 64 activations against weights in
    /// blocks of 32 on the VNNI tiles, whose bias correction is per half), else empty.
    halves: Lined<i32>,
    half: usize,
    /// Bytes from one token's codes to the next: `half` rounded up to whole lines.
    stride: usize,
    nb: usize,
}

impl BlockQ8 {
    /// The first `m` tokens laid out for a matrix unit (blocks of 64 only).
    pub(crate) fn panel(&self, m: usize) -> Panel {
        Panel::new(&self.qe, &self.qo, self.stride, &self.xs, self.nb, m)
    }

    /// The first `tokens` (a multiple of eight, padding included) in groups of eight for the
    /// eight-token rows kernels (blocks of 64 only).
    pub(crate) fn pairs(&self, tokens: usize) -> TokenPairs {
        let ts = 0..tokens;
        let (qe, qo, xs): (Vec<_>, Vec<_>, Vec<_>) = (
            ts.clone().map(|t| self.qe(t)).collect(),
            ts.clone().map(|t| self.qo(t)).collect(),
            ts.map(|t| self.xs(t)).collect(),
        );
        TokenPairs::new(&qe, &qo, &xs, self.nb)
    }

    /// Quantizes `m` rows of `x` (`cols` wide) and pads with all-zero tokens up to `padded`,
    /// the tokens on the team's threads when `parallel`; with `abs`, the codes' absolute values
    /// too.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        k: &Kernels,
        x: &[f32],
        m: usize,
        cols: usize,
        blocksize: usize,
        padded: usize,
        parallel: bool,
        abs: bool,
    ) -> BlockQ8 {
        let (half, nb) = (cols.div_ceil(2), cols.div_ceil(blocksize));
        let stride = half.next_multiple_of(64);
        let abs_len = if abs { padded * stride } else { 0 };
        let mut q = BlockQ8 {
            qe: Lined::zeroed(padded * stride),
            qo: Lined::zeroed(padded * stride),
            aqe: Lined::zeroed(abs_len),
            aqo: Lined::zeroed(abs_len),
            xs: Lined::zeroed(padded * nb),
            sum: Lined::zeroed(padded * nb),
            halves: Lined::zeroed(0),
            half,
            stride,
            nb,
        };
        let quantize = |x: &[f32], qe: &mut [i8], qo: &mut [i8], xs: &mut [f32], sum: &mut [i32]| {
            k.quantize_q8(x, blocksize, &mut qe[..half], &mut qo[..half], xs, sum)
        };
        let absolute = |from: &[i8], to: &mut [i8]| {
            to.iter_mut().zip(from).for_each(|(a, &q)| *a = q.unsigned_abs() as i8);
        };
        let BlockQ8 { qe, qo, aqe, aqo, xs, sum, .. } = &mut q;
        let (qe, qo, xs, sum) = (&mut qe[..m * stride], &mut qo[..m * stride], &mut xs[..m * nb], &mut sum[..m * nb]);
        let x = &x[..m * cols];
        // A prompt's tokens in parallel (each token's quantization is its own, with its absolute
        // values in the same task), on the team like the product that follows: its workers
        // spin between a prompt's loops where rayon's fall asleep and must be woken for each.
        // Decode's few tokens on the caller's thread (a team thread already).
        if parallel {
            let (cqe, cqo, cxs, csum) = (Cells::new(qe), Cells::new(qo), Cells::new(xs), Cells::new(sum));
            let (caqe, caqo) = (Cells::new(&mut aqe[..]), Cells::new(&mut aqo[..]));
            crate::team::for_each_task(
                m,
                || (),
                |_, t| {
                    // SAFETY: task t alone touches token t's pieces of every buffer.
                    let (qe, qo, xs, sum) = unsafe {
                        (
                            cqe.piece(t * stride, stride),
                            cqo.piece(t * stride, stride),
                            cxs.piece(t * nb, nb),
                            csum.piece(t * nb, nb),
                        )
                    };
                    quantize(&x[t * cols..(t + 1) * cols], qe, qo, xs, sum);
                    if abs {
                        // SAFETY: as above.
                        let (aqe, aqo) = unsafe { (caqe.piece(t * stride, stride), caqo.piece(t * stride, stride)) };
                        absolute(qe, aqe);
                        absolute(qo, aqo);
                    }
                },
            );
        } else {
            qe.chunks_mut(stride)
                .zip(qo.chunks_mut(stride))
                .zip(xs.chunks_mut(nb).zip(sum.chunks_mut(nb)))
                .zip(x.chunks(cols))
                .for_each(|(((qe, qo), (xs, sum)), x)| quantize(x, qe, qo, xs, sum));
            if abs {
                absolute(qe, &mut aqe[..m * stride]);
                absolute(qo, &mut aqo[..m * stride]);
            }
        }
        q
    }

    pub(crate) fn qe(&self, t: usize) -> &[i8] {
        &self.qe[t * self.stride..t * self.stride + self.half]
    }
    pub(crate) fn qo(&self, t: usize) -> &[i8] {
        &self.qo[t * self.stride..t * self.stride + self.half]
    }
    pub(crate) fn xs(&self, t: usize) -> &[f32] {
        &self.xs[t * self.nb..(t + 1) * self.nb]
    }
    pub(crate) fn sum(&self, t: usize) -> &[i32] {
        &self.sum[t * self.nb..(t + 1) * self.nb]
    }

    /// Fills [`BlockQ8::halves`]: per token, the sum of each 32 activations (16 bytes of `qe`
    /// and of `qo`), for every padded token.
    pub(crate) fn with_halves(mut self) -> BlockQ8 {
        let (tokens, per) = (self.qe.len() / self.stride, self.half / 16);
        let mut halves = Lined::<i32>::zeroed(tokens * per);
        for (t, h) in halves.chunks_mut(per.max(1)).enumerate().take(tokens) {
            let (e, o) = (&self.qe[t * self.stride..], &self.qo[t * self.stride..]);
            for (j, s) in h.iter_mut().enumerate() {
                *s = (16 * j..16 * j + 16).map(|i| e[i] as i32 + o[i] as i32).sum();
            }
        }
        self.halves = halves;
        self
    }

    /// Token `t`'s half-block sums ([`BlockQ8::with_halves`]).
    pub(crate) fn halves(&self, t: usize) -> &[i32] {
        let per = self.half / 16;
        &self.halves[t * per..(t + 1) * per]
    }
}

/// Most weight rows a prefill task takes (a multiple of the 4-row tile): 64 rows of 4096
/// weights are 128 KiB of codes.
const CHUNK_MAX: usize = 64;

/// Tokens per call of the tile run ([`Kernels::fourbit_q8_tile_run`]): SmolLM2's prefill at one
/// thread (AVX-512, Zen 5) 931–940 tok/s with tiles, 1062–1081 with runs of 16, 1106–1124 of
/// 32, 1139–1146 of 64.
const RUN_GROUP: usize = 64;

/// The row chunks of a prompt product over several weights, run as one parallel loop: per
/// weight, chunks of at most [`CHUNK_MAX`] rows in multiples of the kernel's row tile, at least
/// four per thread, and as many as a multiple of the thread count where the rows allow, so no
/// thread is left with one chunk more than the others (576 rows in 64-row chunks were 9 tasks
/// for 2 threads). Tasks run through the weights' chunks in order; results are token-major per
/// weight, one weight's after the other's.
struct RowPlan {
    /// Per weight: its rows, first output cell, chunk and first task.
    parts: Vec<(usize, usize, usize, usize)>,
    tasks: usize,
    max_chunk: usize,
}

impl RowPlan {
    fn new(rows: impl Iterator<Item = usize>, m: usize, tile: usize) -> RowPlan {
        let threads = rayon::current_num_threads().max(1);
        let (mut parts, mut cell, mut tasks) = (Vec::new(), 0, 0);
        for rows in rows {
            let want = rows.div_ceil(64).max(4 * threads).next_multiple_of(threads);
            let chunk = rows.div_ceil(want).next_multiple_of(tile).clamp(tile, CHUNK_MAX);
            parts.push((rows, cell, chunk, tasks));
            cell += m * rows;
            tasks += rows.div_ceil(chunk);
        }
        let max_chunk = parts.iter().map(|p| p.2).max().unwrap_or(tile);
        RowPlan { parts, tasks, max_chunk }
    }

    /// Task `task`'s weight, that weight's first output cell, and its rows `r0 .. r0 + n`.
    fn task(&self, task: usize) -> (usize, usize, usize, usize) {
        let wi = self.parts.iter().rposition(|p| p.3 <= task).expect("task 0 is the first weight's");
        let (rows, base, chunk, first) = self.parts[wi];
        let r0 = (task - first) * chunk;
        (wi, base, r0, (rows - r0).min(chunk))
    }

    /// Every task, on the team when `parallel`, each thread with buffers from `init`.
    fn run<S>(&self, parallel: bool, init: impl Fn() -> S + Sync + Send, work: impl Fn(&mut S, usize) + Sync + Send) {
        let par = if parallel { Par::Team } else { Par::Serial };
        par.tasks(self.tasks, init, work);
    }
}

/// Whether a prompt of `m` tokens through block int8 `w` goes to the level's matrix unit: from
/// [`Q8_GEMM_MIN`] tokens (below, decode's row kernels), rows in sixteens.
fn q8_panels(k: &Kernels, rows: usize, blocksize: usize, m: usize) -> bool {
    m >= Q8_GEMM_MIN && k.has_q8_panel() && rows.is_multiple_of(16) && matches!(blocksize, 32 | 64)
}

/// A weight the block int8 kernels take: block int8 itself, or block int5 (each task unpacks
/// its rows to block int8 first, the same integers and scales).
#[derive(Clone, Copy)]
enum Int8Rows<'a, 'b> {
    Q8(&'b Q8Ref<'a>),
    Q5(&'b Q5Ref<'a>),
}

impl<'a, 'b> Int8Rows<'a, 'b> {
    fn of(w: &'b Weight<'a>) -> Option<Self> {
        match w {
            Weight::Q8(w8) => Some(Int8Rows::Q8(w8)),
            Weight::Q5(w5) => Some(Int8Rows::Q5(w5)),
            _ => None,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Int8Rows::Q8(w) => w.rows,
            Int8Rows::Q5(w) => w.rows,
        }
    }

    fn cols(&self) -> usize {
        match self {
            Int8Rows::Q8(w) => w.cols,
            Int8Rows::Q5(w) => w.cols,
        }
    }

    fn blocksize(&self) -> usize {
        match self {
            Int8Rows::Q8(w) => w.blocksize,
            Int8Rows::Q5(_) => crate::q5::BLOCK,
        }
    }

    /// Rows `r0 .. r0 + n` as block int8 (`buf` holds int5's unpacked integers).
    fn rows_q8<'c>(&'c self, k: &Kernels, r0: usize, n: usize, buf: &'c mut Vec<i8>) -> (&'c [i8], &'c [half::f16]) {
        match self {
            Int8Rows::Q8(w) => {
                let nb = w.cols / w.blocksize;
                (&w.qs[r0 * w.cols..(r0 + n) * w.cols], &w.scales[r0 * nb..(r0 + n) * nb])
            }
            Int8Rows::Q5(w) => {
                let v = w.as_q8(k, r0, n, buf);
                (v.qs, v.scales)
            }
        }
    }
}

/// Prefill of block int8 weights (all of one width and block size) on a matrix unit: every
/// token's activations quantized per block as decode quantizes them, laid out once as a
/// [`Panel`], then each chunk of 16-row tiles against every token ([`Kernels::q8_panel`]).
fn q8_panel_matmul(k: &Kernels, out: &mut [f32], ws: &[Int8Rows], x: &[f32], m: usize, parallel: bool) {
    let (cols, bs) = (ws[0].cols(), ws[0].blocksize());
    assert!(ws.iter().all(|w| w.cols() == cols && w.blocksize() == bs));
    assert_eq!(out.len(), ws.iter().map(|w| m * w.rows()).sum::<usize>());
    let nb = cols / bs;
    let mut q = Lined::<i8>::zeroed(m * cols);
    let mut d = Lined::<f32>::zeroed(m * nb);
    // A prompt's tokens on the team, as `BlockQ8::new` quantizes them.
    crate::team::for_each_row_pair(&mut q, cols, &mut d, nb, parallel, |t, q, d| {
        k.quantize_q8_plain(&x[t * cols..(t + 1) * cols], bs, q, d)
    });
    let panel = &Panel::q8(&q, cols, &d, bs, nb, m);
    let plan = &RowPlan::new(ws.iter().map(|w| w.rows()), m, 16);
    let cells = Cells::new(out);
    let init = || (vec![0f32; 16 * nb], vec![0f32; panel.groups() * PANEL_TOKENS * plan.max_chunk], Vec::new());
    plan.run(parallel, init, |(scratch, outs, unpacked): &mut (Vec<f32>, Vec<f32>, Vec<i8>), task| {
        let (wi, base, r0, n) = plan.task(task);
        let w = ws[wi];
        let (qs, scales) = w.rows_q8(k, r0, n, unpacked);
        let done = k.q8_panel(qs, scales, panel, n, scratch, outs, false);
        assert!(done, "checked with has_q8_panel");
        for t in 0..m {
            // SAFETY: this task alone writes rows r0 .. r0 + n of every token of this weight.
            let run = unsafe { cells.piece(base + t * w.rows() + r0, n) };
            run.copy_from_slice(&outs[t * n..(t + 1) * n]);
        }
    });
}

/// A prompt's gated MLP input: `out (m × rows)` = silu(`gate · x`) ⊙ (`up · x`), where both
/// products take the same 4-bit route, the matrix unit's panels, the tile runs or AVX2's
/// eight-token rows kernel ([`gated_route`]). A task multiplies its rows of both weights and writes only their
/// gated product: the two products written whole and a separate silu·mul pass over them wrote
/// and read three times the floats. Each product has the bits [`matmul_many`] gives it (the
/// same activations, kernels and rows) and the gating [`Kernels::silu_mul`]'s.
pub(crate) fn fourbit_gated(
    k: &Kernels,
    out: &mut [f32],
    gate: &FourBitRef,
    up: &FourBitRef,
    x: &[f32],
    m: usize,
    parallel: bool,
) {
    let (rows, cols) = (gate.rows, gate.cols);
    assert!(up.rows == rows && up.cols == cols && gate.blocksize == 64 && up.blocksize == 64);
    assert_eq!(out.len(), m * rows);
    let (nb, half) = (cols / 64, cols / 2);
    let Some(route) = gated_route(k, gate) else { panic!("checked by gated_pairs") };
    let amx = route == Gated::Panels;
    // The activations as `fourbit_q8_matmul_many` quantizes them for the same route.
    let tt_step = match route {
        Gated::RowsT8 => 8,
        Gated::Panels if k.has_fourbit_q8_tile8(false) => 8,
        _ => 4,
    };
    let padded = m.next_multiple_of(tt_step);
    let q = BlockQ8::new(k, x, m, cols, 64, padded, parallel, amx && tt_step == 8);
    let q = &q;
    let panel = amx.then(|| q.panel(m));
    let panel = panel.as_ref();
    let pairs = (route == Gated::RowsT8).then(|| q.pairs(m.next_multiple_of(GROUP)));
    let pairs = pairs.as_ref();
    let plan = &RowPlan::new(std::iter::once(rows), m, if amx { 16 } else { 4 });
    let max_chunk = plan.max_chunk;
    let cells = Cells::new(out);
    // Rows r0 .. r0 + n of tokens t0 .. t0 + tokens from the two products (token-major, n a
    // token) gated into place.
    let put = |og: &[f32], ou: &[f32], r0: usize, n: usize, t0: usize, tokens: usize| {
        for t in 0..tokens {
            // SAFETY: this task alone writes rows r0 .. r0 + n of every token.
            let run = unsafe { cells.piece((t0 + t) * rows + r0, n) };
            run.copy_from_slice(&og[t * n..(t + 1) * n]);
            k.silu_mul(run, &ou[t * n..(t + 1) * n]);
        }
    };
    let work = |(wf, scratch, og, ou): &mut (Lined<f32>, Vec<i8>, Vec<f32>, Vec<f32>), task: usize| {
        let (_, _, r0, n) = plan.task(task);
        let factors = |w: &FourBitRef, wf: &mut [f32]| {
            for (i, f) in wf.chunks_mut(nb).take(n).enumerate() {
                w.absmax.decode((r0 + i) * nb, f);
            }
        };
        if let Some(panel) = panel {
            for (w, o) in [(gate, &mut *og), (up, &mut *ou)] {
                factors(w, &mut wf[..]);
                let codes = &w.codes[r0 * half..(r0 + n) * half];
                let done = k.fourbit_q8_panel(codes, &wf[..n * nb], &w.kind.int8_levels(), panel, n, scratch, o, false);
                assert!(done, "checked by gated_route");
            }
            put(og, ou, r0, n, 0, m);
            return;
        }
        // Both weights' factors for the task's rows, side by side.
        let (wg, wu) = wf.split_at_mut(max_chunk * nb);
        factors(gate, wg);
        factors(up, wu);
        let Some(pairs) = pairs else {
            // Tile runs: each group of tokens against every four rows of the task, as
            // `fourbit_q8_matmul_many` runs them, for gate and then up.
            for t0 in (0..m).step_by(RUN_GROUP) {
                let run = (t0 + RUN_GROUP).min(padded) - t0;
                for (w, f, o) in [(gate, &*wg, &mut *og), (up, &*wu, &mut *ou)] {
                    let lut = w.kind.int8_levels();
                    for rt in (0..n).step_by(4) {
                        let nr = (n - rt).min(4);
                        // Missing rows of the last tile repeat its last row (results dropped).
                        let row = |i: usize| rt + i.min(nr - 1);
                        let codes = std::array::from_fn(|i| &w.codes[(r0 + row(i)) * half..(r0 + row(i) + 1) * half]);
                        let wfs = std::array::from_fn(|i| &f[row(i) * nb..(row(i) + 1) * nb]);
                        let mut vals = [0f32; 4 * RUN_GROUP];
                        let (qe, qo) = (&q.qe[t0 * q.stride..], &q.qo[t0 * q.stride..]);
                        let (xs, sums) = (&q.xs[t0 * q.nb..], &q.sum[t0 * q.nb..]);
                        let ran = k.fourbit_q8_tile_run(
                            codes,
                            wfs,
                            &lut,
                            qe,
                            qo,
                            q.stride,
                            xs,
                            sums,
                            run,
                            &mut vals[..4 * run],
                            false,
                        );
                        assert!(ran.is_some(), "checked by gated_route");
                        for t in 0..run.min(m - t0) {
                            o[t * n + rt..t * n + rt + nr].copy_from_slice(&vals[4 * t..4 * t + nr]);
                        }
                    }
                }
                put(og, ou, r0, n, t0, run.min(m - t0));
            }
            return;
        };
        for g in 0..pairs.groups() {
            for (w, f, o) in [(gate, &*wg, &mut *og), (up, &*wu, &mut *ou)] {
                let codes = &w.codes[r0 * half..(r0 + n) * half];
                // Token-major, n cells a token.
                let grid = Grid::new(o, n, 1, n);
                let done = k.dot_fourbit_q8_rows_t8(codes, &f[..n * nb], &w.kind.int8_levels(), pairs.group(g), grid);
                assert!(done, "checked by gated_route");
            }
            put(og, ou, r0, n, g * GROUP, m.saturating_sub(g * GROUP).min(GROUP));
        }
    };
    let init = || {
        let tokens = match route {
            Gated::Panels => panel.map_or(0, |p| p.groups() * PANEL_TOKENS),
            Gated::RowsT8 => GROUP,
            Gated::Runs => RUN_GROUP,
        };
        let len = tokens * max_chunk;
        let factors = if amx { max_chunk * nb } else { 2 * max_chunk * nb };
        let scratch = if amx { vec![0i8; Kernels::panel_scratch(nb)] } else { Vec::new() };
        (Lined::<f32>::zeroed(factors), scratch, vec![0f32; len], vec![0f32; len])
    };
    plan.run(parallel, init, work);
}

/// The 4-bit routes [`fourbit_gated`] pairs a task's rows of gate and up on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gated {
    /// The matrix unit's panels.
    Panels,
    /// AVX2's eight-token rows kernel.
    RowsT8,
    /// The tile runs of four rows against a group of tokens (AVX-512, AVX-VNNI).
    Runs,
}

/// The route a prompt's product with `w` (4-bit, blocks of 64) takes in
/// `fourbit_q8_matmul_many` where [`fourbit_gated`] can pair it, if any.
fn gated_route(k: &Kernels, w: &FourBitRef) -> Option<Gated> {
    if w.blocksize != 64 {
        return None;
    }
    if k.has_fourbit_q8_panel() {
        return w.rows.is_multiple_of(16).then_some(Gated::Panels);
    }
    let steps = w.cols / 64;
    if k.has_fourbit_q8_tile_run(steps, false) {
        return Some(Gated::Runs);
    }
    (k.has_rows_t8() && k.x4_for(w.cols)).then_some(Gated::RowsT8)
}

/// Whether a prompt of `m` tokens through `gate` and `up` takes [`fourbit_gated`]: both 4-bit
/// in blocks of 64 on the integer tiles, of one shape, on a route it pairs — where
/// [`matmul_many`] would send both to that route.
pub(crate) fn gated_pairs(k: &Kernels, gate: &Weight, up: &Weight, m: usize, opts: &MatmulOptions) -> bool {
    let (Weight::FourBit(g), Weight::FourBit(u)) = (gate, up) else { return false };
    m > 1
        && g.rows > 0
        && g.cols > 0
        && [g, u].iter().all(|w| fourbit_tiles(k, w, opts))
        && gated_route(k, g).is_some()
        && gated_route(k, u) == gated_route(k, g)
        && g.rows == u.rows
        && g.cols == u.cols
}

/// Prefill through the 4-bit integer route: every token's activations quantized per block of
/// 64 as in decode, then 4 × 4 tiles of rows × tokens ([`Kernels::fourbit_q8_tile`]).
fn fourbit_q8_matmul(k: &Kernels, out: &mut [f32], w: &FourBitRef, x: &[f32], m: usize, parallel: bool) {
    fourbit_q8_matmul_many(k, out, &[w], x, m, parallel)
}

/// [`fourbit_q8_matmul`] of several weights over the same `x`, their results one after the
/// other in `out`: the activations are quantized once and one parallel loop runs the row chunks
/// of all of them (q, k and v of a small model are 576, 192 and 192 rows: alone, each call's
/// last chunk left a thread waiting). Each weight's results are what its own call gives.
fn fourbit_q8_matmul_many(k: &Kernels, out: &mut [f32], ws: &[&FourBitRef], x: &[f32], m: usize, parallel: bool) {
    let (cols, bs) = (ws[0].cols, ws[0].blocksize);
    assert!(ws.iter().all(|w| w.cols == cols && w.blocksize == bs));
    // Weights in blocks of 32 come two to each 32-byte step of the tiles, each half of a step
    // with its own row factor; the activations stay in blocks of 64 (one factor and sum per
    // step, shared by the rows, as for blocks of 64).
    let split = bs == 32;
    // Block entries per row and token, and steps of 64 weights.
    let (nb, steps) = (cols / bs, cols / 64);
    let half = cols / 2;
    // Where the level has decode's eight-token rows kernel but not the tile run (AVX2), the
    // tokens go through it in groups of eight prepared pairs: a (row, token) then has the bits
    // decode gives it, and the kernel reads every token from one prepared buffer. (Through the
    // eight-token tile, whose 40 operand pointers spill, SmolLM2's prefill at AVX2 ran 5 %
    // slower at one thread.)
    // A matrix unit (AMX) takes every token against sixteen rows at a time where the rows come
    // in sixteens. Weights of both kinds in one call go one by one, so each keeps the bits of
    // its own call.
    let on_panel = |w: &FourBitRef| !split && k.has_fourbit_q8_panel() && w.rows.is_multiple_of(16);
    if ws.iter().any(|w| on_panel(w)) && !ws.iter().all(|w| on_panel(w)) {
        let mut from = 0;
        for w in ws {
            let len = m * w.rows;
            fourbit_q8_matmul_many(k, &mut out[from..from + len], &[w], x, m, parallel);
            from += len;
        }
        return;
    }
    let amx = ws.iter().all(|w| on_panel(w));
    let rows_t8 = !amx && !split && k.has_rows_t8() && k.x4_for(cols) && !k.has_fourbit_q8_tile_run(steps, split);
    // Tokens a tile takes: eight where the level has that tile (or the rows kernel), four
    // otherwise.
    let tt_step = if rows_t8 || k.has_fourbit_q8_tile8(split) { 8 } else { 4 };
    // Tokens of the last tile past m are all-zero (their results are dropped).
    let padded = m.next_multiple_of(tt_step);
    // The eight-token tile takes the activations' absolute values too.
    let q = BlockQ8::new(k, x, m, cols, 64, padded, parallel, tt_step == 8 && !rows_t8);
    // The VNNI tiles correct their bias per half of a step when the halves' factors differ.
    let q = if split && tt_step != 8 { q.with_halves() } else { q };
    let q = &q;
    let pairs = rows_t8.then(|| q.pairs(padded));
    let pairs = pairs.as_ref();
    let panel = amx.then(|| q.panel(m));
    let panel = panel.as_ref();
    // A token's bias sums as the tiles take them: per block of 64, or per half with `split`.
    let sums = |t: usize| if split { q.halves(t) } else { q.sum(t) };
    let sums_from = |t: usize| if split { &q.halves[t * nb..] } else { &q.sum[t * q.nb..] };
    let (aqe, aqo) = (&q.aqe, &q.aqo);
    fn token<'a>(a: &'a Lined<i8>, q: &BlockQ8, t: usize) -> &'a [i8] {
        &a[t * q.stride..t * q.stride + q.half]
    }
    assert_eq!(out.len(), ws.iter().map(|w| m * w.rows).sum::<usize>());
    let plan = RowPlan::new(ws.iter().map(|w| w.rows), m, if amx { 16 } else { 4 });
    let plan = &plan;
    let max_chunk = plan.max_chunk;
    let cells = Cells::new(out);
    let group = if k.has_fourbit_q8_tile_run(steps, split) { RUN_GROUP } else { 16 };
    let work = |(wf, scratch, outs): &mut (Lined<f32>, Vec<i8>, Vec<f32>), task: usize| {
        let (wi, base, r0, n) = plan.task(task);
        let (w, rows) = (ws[wi], ws[wi].rows);
        let lut = w.kind.int8_levels();
        let lut = &lut;
        // This weight's results: cells base .. base + m · rows, token-major.
        let set = |i: usize, v: f32| {
            // SAFETY: this task alone writes rows r0 .. r0 + n of every token of this weight.
            unsafe { cells.set(base + i, v) }
        };
        // Cells i .. i + len: a token's run of this task's rows.
        let run_of = |i: usize, len: usize| {
            // SAFETY: as `set`, for rows of this task only.
            unsafe { cells.piece(base + i, len) }
        };
        for (i, f) in wf.chunks_mut(nb).take(n).enumerate() {
            w.absmax.decode((r0 + i) * nb, f);
        }
        if let Some(panel) = panel {
            let codes = &w.codes[r0 * half..(r0 + n) * half];
            let done = k.fourbit_q8_panel(codes, &wf[..n * nb], lut, panel, n, scratch, outs, false);
            assert!(done, "checked with has_fourbit_q8_panel");
            for t in 0..m {
                run_of(t * rows + r0, n).copy_from_slice(&outs[t * n..(t + 1) * n]);
            }
            return;
        }
        if let Some(pairs) = pairs {
            let codes = &w.codes[r0 * half..(r0 + n) * half];
            // Token-major, CHUNK_MAX cells a token.
            let mut outs = [0f32; CHUNK_MAX * GROUP];
            for g in 0..pairs.groups() {
                let out = Grid::new(&mut outs, n, 1, CHUNK_MAX);
                let done = k.dot_fourbit_q8_rows_t8(codes, &wf[..n * nb], lut, pairs.group(g), out);
                assert!(done, "checked with has_rows_t8");
                for (j, o) in outs.chunks(CHUNK_MAX).enumerate().take(m.saturating_sub(g * GROUP).min(GROUP)) {
                    run_of((g * GROUP + j) * rows + r0, n).copy_from_slice(&o[..n]);
                }
            }
            return;
        }
        // Tokens in groups (16: 64 KiB of activations at 4096 columns, L2-resident; 64 where
        // runs look the rows up once per group: the lookups spread over more tokens) over all
        // row tiles of the chunk (≤ 128 KiB of codes).
        for t0 in (0..m).step_by(group) {
            for rt in (0..n).step_by(4) {
                let nr = (n - rt).min(4);
                // Missing rows of the last tile repeat its last row (results dropped).
                let row = |i: usize| rt + i.min(nr - 1);
                let codes: [&[u8]; 4] =
                    std::array::from_fn(|i| &w.codes[(r0 + row(i)) * half..(r0 + row(i) + 1) * half]);
                let wfs: [&[f32]; 4] = std::array::from_fn(|i| &wf[row(i) * nb..(row(i) + 1) * nb]);
                if tt_step == 8 {
                    for tt in (t0..(t0 + group).min(m)).step_by(8) {
                        let tile = k
                            .fourbit_q8_tile8(
                                codes,
                                wfs,
                                lut,
                                std::array::from_fn(|j| q.qe(tt + j)),
                                std::array::from_fn(|j| q.qo(tt + j)),
                                std::array::from_fn(|j| token(aqe, q, tt + j)),
                                std::array::from_fn(|j| token(aqo, q, tt + j)),
                                std::array::from_fn(|j| q.xs(tt + j)),
                                split,
                            )
                            .expect("checked above");
                        for (i, tr) in tile.iter().enumerate().take(nr) {
                            for (j, &v) in tr.iter().enumerate().take((m - tt).min(8)) {
                                set((tt + j) * rows + r0 + rt + i, v);
                            }
                        }
                    }
                    continue;
                }
                // The run of up to `group` tokens in one call where the level has it.
                let run = (t0 + group).min(padded) - t0;
                let mut vals = [0f32; 4 * RUN_GROUP];
                let ran = k.fourbit_q8_tile_run(
                    codes,
                    wfs,
                    lut,
                    &q.qe[t0 * q.stride..],
                    &q.qo[t0 * q.stride..],
                    q.stride,
                    &q.xs[t0 * q.nb..],
                    sums_from(t0),
                    run,
                    &mut vals[..4 * run],
                    split,
                );
                if ran.is_some() {
                    for t in 0..run.min(m - t0) {
                        run_of((t0 + t) * rows + r0 + rt, nr).copy_from_slice(&vals[4 * t..4 * t + nr]);
                    }
                    continue;
                }
                for tt in (t0..(t0 + group).min(m)).step_by(4) {
                    let tile = k
                        .fourbit_q8_tile(
                            codes,
                            wfs,
                            lut,
                            std::array::from_fn(|j| q.qe(tt + j)),
                            std::array::from_fn(|j| q.qo(tt + j)),
                            std::array::from_fn(|j| q.xs(tt + j)),
                            std::array::from_fn(|j| sums(tt + j)),
                            split,
                        )
                        .expect("checked by the caller");
                    for (i, tr) in tile.iter().enumerate().take(nr) {
                        for (j, &v) in tr.iter().enumerate().take((m - tt).min(4)) {
                            set((tt + j) * rows + r0 + rt + i, v);
                        }
                    }
                }
            }
        }
    };
    let init = || match panel {
        Some(p) => (
            Lined::<f32>::zeroed(max_chunk * nb),
            vec![0i8; Kernels::panel_scratch(nb)],
            vec![0f32; p.groups() * PANEL_TOKENS * max_chunk],
        ),
        None => (Lined::<f32>::zeroed(max_chunk * nb), Vec::new(), Vec::new()),
    };
    plan.run(parallel, init, work);
}

/// A buffer shared by tasks that each write a disjoint set of its cells (a product's own
/// weight rows for every token; a prompt's own token), so results land in place without a
/// transpose or a per-task buffer.
pub(crate) struct Cells<T> {
    ptr: *mut T,
    len: usize,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Cells<T> {}

// SAFETY: `Cells` is only a pointer to a live `&mut [T]` borrowed for the whole parallel region;
// tasks touch disjoint cells (see `set`, `piece`), so sharing it between threads is sound.
unsafe impl<T: Send> Send for Cells<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Cells<T> {}

impl<T> Cells<T> {
    pub(crate) fn new(data: &mut [T]) -> Cells<T> {
        Cells { ptr: data.as_mut_ptr(), len: data.len() }
    }

    /// Writes cell `i`.
    ///
    /// # Safety
    /// No other task may access cell `i` during the parallel region.
    #[inline]
    pub(crate) unsafe fn set(self, i: usize, v: T) {
        assert!(i < self.len);
        // SAFETY: in bounds (checked), and exclusively this task's cell (caller's contract).
        unsafe { *self.ptr.add(i) = v }
    }

    /// Cells `start .. start + n` as a slice.
    ///
    /// # Safety
    /// No other task may access these cells while the slice lives.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn piece<'a>(self, start: usize, n: usize) -> &'a mut [T] {
        assert!(start <= self.len && n <= self.len - start);
        // SAFETY: in bounds (checked), and exclusively this task's cells (caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
}

pub(crate) fn block_factors(k: &Kernels, absmax: &AbsmaxRef, first: usize, xs: &[f32], out: &mut [f32]) {
    match *absmax {
        AbsmaxRef::F32(v) => {
            for ((o, &a), &s) in out.iter_mut().zip(&v[first..first + xs.len()]).zip(xs) {
                *o = a * s;
            }
        }
        AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize, offset } => {
            let map = crate::codebook::dynamic_map();
            // One run per nested block the row touches (one or two for Mistral's shapes).
            for (run, group) in nested_runs(first, out.len(), nested_blocksize) {
                let c = &codes[first + run.start..first + run.end];
                k.nested_factors(c, map, nested_absmax[group], offset, &xs[run.clone()], &mut out[run]);
            }
        }
    }
}

/// int8 rows: `out_t[r·m + t] = i32(CA[t]·CB[r]) · SCA[t]·SCB[r] · c + Σ_outlier-cols x[t][c]·W̃[r][c]`.
fn int8_rows(k: &Kernels, out_t: &mut [f32], w: &Int8Ref, x: &[f32], m: usize, opts: &MatmulOptions, par: Par) {
    let cols = w.cols;
    let mut act = Int8Activations::default();
    quantize_activations(x, m, cols, opts.int8_threshold, &mut act);
    let act = &act;
    let ca = |t: usize| &act.ca[t * cols..(t + 1) * cols];
    let cb = |r: usize| &w.cb[r * cols..(r + 1) * cols];
    // Integer sum → float with bitsandbytes' scaling; the outlier columns are added afterwards.
    let finish = |r: usize, t: usize, isum: i32| isum as f32 * (act.sca[t] * w.scb[r]) * MM_DEQUANT_SCALE;
    // The outlier columns of x, column-major (k × m), so each (row, column) pair adds one
    // contiguous run over the tokens.
    let outliers = &act.outlier_cols;
    let xo: Vec<f32> = outliers.iter().flat_map(|&c| (0..m).map(move |t| x[t * cols + c])).collect();
    let xo = &xo;
    // The outlier columns in floating point, against the dequantized weights, in column order
    // (the same additions in the same order as one column at a time per output), onto a task's
    // rows from `r0` (`o`: a row's m tokens together).
    let add_outliers = |r0: usize, o: &mut [f32]| {
        for (i, orow) in o.chunks_mut(m).enumerate() {
            let rr = r0 + i;
            let s = w.scb[rr] * INV_127;
            for (j, &c) in outliers.iter().enumerate() {
                let wv = w.cb[rr * cols + c] as f32 * s;
                for (y, &xv) in orow.iter_mut().zip(&xo[j * m..(j + 1) * m]) {
                    *y += xv * wv;
                }
            }
        }
    };
    // On a matrix unit the rows' exact sums come from its tiles, sixteen rows against sixteen
    // tokens at a time: the same integers as the vector tiles below, so the same results.
    if m >= INT8_PANEL_MIN && k.has_int8_panel() && cols.is_multiple_of(64) && w.rows.is_multiple_of(16) {
        let panel = &Panel::int8(&act.ca, cols, m);
        let tokens = PANEL_TOKENS * panel.groups();
        for_row_chunks(out_t, m, DECODE_ROWS_PER_TASK, par, Vec::new, |sums: &mut Vec<i32>, r0, o| {
            let n = o.len() / m;
            sums.resize(n * tokens, 0);
            let done = k.int8_panel(&w.cb[r0 * cols..(r0 + n) * cols], panel, n, sums);
            assert!(done, "checked with has_int8_panel");
            for (i, (orow, srow)) in o.chunks_mut(m).zip(sums.chunks(tokens)).enumerate() {
                for (t, (y, &isum)) in orow.iter_mut().zip(srow).enumerate() {
                    *y = finish(r0 + i, t, isum);
                }
            }
            add_outliers(r0, o);
        });
        return;
    }
    for_row_chunks(
        out_t,
        m,
        DECODE_ROWS_PER_TASK,
        par,
        || (),
        |_, r0, o| {
            let n = o.len() / m;
            let mut r = 0;
            // 4 × 4 tiles: each weight and activation vector loaded once feeds four products.
            while r + 4 <= n {
                let wr = [cb(r0 + r), cb(r0 + r + 1), cb(r0 + r + 2), cb(r0 + r + 3)];
                let mut t = 0;
                while t + 4 <= m {
                    let tile = k.dot_int8_4x4([ca(t), ca(t + 1), ca(t + 2), ca(t + 3)], wr);
                    for (i, row) in tile.iter().enumerate() {
                        for (j, &isum) in row.iter().enumerate() {
                            o[(r + i) * m + t + j] = finish(r0 + r + i, t + j, isum);
                        }
                    }
                    t += 4;
                }
                for t in t..m {
                    for i in 0..4 {
                        o[(r + i) * m + t] = finish(r0 + r + i, t, k.dot_int8(ca(t), wr[i]));
                    }
                }
                r += 4;
            }
            for r in r..n {
                for t in 0..m {
                    o[r * m + t] = finish(r0 + r, t, k.dot_int8(ca(t), cb(r0 + r)));
                }
            }
            add_outliers(r0, o);
        },
    );
}

/// Tokens from which LLM.int8 prompts go to a matrix unit where the level has one (its tiles
/// take sixteen tokens, padded).
const INT8_PANEL_MIN: usize = 16;

/// Tokens from which block int8 prefill goes through f32 gemm.
const Q8_GEMM_MIN: usize = 16;

/// Dequantizes rows `r0..r0+n` of `w` into `buf` (row-major, `n × cols`).
fn dequantize_rows(w: &Weight, r0: usize, n: usize, buf: &mut [f32]) {
    let cols = w.cols();
    match *w {
        Weight::FourBit(ref w4) if rows_block_aligned(w4) => {
            // Block by block: one scale lookup per block, two table lookups per byte.
            let levels = w4.kind.levels();
            let first = r0 * cols;
            for (b, chunk) in buf[..n * cols].chunks_mut(w4.blocksize).enumerate() {
                let gb = first / w4.blocksize + b;
                let s = w4.absmax.get(gb);
                let bytes = &w4.codes[gb * w4.blocksize / 2..(gb + 1) * w4.blocksize / 2];
                for (pair, &byte) in chunk.chunks_exact_mut(2).zip(bytes) {
                    pair[0] = levels[(byte >> 4) as usize] * s;
                    pair[1] = levels[(byte & 0x0F) as usize] * s;
                }
            }
        }
        Weight::Q5(ref w5) => {
            let mut ints = Vec::new();
            let w8 = w5.as_q8(crate::kernels(), r0, n, &mut ints);
            dequantize_rows(&Weight::Q8(w8), 0, n, buf);
        }
        Weight::Q8(ref w8) => {
            let (bs, nb) = (w8.blocksize, n * cols / w8.blocksize);
            let mut scales = vec![0f32; nb];
            w8.scales[r0 * cols / bs..r0 * cols / bs + nb].convert_to_f32_slice(&mut scales);
            let qs = &w8.qs[r0 * cols..(r0 + n) * cols];
            for ((o, q), &s) in buf[..n * cols].chunks_mut(bs).zip(qs.chunks(bs)).zip(&scales) {
                o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * s);
            }
        }
        // half's slice conversions use F16C when the CPU has it.
        Weight::F16 { data, .. } => data[r0 * cols..(r0 + n) * cols].convert_to_f32_slice(&mut buf[..n * cols]),
        Weight::Bf16 { data, .. } => data[r0 * cols..(r0 + n) * cols].convert_to_f32_slice(&mut buf[..n * cols]),
        _ => {
            for (i, row) in buf[..n * cols].chunks_mut(cols).enumerate() {
                w.dequantize_row(r0 + i, row);
            }
        }
    }
}

fn tiled_dequant_gemm(out_t: &mut [f32], w: &Weight, x: &[f32], m: usize, par: Par) {
    let cols = w.cols();
    let rows = w.rows();
    // At least two tiles per thread when there is enough work, so the team can balance.
    let per_thread = rows.div_ceil(2 * rayon::current_num_threads()).max(8);
    let tile = (PREFILL_TILE_ELEMS / cols).clamp(8, per_thread);
    for_row_chunks(
        out_t,
        m,
        tile,
        par,
        || vec![0f32; tile * cols],
        |buf, r0, o| {
            let n = o.len() / m;
            dequantize_rows(w, r0, n, buf);
            // o (n × m) = buf (n × cols) · xᵀ (cols × m)
            gemm_strided(
                o,
                (m as isize, 1),
                &buf[..n * cols],
                (cols as isize, 1),
                x,
                (1, cols as isize),
                n,
                m,
                cols,
                false,
            );
        },
    );
}

#[allow(clippy::too_many_arguments)]
fn gemm_f32(k: &Kernels, out: &mut [f32], w: &[f32], x: &[f32], m: usize, rows: usize, cols: usize, parallel: bool) {
    // Pieces of a fixed number of rows (outT, rows × m, so each piece is contiguous), on the
    // team or in turn, then transposed: the same pieces either way, so a prompt's results do
    // not depend on the thread count (gemm blocks a product by its shape).
    const ROWS: usize = 64;
    let mut out_t = vec![0f32; rows * m];
    let par = if parallel { Par::Team } else { Par::Serial };
    for_row_chunks(
        &mut out_t,
        m,
        ROWS,
        par,
        || (),
        |_, r0, o| {
            let n = o.len() / m;
            let wr = &w[r0 * cols..(r0 + n) * cols];
            gemm_strided(o, (m as isize, 1), wr, (cols as isize, 1), x, (1, cols as isize), n, m, cols, false);
        },
    );
    transpose_into(k, out, &out_t, rows, m);
}

/// `dst = lhs · rhs` for an `mm × kk` and a `kk × nn` f32 matrix, each given by a slice and
/// its (row, column) strides in elements, through the `gemm` crate (over the current rayon
/// pool when `parallel`): the matmul paths here use it, and so does the runtime's attention,
/// which multiplies strided views without copying them. Panics if a stride reaches outside its
/// slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    dst: &mut [f32],
    dst_s: (isize, isize),
    lhs: &[f32],
    lhs_s: (isize, isize),
    rhs: &[f32],
    rhs_s: (isize, isize),
    mm: usize,
    nn: usize,
    kk: usize,
    parallel: bool,
) {
    let below_avx512 = matches!(crate::kernels().isa(), crate::Isa::Avx2 | crate::Isa::AvxVnni);
    gemm_at(below_avx512, dst, dst_s, lhs, lhs_s, rhs, rhs_s, mm, nn, kk, parallel)
}

/// [`gemm_strided`], through the `gemm` crate's AVX2 kernels where `fma_only` (and the CPU has
/// them) instead of its own choice.
#[allow(clippy::too_many_arguments)]
fn gemm_at(
    fma_only: bool,
    dst: &mut [f32],
    dst_s: (isize, isize),
    lhs: &[f32],
    lhs_s: (isize, isize),
    rhs: &[f32],
    rhs_s: (isize, isize),
    mm: usize,
    nn: usize,
    kk: usize,
    parallel: bool,
) {
    let par = if parallel { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
    let last = |s: (isize, isize), r: usize, c: usize| {
        (r.saturating_sub(1)) as isize * s.0 + (c.saturating_sub(1)) as isize * s.1
    };
    assert!(mm > 0 && nn > 0 && kk > 0);
    assert!((last(dst_s, mm, nn) as usize) < dst.len());
    assert!((last(lhs_s, mm, kk) as usize) < lhs.len());
    assert!((last(rhs_s, kk, nn) as usize) < rhs.len());
    // The crate picks AVX-512 wherever the CPU has it; a level below that (`LOWBIT_ISA=avx2`)
    // gets the crate's own AVX2 + FMA kernels, as on a CPU without AVX-512, so a level's
    // figures are that level's.
    #[cfg(target_arch = "x86_64")]
    if fma_only {
        use gemm_f32::microkernel::fma::f32 as fma;
        if let Some(simd) = gemm_common::simd::V3::try_new() {
            // SAFETY: as for `gemm::gemm` below, which runs this same function with these
            // kernels on a CPU without AVX-512 (`V3::try_new` has checked the CPU's features).
            unsafe {
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    f32,
                    8,
                    { fma::MR_DIV_N * 8 },
                    { fma::NR },
                    { fma::MR_DIV_N },
                    { fma::H_M },
                    { fma::H_N },
                >(
                    simd,
                    mm,
                    nn,
                    kk,
                    dst.as_mut_ptr(),
                    dst_s.1,
                    dst_s.0,
                    false,
                    lhs.as_ptr(),
                    lhs_s.1,
                    lhs_s.0,
                    rhs.as_ptr(),
                    rhs_s.1,
                    rhs_s.0,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &fma::UKR,
                    &fma::H_UKR,
                    false,
                    par,
                );
            }
            return;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = fma_only;
    // SAFETY: the asserts above keep every index the strides reach inside the slices; `dst` is
    // borrowed mutably and does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            mm,
            nn,
            kk,
            dst.as_mut_ptr(),
            dst_s.1,
            dst_s.0,
            false,
            lhs.as_ptr(),
            lhs_s.1,
            lhs_s.0,
            rhs.as_ptr(),
            rhs_s.1,
            rhs_s.0,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    /// Both routes of [`super::gemm_at`] (the crate's choice, and its AVX2 kernels) against the
    /// f64 product, over strided views: a transposed right-hand side and a wide destination.
    #[test]
    fn gemm_routes_match_the_f64_product() {
        let (mm, nn, kk) = (37usize, 29usize, 70usize);
        let val = |i: usize| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5;
        let lhs: Vec<f32> = (0..mm * kk).map(val).collect();
        // rhs stored transposed: element (k, n) at n * kk + k.
        let rhs: Vec<f32> = (0..nn * kk).map(|i| val(i + 5)).collect();
        for fma_only in [false, true] {
            for parallel in [false, true] {
                let mut dst = vec![f32::NAN; mm * (nn + 3)];
                super::gemm_at(
                    fma_only,
                    &mut dst,
                    ((nn + 3) as isize, 1),
                    &lhs,
                    (kk as isize, 1),
                    &rhs,
                    (1, kk as isize),
                    mm,
                    nn,
                    kk,
                    parallel,
                );
                for i in 0..mm {
                    for j in 0..nn {
                        let want: f64 = (0..kk).map(|k| lhs[i * kk + k] as f64 * rhs[j * kk + k] as f64).sum();
                        let got = dst[i * (nn + 3) + j] as f64;
                        assert!((got - want).abs() < 1e-4, "fma_only={fma_only} ({i}, {j}): {got} vs {want}");
                    }
                }
            }
        }
    }
}
