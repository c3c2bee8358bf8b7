//! Eight decode tokens' block-int8 activations laid out for the eight-token 4-bit rows kernel
//! ([`crate::Kernels::dot_fourbit_q8_rows_t8`]): per block of 64 weights, per pair of tokens, the
//! two tokens' 32 even and 32 odd codes side by side (one 512-bit load each, taken straight into
//! `vpdpbusd`), the pair's unsigned-bias correction per lane (where the sums start) and its
//! activation scales per lane. Built once per product, read for every row: what the four-token
//! kernel redoes per row and block (two loads and an insert per pair, the correction, the factor
//! broadcasts) becomes a load.

use crate::lined::Lined;

/// Tokens in one group.
pub const GROUP: usize = 8;
/// Pairs in one group.
const PAIRS: usize = GROUP / 2;
/// Bytes of one block's codes of one token (even or odd half of 64 activations).
const HALF: usize = 32;

/// Groups of eight tokens' activations, in blocks of 64 ([`TokenPairs::new`]).
pub struct TokenPairs {
    /// `[group][block][pair][qe t0, qe t1, qo t0, qo t1]`, 32 bytes each.
    q: Lined<i8>,
    /// `[group][block][pair][16]`: lanes 0–7 token 2p's, 8–15 token 2p + 1's
    /// `−128 · Σ` of the four even and four odd codes each `vpdpbusd` lane takes: the unsigned
    /// bias of the level table, negated, where each lane's integer sum starts.
    corr: Lined<i32>,
    /// `[group][block][pair][16]`: the two tokens' activation scales, eight lanes each.
    xs: Lined<f32>,
    nb: usize,
    groups: usize,
}

/// One group of [`TokenPairs`].
#[derive(Clone, Copy)]
pub struct PairGroup<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) corr: &'a [i32],
    pub(crate) xs: &'a [f32],
    pub(crate) nb: usize,
}

impl TokenPairs {
    /// Tokens `8g .. 8g + 8` of each group `g`: `qe[t]`, `qo[t]` de-interleaved int8 codes of
    /// `nb` blocks of 64 activations (32 bytes of each per block), `xs[t]` their `nb` block
    /// scales. Every token must have them all (`qe.len() == qo.len() == xs.len()`, a multiple of
    /// eight).
    ///
    /// # Panics
    /// If a token has fewer than `32·nb` codes or `nb` scales, or the token count is not a
    /// multiple of eight.
    pub fn new(qe: &[&[i8]], qo: &[&[i8]], xs: &[&[f32]], nb: usize) -> TokenPairs {
        let tokens = qe.len();
        assert!(tokens.is_multiple_of(GROUP) && qo.len() == tokens && xs.len() == tokens);
        assert!((0..tokens).all(|t| qe[t].len() >= HALF * nb && qo[t].len() >= HALF * nb && xs[t].len() >= nb));
        let groups = tokens / GROUP;
        let mut q = Lined::<i8>::zeroed(groups * nb * PAIRS * 4 * HALF);
        let mut corr = Lined::<i32>::zeroed(groups * nb * PAIRS * 16);
        let mut xsv = Lined::<f32>::zeroed(groups * nb * PAIRS * 16);
        for t in 0..tokens {
            let (g, p, h) = (t / GROUP, (t % GROUP) / 2, t % 2);
            for (b, (e, o)) in qe[t].chunks(HALF).zip(qo[t].chunks(HALF)).take(nb).enumerate() {
                let at = (g * nb + b) * PAIRS + p;
                let dst = &mut q[at * 4 * HALF..(at + 1) * 4 * HALF];
                dst[h * HALF..(h + 1) * HALF].copy_from_slice(e);
                dst[(2 + h) * HALF..(3 + h) * HALF].copy_from_slice(o);
                for (l, (e4, o4)) in e.chunks(4).zip(o.chunks(4)).enumerate() {
                    let s: i32 = e4.iter().chain(o4).map(|&v| v as i32).sum();
                    corr[at * 16 + 8 * h + l] = -128 * s;
                    xsv[at * 16 + 8 * h + l] = xs[t][b];
                }
            }
        }
        TokenPairs { q, corr, xs: xsv, nb, groups }
    }

    /// How many groups of eight.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Blocks of 64 per token.
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
        PairGroup {
            q: &self.q[g * per * 4 * HALF..(g + 1) * per * 4 * HALF],
            corr: &self.corr[g * per * 16..(g + 1) * per * 16],
            xs: &self.xs[g * per * 16..(g + 1) * per * 16],
            nb: self.nb,
        }
    }
}

impl PairGroup<'_> {
    /// Token `t`'s (0..8) even and odd codes of block `b`.
    pub(crate) fn codes(&self, t: usize, b: usize) -> (&[i8], &[i8]) {
        let at = (b * PAIRS + t / 2) * 4 * HALF;
        let h = t % 2;
        (&self.q[at + h * HALF..at + (h + 1) * HALF], &self.q[at + (2 + h) * HALF..at + (3 + h) * HALF])
    }

    /// Token `t`'s scale of block `b`.
    pub(crate) fn scale(&self, t: usize, b: usize) -> f32 {
        self.xs[(b * PAIRS + t / 2) * 16 + 8 * (t % 2)]
    }
}
