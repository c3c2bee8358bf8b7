//! A prompt's block-int8 activations laid out for a matrix unit (AMX's `tdpbssd`): per group of
//! 16 tokens and block of `bs` activations, one tile of `bs / 4` rows of 64 bytes whose row `j`
//! holds, for each token `n`, the block's activations `4j .. 4j + 4` at bytes `4n .. 4n + 4` (the
//! unit's "VNNI" layout of its right operand). For 4-bit weights (blocks of 64) the activations
//! are in the codes' order: the 32 even ones (high nibbles), then the 32 odd ones (low nibbles),
//! so a row of codes looked up into `[high levels, low levels]` meets them with no shuffle; for
//! block int8 weights they are in their own order.
//!
//! Built once per product from the activations the other kernels take, and read by every row of
//! every weight of the call.

use crate::lined::Lined;

/// Tokens per group: the rows of the unit's result tile.
pub const PANEL_TOKENS: usize = 16;

/// The activations of `groups · 16` tokens (the last group padded with all-zero tokens) over
/// `nb` blocks of `bs`, and each token's block scales grouped the same way.
pub struct Panel {
    bytes: Lined<i8>,
    xs: Lined<f32>,
    nb: usize,
    bs: usize,
    groups: usize,
}

impl Panel {
    /// An empty panel of `m` tokens, `nb` blocks of `bs` (a multiple of 4, at most 64).
    fn zeroed(nb: usize, bs: usize, m: usize) -> Panel {
        let groups = m.div_ceil(PANEL_TOKENS);
        Panel {
            bytes: Lined::zeroed(groups * nb * PANEL_TOKENS * bs),
            xs: Lined::zeroed(groups * nb * PANEL_TOKENS),
            nb,
            bs,
            groups,
        }
    }

    /// Fills the panel group by group: `group(g, words, xs)` gets group `g`'s tiles (as words of
    /// four activations) and scales. A prompt's groups (two or more) go to the team's threads:
    /// laid out on the calling thread alone, a 706-token prompt's panels took about 2 % of its
    /// prefill while the other thread waited.
    fn fill(&mut self, group: impl Fn(usize, &mut [u32], &mut [f32]) + Sync + Send) {
        let (gb, gx) = (self.nb * PANEL_TOKENS * self.bs, self.nb * PANEL_TOKENS);
        let mut groups: Vec<(&mut [i8], &mut [f32])> = self.bytes.chunks_mut(gb).zip(self.xs.chunks_mut(gx)).collect();
        // Each group starts on a whole line of the buffer, so its bytes are whole words.
        let run = |g: usize, (bytes, xs): &mut (&mut [i8], &mut [f32])| group(g, bytemuck::cast_slice_mut(bytes), xs);
        if groups.len() < 2 {
            groups.iter_mut().enumerate().for_each(|(g, p)| run(g, p));
        } else {
            crate::team::for_each_chunk_mut(&mut groups, 1, || (), |_, g, p| run(g, &mut p[0]));
        }
    }

    /// Puts `src` (a multiple of 4 activations) into token `n` of a group's block `b` (its
    /// tiles as `words`, its scales `xs`) from activation `4·j0` on, four bytes at a time, and
    /// sets the block's scale.
    #[allow(clippy::too_many_arguments)]
    fn put(words: &mut [u32], xs: &mut [f32], bs: usize, n: usize, b: usize, j0: usize, src: &[i8], scale: f32) {
        let tile = b * PANEL_TOKENS * bs / 4;
        for (j, four) in src.chunks_exact(4).enumerate() {
            let four: [i8; 4] = four.try_into().expect("chunks of four");
            words[tile + PANEL_TOKENS * (j0 + j) + n] = u32::from_ne_bytes(bytemuck::cast(four));
        }
        xs[b * PANEL_TOKENS + n] = scale;
    }

    /// From `m` tokens' de-interleaved activations (token `t`'s even ones at `qe[t·stride ..]`,
    /// odd ones at `qo[t·stride ..]`, `32·nb` each) and block scales (`xs[t·nb ..]`, `nb` each).
    pub fn new(qe: &[i8], qo: &[i8], stride: usize, xs: &[f32], nb: usize, m: usize) -> Panel {
        let mut p = Panel::zeroed(nb, 64, m);
        p.fill(|g, words, gxs| {
            for (n, t) in (g * PANEL_TOKENS..m.min((g + 1) * PANEL_TOKENS)).enumerate() {
                for b in 0..nb {
                    Panel::put(words, gxs, 64, n, b, 0, &qe[t * stride + 32 * b..][..32], xs[t * nb + b]);
                    Panel::put(words, gxs, 64, n, b, 8, &qo[t * stride + 32 * b..][..32], xs[t * nb + b]);
                }
            }
        });
        p
    }

