//! Choosing the next token: greedy, or temperature with top-k / top-p / min-p, plus a
//! repetition penalty, from a seeded generator so the same seed gives the same text. With top-k
//! the k best are softmaxed in order (as transformers does); without it the probabilities are
//! normalised over the whole vocabulary in id order and the candidates sorted only as far as the
//! cuts and the draw reach.

use crate::error::{Result, RuntimeError};

/// Sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Values above 1 discourage tokens already in the sequence (transformers' rule: positive
    /// logits are divided by it, negative ones multiplied).
    pub repetition_penalty: f32,
    /// OpenAI's presence penalty: subtracted once from the logit of every token already in
    /// the sequence (-2 ..= 2; 0 = off).
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted from a token's logit once per occurrence so far
    /// (-2 ..= 2; 0 = off).
    pub frequency_penalty: f32,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    state: u64,
}

impl Sampler {
    /// Checks the settings.
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        if !(cfg.temperature >= 0.0 && cfg.temperature.is_finite()) {
            return Err(RuntimeError::Sampling(format!("temperature {} must be ≥ 0", cfg.temperature)));
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return Err(RuntimeError::Sampling(format!("top-p {} must be in (0, 1]", cfg.top_p)));
        }
        if !(0.0..=1.0).contains(&cfg.min_p) {
            return Err(RuntimeError::Sampling(format!("min-p {} must be in [0, 1]", cfg.min_p)));
        }
        for (name, v) in [("presence penalty", cfg.presence_penalty), ("frequency penalty", cfg.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(RuntimeError::Sampling(format!("{name} {v} must be in [-2, 2]")));
            }
        }
        if !(cfg.repetition_penalty > 0.0 && cfg.repetition_penalty.is_finite()) {
            return Err(RuntimeError::Sampling(format!("repetition penalty {} must be > 0", cfg.repetition_penalty)));
        }
        Ok(Sampler { cfg, state: cfg.seed ^ 0x9E37_79B9_7F4A_7C15 })
    }

    /// SplitMix64: tiny, fast and good enough to draw one number per token.
    fn next_f32(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks a token from `logits` given the tokens so far: `history` is the prompt's first
    /// `prompt_len` tokens, then the generated ones. The repetition penalty looks at all of it
    /// (as transformers does); the presence and frequency penalties at the generated tokens only
    /// (as OpenAI defines them: a prompt full of commas must not forbid commas).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], prompt_len: usize) -> u32 {
        let mut l = logits.to_vec();
        let c = &self.cfg;
        let counts = |tokens: &[u32]| {
            let mut seen = tokens.to_vec();
            seen.sort_unstable();
            seen.chunk_by(|a, b| a == b).map(|run| (run[0], run.len())).collect::<Vec<_>>()
        };
        if c.repetition_penalty != 1.0 {
            for (id, _) in counts(history) {
                if let Some(v) = l.get_mut(id as usize) {
                    *v = if *v > 0.0 { *v / c.repetition_penalty } else { *v * c.repetition_penalty };
                }
            }
        }
        if c.presence_penalty != 0.0 || c.frequency_penalty != 0.0 {
            for (id, n) in counts(&history[prompt_len.min(history.len())..]) {
                if let Some(v) = l.get_mut(id as usize) {
                    *v -= c.presence_penalty + c.frequency_penalty * n as f32;
                }
            }
        }
        if self.cfg.temperature == 0.0 {
            return argmax(&l);
        }
        // Candidates by falling logit, ties by id, sorted only as far as the cuts and the draw
        // reach (sorting all 49,152 of SmolLM2's tokens cost 1.7 ms a token, a quarter of its
        // decode): `order[..sorted]` is always the start of the full order.
        let by_logit = |a: &u32, b: &u32| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b));
        let n = l.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut sorted = 0;
        let sort_to = |order: &mut [u32], sorted: &mut usize, want: usize| {
            let want = want.min(order.len());
            if want <= *sorted {
                return;
            }
            let (rest, need) = (&mut order[*sorted..], want - *sorted);
            if need < rest.len() {
                rest.select_nth_unstable_by(need - 1, by_logit);
            }
            rest[..need].sort_unstable_by(by_logit);
            *sorted = want;
        };
        // Position `j` of the order, sorting further (four times as far, at least 64) first
        // when the order is not sorted that far yet.
        let at = |order: &mut [u32], sorted: &mut usize, j: usize| {
            if j >= *sorted {
                sort_to(order, sorted, (4 * *sorted).max(64).max(j + 1));
            }
            order[j]
        };
        let t = self.cfg.temperature;
        let k = self.cfg.top_k;
        if k > 0 && k < n {
            // Top-k: the k best, their probabilities and sums in that order.
            sort_to(&mut order, &mut sorted, k);
            order.truncate(k);
            return self.draw_sorted(&l, order, t);
        }
        // Every token a candidate: probabilities over the whole vocabulary, summed in id order;
        // the cuts keep a start of the order.
        sort_to(&mut order, &mut sorted, 1);
        let max = l[order[0] as usize];
        // exp(l/t − max/t), eight or sixteen at a time (the same bits on every ISA).
        let mut w: Vec<f32> = l.iter().map(|&v| v / t).collect();
        lowbit_kernels::kernels().exp_sub(&mut w, max / t);
        let sum: f32 = w.iter().sum();
        let p = |i: u32| w[i as usize] / sum;
        // min_p: the tokens within min_p of the most likely (at least one).
        let floor = p(order[0]) * self.cfg.min_p;
        let c = if self.cfg.min_p > 0.0 { w.iter().filter(|&&x| x / sum >= floor).count().max(1) } else { n };
        // top_p: the shortest start of the order whose probability reaches p.
        let mut keep = c;
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut j = 0;
            while j < c {
                acc += p(at(&mut order, &mut sorted, j));
                j += 1;
                if acc >= self.cfg.top_p {
                    break;
                }
            }
            keep = j;
        }
        let total: f32 = if keep == n {
            w.iter().map(|&x| x / sum).sum()
        } else if keep == c {
            w.iter().map(|&x| x / sum).filter(|&q| q >= floor).sum()
        } else {
            order[..keep].iter().map(|&i| p(i)).sum()
        };
        let mut r = self.next_f32() * total;
        for j in 0..keep {
            let id = at(&mut order, &mut sorted, j);
            let q = p(id);
            if r < q {
                return id;
            }
            r -= q;
        }
        // Rounding left a sliver of `r`: the last candidate.
        at(&mut order, &mut sorted, keep - 1)
    }

    /// The draw among `idx` (ids by falling logit): softmax at temperature `t` in that order,
    /// then the min-p and top-p cuts, then the seeded draw.
    fn draw_sorted(&mut self, l: &[f32], mut idx: Vec<u32>, t: f32) -> u32 {
        let max = l[idx[0] as usize];
        let mut probs: Vec<f32> = idx.iter().map(|&i| ((l[i as usize] - max) / t).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.cfg.min_p > 0.0 {
            // probs[0] is the largest: keep those within min_p of it (at least one).
            let floor = probs[0] * self.cfg.min_p;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
            idx.truncate(keep);
        }
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|&p| {
                acc += p;
                acc >= self.cfg.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.next_f32() * total;
        for (&i, &p) in idx.iter().zip(&probs) {
            if r < p {
                return i;
            }
            r -= p;
        }
        *idx.last().expect("at least one candidate")
    }
}

/// Index of the largest logit (the first one on ties, like torch.argmax).
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let mut g = Sampler::new(SamplerConfig::default()).unwrap();
        assert_eq!(g.sample(&logits, &[], 0), 1);
        let cfg = SamplerConfig { temperature: 1.0, seed: 7, ..Default::default() };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg).unwrap();
            (0..20).map(|_| s.sample(&logits, &[], 0)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg).unwrap();
            (0..20).map(|_| s.sample(&logits, &[], 0)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != a[0]), "temperature 1 over close logits should vary");
    }

    #[test]
    fn top_k_one_is_greedy_and_penalty_applies() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 1, ..Default::default() }).unwrap();
        assert_eq!(s.sample(&logits, &[], 0), 1);
        let mut p = Sampler::new(SamplerConfig { repetition_penalty: 2.0, ..Default::default() }).unwrap();
        assert_eq!(p.sample(&logits, &[1], 0), 2);
        assert!(Sampler::new(SamplerConfig { top_p: 0.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplerConfig { min_p: 1.5, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplerConfig { presence_penalty: 2.5, ..Default::default() }).is_err());
    }

    /// Without top-k, over a vocabulary of thousands (candidates sorted only as far as needed):
    /// top-p draws stay inside the shortest most-likely set reaching p, min-p inside its floor,
    /// the most likely tokens do get drawn, and a seed repeats its draws.
    #[test]
    fn lazy_order_respects_top_p_and_min_p() {
        let mut x = 12345u64;
        let logits: Vec<f32> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 12.0
            })
            .collect();
        let mut ids: Vec<usize> = (0..logits.len()).collect();
        ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let w: Vec<f64> = ids.iter().map(|&i| ((logits[i] - logits[ids[0]]) as f64).exp()).collect();
        let sum: f64 = w.iter().sum();
        // The top-p set (f64), with a little slack for f32 rounding at its edge.
        let mut acc = 0.0;
        let n_p = w.iter().position(|p| {
            acc += p / sum;
            acc >= 0.9
        });
        let allowed: std::collections::HashSet<u32> = ids[..n_p.unwrap() + 3].iter().map(|&i| i as u32).collect();
        let cfg = SamplerConfig { temperature: 1.0, top_p: 0.9, seed: 11, ..Default::default() };
        let draw = || {
            let mut s = Sampler::new(cfg).unwrap();
            (0..400).map(|_| s.sample(&logits, &[], 0)).collect::<Vec<u32>>()
        };
        let drawn = draw();
        assert_eq!(drawn, draw());
        assert!(drawn.iter().all(|t| allowed.contains(t)));
        assert!(drawn.contains(&(ids[0] as u32)));
        // min-p 0.2: only tokens within a factor 5 of the most likely.
        let cfg = SamplerConfig { temperature: 1.0, min_p: 0.2, seed: 5, ..Default::default() };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..400 {
            let t = s.sample(&logits, &[], 0) as usize;
            assert!(logits[t] >= logits[ids[0]] - 5f32.ln() - 1e-4, "token {t} below the min-p floor");
        }
    }

    #[test]
    fn presence_frequency_and_min_p() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        // Token 1 seen twice: 2.0 - 0.04 - 2·0.04 = 1.88 < 1.9; once: 1.92 > 1.9.
        let cfg = SamplerConfig { presence_penalty: 0.04, frequency_penalty: 0.04, ..Default::default() };
        assert_eq!(Sampler::new(cfg).unwrap().sample(&logits, &[1, 1], 0), 2);
        assert_eq!(Sampler::new(cfg).unwrap().sample(&logits, &[1], 0), 1);
        // Prompt tokens do not count for these two penalties.
        assert_eq!(Sampler::new(cfg).unwrap().sample(&logits, &[1, 1, 1, 1], 4), 1);
        // min_p 0.5 at temperature 1 keeps tokens 1 and 2 only (e^-0.1 ≈ 0.9 of the top).
        let cfg = SamplerConfig { temperature: 1.0, min_p: 0.5, seed: 3, ..Default::default() };
        let mut s = Sampler::new(cfg).unwrap();
        let drawn: Vec<u32> = (0..200).map(|_| s.sample(&logits, &[], 0)).collect();
        assert!(drawn.iter().all(|&t| t == 1 || t == 2), "{drawn:?}");
        assert!(drawn.contains(&1) && drawn.contains(&2));
    }
}
