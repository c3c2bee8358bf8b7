//! Decode products: each weight row streamed once through a dot-product kernel, for one token
//! (matvec) or for a batch of independent tokens (the rows of several sequences decoding
//! together). Every token's result is computed by the same kernel calls, with the same
//! arguments, as when it is alone — its activations are quantized on their own, its block factors
//! formed on their own — so a batch changes how often a weight row comes from memory, never a
//! bit of any result. Rows are spread over the spinning team in tasks of
//! [`DECODE_ROWS_PER_TASK`]; a task runs all tokens over its rows while they are in cache.

use crate::dispatch::Kernels;
use crate::fourbit::code_at;
use crate::grid::Grid;
use crate::int8::{quantize_activations, Int8Activations, INV_127, MM_DEQUANT_SCALE};
use crate::lined::Lined;
use crate::matmul::{
    block_factors, for_row_chunks, rows_block_aligned, BlockQ8, Cells, MatmulOptions, Par, RowsThen,
    DECODE_ROWS_PER_TASK,
};
use crate::pairs::{TokenPairs, GROUP};
use crate::panel::{Panel, PANEL_TOKENS};
use crate::weight::{FourBitRef, Int8Ref, Q8Ref, Weight};

/// `out (m × rows)`: row `t` is `W · x[t]`, bit-identical to `m == 1` on that row alone.
pub(crate) fn rows(
    k: &Kernels,
    out: &mut [f32],
    w: &Weight,
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
    parallel: bool,
) {
    rows_many(k, out, &[w], x, m, opts, parallel, None);
}

/// [`rows`] for several weights over the same input (q, k and v; gate and up), their `m × rows`
/// results one after the other in `out`: where their activations are prepared alike (the same
/// scheme and blocks), they are prepared once and every weight's rows go through one parallel
/// loop, so the threads meet once instead of once per weight. Each row's result is the one
/// [`rows`] gives for its weight alone. `then`, if given, runs on each task's finished rows of
/// each weight (see [`crate::RowsThen`]) in the same parallel loop.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_many(
    k: &Kernels,
    out: &mut [f32],
    ws: &[&Weight],
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
    parallel: bool,
    then: Option<&RowsThen<'_>>,
) {
    let par = if parallel { Par::Team } else { Par::Serial };
    let (mut i, mut from) = (0, 0);
    while i < ws.len() {
        let route = Route::of(ws[i], opts);
        let n = ws[i..].iter().take_while(|w| Route::of(w, opts) == route).count();
        let group = &ws[i..i + n];
        let len = m * group.iter().map(|w| w.rows()).sum::<usize>();
        run(k, &mut out[from..from + len], group, i, route, x, m, opts, par, then);
        (i, from) = (i + n, from + len);
    }
}

/// Which kernels a weight's rows go through, and so how the activations are prepared for them.
/// Weights with equal routes share one preparation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// f32, f16 or bf16 rows against the float activations.
    Dense,
    /// LLM.int8: activations quantized per token, outlier columns in float.
    Int8,
    /// Block int8 with blocks of this size.
    Q8(usize),
    /// 4-bit rows through the integer route, activations quantized in blocks of this size.
    FourBitQ8(usize),
    /// 4-bit rows dequantized exactly, rows starting on blocks (blocks of this size).
    FourBitExact(usize),
    /// 4-bit rows whose blocks straddle rows: the per-element formula.
    FourBitPlain,
}

impl Route {
    fn of(w: &Weight, opts: &MatmulOptions) -> Route {
        match w {
            Weight::F32 { .. } | Weight::F16 { .. } | Weight::Bf16 { .. } => Route::Dense,
            Weight::Int8(_) => Route::Int8,
            Weight::Q8(w8) => Route::Q8(w8.blocksize),
            // Block int5 rows run as block int8 (unpacked by the task), so they share its route.
            Weight::Q5(_) => Route::Q8(crate::q5::BLOCK),
            Weight::FourBit(w4) if !rows_block_aligned(w4) => Route::FourBitPlain,
            Weight::FourBit(w4) if !opts.fourbit_exact && w4.blocksize >= 32 => Route::FourBitQ8(w4.blocksize),
            Weight::FourBit(w4) => Route::FourBitExact(w4.blocksize),
        }
    }
}

