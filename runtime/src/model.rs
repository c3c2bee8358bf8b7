//! The decoder forward pass (Hugging Face `MistralForCausalLM` / `LlamaForCausalLM` /
//! `Qwen2ForCausalLM`), over weights that stay in the mmap. Prefill runs the batched matmul
//! kernels over all new tokens at once; decode (one token) runs matvec.

use crate::attention::{prefill_attention, Heads};
use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use crate::kv_cache::KvCache;
use crate::ops::{add_inplace, rmsnorm, silu_mul, softmax, Rope};
use crate::weights::ModelWeights;
use lowbit_format::ModelFile;
use lowbit_kernels::{matmul, MatmulOptions, Weight};
use rayon::prelude::*;

/// A loaded model: configuration plus views of its weights.
#[derive(Debug)]
pub struct Model<'a> {
    /// Hyper-parameters.
    pub config: ModelConfig,
    weights: ModelWeights<'a>,
    rope: Rope,
    opts: MatmulOptions,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (generation).
    Last,
    /// Every position's, row-major `tokens × vocab` (`lowbit logits`).
    All,
}

fn linear(out: &mut Vec<f32>, w: &Weight, x: &[f32], m: usize, opts: &MatmulOptions) -> Result<()> {
    out.clear();
    out.resize(m * w.rows(), 0.0);
    matmul(out, w, x, m, opts)?;
    Ok(())
}

impl<'a> Model<'a> {
    /// Reads the configuration from the file's metadata and checks every tensor.
    pub fn new(file: &'a ModelFile) -> Result<Model<'a>> {
        let config = ModelConfig::from_json(&file.metadata().config)?;
        let weights = ModelWeights::load(file, &config)?;
        let rope = Rope::new(config.head_dim, config.rope_theta);
        let opts =
            MatmulOptions { int8_threshold: file.metadata().quantization.int8_threshold, ..MatmulOptions::default() };
        Ok(Model { config, weights, rope, opts })
    }

    /// The kernel options in use (int8 threshold from the file, 4-bit route).
    pub fn options(&self) -> MatmulOptions {
        self.opts
    }

    /// Changes the kernel options (e.g. the exact float 4-bit path).
    pub fn set_options(&mut self, opts: MatmulOptions) {
        self.opts = opts;
    }

    /// A cache for up to `context` positions (ignored beyond the window for sliding-window models).
    pub fn new_cache(&self, context: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(c.num_layers, c.num_kv_heads * c.head_dim, c.sliding_window, context)
    }

    /// Runs `tokens` (at positions `cache.len ..`) through the model, appends them to the cache and
    /// returns logits.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let c = &self.config;
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(RuntimeError::BadToken { id, vocab: c.vocab_size });
        }
        if !cache.fits(t) {
            return Err(RuntimeError::ContextFull { tokens: cache.len + t, context: cache.capacity() });
        }
        let (hd, nh, nkv, hsz) = (c.head_dim, c.num_heads, c.num_kv_heads, c.hidden_size);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let p0 = cache.len;

        // 1. embeddings
        let mut h = vec![0f32; t * hsz];
        for (row, &id) in h.chunks_mut(hsz).zip(tokens) {
            self.weights.embed.dequantize_row(id as usize, row);
        }
        let mut x = vec![0f32; t * hsz];
        let (mut q, mut k, mut v, mut att, mut o) =
            (Vec::new(), Vec::new(), Vec::new(), vec![0f32; t * qd], Vec::new());
        let (mut gate, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new());

