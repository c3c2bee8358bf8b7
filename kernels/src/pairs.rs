//! Eight decode tokens' block-int8 activations laid out for the eight-token rows kernels
//! ([`crate::Kernels::dot_fourbit_q8_rows_t8`], [`crate::Kernels::dot_q8_rows_t8`]): per block,
//! per pair of tokens, each 32-byte step of the two tokens' codes side by side (one 512-bit load,
//! taken straight into `vpdpbusd`; a 4-bit block of 64 is two steps, its even and its odd
//! activations), the pair's unsigned-bias correction per lane (where the sums start) and its
//! activation scales per lane. Built once per product, read for every row: what the four-token
//! kernel redoes per row and block (two loads and an insert per pair, the correction, the factor
//! broadcasts) becomes a load.

use crate::lined::Lined;

/// Tokens in one group.
pub const GROUP: usize = 8;
/// Pairs in one group.
const PAIRS: usize = GROUP / 2;
/// Bytes of one step of one token's codes.
const HALF: usize = 32;

/// Groups of eight tokens' activations ([`TokenPairs::new`], [`TokenPairs::q8`]).
pub struct TokenPairs {
    /// `[group][block][pair][step][t0, t1]`, 32 bytes each.
    q: Lined<i8>,
    /// `|q|` in the same layout (the AVX2 kernel's unsigned operand).
    aq: Lined<i8>,
    /// `[group][block][pair][16]`: lanes 0–7 token 2p's, 8–15 token 2p + 1's `−128 · Σ` of the
    /// codes each `vpdpbusd` lane takes over the block's steps (four a step): the unsigned bias
    /// (of the 4-bit level table, or of the block int8 weights), negated, where each lane's
    /// integer sum starts.
    corr: Lined<i32>,
    /// `[group][block][pair][16]`: the two tokens' activation scales, eight lanes each.
    xs: Lined<f32>,
    nb: usize,
    steps: usize,
    groups: usize,
}

/// One group of [`TokenPairs`].
#[derive(Clone, Copy)]
pub struct PairGroup<'a> {
    pub(crate) q: &'a [i8],
    /// Read by the AVX2 kernels only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) aq: &'a [i8],
    pub(crate) corr: &'a [i32],
    pub(crate) xs: &'a [f32],
    pub(crate) nb: usize,
    pub(crate) steps: usize,
}

/// One group's stretches of a layout's four buffers (codes, their absolute values, bias
/// corrections, scales).
type GroupParts<'b> = ((&'b mut [i8], &'b mut [i8]), (&'b mut [i32], &'b mut [f32]));

impl TokenPairs {
    /// For 4-bit weights in blocks of 64: tokens `8g .. 8g + 8` of each group `g`, `qe[t]`,
    /// `qo[t]` de-interleaved int8 codes of `nb` blocks of 64 activations (32 bytes of each per
    /// block), `xs[t]` their `nb` block scales.
    ///
    /// # Panics
    /// If a token has fewer than `32·nb` codes or `nb` scales, or the token count is not a
    /// multiple of eight.
    pub fn new(qe: &[&[i8]], qo: &[&[i8]], xs: &[&[f32]], nb: usize) -> TokenPairs {
        assert!(qo.len() == qe.len() && xs.len() == qe.len());
        assert!((0..qe.len()).all(|t| qe[t].len() >= HALF * nb && qo[t].len() >= HALF * nb && xs[t].len() >= nb));
        let step = |t: usize, b: usize, st: usize| {
            let src = if st == 0 { qe[t] } else { qo[t] };
            &src[b * HALF..(b + 1) * HALF]
        };
        TokenPairs::build(qe.len(), nb, 2, step, |t, b| xs[t][b])
    }

    /// For block int8 weights: tokens `8g .. 8g + 8` of each group `g`, `q[t]` their int8 codes
    /// in `nb` blocks of `blocksize` (a multiple of 32), `d[t]` the blocks' scales.
    ///
    /// # Panics
    /// If a token has fewer than `blocksize·nb` codes or `nb` scales, `blocksize` is not a
    /// multiple of 32, or the token count is not a multiple of eight.
    pub fn q8(q: &[&[i8]], d: &[&[f32]], blocksize: usize, nb: usize) -> TokenPairs {
        assert!(blocksize > 0 && blocksize.is_multiple_of(HALF) && d.len() == q.len());
        assert!((0..q.len()).all(|t| q[t].len() >= blocksize * nb && d[t].len() >= nb));
        let step = |t: usize, b: usize, st: usize| &q[t][b * blocksize + st * HALF..b * blocksize + (st + 1) * HALF];
        TokenPairs::build(q.len(), nb, blocksize / HALF, step, |t, b| d[t][b])
    }