/// The rows of every weight in `ws` (all of one route) into `out`, the weights' `m × rows`
/// blocks one after the other, in one parallel loop: a task's rows may span two weights, and
/// each weight's share goes to that weight's kernels (and to `then`, with the weight's index
/// among all of the call's weights: `first` is `ws[0]`'s). A task computes its rows for every
/// token (`rows × m`), hands them to `then`, and with more than one token writes them in place
/// transposed: a transpose of the whole result afterwards took about a tenth of a 16-token
/// step, the threads meeting once more for each weight.
#[allow(clippy::too_many_arguments)]
fn run(
    k: &Kernels,
    out: &mut [f32],
    ws: &[&Weight],
    first: usize,
    route: Route,
    x: &[f32],
    m: usize,
    opts: &MatmulOptions,
    par: Par,
    then: Option<&RowsThen<'_>>,
) {
    let cols = ws[0].cols();
    let tiles = ws.iter().all(|w| w.rows().is_multiple_of(16));
    let prep = &Prepared::new(k, route, x, m, cols, opts, tiles);
    // The first row of each weight in the joint row numbering, and one past the last.
    let mut starts = Vec::with_capacity(ws.len() + 1);
    starts.push(0);
    for w in ws {
        starts.push(starts.last().copied().unwrap_or(0) + w.rows());
    }
    let starts = &starts;
    // The int8 levels of each 4-bit weight, made once per call rather than once per task.
    let luts: Vec<[i8; 16]> =
        ws.iter().map(|w| if let Weight::FourBit(w4) = w { w4.kind.int8_levels() } else { [0; 16] }).collect();
    let luts = &luts;
    // A task's rows `r0 ..` for every token into `o` (`rows × m`), weight by weight; `put` then
    // takes each weight's share (its index, first row, piece, and whether the piece is
    // token-major).
    let each = |scratch: &mut Scratch, r0: usize, o: &mut [f32], put: &mut Put<'_>| {
        let (mut r, end) = (r0, r0 + o.len() / m);
        let mut wi = starts.partition_point(|&s| s <= r) - 1;
        while r < end {
            let upto = end.min(starts[wi + 1]);
            let piece = &mut o[(r - r0) * m..(upto - r0) * m];
            scratch.wrote_token_major = false;
            prep.rows(k, scratch, ws[wi], &luts[wi], r - starts[wi], piece);
            if let Some(then) = then {
                then(first + wi, r - starts[wi], piece);
            }
            put(wi, r - starts[wi], piece, scratch.wrote_token_major);
            (r, wi) = (upto, wi + 1);
        }
    };
    let chunk = prep.task_rows(ws);
    if m == 1 {
        // One token: `rows × 1` is `1 × rows`, so the tasks write in place.
        let task = |scratch: &mut Scratch, r0: usize, o: &mut [f32]| each(scratch, r0, o, &mut |_, _, _, _| {});
        return for_row_chunks(out, 1, chunk, par, || prep.scratch(chunk), task);
    }
    let total = starts[ws.len()];
    let cells = Cells::new(out);
    let task = |(scratch, rows_t, tm): &mut (Scratch, Vec<f32>, Vec<f32>), i: usize| {
        let r0 = i * chunk;
        let n = chunk.min(total - r0);
        rows_t.resize(n * m, 0.0);
        // A panel on a matrix unit writes token-major itself (`then` takes rows × m).
        scratch.token_major = then.is_none();
        each(scratch, r0, rows_t, &mut |wi, r, piece, token_major| {
            let (len, rows) = (piece.len() / m, ws[wi].rows());
            let src = if token_major {
                &*piece
            } else {
                tm.resize(m * len, 0.0);
                k.transpose(piece, m, tm, len, len, m);
                &tm[..]
            };
            for (t, src) in src.chunks(len).enumerate() {
                // SAFETY: this task alone writes rows r .. r + len of weight wi, for every token.
                let dst = unsafe { cells.piece(m * starts[wi] + t * rows + r, len) };
                dst.copy_from_slice(src);
            }
        });
    };
    par.tasks(total.div_ceil(chunk), || (prep.scratch(chunk), Vec::new(), Vec::new()), task);
}

/// What a task does with each weight's share of its rows: (weight index, first row, `rows × m`
/// or `m × rows` piece, whether token-major).
type Put<'p> = dyn FnMut(usize, usize, &mut [f32], bool) + 'p;

/// The activations prepared once for every weight of a route.
enum Prepared<'x> {
    Dense {
        x: &'x [f32],
        m: usize,
    },
    Int8 {
        x: &'x [f32],
        m: usize,
        acts: Vec<Int8Activations>,
        /// The tokens' int8 activations laid out for a matrix unit, where the level has one
        /// (and the rows come in sixteens).
        panel: Option<Panel>,
    },
    Q8 {
        m: usize,
        q: Lined<i8>,
        d: Lined<f32>,
        pairs: Option<TokenPairs>,
        /// Where the level has a matrix unit (as for 4-bit), and one token's block sums.
        unit: Option<Unit>,
        qsum: Vec<i32>,
    },
    FourBitQ8 {
        m: usize,
        q: Box<BlockQ8>,
        xs_rows: Lined<f32>,
        bpr: usize,
        pairs: Option<TokenPairs>,
        /// Where the level has a matrix unit: every token of the step laid out for it (one
        /// token goes through [`Kernels::fourbit_q8_rows16`] instead, with the same bits).
        unit: Option<Unit>,
    },
    FourBitExact {
        m: usize,
        xe: Vec<f32>,
        xo: Vec<f32>,
        bpr: usize,
    },
    FourBitPlain {
        x: &'x [f32],
        m: usize,
    },
}

/// How a step's tokens reach a matrix unit: one token alone, or a panel of them.
enum Unit {
    One,
    Panel(Panel),
}

/// Per-task buffers of the 4-bit routes (empty for the others), and of a matrix unit's.
pub(crate) struct Scratch {
    scales: Lined<f32>,
    factors: Lined<f32>,
    /// Block int8 rows' scales in f32, 4-bit rows' int8 levels, token-major results, and ones.
    unit_factors: Vec<f32>,
    unit_ones: Vec<f32>,
    unit_levels: Vec<i8>,
    unit_out: Vec<f32>,
    /// Block int5 rows unpacked to block int8 (grows to a task's rows on first use).
    q5: Vec<i8>,
    /// LLM.int8 rows' exact sums from a matrix unit (grows on first use).
    isums: Vec<i32>,
    /// Asked for by the loop: a panel of tokens on a matrix unit writes its rows token-major
    /// (`m × rows`), where the loop puts them in place without a transpose; set again by each
    /// call that did so.
    token_major: bool,
    wrote_token_major: bool,
}

/// The most rows a task takes when a step's tokens go to a matrix unit as a panel: each call
/// configures the tiles and lays out its rows' levels, so 32-row tasks spent a fifth more on a
/// 16-token step at SmolLM2's widths than 128-row ones (64 was between). A product's rows are
/// shared evenly up to this: 128-row tasks left one thread a quarter more of a 576-row product
/// than the other.
const UNIT_TASK_ROWS: usize = 512;

