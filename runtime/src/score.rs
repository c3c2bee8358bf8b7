//! Scoring text: llama.cpp's perplexity chunks, the log-probabilities of a completion given its
//! prompt (what a reference model contributes to an RL loop's KL penalty), and comparing two
//! models' predictions (KL divergence, top-1 agreement).

use crate::error::{Result, RuntimeError};
use crate::model::{Logits, Model};

/// `l − logsumexp(l)`, the sum accumulated in f64.
pub fn log_softmax(l: &[f32]) -> Vec<f32> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + l.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln() as f32;
    l.iter().map(|&v| v - lse).collect()
}

/// KL(base ‖ other) of two rows of log-probabilities, in nats; base entries below −30 (weight
/// under 1e-13) are skipped, as llama.cpp's KL statistics do.
pub fn kl_divergence(base: &[f32], other: &[f32]) -> f64 {
    base.iter().zip(other).map(|(&p, &q)| if p > -30.0 { (p as f64).exp() * (p - q) as f64 } else { 0.0 }).sum()
}

/// The chunks llama.cpp's perplexity tool scores: `tokens` cut into pieces of `ctx` (at most
/// `max_chunks` of them, 0 for all), each with its first token replaced by `bos` where the model
/// has one, so every chunk starts a fresh context.
pub fn perplexity_chunks(tokens: &[u32], ctx: usize, max_chunks: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    if ctx == 0 {
        return Vec::new();
    }
    let mut n = tokens.len() / ctx;
    if max_chunks > 0 {
        n = n.min(max_chunks);
    }
    (0..n)
        .map(|c| {
            let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            chunk
        })
        .collect()
}

/// One scored chunk: the log-probabilities (`rows × vocab`) of the positions in its second half,
/// each predicting the next token, and those tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredChunk {
    /// Row-major, one row per scored position.
    pub logprobs: Vec<f32>,
    /// The token each row predicts.
    pub targets: Vec<u32>,
}

impl ScoredChunk {
    /// The negative log-likelihood of the targets, summed.
    pub fn nll(&self) -> f64 {
        let vocab = self.logprobs.len() / self.targets.len().max(1);
        self.targets.iter().enumerate().map(|(r, &t)| -(self.logprobs[r * vocab + t as usize] as f64)).sum()
    }
}

/// Runs `chunk` in a fresh context and scores positions `len/2 .. len−1` (each predicting the
/// next token), as llama.cpp's perplexity tool does.
pub fn score_chunk(model: &Model, chunk: &[u32]) -> Result<ScoredChunk> {
    if chunk.len() < 4 {
        return Err(RuntimeError::Options(format!(
            "a chunk of {} tokens is too short to score (4 or more)",
            chunk.len()
        )));
    }
    let vocab = model.config.vocab_size;
    let mut cache = model.new_cache(chunk.len());
    let logits = model.forward(&mut cache, chunk, Logits::All)?;
    let first = chunk.len() / 2;
    let mut logprobs = Vec::with_capacity((chunk.len() - 1 - first) * vocab);
    for j in first..chunk.len() - 1 {
        logprobs.extend(log_softmax(&logits[j * vocab..(j + 1) * vocab]));
    }
    Ok(ScoredChunk { logprobs, targets: chunk[first + 1..].to_vec() })
}

/// The log-probability of each token of `completion` given `prompt` and the completion tokens
/// before it, from one forward pass over both.
pub fn completion_logprobs(model: &Model, prompt: &[u32], completion: &[u32]) -> Result<Vec<f32>> {
    if prompt.is_empty() {
        return Err(RuntimeError::Options("scoring needs at least one prompt token".into()));
    }
    if completion.is_empty() {
        return Ok(Vec::new());
    }
    let vocab = model.config.vocab_size;
    let all: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    // The last token is only looked up, never run: check them all here.
    if let Some(&id) = all.iter().find(|&&id| id as usize >= vocab) {
        return Err(RuntimeError::BadToken { id, vocab });
    }
    let mut cache = model.new_cache(all.len());
    let logits = model.forward(&mut cache, &all[..all.len() - 1], Logits::All)?;
    Ok(completion
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let row = prompt.len() - 1 + i;
            log_softmax(&logits[row * vocab..(row + 1) * vocab])[t as usize]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalises_and_kl_of_a_row_with_itself_is_zero() {
        let lp = log_softmax(&[1.0, 2.0, 3.0, -1e9]);
        let total: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(kl_divergence(&lp, &lp), 0.0);
        assert!(kl_divergence(&lp, &log_softmax(&[3.0, 2.0, 1.0, 0.0])) > 0.1);
    }

    #[test]
    fn chunks_start_with_bos_and_cover_whole_pieces() {
        let t: Vec<u32> = (10..30).collect();
        let c = perplexity_chunks(&t, 8, 0, Some(1));
        assert_eq!(c, vec![vec![1, 11, 12, 13, 14, 15, 16, 17], vec![1, 19, 20, 21, 22, 23, 24, 25]]);
        assert_eq!(perplexity_chunks(&t, 8, 1, None), vec![(10..18).collect::<Vec<u32>>()]);
        assert!(perplexity_chunks(&t, 0, 0, Some(1)).is_empty());
        let s = ScoredChunk { logprobs: vec![-1.0, -2.0, -0.5, -3.0], targets: vec![1, 0] };
        assert_eq!(s.nll(), 2.5);
    }
}
