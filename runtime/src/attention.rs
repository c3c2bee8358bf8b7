//! Prompt attention as matrix products: blocks of a prompt's queries against the keys they see
//! (its own, and for a prompt that continues a cached sequence the cached ones before them)
//! through gemm. Decode (one query per sequence) goes through the row loops in `model.rs`.

use crate::ops::softmax;
use lowbit_kernels::gemm_strided;

/// Queries per block. A block's scores reach only the keys it can see, so smaller blocks skip
/// more of the causal triangle's masked half (at 128 queries every block of a 128-token prompt
/// computed all 128 × 128 scores), and (block, head) tasks share out over the threads more
/// evenly than heads alone (SmolLM2's 9 heads on 2 threads were 5 against 4). It also bounds
/// the score buffer to `QB ×` (keys the block sees) floats per task.
const QB: usize = 32;

/// The attention shape of one layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    /// Elements per head.
    pub head_dim: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads / kv_heads` queries share one).
    pub kv_heads: usize,
    /// Mistral's sliding window: query `p` sees keys `p - window + 1 ..= p`.
    pub window: Option<usize>,
}

/// Each kv head's keys and values for positions `base ..` (the new tokens' own included): row
/// `pos − base` of head `h` at `k[h][(pos − base)·stride ..]`, `head_dim` values.
pub(crate) struct KeyValues<'a> {
    pub k: Vec<&'a [f32]>,
    pub v: Vec<&'a [f32]>,
    pub stride: usize,
    pub base: usize,
}

impl<'a> KeyValues<'a> {
    /// A prompt's own keys and values (`t × kv_heads × head_dim` each), from position `p0`.
    pub fn own(k: &'a [f32], v: &'a [f32], shape: &Heads, p0: usize) -> KeyValues<'a> {
        let (hd, kvd) = (shape.head_dim, shape.kv_heads * shape.head_dim);
        KeyValues {
            k: (0..shape.kv_heads).map(|h| &k[h * hd..]).collect(),
            v: (0..shape.kv_heads).map(|h| &v[h * hd..]).collect(),
            stride: kvd,
            base: p0,
        }
    }
}

/// Causal (sliding-window) attention of `t` tokens at positions `p0 .. p0 + t`: `q` holds `t ×
/// heads × head_dim` values, `kv` every key and value they see, `out` receives `t × heads ×
/// head_dim`. Per block of queries and head (or all the query heads of a grouped-query kv
/// head at once), scores = Q·Kᵀ as one gemm over the keys the block can see, masked and
/// softmaxed row by row, then P·V as a second gemm (a dot-kernel call per key and query cost a
/// large share of a long prefill; docs/PERFORMANCE.md).
pub(crate) fn prefill_attention(out: &mut [f32], q: &[f32], kv: &KeyValues, t: usize, p0: usize, shape: &Heads) {
    let Heads { head_dim: hd, heads: nh, kv_heads: nkv, window } = *shape;
    let group = nh / nkv;
    let qd = nh * hd;
    assert!(q.len() >= t * qd && out.len() >= t * qd && kv.k.len() == nkv && kv.v.len() == nkv);
    let first_key = |pos: usize| window.map_or(0, |w| (pos + 1).saturating_sub(w));
    assert!(kv.base <= first_key(p0) && kv.stride >= hd);
    let rows_fit = |s: &[f32]| s.len() + kv.stride >= (p0 + t - kv.base) * kv.stride + hd;
    assert!(kv.k.iter().chain(&kv.v).all(|s| rows_fit(s)), "attention: keys or values too short");
    let scale = 1.0 / (hd as f32).sqrt();
    let (qs, kvs) = (qd as isize, kv.stride as isize);
    let blocks = t.div_ceil(QB);
    // Heads a task takes: the query heads of one kv head together where there are tasks enough
    // for the threads (their keys and values packed for gemm once instead of once a head, and
    // one taller product), else one head a task.
    let per = if blocks * nkv >= 4 * rayon::current_num_threads() { group } else { 1 };
    let tasks_per_block = nh / per;
    // Tasks in order of falling cost (later blocks see more keys), so the last ones are short.
    let task = |n: usize| (blocks - 1 - n / tasks_per_block, n % tasks_per_block);
    // Task n's result goes to its own piece of `parts` (on the team, like the products around
    // it), row j·nq + r for head j of the task at query i0 + r (nq queries in the block), then
    // into place.
    let piece = per * QB * hd;
    let mut parts = vec![0f32; blocks * tasks_per_block * piece];
    lowbit_kernels::team::for_each_chunk_mut(
        &mut parts,
        piece,
        || (Vec::new(), Vec::new()),
        |(scores, qg), n, oh| {
            let (b, hg) = task(n);
            let (h0, kvh) = (hg * per, hg * per / group);
            let (i0, i1) = (b * QB, (b * QB + QB).min(t));
            let nq = i1 - i0;
            // The keys the block sees: positions klo .. p0 + i1.
            let klo = first_key(p0 + i0);
            let nk = p0 + i1 - klo;
            let rows = per * nq;
            // The product overwrites every score (no zeroing: a task's buffer is reused).
            scores.resize(rows * nk, 0.0);
            let at = (klo - kv.base) * kv.stride;
            let (kh, vh) = (&kv.k[kvh][at..], &kv.v[kvh][at..]);
            if per == 1 {
                let qh = &q[i0 * qd + h0 * hd..];
                gemm_strided(scores, (nk as isize, 1), qh, (qs, 1), kh, (1, kvs), rows, nk, hd, false);
            } else {
                // The heads' queries one after the other, so one gemm takes them all.
                qg.clear();
                for j in 0..per {
                    for i in i0..i1 {
                        qg.extend_from_slice(&q[i * qd + (h0 + j) * hd..][..hd]);
                    }
                }
                gemm_strided(scores, (nk as isize, 1), qg, (hd as isize, 1), kh, (1, kvs), rows, nk, hd, false);
            }
            for (r, row) in scores.chunks_mut(nk).enumerate() {
                let pos = p0 + i0 + r % nq;
                // Keys outside the window or in the future weigh exactly zero in P·V.
                let (a, b) = (first_key(pos) - klo, pos + 1 - klo);
                row[..a].fill(0.0);
                row[b..].fill(0.0);
                softmax(&mut row[a..b], scale);
            }
            let oh = &mut oh[..rows * hd];
            gemm_strided(oh, (hd as isize, 1), scores, (nk as isize, 1), vh, (kvs, 1), rows, hd, nk, false);
        },
    );
    // Into place a block of queries a task (on the team too: on the calling thread alone this
    // copy was 1.5 % of a 706-token prefill).
    let parts = &parts;
    lowbit_kernels::team::for_each_chunk_mut(
        &mut out[..t * qd],
        QB * qd,
        || (),
        |_, b, ob| {
            let nq = ob.len() / qd;
            for hg in 0..tasks_per_block {
                // The task that made block b's heads hg·per ..: task(n) = (b, hg).
                let n = (blocks - 1 - b) * tasks_per_block + hg;
                let oh = &parts[n * piece..(n + 1) * piece];
                for j in 0..per {
                    let (h, head) = (hg * per + j, &oh[j * nq * hd..(j + 1) * nq * hd]);
                    for (r, row) in head.chunks_exact(hd).enumerate() {
                        ob[r * qd + h * hd..r * qd + (h + 1) * hd].copy_from_slice(row);
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention straight from its definition, in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], t: usize, s: &Heads) -> Vec<f32> {
        let (hd, nh, nkv) = (s.head_dim, s.heads, s.kv_heads);
        let mut out = vec![0f32; t * nh * hd];
        for i in 0..t {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let lo = s.window.map_or(0, |w| (i + 1).saturating_sub(w));
                let qv = &q[(i * nh + h) * hd..][..hd];
                let scores: Vec<f64> = (lo..=i)
                    .map(|p| {
                        let kv = &k[(p * nkv + kvh) * hd..][..hd];
                        qv.iter().zip(kv).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..hd {
                    let acc: f64 = (lo..=i).zip(&e).map(|(p, w)| w / sum * v[(p * nkv + kvh) * hd + d] as f64).sum();
                    out[(i * nh + h) * hd + d] = acc as f32;
                }
            }
        }
        out
    }

    /// A prompt that continues a cached sequence (its queries at `p0 ..`, the keys from the first
    /// one any of them sees): the rows of the whole sequence's attention, with and without
    /// windows that start past the first cached key.
    #[test]
    fn continuing_prompts_match_the_definition() {
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        for (total, p0, window, nh, nkv) in
            [(70, 40, None, 4, 2), (300, 260, Some(50), 6, 2), (200, 199, None, 3, 3), (150, 33, Some(100), 4, 1)]
        {
            let shape = Heads { head_dim: 16, heads: nh, kv_heads: nkv, window };
            let (qd, kvd) = (nh * 16, nkv * 16);
            let q: Vec<f32> = (0..total * qd).map(|_| next()).collect();
            let k: Vec<f32> = (0..total * kvd).map(|_| next()).collect();
            let v: Vec<f32> = (0..total * kvd).map(|_| next()).collect();
            let want = reference(&q, &k, &v, total, &shape);
            let base = window.map_or(0, |w: usize| (p0 + 1usize).saturating_sub(w));
            let kv = KeyValues::own(&k[base * kvd..], &v[base * kvd..], &shape, base);
            let t = total - p0;
            let mut got = vec![f32::NAN; t * qd];
            prefill_attention(&mut got, &q[p0 * qd..], &kv, t, p0, &shape);
            for (i, (g, w)) in got.iter().zip(&want[p0 * qd..]).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "p0={p0} window={window:?} [{i}]: {g} vs {w}");
            }
        }
    }

    /// Block boundaries (t above and at multiples of the block), windows shorter and longer than a
    /// block, grouped and plain heads.
    #[test]
    fn matches_the_definition() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        for (t, window, nh, nkv) in
            [(2, None, 2, 1), (130, None, 4, 2), (300, Some(50), 4, 2), (257, Some(200), 3, 3), (128, Some(1), 2, 2)]
        {
            let shape = Heads { head_dim: 16, heads: nh, kv_heads: nkv, window };
            let q: Vec<f32> = (0..t * nh * 16).map(|_| next()).collect();
            let k: Vec<f32> = (0..t * nkv * 16).map(|_| next()).collect();
            let v: Vec<f32> = (0..t * nkv * 16).map(|_| next()).collect();
            let mut got = vec![f32::NAN; t * nh * 16];
            prefill_attention(&mut got, &q, &KeyValues::own(&k, &v, &shape, 0), t, 0, &shape);
            let want = reference(&q, &k, &v, t, &shape);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "t={t} window={window:?} [{i}]: {g} vs {w}");
            }
        }
    }
}