impl<'x> Prepared<'x> {
    /// `tiles`: every weight's rows come in sixteens (a matrix unit takes them all).
    fn new(
        k: &Kernels,
        route: Route,
        x: &'x [f32],
        m: usize,
        cols: usize,
        opts: &MatmulOptions,
        tiles: bool,
    ) -> Prepared<'x> {
        match route {
            Route::Dense => Prepared::Dense { x, m },
            Route::FourBitPlain => Prepared::FourBitPlain { x, m },
            Route::Int8 => {
                let acts = (0..m)
                    .map(|t| {
                        let mut a = Int8Activations::default();
                        quantize_activations(&x[t * cols..(t + 1) * cols], 1, cols, opts.int8_threshold, &mut a);
                        a
                    })
                    .collect::<Vec<_>>();
                let panel =
                    (m >= INT8_PANEL_TOKENS && tiles && cols.is_multiple_of(64) && k.has_int8_panel()).then(|| {
                        let q: Vec<i8> = acts.iter().flat_map(|a| a.ca.iter().copied()).collect();
                        Panel::int8(&q, cols, m)
                    });
                Prepared::Int8 { x, m, acts, panel }
            }
            Route::Q8(bs) => {
                let nb = cols / bs;
                let mut q = Lined::<i8>::zeroed(m * cols);
                let mut d = Lined::<f32>::zeroed(m * nb);
                for t in 0..m {
                    k.quantize_q8_plain(
                        &x[t * cols..(t + 1) * cols],
                        bs,
                        &mut q[t * cols..(t + 1) * cols],
                        &mut d[t * nb..(t + 1) * nb],
                    );
                }
                // On a matrix unit, as for 4-bit weights.
                let unit = (k.has_unit_decode() && matches!(bs, 32 | 64)).then(|| {
                    if m == 1 {
                        Unit::One
                    } else {
                        Unit::Panel(Panel::q8(&q, cols, &d, bs, nb, m))
                    }
                });
                let qsum = match unit {
                    Some(Unit::One) => q.chunks(bs).map(|b| b.iter().map(|&v| v as i32).sum()).collect(),
                    _ => Vec::new(),
                };
                // Whole groups of eight tokens for the eight-token kernel.
                let groups = if k.has_q8_rows_t8() && unit.is_none() { m / GROUP } else { 0 };
                let pairs = (groups > 0).then(|| {
                    let ts = 0..groups * GROUP;
                    let qs: Vec<&[i8]> = ts.clone().map(|t| &q[t * cols..(t + 1) * cols]).collect();
                    let ds: Vec<&[f32]> = ts.map(|t| &d[t * nb..(t + 1) * nb]).collect();
                    TokenPairs::q8(&qs, &ds, bs, nb)
                });
                Prepared::Q8 { m, q, d, pairs, unit, qsum }
            }
            Route::FourBitQ8(bs) => {
                let bpr = cols / bs;
                let task = DECODE_ROWS_PER_TASK * bpr;
                // weight ≈ lut/127 · absmax, activation ≈ q · xs·127: one factor absmax · xs per
                // block.
                let q = BlockQ8::new(k, x, m, cols, bs, m, false, false);
                // Each token's activation scales repeated once per row of a task, so one
                // `block_factors` call covers a task's rows (their blocks are consecutive):
                // per-row calls cost more than the factors themselves on narrow rows (576
                // columns are 9 blocks).
                // On a matrix unit every token of the step goes through the tile kernel, or one
                // token alone through its sixteen-row twin (blocks of 64 only).
                let unit =
                    (bs == 64 && k.has_unit_decode()).then(|| if m == 1 { Unit::One } else { Unit::Panel(q.panel(m)) });
                // For the row kernels only (a unit's kernels form their factors themselves).
                let rows_kernels = unit.is_none() || !tiles;
                let mut xs_rows = Lined::<f32>::zeroed(if rows_kernels { m * task } else { 0 });
                for (t, rows) in xs_rows.chunks_mut(task).enumerate() {
                    rows.chunks_mut(bpr).for_each(|c| c.copy_from_slice(q.xs(t)));
                }
                // Whole groups of eight tokens for the eight-token kernel (blocks of 64 only).
                let groups =
                    if bs == 64 && k.has_rows_t8() && k.x4_for(cols) && unit.is_none() { m / GROUP } else { 0 };
                let pairs = (groups > 0).then(|| q.pairs(groups * GROUP));
                Prepared::FourBitQ8 { m, q: Box::new(q), xs_rows, bpr, pairs, unit }
            }
            Route::FourBitExact(bs) => Prepared::FourBitExact {
                m,
                xe: x.iter().step_by(2).copied().collect(),
                xo: x.iter().skip(1).step_by(2).copied().collect(),
                bpr: cols / bs,
            },
        }
    }

    /// Rows a task of `ws` takes: more where every weight goes to a matrix unit, whose calls
    /// cost more to start (the other row loops size their buffers for fewer).
    fn task_rows(&self, ws: &[&Weight]) -> usize {
        match self {
            Prepared::FourBitQ8 { unit: Some(Unit::Panel(_)), .. }
            | Prepared::Q8 { unit: Some(Unit::Panel(_)), .. }
                if ws.iter().all(|w| w.rows().is_multiple_of(16)) =>
            {
                let rows: usize = ws.iter().map(|w| w.rows()).sum();
                rows.div_ceil(crate::team::threads()).next_multiple_of(16).clamp(16, UNIT_TASK_ROWS)
            }
            _ => DECODE_ROWS_PER_TASK,
        }
    }

    /// Buffers for tasks of up to `task_rows` rows.
    fn scratch(&self, task_rows: usize) -> Scratch {
        // On a matrix unit a task's piece widens to the 16-row tiles that hold it.
        let unit_rows = task_rows + 32;
        let (scales, factors) = match *self {
            // No row kernel's factors where the unit takes every row (`xs_rows` says so).
            Prepared::FourBitQ8 { bpr, ref xs_rows, .. } if xs_rows.is_empty() => (unit_rows * bpr, 0),
            Prepared::FourBitQ8 { m, bpr, .. } => (unit_rows * bpr, m * DECODE_ROWS_PER_TASK * bpr),
            Prepared::FourBitExact { bpr, .. } => (bpr, 0),
            _ => (0, 0),
        };
        let (unit_factors, unit_levels, unit_out) = match self {
            Prepared::FourBitQ8 { unit: Some(Unit::One), .. } => (0, 0, unit_rows),
            Prepared::FourBitQ8 { unit: Some(Unit::Panel(p)), .. } => {
                (0, Kernels::panel_scratch(p.nb()), p.groups() * PANEL_TOKENS * unit_rows)
            }
            // The panel kernel converts its rows' scales into `unit_factors`; one token reads them
            // in place.
            Prepared::Q8 { unit: Some(Unit::One), .. } => (0, 0, unit_rows),
            Prepared::Q8 { unit: Some(Unit::Panel(p)), .. } => (16 * p.nb(), 0, p.groups() * PANEL_TOKENS * unit_rows),
            _ => (0, 0, 0),
        };
        Scratch {
            scales: Lined::zeroed(scales),
            factors: Lined::zeroed(factors),
            unit_factors: vec![0.0; unit_factors],
            unit_ones: if unit_out > 0 { vec![1.0; scales] } else { Vec::new() },
            unit_levels: vec![0; unit_levels],
            unit_out: vec![0.0; unit_out],
            q5: Vec::new(),
            isums: Vec::new(),
            token_major: false,
            wrote_token_major: false,
        }
    }

    /// Rows `r0 ..` of `w` into `o` (`rows × m`, as many rows as it holds).
    #[inline(always)]
    fn rows(&self, k: &Kernels, scratch: &mut Scratch, w: &Weight, lut: &[i8; 16], r0: usize, o: &mut [f32]) {
        let cols = w.cols();
        match (self, w) {
            (&Prepared::Dense { x, m }, _) => {
                let xt = |t: usize| &x[t * cols..(t + 1) * cols];
                match *w {
                    Weight::F32 { data, .. } => {
                        dense_task(o, m, r0, |r, t| k.dot_f32(&data[r * cols..(r + 1) * cols], xt(t)))
                    }
                    Weight::F16 { data, .. } => {
                        dense_task(o, m, r0, |r, t| k.dot_f16(&data[r * cols..(r + 1) * cols], xt(t)))
                    }
                    Weight::Bf16 { data, .. } => {
                        dense_task(o, m, r0, |r, t| k.dot_bf16(&data[r * cols..(r + 1) * cols], xt(t)))
                    }
                    _ => unreachable!("a dense route holds dense weights"),
                }
            }
            (&Prepared::Int8 { x, m, ref acts, ref panel }, Weight::Int8(w8)) => {
                int8_task(k, o, w8, x, m, acts, panel.as_ref(), &mut scratch.isums, r0)
            }
            (&Prepared::Q8 { m, ref q, ref d, unit: Some(ref unit), ref qsum, .. }, Weight::Q8(w8))
                if w8.rows.is_multiple_of(16) =>
            {
                let tokens = match unit {
                    Unit::One => 1,
                    Unit::Panel(p) => p.groups() * PANEL_TOKENS,
                };
                let Scratch { unit_factors, unit_out, token_major, wrote_token_major, .. } = scratch;
                let (cols, bs) = (w8.cols, w8.blocksize);
                let nb = cols / bs;
                let tm = *token_major && matches!(unit, Unit::Panel(_));
                *wrote_token_major = tm;
                unit_task(o, m, tokens, w8.rows, r0, unit_out, tm, |a, n, out| {
                    let (qs, sc) = (&w8.qs[a * cols..(a + n) * cols], &w8.scales[a * nb..(a + n) * nb]);
                    match unit {
                        Unit::Panel(p) => {
                            let done = k.q8_panel(qs, sc, p, n, unit_factors, out, !tm);
                            assert!(done, "prepared only where the level has the kernel");
                        }
                        Unit::One => {
                            for i in (0..n).step_by(16) {
                                let sc = &sc[i * nb..(i + 16) * nb];
                                let v = k
                                    .q8_rows16(&qs[i * cols..], cols, bs, sc, &q[..cols], &d[..nb], qsum)
                                    .expect("prepared only where the level has the kernel");
                                out[i..i + 16].copy_from_slice(&v);
                            }
                        }
                    }
                })
            }
            (&Prepared::Q8 { m, ref q, ref d, ref pairs, .. }, Weight::Q8(w8)) => {
                q8_task(k, o, w8, m, q, d, pairs.as_ref(), r0)
            }
            (&Prepared::Q8 { m, ref q, ref d, ref pairs, ref unit, ref qsum, .. }, Weight::Q5(w5)) => {
                // The task's rows as block int8 through block int8's kernels: the bits of a
                // block int8 weight with these integers. On a matrix unit, a task reads the
                // 16-row tiles that hold its rows, as a block int8 weight's task does; a panel
                // of tokens takes them all at once (each call sets up the tiles), anything else
                // sixteen rows at a time, which stay in the first-level cache between the unpacking
                // and the products.
                let n = o.len() / m;
                let aligned = w5.rows.is_multiple_of(16);
                let tiles = aligned && unit.is_some();
                // One token on a matrix unit's level: sixteen rows at a time unpacked in
                // registers by block int8's one-token twin (its bits).
                if matches!(unit, Some(Unit::One)) && aligned && k.has_q5_rows16() {
                    let cols = w5.cols;
                    let nb = cols / crate::q5::BLOCK;
                    let (qs, qh) = (crate::q5::QS_BYTES * nb, crate::q5::QH_BYTES * nb);
                    unit_task(o, m, 1, w5.rows, r0, &mut scratch.unit_out, false, |a, n, out| {
                        for i in (a..a + n).step_by(16) {
                            let v = k
                                .q5_rows16(
                                    &w5.qs[i * qs..],
                                    &w5.qh[i * qh..],
                                    cols,
                                    &w5.scales[i * nb..(i + 16) * nb],
                                    &q[..cols],
                                    &d[..nb],
                                    qsum,
                                )
                                .expect("checked above");
                            out[i - a..i - a + 16].copy_from_slice(&v);
                        }
                    });
                    return;
                }
                // One token where the level unpacks in registers: block int8's row kernel on
                // the packed rows (its bits).
                if m == 1 && !tiles {
                    let nb = w5.cols / crate::q5::BLOCK;
                    let (qs, qh) = (crate::q5::QS_BYTES * nb, crate::q5::QH_BYTES * nb);
                    let rows = r0..r0 + n;
                    if k.dot_q5_rows(
                        &w5.qs[rows.start * qs..rows.end * qs],
                        &w5.qh[rows.start * qh..rows.end * qh],
                        &w5.scales[rows.start * nb..rows.end * nb],
                        &q[..w5.cols],
                        &d[..nb],
                        o,
                    ) {
                        return;
                    }
                }
                let step = if matches!(unit, Some(Unit::Panel(_))) { n + 16 } else { 16 };
                let mut buf = std::mem::take(&mut scratch.q5);
                let mut at = r0;
                while at < r0 + n {
                    // Rows at .. end of the task's output; unpacked rows a .. b.
                    let end = (at / 16 * 16 + step).min(r0 + n);
                    let (a, b) = if tiles { (at / 16 * 16, end.next_multiple_of(16).min(w5.rows)) } else { (at, end) };
                    let w8 = w5.as_q8(k, a, b - a, &mut buf);
                    let o = &mut o[(at - r0) * m..(end - r0) * m];
                    if aligned {
                        self.rows(k, scratch, &Weight::Q8(w8), lut, at - a, o);
                    } else {
                        q8_task(k, o, &w8, m, q, d, pairs.as_ref(), at - a);
                    }
                    at = end;
                }
                scratch.q5 = buf;
            }
            (&Prepared::FourBitQ8 { m, ref q, bpr, unit: Some(ref unit), .. }, Weight::FourBit(w4))
                if w4.rows.is_multiple_of(16) =>
            {
                let tokens = match unit {
                    Unit::One => 1,
                    Unit::Panel(p) => p.groups() * PANEL_TOKENS,
                };
                let Scratch { scales, unit_levels, unit_out, unit_ones, token_major, wrote_token_major, .. } = scratch;
                let tm = *token_major && matches!(unit, Unit::Panel(_));
                *wrote_token_major = tm;
                unit_task(o, m, tokens, w4.rows, r0, unit_out, tm, |a, n, out| {
                    let half = w4.cols / 2;
                    // The block absmax as `block_factors` forms it (times 1: its bits).
                    let wf = &mut scales[..n * bpr];
                    block_factors(k, &w4.absmax, a * bpr, &unit_ones[..n * bpr], wf);
                    let codes = &w4.codes[a * half..(a + n) * half];
                    match unit {
                        Unit::Panel(p) => {
                            let done = k.fourbit_q8_panel(codes, wf, lut, p, n, unit_levels, out, !tm);
                            assert!(done, "prepared only where the level has the kernel");
                        }
                        Unit::One => {
                            for i in (0..n).step_by(16) {
                                let v = k
                                    .fourbit_q8_rows16(
                                        &codes[i * half..],
                                        half,
                                        &wf[i * bpr..(i + 16) * bpr],
                                        lut,
                                        q.qe(0),
                                        q.qo(0),
                                        q.xs(0),
                                        q.sum(0),
                                    )
                                    .expect("prepared only where the level has the kernel");
                                out[i..i + 16].copy_from_slice(&v);
                            }
                        }
                    }
                })
            }
            (&Prepared::FourBitQ8 { m, ref q, ref xs_rows, ref pairs, .. }, Weight::FourBit(w4)) => {
                fourbit_q8_task(k, o, w4, lut, m, q, pairs.as_ref(), xs_rows, scratch, r0)
            }
            (&Prepared::FourBitExact { m, ref xe, ref xo, .. }, Weight::FourBit(w4)) => {
                fourbit_task(k, o, w4, m, xe, xo, &mut scratch.scales, r0)
            }
            (&Prepared::FourBitPlain { x, m }, Weight::FourBit(w4)) => {
                let levels = w4.kind.levels();
                dense_task(o, m, r0, |r, t| {
                    let base = r * cols;
                    let mut acc = 0f32;
                    for (c, &xv) in x[t * cols..(t + 1) * cols].iter().enumerate() {
                        let e = base + c;
                        acc += levels[code_at(w4.codes, e) as usize] * w4.absmax.get(e / w4.blocksize) * xv;
                    }
                    acc
                })
            }
            _ => unreachable!("a weight is prepared for by its own route"),
        }
    }
}