    /// The layout from each token's 32-byte steps and block scales.
    fn build<'a>(
        tokens: usize,
        nb: usize,
        steps: usize,
        step: impl Fn(usize, usize, usize) -> &'a [i8] + Sync,
        scale: impl Fn(usize, usize) -> f32 + Sync,
    ) -> TokenPairs {
        assert!(tokens.is_multiple_of(GROUP));
        let groups = tokens / GROUP;
        let (gq, gc) = (nb * PAIRS * steps * 2 * HALF, nb * PAIRS * 16);
        let mut q = Lined::<i8>::zeroed(groups * gq);
        let mut aq = Lined::<i8>::zeroed(q.len());
        let mut corr = Lined::<i32>::zeroed(groups * gc);
        let mut xsv = Lined::<f32>::zeroed(groups * gc);
        // A group's tokens fill only its own stretch of each buffer: the groups on the team (a
        // prompt's layout cost a serial 1.5 % of a two-thread prefill, sixteen sequences' about
        // 1 ms of a 25 ms decode step), one group where it is.
        let mut parts: Vec<_> =
            q.chunks_mut(gq).zip(aq.chunks_mut(gq)).zip(corr.chunks_mut(gc).zip(xsv.chunks_mut(gc))).collect();
        let fill = |g: usize, part: &mut GroupParts<'_>| {
            let ((q, aq), (corr, xsv)) = part;
            for t in g * GROUP..(g + 1) * GROUP {
                let (p, h) = ((t % GROUP) / 2, t % 2);
                for b in 0..nb {
                    let at = b * PAIRS + p;
                    let mut lanes = [0i32; 8];
                    for st in 0..steps {
                        let src = step(t, b, st);
                        let from = (at * steps + st) * 2 * HALF + h * HALF;
                        q[from..from + HALF].copy_from_slice(src);
                        for (a, &v) in aq[from..from + HALF].iter_mut().zip(src) {
                            *a = v.unsigned_abs() as i8;
                        }
                        for (l, four) in src.chunks(4).enumerate() {
                            lanes[l] += four.iter().map(|&v| v as i32).sum::<i32>();
                        }
                    }
                    for (l, s) in lanes.iter().enumerate() {
                        corr[at * 16 + 8 * h + l] = -128 * s;
                        xsv[at * 16 + 8 * h + l] = scale(t, b);
                    }
                }
            }
        };
        if groups >= 2 {
            crate::team::for_each_chunk_mut(&mut parts, 1, || (), |_, g, part| fill(g, &mut part[0]));
        } else {
            parts.iter_mut().enumerate().for_each(|(g, part)| fill(g, part));
        }
        drop(parts);
        TokenPairs { q, aq, corr, xs: xsv, nb, steps, groups }
    }

    /// How many groups of eight.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Blocks per token.
    pub fn blocks(&self) -> usize {
        self.nb
    }

    /// Group `g`.
    ///
    /// # Panics
    /// If `g >= self.groups()`.
    pub fn group(&self, g: usize) -> PairGroup<'_> {
        assert!(g < self.groups);
        let per = self.nb * PAIRS;
        let bytes = per * self.steps * 2 * HALF;
        PairGroup {
            q: &self.q[g * bytes..(g + 1) * bytes],
            aq: &self.aq[g * bytes..(g + 1) * bytes],
            corr: &self.corr[g * per * 16..(g + 1) * per * 16],
            xs: &self.xs[g * per * 16..(g + 1) * per * 16],
            nb: self.nb,
            steps: self.steps,
        }
    }
}

impl PairGroup<'_> {
    /// Token `t`'s (0..8) codes of step `st` of block `b` (a 4-bit block's even codes are step
    /// 0, its odd ones step 1).
    pub(crate) fn step(&self, t: usize, b: usize, st: usize) -> &[i8] {
        let from = ((b * PAIRS + t / 2) * self.steps + st) * 2 * HALF + (t % 2) * HALF;
        &self.q[from..from + HALF]
    }

    /// Token `t`'s scale of block `b`.
    pub(crate) fn scale(&self, t: usize, b: usize) -> f32 {
        self.xs[(b * PAIRS + t / 2) * 16 + 8 * (t % 2)]
    }
}