    /// From `m` tokens' block int8 activations (token `t`'s at `q[t·stride ..]`, `nb · bs` of
    /// them, its block scales at `d[t·nb ..]`), blocks of `bs` (32 or 64).
    pub fn q8(q: &[i8], stride: usize, d: &[f32], bs: usize, nb: usize, m: usize) -> Panel {
        assert!(bs == 32 || bs == 64, "blocks of 32 or 64");
        let mut p = Panel::zeroed(nb, bs, m);
        p.fill(|g, words, gxs| {
            for (n, t) in (g * PANEL_TOKENS..m.min((g + 1) * PANEL_TOKENS)).enumerate() {
                for b in 0..nb {
                    Panel::put(words, gxs, bs, n, b, 0, &q[t * stride + bs * b..][..bs], d[t * nb + b]);
                }
            }
        });
        p
    }

    /// From `m` tokens' whole-row int8 activations (LLM.int8's: token `t`'s `cols` at
    /// `q[t·cols ..]`, `cols` a multiple of 64), in blocks of 64 without scales.
    pub fn int8(q: &[i8], cols: usize, m: usize) -> Panel {
        assert!(cols.is_multiple_of(64), "rows in whole tiles of 64");
        let nb = cols / 64;
        let mut p = Panel::zeroed(nb, 64, m);
        p.fill(|g, words, gxs| {
            for (n, t) in (g * PANEL_TOKENS..m.min((g + 1) * PANEL_TOKENS)).enumerate() {
                for b in 0..nb {
                    Panel::put(words, gxs, 64, n, b, 0, &q[t * cols + 64 * b..][..64], 0.0);
                }
            }
        });
        p
    }

    /// Groups of 16 tokens.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Blocks per token.
    pub fn nb(&self) -> usize {
        self.nb
    }

    /// Activations per block.
    pub fn blocksize(&self) -> usize {
        self.bs
    }

    /// Token `t`'s activation `k` (`k < bs`, in the order above) of block `b`.
    pub fn value(&self, t: usize, b: usize, k: usize) -> i8 {
        let (g, n) = (t / PANEL_TOKENS, t % PANEL_TOKENS);
        self.bytes[(g * self.nb + b) * PANEL_TOKENS * self.bs + 64 * (k / 4) + 4 * n + k % 4]
    }

    /// Token `t`'s scale of block `b` (its share of the block factor, as in the other tiles).
    pub fn scale(&self, t: usize, b: usize) -> f32 {
        let (g, n) = (t / PANEL_TOKENS, t % PANEL_TOKENS);
        self.xs[(g * self.nb + b) * PANEL_TOKENS + n]
    }

    /// The tile of group `g`, block `b` (`bs / 4` rows 64 bytes apart, on a line boundary).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn tile(&self, g: usize, b: usize) -> &[i8] {
        let len = PANEL_TOKENS * self.bs;
        &self.bytes[(g * self.nb + b) * len..(g * self.nb + b + 1) * len]
    }

    /// The 16 tokens' scales of group `g`, block `b`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn scales(&self, g: usize, b: usize) -> &[f32] {
        &self.xs[(g * self.nb + b) * PANEL_TOKENS..(g * self.nb + b + 1) * PANEL_TOKENS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_activation_lands_where_value_reads_it() {
        let (nb, m, stride) = (3usize, 21usize, 128usize);
        let qe: Vec<i8> = (0..m * stride).map(|i| (i % 251) as i8).collect();
        let qo: Vec<i8> = (0..m * stride).map(|i| (i % 241) as i8 ^ 0x55).collect();
        let xs: Vec<f32> = (0..m * nb).map(|i| i as f32 + 0.5).collect();
        let p = Panel::new(&qe, &qo, stride, &xs, nb, m);
        assert_eq!((p.groups(), p.nb()), (2, nb));
        for t in 0..2 * PANEL_TOKENS {
            for b in 0..nb {
                for k in 0..64 {
                    let want = match (t < m, k < 32) {
                        (false, _) => 0,
                        (true, true) => qe[t * stride + 32 * b + k],
                        (true, false) => qo[t * stride + 32 * b + k - 32],
                    };
                    assert_eq!(p.value(t, b, k), want, "t={t} b={b} k={k}");
                }
                assert_eq!(p.scale(t, b), if t < m { xs[t * nb + b] } else { 0.0 });
            }
        }
        for bs in [32, 64] {
            let p = Panel::q8(&qe, stride, &xs, bs, 2, m);
            for t in 0..2 * PANEL_TOKENS {
                for b in 0..2 {
                    for k in 0..bs {
                        let want = if t < m { qe[t * stride + bs * b + k] } else { 0 };
                        assert_eq!(p.value(t, b, k), want, "bs={bs} t={t} b={b} k={k}");
                    }
                    assert_eq!(p.scale(t, b), if t < m { xs[t * 2 + b] } else { 0.0 });
                }
            }
        }
    }
}