/// A task's rows `r0 ..` (of a weight of `rows` rows, a multiple of 16) on a matrix unit: the
/// 16-row tiles that hold them go through `unit(first row, rows, out)` (row-major results,
/// `tokens` a row; token-major, `rows` a token, where `token_major`) and the task's rows are
/// copied into `o` (`rows × m`, or `m × rows` where `token_major`). A row's result depends only
/// on its own row and the token, never on the tile around it, so pieces of any alignment give
/// the same bits.
#[allow(clippy::too_many_arguments)]
fn unit_task(
    o: &mut [f32],
    m: usize,
    tokens: usize,
    rows: usize,
    r0: usize,
    out: &mut [f32],
    token_major: bool,
    unit: impl FnOnce(usize, usize, &mut [f32]),
) {
    let n = o.len() / m;
    let (a, b) = (r0 / 16 * 16, (r0 + n).next_multiple_of(16).min(rows));
    let width = b - a;
    unit(a, width, &mut out[..tokens * width]);
    if token_major {
        for (t, y) in o.chunks_mut(n).enumerate() {
            y.copy_from_slice(&out[t * width + r0 - a..][..n]);
        }
        return;
    }
    // The unit writes row-major, `tokens` a row (padding included): the task's rows are runs,
    // or one run when no token is padding.
    if tokens == m {
        o.copy_from_slice(&out[(r0 - a) * m..][..n * m]);
    } else {
        for (i, y) in o.chunks_mut(m).enumerate() {
            y.copy_from_slice(&out[(r0 - a + i) * tokens..][..m]);
        }
    }
}