        for (li, lw) in self.weights.layers.iter().enumerate() {
            // 2a. input RMSNorm
            for (xr, hr) in x.chunks_mut(hsz).zip(h.chunks(hsz)) {
                rmsnorm(xr, hr, &lw.input_norm, c.rms_norm_eps);
            }
            // 2b. projections (+ Qwen2 biases)
            linear(&mut q, &lw.q, &x, t, &self.opts)?;
            linear(&mut k, &lw.k, &x, t, &self.opts)?;
            linear(&mut v, &lw.v, &x, t, &self.opts)?;
            if let Some([bq, bk, bv]) = &lw.qkv_bias {
                q.chunks_mut(qd).for_each(|r| add_inplace(r, bq));
                k.chunks_mut(kvd).for_each(|r| add_inplace(r, bk));
                v.chunks_mut(kvd).for_each(|r| add_inplace(r, bv));
            }
            // 2c. rotary embedding, rotate_half layout
            for i in 0..t {
                self.rope.apply(&mut q[i * qd..(i + 1) * qd], hd, p0 + i);
                self.rope.apply(&mut k[i * kvd..(i + 1) * kvd], hd, p0 + i);
            }
            // 2d/e. causal (sliding-window) grouped-query attention
            self.attention(&mut att, &q, &k, &v, cache, li, p0);
            for i in 0..t {
                cache.put(li, p0 + i, &k[i * kvd..(i + 1) * kvd], &v[i * kvd..(i + 1) * kvd]);
            }
            // 2f. output projection and residual
            linear(&mut o, &lw.o, &att, t, &self.opts)?;
            add_inplace(&mut h, &o);
            // 2g. MLP: down(silu(gate(x)) ⊙ up(x)) and residual
            for (xr, hr) in x.chunks_mut(hsz).zip(h.chunks(hsz)) {
                rmsnorm(xr, hr, &lw.post_norm, c.rms_norm_eps);
            }
            linear(&mut gate, &lw.gate, &x, t, &self.opts)?;
            linear(&mut up, &lw.up, &x, t, &self.opts)?;
            silu_mul(&mut gate, &up);
            linear(&mut down, &lw.down, &gate, t, &self.opts)?;
            add_inplace(&mut h, &down);
        }
        cache.len += t;

        // 3. final norm and lm_head
        let first = match which {
            Logits::Last => t - 1,
            Logits::All => 0,
        };
        let rows = t - first;
        let mut xn = vec![0f32; rows * hsz];
        for (xr, hr) in xn.chunks_mut(hsz).zip(h[first * hsz..].chunks(hsz)) {
            rmsnorm(xr, hr, &self.weights.norm, c.rms_norm_eps);
        }
        let mut logits = Vec::new();
        linear(&mut logits, &self.weights.lm_head, &xn, rows, &self.opts)?;
        Ok(logits)
    }

    /// Attention for new positions `p0 .. p0 + T`: each query sees the keys at positions
    /// `max(0, p − W + 1) ..= p` (W keys including itself, as transformers defines the window),
    /// reading earlier positions from the cache and this chunk's from `k`/`v`.
    #[allow(clippy::too_many_arguments)]
    fn attention(&self, out: &mut Vec<f32>, q: &[f32], k: &[f32], v: &[f32], cache: &KvCache, layer: usize, p0: usize) {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let group = nh / nkv;
        let kvd = nkv * hd;
        let t = q.len() / (nh * hd);
        out.clear();
        out.resize(t * nh * hd, 0.0);
        if p0 == 0 && t > 1 {
            // A prompt into an empty cache: every key is in `k`/`v`, so whole blocks of queries
            // go through gemm.
            let shape = Heads { head_dim: hd, heads: nh, kv_heads: nkv, window: c.sliding_window };
            return prefill_attention(out, q, k, v, t, &shape);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let kv_at = |pos: usize, kvh: usize| -> (&[f32], &[f32]) {
            let (kr, vr) = if pos >= p0 {
                let i = pos - p0;
                (&k[i * kvd..(i + 1) * kvd], &v[i * kvd..(i + 1) * kvd])
            } else {
                cache.get(layer, pos)
            };
            (&kr[kvh * hd..(kvh + 1) * hd], &vr[kvh * hd..(kvh + 1) * hd])
        };
        let kern = lowbit_kernels::kernels();
        let work = |scores: &mut Vec<f32>, (idx, o): (usize, &mut [f32])| {
            let (i, head) = (idx / nh, idx % nh);
            let pos = p0 + i;
            let lo = c.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qh = &q[idx * hd..(idx + 1) * hd];
            let kvh = head / group;
            scores.clear();
            for p in lo..=pos {
                let (kr, _) = kv_at(p, kvh);
                scores.push(kern.dot_f32(qh, kr) * scale);
            }
            softmax(scores);
            o.fill(0.0);
            for (p, &a) in (lo..=pos).zip(scores.iter()) {
                let (_, vr) = kv_at(p, kvh);
                // Plain multiply-add, not f32::mul_add: without FMA enabled at compile time
                // mul_add is a libm call per element.
                o.iter_mut().zip(vr).for_each(|(acc, &val)| *acc += a * val);
            }
        };
        if t == 1 && nh > 1 {
            // Decode: on the spinning team, like the matvecs around it (rayon's workers would
            // have gone to sleep between the calls).
            lowbit_kernels::team::for_each_chunk_mut(out, hd, Vec::new, |s, i, o| work(s, (i, o)));
        } else if t * nh > 1 {
            out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, work);
        } else {
            let mut s = Vec::new();
            out.chunks_mut(hd).enumerate().for_each(|item| work(&mut s, item));
        }
    }
}