/// `o[i·m + t] = dot(r0 + i, t)` for the task's rows and every token.
fn dense_task(o: &mut [f32], m: usize, r0: usize, dot: impl Fn(usize, usize) -> f32) {
    for (i, y) in o.chunks_mut(m).enumerate() {
        for (t, y) in y.iter_mut().enumerate() {
            *y = dot(r0 + i, t);
        }
    }
}

/// The exact float 4-bit path: every weight dequantized to its bitsandbytes value.
#[allow(clippy::too_many_arguments)]
fn fourbit_task(
    k: &Kernels,
    o: &mut [f32],
    w: &FourBitRef,
    m: usize,
    xe: &[f32],
    xo: &[f32],
    scales: &mut [f32],
    r0: usize,
) {
    let levels = w.kind.levels();
    let half = w.cols / 2;
    let bpr = w.cols / w.blocksize;
    for (i, y) in o.chunks_mut(m).enumerate() {
        let r = r0 + i;
        w.absmax.decode(r * bpr, scales);
        for (t, y) in y.iter_mut().enumerate() {
            let (xe, xo) = (&xe[t * half..(t + 1) * half], &xo[t * half..(t + 1) * half]);
            *y = k.dot_fourbit(&w.codes[r * half..(r + 1) * half], scales, levels, xe, xo, w.blocksize / 2);
        }
    }
}

/// The 4-bit integer route over a task's rows: activations quantized per block of the weights,
/// levels as int8.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fourbit_q8_task(
    k: &Kernels,
    o: &mut [f32],
    w: &FourBitRef,
    lut: &[i8; 16],
    m: usize,
    q: &BlockQ8,
    pairs: Option<&TokenPairs>,
    xs_rows: &[f32],
    scratch: &mut Scratch,
    r0: usize,
) {
    let half = w.cols / 2;
    let bpr = w.cols / w.blocksize;
    let task = DECODE_ROWS_PER_TASK * bpr;
    let x4 = k.x4_for(w.cols);
    let (scales, factors) = (&mut scratch.scales, &mut scratch.factors);
    let n = o.len() / m;
    let nf = n * bpr;
    // Tokens the eight-token kernel takes below (it forms their factors itself).
    let batched = m >= 2 && x4 && n <= DECODE_ROWS_PER_TASK;
    let grouped = if batched { pairs.map_or(0, |p| p.groups() * GROUP) } else { 0 };
    if m == 1 {
        block_factors(k, &w.absmax, r0 * bpr, &xs_rows[..nf], &mut factors[..nf]);
    } else {
        // The block scales decoded once for every token, then multiplied by each token's: the
        // same bits as `block_factors` (decode, then multiply).
        w.absmax.decode(r0 * bpr, &mut scales[..nf]);
        for t in grouped..m {
            let (f, xs) = (&mut factors[t * task..t * task + nf], &xs_rows[t * task..t * task + nf]);
            for ((f, &a), &s) in f.iter_mut().zip(&scales[..nf]).zip(xs) {
                *f = a * s;
            }
        }
    }
    let factors = &factors[..];
    let hb = w.blocksize / 2;
    if m == 1 && x4 {
        let codes = &w.codes[r0 * half..(r0 + n) * half];
        if k.dot_fourbit_q8_rows(codes, &factors[..nf], lut, q.qe(0), q.qo(0), q.sum(0), hb, o) {
            return;
        }
    }
    // A batch: the task's rows in one call per group of eight prepared tokens, then per four
    // tokens where the level has that kernel, then per pair of tokens (and one for an odd last
    // token), each (row, token) with the bits the one-row kernel gives it alone.
    if batched {
        let codes = &w.codes[r0 * half..(r0 + n) * half];
        let fac_all = |t: usize| &factors[t * task..t * task + nf];
        let [mut a, mut b] = [[0f32; DECODE_ROWS_PER_TASK]; 2];
        let [mut c, mut d] = [[0f32; DECODE_ROWS_PER_TASK]; 2];
        let mut t = 0;
        if let Some(pairs) = pairs {
            for g in 0..pairs.groups() {
                // Straight into the task's rows (each m tokens long), tokens t .. t + 8.
                let out = Grid::new(&mut o[t..], n, m, 1);
                let done = k.dot_fourbit_q8_rows_t8(codes, &scales[..nf], lut, pairs.group(g), out);
                assert!(done, "pairs are prepared only where the level has the kernel");
                t += GROUP;
            }
        }
        while t + 4 <= m {
            let ts: [usize; 4] = std::array::from_fn(|u| t + u);
            let out = [&mut a[..n], &mut b[..n], &mut c[..n], &mut d[..n]];
            if !k.dot_fourbit_q8_rows_t4(codes, ts.map(fac_all), lut, ts.map(|t| q.qe(t)), ts.map(|t| q.qo(t)), hb, out)
            {
                break;
            }
            for i in 0..n {
                o[i * m + t] = a[i];
                o[i * m + t + 1] = b[i];
                o[i * m + t + 2] = c[i];
                o[i * m + t + 3] = d[i];
            }
            t += 4;
        }
        while t + 2 <= m {
            let (qe, qo, qs) = ([q.qe(t), q.qe(t + 1)], [q.qo(t), q.qo(t + 1)], [q.sum(t), q.sum(t + 1)]);
            let out = [&mut a[..n], &mut b[..n]];
            if !k.dot_fourbit_q8_rows_t2(codes, [fac_all(t), fac_all(t + 1)], lut, qe, qo, qs, hb, out) {
                break;
            }
            for i in 0..n {
                o[i * m + t] = a[i];
                o[i * m + t + 1] = b[i];
            }
            t += 2;
        }
        if t + 2 > m {
            if t < m {
                let done = k.dot_fourbit_q8_rows(codes, fac_all(t), lut, q.qe(t), q.qo(t), q.sum(t), hb, &mut a[..n]);
                assert!(done, "a level with the two-token rows kernel has the one-token one");
                for i in 0..n {
                    o[i * m + t] = a[i];
                }
            }
            return;
        }
    }
    // (Tokens of the groups above are done and have no factors here.)
    let row = |i: usize| &w.codes[(r0 + i) * half..(r0 + i + 1) * half];
    let fac = |t: usize, i: usize| &factors[t * task + i * bpr..t * task + (i + 1) * bpr];
    let mut i = 0;
    // Four rows a call where the level has that kernel for rows this wide (the activations are
    // loaded once for the four; narrow rows spend as much on a call as on its arithmetic), two
    // tokens a call where there are two (the rows' codes looked up once for both); the rest
    // through the one-row twin, so no row's bits depend on which call it fell in.
    while x4 && i + 4 <= n {
        let codes: [&[u8]; 4] = std::array::from_fn(|j| row(i + j));
        let mut t = grouped;
        while t + 2 <= m {
            let facs = [0, 1].map(|u| std::array::from_fn(|j| fac(t + u, i + j)));
            let (qe, qo, qs) = ([q.qe(t), q.qe(t + 1)], [q.qo(t), q.qo(t + 1)], [q.sum(t), q.sum(t + 1)]);
            let Some(v) = k.dot_fourbit_q8_x4t2(codes, facs, lut, qe, qo, qs, hb) else { break };
            for (u, v) in v.iter().enumerate() {
                for (j, &v) in v.iter().enumerate() {
                    o[(i + j) * m + t + u] = v;
                }
            }
            t += 2;
        }
        for t in t..m {
            let facs = std::array::from_fn(|j| fac(t, i + j));
            let v = k.dot_fourbit_q8_x4(codes, facs, lut, q.qe(t), q.qo(t), q.sum(t), hb);
            let v = v.unwrap_or_else(|| {
                std::array::from_fn(|j| k.dot_fourbit_q8_x1(codes[j], facs[j], lut, q.qe(t), q.qo(t), q.sum(t), hb))
            });
            for (j, &v) in v.iter().enumerate() {
                o[(i + j) * m + t] = v;
            }
        }
        i += 4;
    }
    for i in i..n {
        let mut t = grouped;
        // Rows too wide for the four-row kernels: four tokens a call where the level has that
        // kernel (the row's codes looked up once for the four, each token with its own bits).
        while !x4 && t + 4 <= m {
            let ts: [usize; 4] = std::array::from_fn(|u| t + u);
            let Some(v) = k.dot_fourbit_q8_t4(
                row(i),
                ts.map(|t| fac(t, i)),
                lut,
                ts.map(|t| q.qe(t)),
                ts.map(|t| q.qo(t)),
                ts.map(|t| q.sum(t)),
                hb,
            ) else {
                break;
            };
            for (u, &v) in v.iter().enumerate() {
                o[i * m + t + u] = v;
            }
            t += 4;
        }
        for t in t..m {
            let (qe, qo, qs) = (q.qe(t), q.qo(t), q.sum(t));
            o[i * m + t] = if x4 {
                k.dot_fourbit_q8_x1(row(i), fac(t, i), lut, qe, qo, qs, hb)
            } else {
                k.dot_fourbit_q8(row(i), fac(t, i), lut, qe, qo, qs, hb)
            };
        }
    }
}

/// Tokens of a decode step from which LLM.int8 rows go to a matrix unit (its tiles take
/// sixteen, padded; four already run faster there than on the vector tiles).
const INT8_PANEL_TOKENS: usize = 4;

/// LLM.int8 rows, each token with its own activation scale and outlier columns (as alone).
/// Integer sums are exact, so the 4 × 4 tile — or a matrix unit's, with `panel` — may serve
/// several tokens at once; the float parts (scaling, then the outlier columns in column order)
/// follow the one-token order.
#[allow(clippy::too_many_arguments)]
fn int8_task(
    k: &Kernels,
    o: &mut [f32],
    w: &Int8Ref,
    x: &[f32],
    m: usize,
    acts: &[Int8Activations],
    panel: Option<&Panel>,
    isums: &mut Vec<i32>,
    r0: usize,
) {
    let cols = w.cols;
    let ca = |t: usize| acts[t].ca.as_slice();
    let cb = |r: usize| &w.cb[r * cols..(r + 1) * cols];
    let finish = |r: usize, t: usize, isum: i32| isum as f32 * (acts[t].sca[0] * w.scb[r]) * MM_DEQUANT_SCALE;
    let x4 = k.x4_for(cols);
    let n = o.len() / m;
    let mut r = 0;
    let mut sums = [0i32; DECODE_ROWS_PER_TASK];
    if let Some(p) = panel.filter(|_| n.is_multiple_of(16)) {
        let tokens = PANEL_TOKENS * p.groups();
        isums.resize(n * tokens, 0);
        let done = k.int8_panel(&w.cb[r0 * cols..(r0 + n) * cols], p, n, isums);
        assert!(done, "checked with has_int8_panel");
        for (i, (orow, srow)) in o.chunks_mut(m).zip(isums.chunks(tokens)).enumerate() {
            for (t, (y, &isum)) in orow.iter_mut().zip(srow).enumerate() {
                *y = finish(r0 + i, t, isum);
            }
        }
        r = n;
    } else if m == 1
        && x4
        && n <= sums.len()
        && k.dot_int8_rows(ca(0), &w.cb[r0 * cols..(r0 + n) * cols], &mut sums[..n])
    {
        for (i, &isum) in sums[..n].iter().enumerate() {
            o[i] = finish(r0 + i, 0, isum);
        }
        r = n;
    }
    while r + 4 <= n {
        let wr: [&[i8]; 4] = std::array::from_fn(|i| cb(r0 + r + i));
        let mut t = 0;
        while t + 4 <= m {
            let tile = k.dot_int8_4x4(std::array::from_fn(|j| ca(t + j)), wr);
            for (i, row) in tile.iter().enumerate() {
                for (j, &isum) in row.iter().enumerate() {
                    o[(r + i) * m + t + j] = finish(r0 + r + i, t + j, isum);
                }
            }
            t += 4;
        }
        for t in t..m {
            let sums = if x4 { k.dot_int8_x4(ca(t), wr) } else { None };
            let sums = sums.unwrap_or_else(|| wr.map(|w| k.dot_int8(ca(t), w)));
            for (i, &isum) in sums.iter().enumerate() {
                o[(r + i) * m + t] = finish(r0 + r + i, t, isum);
            }
        }
        r += 4;
    }
    for r in r..n {
        for t in 0..m {
            o[r * m + t] = finish(r0 + r, t, k.dot_int8(ca(t), cb(r0 + r)));
        }
    }
    // Each token's outlier columns in floating point, against the dequantized weights, in
    // column order per (row, token). Columns outside, rows inside: the adds into one output form
    // a chain, and with a chain per row in flight at once no add waits for the one before it
    // (docs/PERFORMANCE.md).
    for t in 0..m {
        let xt = &x[t * cols..(t + 1) * cols];
        for &c in &acts[t].outlier_cols {
            let xc = xt[c];
            for (i, orow) in o.chunks_mut(m).enumerate() {
                let rr = r0 + i;
                orow[t] += xc * (w.cb[rr * cols + c] as f32 * (w.scb[rr] * INV_127));
            }
        }
    }
}

/// Block int8 rows: each token's activations quantized on their own in the weight's blocks, then
/// groups of eight tokens over the task's rows in fours where the level has that kernel, and
/// four rows a call for the rest (each row's bits those of the one-row kernel, so which call a
/// row falls in changes nothing).
#[allow(clippy::too_many_arguments)]
fn q8_task(
    k: &Kernels,
    o: &mut [f32],
    w: &Q8Ref,
    m: usize,
    q: &[i8],
    d: &[f32],
    pairs: Option<&TokenPairs>,
    r0: usize,
) {
    let (cols, bs) = (w.cols, w.blocksize);
    let nb = cols / bs;
    let qt = |t: usize| &q[t * cols..(t + 1) * cols];
    let dt = |t: usize| &d[t * nb..(t + 1) * nb];
    let row = |r: usize| (&w.qs[r * cols..(r + 1) * cols], &w.scales[r * nb..(r + 1) * nb]);
    let n = o.len() / m;
    if m == 1 {
        let (w, s) = (&w.qs[r0 * cols..(r0 + n) * cols], &w.scales[r0 * nb..(r0 + n) * nb]);
        if k.dot_q8_rows(w, s, qt(0), dt(0), bs, o) {
            return;
        }
    }
    // Groups of eight tokens over the task's rows in fours, where prepared; the rest below.
    let n4 = n / 4 * 4;
    let grouped = match pairs {
        Some(pairs) if n4 > 0 && n4 <= DECODE_ROWS_PER_TASK => {
            let (w, s) = (&w.qs[r0 * cols..(r0 + n4) * cols], &w.scales[r0 * nb..(r0 + n4) * nb]);
            for g in 0..pairs.groups() {
                let out = Grid::new(&mut o[g * GROUP..], n4, m, 1);
                let done = k.dot_q8_rows_t8(w, s, pairs.group(g), out);
                assert!(done, "pairs are prepared only where the level has the kernel");
            }
            pairs.groups() * GROUP
        }
        _ => 0,
    };
    let mut i = 0;
    while i + 4 <= n {
        let rows: [_; 4] = std::array::from_fn(|j| row(r0 + i + j));
        let (wr, sr) = (rows.map(|r| r.0), rows.map(|r| r.1));
        // Four tokens a call where the level has that kernel (the rows' bytes read and their
        // sums formed once for the four), the rest one token a call.
        let mut t0 = grouped;
        while t0 + 4 <= m {
            let ts: [usize; 4] = std::array::from_fn(|u| t0 + u);
            let Some(v) = k.dot_q8_x4t4(wr, sr, ts.map(qt), ts.map(dt), bs) else { break };
            for (u, v) in v.iter().enumerate() {
                for (j, &v) in v.iter().enumerate() {
                    o[(i + j) * m + t0 + u] = v;
                }
            }
            t0 += 4;
        }
        for t in t0..m {
            let v = k
                .dot_q8_x4(wr, sr, qt(t), dt(t), bs)
                .unwrap_or_else(|| rows.map(|(w, s)| k.dot_q8(w, s, qt(t), dt(t), bs)));
            for (j, &v) in v.iter().enumerate() {
                o[(i + j) * m + t] = v;
            }
        }
        i += 4;
    }
    for i in i..n {
        let (w, s) = row(r0 + i);
        for t in 0..m {
            o[i * m + t] = k.dot_q8(w, s, qt(t), dt(t), bs);
        }
    }
}
