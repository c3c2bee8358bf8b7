//! The decoder forward pass (Hugging Face `MistralForCausalLM` / `LlamaForCausalLM` /
//! `Qwen2ForCausalLM`), over weights that stay in the mmap. Prefill runs the batched matmul
//! kernels over all new tokens at once; decode (one token) runs matvec.

use crate::attention::{prefill_attention, Heads, KeyValues};
use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use crate::imatrix::{Input, InputStats};
use crate::kv_cache::{HeadView, KvCache, KvType};
use crate::lora::{LoraAdapter, LoraAx, LoraTable, Proj};
use crate::ops::{add_inplace, add_rmsnorm, rmsnorm, rope_rows, silu_mul, softmax_parts, Rope};
use crate::profile::{Phase, ProfileReport, Profiler};
use crate::weights::ModelWeights;
use lowbit_format::ModelFile;
use lowbit_kernels::{
    gates_together, matmul_gated, matmul_rows, matmul_rows_many, matmul_rows_many_then, matmul_segments, MatmulOptions,
    RowsThen, Weight,
};

/// A loaded model: configuration plus views of its weights.
#[derive(Debug)]
pub struct Model<'a> {
    /// Hyper-parameters.
    pub config: ModelConfig,
    weights: ModelWeights<'a>,
    rope: Rope,
    opts: MatmulOptions,
    kv_type: KvType,
    profiler: Profiler,
    /// Input statistics being collected (`lowbit imatrix`), if any.
    stats: std::sync::OnceLock<InputStats>,
    /// Run-time LoRA updates.
    lora: LoraTable,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (generation).
    Last,
    /// Every position's, row-major `tokens × vocab` (`lowbit logits`).
    All,
}

/// The rows of one forward pass.
enum Rows<'c, 'k> {
    /// New tokens of one or more sequences (`lens[i]` of sequence `i`, one sequence's after
    /// another's), each at the positions after what its cache holds.
    Prompts(&'c mut [&'k mut KvCache], &'c [usize]),
    /// One token of each sequence, each at its own cache's next position.
    Decode(&'c mut [&'k mut KvCache]),
}

/// Keys one decode attention task takes at most: a longer context's go in pieces, merged
/// afterwards, so the threads share one sequence's keys. A constant, so the split depends on the
/// position alone and a token's bits never on the batch beside it.
const DECODE_KEYS: usize = 512;

impl<'a> Model<'a> {
    /// Reads the configuration from the file's metadata and checks every tensor.
    pub fn new(file: &'a ModelFile) -> Result<Model<'a>> {
        let arch = &file.metadata().architecture;
        if arch == lowbit_format::ADAPTER_ARCHITECTURE {
            return Err(RuntimeError::Config {
                key: "architecture".into(),
                problem: "this is a LoRA adapter file, not a model: run it beside its base model with --lora FILE"
                    .into(),
            });
        }
        let config = ModelConfig::from_json(&file.metadata().config)?;
        if *arch != config.model_type {
            return Err(RuntimeError::Config {
                key: "architecture".into(),
                problem: format!("the header says {arch:?}, its config.json says {:?}", config.model_type),
            });
        }
        let weights = ModelWeights::load(file, &config)?;
        let rope = Rope::new(config.head_dim, config.rope_theta);
        let opts =
            MatmulOptions { int8_threshold: file.metadata().quantization.int8_threshold, ..MatmulOptions::default() };
        Ok(Model {
            config,
            weights,
            rope,
            opts,
            kv_type: KvType::F32,
            profiler: Profiler::default(),
            stats: Default::default(),
            lora: LoraTable::default(),
        })
    }

    /// The kernel options in use (int8 threshold from the file, 4-bit route).
    pub fn options(&self) -> MatmulOptions {
        self.opts
    }

    /// Changes the kernel options (e.g. the exact float 4-bit path).
    pub fn set_options(&mut self, opts: MatmulOptions) {
        self.opts = opts;
    }

    /// Turns per-operation timing on or off ([`crate::profile`]); off by default.
    pub fn set_profiling(&self, on: bool) {
        self.profiler.set_enabled(on);
    }

    /// The per-operation times recorded since profiling was turned on (or last reset).
    pub fn profile_report(&self) -> ProfileReport {
        self.profiler.report()
    }

    /// The recorder, for callers that time their own steps beside the forward pass (sampling).
    pub fn profiler(&self) -> &Profiler {
        &self.profiler
    }

    /// A cache for up to `context` positions (ignored beyond the window for sliding-window models).
    pub fn new_cache(&self, context: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(c.num_layers, c.num_kv_heads, c.head_dim, c.sliding_window, context, self.kv_type)
    }

    /// Adds `adapters` beside the weights they change, from every later forward pass (replacing
    /// any set before); an update for a weight the model does not have, or of the wrong size, is
    /// an error and changes nothing.
    pub fn set_adapters(&mut self, adapters: &[LoraAdapter]) -> Result<()> {
        self.set_named_adapters(adapters, &[])
    }

    /// [`Model::set_adapters`] with, beside the adapters applied to every sequence (`always`),
    /// adapters a sequence picks by name ([`Model::adapter_index`], [`KvCache::set_adapter`]):
    /// one base serves several fine-tunes, and sequences with different adapters (or none)
    /// share a decode step.
    pub fn set_named_adapters(&mut self, always: &[LoraAdapter], named: &[LoraAdapter]) -> Result<()> {
        let layers = &self.weights.layers;
        self.lora = LoraTable::new(always, named, layers.len(), |l, p| {
            let w = match p {
                Proj::Q => &layers[l].q,
                Proj::K => &layers[l].k,
                Proj::V => &layers[l].v,
                Proj::O => &layers[l].o,
                Proj::Gate => &layers[l].gate,
                Proj::Up => &layers[l].up,
                Proj::Down => &layers[l].down,
            };
            (w.rows(), w.cols())
        })?;
        Ok(())
    }

    /// The index of the adapter named `name` among those sequences may pick
    /// ([`Model::set_named_adapters`]), for [`KvCache::set_adapter`].
    pub fn adapter_index(&self, name: &str) -> Option<usize> {
        self.lora.index_of(name)
    }

    /// The names of the adapters sequences may pick, in the order they were given.
    pub fn adapter_names(&self) -> &[String] {
        self.lora.named()
    }

    /// Starts collecting, from every later forward pass, the mean square of each linear layer's
    /// input per column ([`Model::input_stats`]).
    pub fn collect_input_stats(&self) {
        self.stats.get_or_init(InputStats::default);
    }

    /// What [`Model::collect_input_stats`] gathered: per linear weight (by tensor name), the
    /// mean x² of each input column and the number of rows it is over.
    pub fn input_stats(&self) -> Vec<(String, Vec<f32>, u64)> {
        self.stats.get().map_or_else(Vec::new, InputStats::means)
    }

    /// The element type of the caches [`Model::new_cache`] makes.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Sets the element type of the caches [`Model::new_cache`] makes from now on.
    pub fn set_kv_type(&mut self, kv: KvType) {
        self.kv_type = kv;
    }

    /// Runs `tokens` (at positions `cache.len ..`) through the model, appends them to the cache and
    /// returns logits.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        if tokens.len() == 1 {
            // One token is a decode batch of one: the same code as a sequence decoding among
            // others, so a sequence's tokens never depend on whether it had company.
            return self.forward_decode(&mut [cache], tokens);
        }
        self.pass(Rows::Prompts(&mut [cache], &[tokens.len()]), tokens, &[which], None)
    }

    /// Several prompts (or chunks of prompts) in one pass: `prompts[i]` goes into `caches[i]` at
    /// the positions after what it holds, and the result's entry `i` holds its logits as
    /// `which[i]` asks — bit for bit what [`Model::forward`] gives that prompt alone (each
    /// product runs the prompts together where its route gives every token its own bits, one
    /// by one elsewhere; attention is each prompt's own). A burst of short prompts so reads the
    /// weights once instead of once per prompt. Every prompt needs at least two tokens: one
    /// token is a decode step, which [`Model::forward`] runs as such.
    pub fn forward_prompts(
        &self,
        caches: &mut [&mut KvCache],
        prompts: &[&[u32]],
        which: &[Logits],
    ) -> Result<Vec<Vec<f32>>> {
        if caches.len() != prompts.len() || which.len() != prompts.len() {
            return Err(RuntimeError::Options(format!(
                "a joint prefill needs one cache and one logits choice per prompt ({} prompts, {} caches, {} choices)",
                prompts.len(),
                caches.len(),
                which.len()
            )));
        }
        if let Some(p) = prompts.iter().find(|p| p.len() < 2) {
            return Err(RuntimeError::Options(format!(
                "a joint prefill takes prompts of two tokens or more (one has {})",
                p.len()
            )));
        }
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let tokens = prompts.concat();
        let logits = self.pass(Rows::Prompts(caches, &lens), &tokens, which, None)?;
        let vocab = self.config.vocab_size;
        let mut rest = &logits[..];
        Ok(lens
            .iter()
            .zip(which)
            .map(|(&n, w)| {
                let rows = if *w == Logits::All { n } else { 1 };
                let (mine, after) = rest.split_at(rows * vocab);
                rest = after;
                mine.to_vec()
            })
            .collect())
    }

    /// [`Model::forward`] calling `progress(layers done, layers)` after each layer of a prompt:
    /// what a caller shows while a long prompt is read (the pass is one matrix per layer, so
    /// layers are its natural steps).
    pub fn forward_with_progress(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: Logits,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<f32>> {
        if tokens.len() == 1 {
            return self.forward_decode(&mut [cache], tokens);
        }
        self.pass(Rows::Prompts(&mut [cache], &[tokens.len()]), tokens, &[which], Some(progress))
    }

    /// One decode step of several sequences: `tokens[i]` goes into `caches[i]` at its own
    /// position, and row `i` of the result (`caches.len() × vocab`) is its next-token logits —
    /// bit for bit what [`Model::forward`] gives that sequence alone. The weights are read once
    /// for all of them ([`lowbit_kernels::matmul_rows`]); each attends over its own cache.
    pub fn forward_decode(&self, caches: &mut [&mut KvCache], tokens: &[u32]) -> Result<Vec<f32>> {
        if caches.len() != tokens.len() {
            return Err(RuntimeError::Options(format!(
                "a decode step needs one token per sequence ({} tokens, {} caches)",
                tokens.len(),
                caches.len()
            )));
        }
        self.pass(Rows::Decode(caches), tokens, &[], None)
    }

    fn pass(
        &self,
        mut rows: Rows,
        tokens: &[u32],
        which: &[Logits],
        progress: Option<&dyn Fn(usize, usize)>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(RuntimeError::BadToken { id, vocab: c.vocab_size });
        }
        // Each row's position: a prompt's run on from its cache, decode rows sit at their own.
        let positions: Vec<usize> = match &rows {
            Rows::Prompts(caches, lens) => {
                if lens.iter().sum::<usize>() != t || caches.len() != lens.len() {
                    return Err(RuntimeError::Options("prompt lengths disagree with the tokens".into()));
                }
                let mut positions = Vec::with_capacity(t);
                for (cache, &n) in caches.iter().zip(lens.iter()) {
                    if !cache.fits(n) {
                        return Err(RuntimeError::ContextFull { tokens: cache.len + n, context: cache.capacity() });
                    }
                    positions.extend(cache.len..cache.len + n);
                }
                positions
            }
            Rows::Decode(caches) => {
                if let Some(full) = caches.iter().find(|c| !c.fits(1)) {
                    return Err(RuntimeError::ContextFull { tokens: full.len + 1, context: full.capacity() });
                }
                caches.iter().map(|c| c.len).collect()
            }
        };
        let decode = matches!(rows, Rows::Decode(_));
        // A prompt's cache makes room for it at once (growing by doubling as its tokens went in
        // cost a 706-token prompt 6 % of its prefill at two threads).
        if let Rows::Prompts(caches, lens) = &mut rows {
            for (cache, &n) in caches.iter_mut().zip(lens.iter()) {
                cache.make_room(cache.len + n);
            }
        }
        // Each row's named adapter, from its sequence's cache.
        let picks: Vec<Option<(usize, f32)>> = match &rows {
            Rows::Prompts(caches, lens) => {
                caches.iter().zip(lens.iter()).flat_map(|(c, &n)| std::iter::repeat_n(c.adapter(), n)).collect()
            }
            Rows::Decode(caches) => caches.iter().map(|c| c.adapter()).collect(),
        };
        let picks = &picks[..];
        // The rows' prompts: products whose route depends on the token count run each prompt
        // as its own call (a decode step is one run of independent rows).
        let segs: Vec<usize> = match &rows {
            Rows::Prompts(_, lens) => lens.to_vec(),
            Rows::Decode(_) => vec![t],
        };
        let segs = &segs[..];
        let (hd, nh, nkv, hsz) = (c.head_dim, c.num_heads, c.num_kv_heads, c.hidden_size);
        let (qd, kvd) = (nh * hd, nkv * hd);

        let prof = &self.profiler;
        let phase = if decode { Phase::Decode } else { Phase::Prefill };
        // A linear layer, timed under its role and its weight's scheme. Decode rows are
        // independent tokens (each computed as if alone), a prompt's are one matrix.
        // `then` (decode only) runs on each finished piece of the product, in its parallel loop.
        let lin = |out: &mut Vec<f32>,
                   role: &str,
                   w: &Weight,
                   x: &[f32],
                   segs: &[usize],
                   then: Option<&RowsThen<'_>>|
         -> Result<()> {
            let s = prof.start();
            let m = segs.iter().sum::<usize>();
            // Every element is written by the product: no need to zero what is already there.
            out.resize(m * w.rows(), 0.0);
            if let Some(then) = then {
                matmul_rows_many_then(out, &[w], x, m, &self.opts, then)?;
            } else if decode {
                matmul_rows(out, w, x, m, &self.opts)?;
            } else {
                matmul_segments(out, &[w], x, segs, &self.opts)?;
            }
            prof.stop(s, phase, || format!("matmul {role} ({})", w.scheme_name()));
            Ok(())
        };
        // Linear layers over the same input (q/k/v, gate/up), in one parallel loop, their
        // results one after the other in `out` (each `m × rows`), which callers split. Each
        // group keeps its own buffer, the same length every layer: growing a buffer zeroes
        // what it adds, and moving results between buffers copies them (either took a few
        // percent of a batched decode step, serially).
        let lin_many = |out: &mut Vec<f32>,
                        role: &str,
                        ws: &[&Weight],
                        x: &[f32],
                        segs: &[usize],
                        then: Option<&RowsThen<'_>>|
         -> Result<()> {
            let s = prof.start();
            let m = segs.iter().sum::<usize>();
            out.resize(m * ws.iter().map(|w| w.rows()).sum::<usize>(), 0.0);
            match then {
                Some(then) => matmul_rows_many_then(out, ws, x, m, &self.opts, then)?,
                None if decode => matmul_rows_many(out, ws, x, m, &self.opts)?,
                None => matmul_segments(out, ws, x, segs, &self.opts)?,
            }
            prof.stop(s, phase, || {
                // Every scheme of the group once (nf4-mix has nf4 q beside q8 k and v).
                let mut names: Vec<&str> = Vec::new();
                for w in ws {
                    if !names.contains(&w.scheme_name()) {
                        names.push(w.scheme_name());
                    }
                }
                format!("matmul {role} ({})", names.join("+"))
            });
            Ok(())
        };
        let timed = |op: &'static str, f: &mut dyn FnMut()| {
            let s = prof.start();
            f();
            prof.stop(s, phase, || op.to_string());
        };
        // One decode token's adapter updates go into the products' own parallel loops: their
        // `A x` first (here), each piece of `B (A x)` as the product finishes it (`then`); a
        // batch's and a prompt's run after the products (`LoraTable::apply`). Both give the same
        // bits.
        let fused = decode && t == 1 && !self.lora.is_empty();
        let lora_ax = |li: usize, projs: &[Proj], x: &[f32]| -> Option<LoraAx> {
            if !fused {
                return None;
            }
            let s = prof.start();
            let ax = self.lora.prepare(li, projs, x, picks[0]);
            prof.stop(s, phase, || "lora".to_string());
            ax
        };
        let lora_then = |ax: &LoraAx, wi: usize, r0: usize, piece: &mut [f32]| self.lora.add_rows(ax, wi, r0, piece);
        let apart = !fused && !self.lora.is_empty();

        // 1. embeddings
        let mut h = vec![0f32; t * hsz];
        timed("embedding", &mut || {
            for (row, &id) in h.chunks_mut(hsz).zip(tokens) {
                self.weights.embed.dequantize_row(id as usize, row);
            }
        });
        let mut x = vec![0f32; t * hsz];
        let (mut qkv, mut att, mut o) = (Vec::new(), vec![0f32; t * qd], Vec::new());
        let (mut gate_up, mut gated, mut down) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rope_cos, mut rope_sin) = (Vec::new(), Vec::new());
        timed("rope", &mut || {
            (rope_cos, rope_sin) = if decode {
                positions.iter().map(|&p| self.rope.tables(p, 1)).fold((Vec::new(), Vec::new()), |(mut c, mut s), r| {
                    c.extend(r.0);
                    s.extend(r.1);
                    (c, s)
                })
            } else {
                // Each prompt's tables as it would make them alone.
                let (mut cos, mut sin, mut t0) = (Vec::new(), Vec::new(), 0);
                for &n in segs {
                    let (c, s) = self.rope.tables(positions[t0], n);
                    cos.extend(c);
                    sin.extend(s);
                    t0 += n;
                }
                (cos, sin)
            }
        });

        for (li, lw) in self.weights.layers.iter().enumerate() {
            // 2a. the last layer's MLP output into the residual stream, and the input RMSNorm
            timed("residual add + rmsnorm", &mut || {
                let y = (li > 0).then_some(&down[..]);
                add_rmsnorm(&mut h, y, &mut x, &lw.input_norm, c.rms_norm_eps, hsz);
            });
            let record = |input: Input, x: &[f32], cols: usize| {
                if let Some(s) = self.stats.get() {
                    s.add(li, input, x, cols);
                }
            };
            // 2b. projections (+ Qwen2 biases)
            record(Input::Attention, &x, hsz);
            let ax = lora_ax(li, &[Proj::Q, Proj::K, Proj::V], &x);
            let then = ax.as_ref().map(|ax| move |wi: usize, r0: usize, p: &mut [f32]| lora_then(ax, wi, r0, p));
            let then = then.as_ref().map(|f| f as &RowsThen);
            lin_many(&mut qkv, "q/k/v", &[&lw.q, &lw.k, &lw.v], &x, segs, then)?;
            let (q, kv) = qkv.split_at_mut(t * qd);
            let (k, v) = kv.split_at_mut(t * kvd);
            if apart {
                timed("lora", &mut || {
                    self.lora.apply(li, Proj::Q, &x, q, t, picks);
                    self.lora.apply(li, Proj::K, &x, k, t, picks);
                    self.lora.apply(li, Proj::V, &x, v, t, picks);
                });
            }
            if let Some([bq, bk, bv]) = &lw.qkv_bias {
                timed("bias", &mut || {
                    q.chunks_mut(qd).for_each(|r| add_inplace(r, bq));
                    k.chunks_mut(kvd).for_each(|r| add_inplace(r, bk));
                    v.chunks_mut(kvd).for_each(|r| add_inplace(r, bv));
                });
            }
            // 2c. rotary embedding, rotate_half layout
            timed("rope", &mut || rope_rows(q, k, qd, kvd, hd, &rope_cos, &rope_sin));
            // 2d/e. causal (sliding-window) grouped-query attention
            match &mut rows {
                Rows::Decode(caches) => {
                    // Decode attends over the cache alone, so each key and value goes in first
                    // (the slot a ring reuses belongs to the one position the window has just
                    // left).
                    timed("kv cache store", &mut || {
                        for (i, cache) in caches.iter_mut().enumerate() {
                            cache.put(li, positions[i], &k[i * kvd..(i + 1) * kvd], &v[i * kvd..(i + 1) * kvd]);
                        }
                    });
                    let caches: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
                    timed("attention", &mut || self.decode_attention(&mut att, q, &caches, li, &positions));
                }
                Rows::Prompts(caches, lens) => {
                    // Each prompt attends over its own cache and its own new tokens (into its
                    // rows of `att`, every element written).
                    att.resize(t * qd, 0.0);
                    let mut t0 = 0;
                    for (cache, &n) in caches.iter_mut().zip(lens.iter()) {
                        let p0 = positions[t0];
                        let (kn, vn) = (&k[t0 * kvd..(t0 + n) * kvd], &v[t0 * kvd..(t0 + n) * kvd]);
                        let (qn, an) = (&q[t0 * qd..(t0 + n) * qd], &mut att[t0 * qd..(t0 + n) * qd]);
                        timed("attention", &mut || self.attention(an, qn, kn, vn, cache, li, p0));
                        timed("kv cache store", &mut || cache.put_run(li, p0, kn, vn));
                        t0 += n;
                    }
                }
            }
            // 2f. output projection and residual
            record(Input::Output, &att, qd);
            let ax = lora_ax(li, &[Proj::O], &att);
            let then = ax.as_ref().map(|ax| move |wi: usize, r0: usize, p: &mut [f32]| lora_then(ax, wi, r0, p));
            lin(&mut o, "o", &lw.o, &att, segs, then.as_ref().map(|f| f as &RowsThen))?;
            if apart {
                timed("lora", &mut || self.lora.apply(li, Proj::O, &att, &mut o, t, picks));
            }
            // 2g. MLP: down(silu(gate(x)) ⊙ up(x)) and residual (added by the next layer's
            // norm, or after the last layer)
            timed("residual add + rmsnorm", &mut || {
                add_rmsnorm(&mut h, Some(&o), &mut x, &lw.post_norm, c.rms_norm_eps, hsz);
            });
            record(Input::Mlp, &x, hsz);
            // A prompt's gate and up products gated as they are made where their route pairs
            // them (without adapters, which change each product before the gating): only the
            // gated product is written, into a buffer sized only then.
            let s = prof.start();
            let pair = !decode && self.lora.is_empty() && gates_together(&lw.gate, &lw.up, segs, &self.opts);
            if pair {
                gated.resize(t * c.intermediate_size, 0.0);
            }
            let fused_mlp = pair && matmul_gated(&mut gated, &lw.gate, &lw.up, &x, segs, &self.opts)?;
            let gate: &[f32] = if fused_mlp {
                prof.stop(s, phase, || format!("matmul gate/up + silu·mul ({})", lw.gate.scheme_name()));
                &gated
            } else {
                let ax = lora_ax(li, &[Proj::Gate, Proj::Up], &x);
                let then = ax.as_ref().map(|ax| move |wi: usize, r0: usize, p: &mut [f32]| lora_then(ax, wi, r0, p));
                let then = then.as_ref().map(|f| f as &RowsThen);
                lin_many(&mut gate_up, "gate/up", &[&lw.gate, &lw.up], &x, segs, then)?;
                let (gate, up) = gate_up.split_at_mut(t * c.intermediate_size);
                if apart {
                    timed("lora", &mut || {
                        self.lora.apply(li, Proj::Gate, &x, gate, t, picks);
                        self.lora.apply(li, Proj::Up, &x, up, t, picks);
                    });
                }
                timed("silu·mul", &mut || silu_mul(gate, up));
                gate
            };
            record(Input::Down, gate, c.intermediate_size);
            let ax = lora_ax(li, &[Proj::Down], gate);
            let then = ax.as_ref().map(|ax| move |wi: usize, r0: usize, p: &mut [f32]| lora_then(ax, wi, r0, p));
            lin(&mut down, "down", &lw.down, gate, segs, then.as_ref().map(|f| f as &RowsThen))?;
            if apart {
                timed("lora", &mut || self.lora.apply(li, Proj::Down, gate, &mut down, t, picks));
            }
            if let Some(p) = progress {
                p(li + 1, self.weights.layers.len());
            }
        }
        // The last layer's MLP output (every row: `h` is the pass's output).
        if !self.weights.layers.is_empty() {
            timed("residual add", &mut || add_inplace(&mut h, &down));
        }
        // The hidden rows whose logits are asked for, by prompt.
        let mut picked: Vec<std::ops::Range<usize>> = Vec::new();
        match rows {
            Rows::Prompts(caches, lens) => {
                let mut t0 = 0;
                for ((cache, &n), w) in caches.iter_mut().zip(lens.iter()).zip(which) {
                    cache.len += n;
                    picked.push(if *w == Logits::All { t0..t0 + n } else { t0 + n - 1..t0 + n });
                    t0 += n;
                }
            }
            Rows::Decode(caches) => {
                caches.iter_mut().for_each(|c| c.len += 1);
                picked.push(0..t);
            }
        }

        // 3. final norm and lm_head
        let head_segs: Vec<usize> = picked.iter().map(|r| r.len()).collect();
        let n = head_segs.iter().sum::<usize>();
        let mut xn = vec![0f32; n * hsz];
        timed("rmsnorm", &mut || {
            let hs = picked.iter().flat_map(|r| h[r.start * hsz..r.end * hsz].chunks(hsz));
            for (xr, hr) in xn.chunks_mut(hsz).zip(hs) {
                rmsnorm(xr, hr, &self.weights.norm, c.rms_norm_eps);
            }
        });
        let mut logits = Vec::new();
        lin(&mut logits, "head", &self.weights.lm_head, &xn, &head_segs, None)?;
        Ok(logits)
    }

    /// Attention of one query per sequence, at `positions[i]` over `caches[i]`, whose key and
    /// value are already cached. A sequence's keys go in pieces of [`DECODE_KEYS`]: per piece
    /// and head, the scores against the cached keys (contiguous runs of slots, so the kernels
    /// step through rows without a call per key), their exponentials from the piece's maximum,
    /// and the values weighted by them; then the pieces merge in order (flash-decoding), so the
    /// threads share a long context's keys. Tasks are (sequence, kv head, piece): the query
    /// heads of a grouped-query kv head go through its rows together, each row read once for
    /// all of them (the multi-query row loops give each head the bits it has alone), or, where
    /// that leaves the threads too few tasks, one head a task. A token's bits depend on its own
    /// sequence alone, never on the batch. On the spinning team, like the matvecs around it.
    fn decode_attention(&self, out: &mut Vec<f32>, q: &[f32], caches: &[&KvCache], layer: usize, positions: &[usize]) {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let kern = lowbit_kernels::kernels();
        // Each sequence's first key and its pieces.
        let first = |seq: usize| c.sliding_window.map_or(0, |w| (positions[seq] + 1).saturating_sub(w));
        let pieces: Vec<usize> =
            (0..caches.len()).map(|s| (positions[s] + 1 - first(s)).div_ceil(DECODE_KEYS)).collect();
        let grouped: usize = pieces.iter().sum::<usize>() * nkv;
        let per = if grouped >= 2 * rayon::current_num_threads() { group } else { 1 };
        // Tasks (sequence, first head, piece), a sequence's after the one before.
        let tasks: Vec<(usize, usize, usize)> = (0..caches.len())
            .flat_map(|s| {
                let np = pieces[s];
                (0..nh / per).flat_map(move |hg| (0..np).map(move |p| (s, hg * per, p)))
            })
            .collect();
        // A task's keys: positions k0 .. k1.
        let keys = |(seq, _, piece): (usize, usize, usize)| {
            let k0 = first(seq) + piece * DECODE_KEYS;
            (k0, (k0 + DECODE_KEYS).min(positions[seq] + 1))
        };
        // A task's piece of the output: its heads' weighted values, `per × hd`; then, where a
        // sequence has several pieces, their maxima and sums (`per × 2`), merged below. Where
        // every sequence has one, each task divides by its own sum and writes `out` directly.
        let direct = pieces.iter().all(|&p| p == 1);
        let part = if direct { per * hd } else { per * (hd + 2) };
        let mut parts = if direct { Vec::new() } else { vec![0f32; tasks.len() * part] };
        let work = |(scores, sums, rows): &mut (Vec<f32>, Vec<f32>, Vec<f32>), idx: usize, o: &mut [f32]| {
            let (seq, h0, _) = tasks[idx];
            let (k0, k1) = keys(tasks[idx]);
            let cache = caches[seq];
            let kvh = h0 / group;
            let view = cache.head(layer, kvh);
            let runs = cache.slot_runs(k0, k1 - 1);
            // The next task's keys and values are short runs in another part of memory: asked
            // for now, they arrive while this task computes. (One sequence's heads take turns
            // on a kv head whose rows are here already.)
            if let Some(&next) = tasks.get(idx + 1) {
                let (n0, n1) = keys(next);
                let nc = caches[next.0];
                if (next.0, next.1 / group, n0) != (seq, kvh, k0) {
                    for &(s0, n) in nc.slot_runs(n0, n1 - 1).iter() {
                        nc.prefetch(layer, next.1 / group, s0, n);
                    }
                }
            }
            let first_q = seq * nh + h0;
            let qh = &q[first_q * hd..(first_q + per) * hd];
            // Head g's scores at g·len; every one is written by the row loops below.
            let len = k1 - k0;
            scores.resize(per * len, 0.0);
            let mut at = 0;
            for &(s0, n) in runs.iter().filter(|r| r.1 > 0) {
                let out = &mut scores[at..];
                match view {
                    HeadView::F32(kc, _) => kern.dot_f32_rows_multi(out, len, n, qh, hd, &kc[s0 * hd..], hd),
                    // Widened exactly on load: the same products as an f32 cache holding the
                    // rounded values.
                    HeadView::F16(kc, _) => kern.dot_f16_rows_multi(out, len, n, qh, hd, &kc[s0 * hd..], hd),
                    // The rows dequantized first.
                    HeadView::Q8 => {
                        cache.gather(layer, false, kvh, s0, n, rows);
                        kern.dot_f32_rows_multi(out, len, n, qh, hd, rows, hd)
                    }
                }
                at += n;
            }
            let (vals, stats) = o.split_at_mut(per * hd);
            sums.clear();
            for s in scores.chunks_exact_mut(len) {
                let (max, sum) = softmax_parts(s, scale);
                sums.extend([max, sum]);
            }
            // The values weighted by the exponentials, each head's into its `hd` entries.
            vals.fill(0.0);
            let mut at = 0;
            for &(s0, n) in runs.iter().filter(|r| r.1 > 0) {
                let a = &scores[at..];
                match view {
                    HeadView::F32(_, vc) => kern.axpy_f32_rows_multi(vals, hd, a, len, n, &vc[s0 * hd..], hd),
                    HeadView::F16(_, vc) => kern.axpy_f16_rows_multi(vals, hd, a, len, n, &vc[s0 * hd..], hd),
                    HeadView::Q8 => {
                        cache.gather(layer, true, kvh, s0, n, rows);
                        kern.axpy_f32_rows_multi(vals, hd, a, len, n, rows, hd)
                    }
                }
                at += n;
            }
            if direct {
                // One piece: its weight is exp(0) = 1 and the sum its own (the merge's bits).
                for (y, ms) in vals.chunks_exact_mut(hd).zip(sums.chunks_exact(2)) {
                    let inv = 1.0 / ms[1];
                    y.iter_mut().for_each(|y| *y *= inv);
                }
            } else {
                stats.copy_from_slice(sums);
            }
        };
        out.resize(caches.len() * nh * hd, 0.0);
        if direct {
            lowbit_kernels::team::for_each_chunk_mut(out, part, || (Vec::new(), Vec::new(), Vec::new()), work);
            return;
        }
        lowbit_kernels::team::for_each_chunk_mut(&mut parts, part, || (Vec::new(), Vec::new(), Vec::new()), work);
        // Each head's pieces merged in order: weights exp(max_p − max), divided by their
        // weighted sums.
        let mut w = Vec::new();
        let mut t0 = 0;
        for (seq, &np) in pieces.iter().enumerate() {
            for head in 0..nh {
                let (hg, j) = (head / per, head % per);
                // Piece p's values and its (maximum, sum).
                let task = |p: usize| (t0 + hg * np + p) * part;
                let vals = |p: usize| &parts[task(p) + j * hd..task(p) + (j + 1) * hd];
                let stat = |p: usize, k: usize| parts[task(p) + per * hd + 2 * j + k];
                let max = (0..np).map(|p| stat(p, 0)).fold(f32::NEG_INFINITY, f32::max);
                w.clear();
                w.extend((0..np).map(|p| stat(p, 0)));
                kern.exp_sub(&mut w, max);
                let sum = (0..np).fold(0f32, |acc, p| w[p].mul_add(stat(p, 1), acc));
                let o = &mut out[(seq * nh + head) * hd..(seq * nh + head + 1) * hd];
                o.copy_from_slice(vals(0));
                o.iter_mut().for_each(|v| *v *= w[0]);
                for (p, &wp) in w.iter().enumerate().skip(1) {
                    kern.axpy_f32(o, wp, vals(p));
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            }
            t0 += (nh / per) * np;
        }
    }

    /// Attention for new positions `p0 .. p0 + T`: each query sees the keys at positions
    /// `max(0, p − W + 1) ..= p` (W keys including itself, as transformers defines the window),
    /// earlier positions from the cache and this chunk's from `k`/`v`, through the blocked gemm
    /// of [`prefill_attention`] (the continuation of a long prompt, or a chat's next turn,
    /// took a dot-product call per query and key: a 1438-token prompt in chunks of 256 spent
    /// three times as long as in one).
    #[allow(clippy::too_many_arguments)]
    fn attention(&self, out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], cache: &KvCache, layer: usize, p0: usize) {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let kvd = nkv * hd;
        let t = q.len() / (nh * hd);
        assert_eq!(out.len(), t * nh * hd, "attention output sized by the caller");
        let shape = Heads { head_dim: hd, heads: nh, kv_heads: nkv, window: c.sliding_window };
        if p0 == 0 {
            // A prompt into an empty cache: every key is in `k`/`v`.
            return prefill_attention(out, q, &KeyValues::own(k, v, &shape, 0), t, 0, &shape);
        }
        // Each kv head's cached keys and values the chunk sees, then its own, in one run.
        let base = c.sliding_window.map_or(0, |w| (p0 + 1).saturating_sub(w));
        let n = p0 - base + t;
        let (mut ks, mut vs) = (vec![Vec::with_capacity(n * hd); nkv], vec![Vec::with_capacity(n * hd); nkv]);
        let mut rows = Vec::new();
        for (h, (kh, vh)) in ks.iter_mut().zip(vs.iter_mut()).enumerate() {
            for &(s0, len) in cache.slot_runs(base, p0 - 1).iter().filter(|r| r.1 > 0) {
                cache.gather(layer, false, h, s0, len, &mut rows);
                kh.extend_from_slice(&rows);
                cache.gather(layer, true, h, s0, len, &mut rows);
                vh.extend_from_slice(&rows);
            }
            for i in 0..t {
                kh.extend_from_slice(&k[i * kvd + h * hd..][..hd]);
                vh.extend_from_slice(&v[i * kvd + h * hd..][..hd]);
            }
        }
        let kv = KeyValues {
            k: ks.iter().map(|b| &b[..]).collect(),
            v: vs.iter().map(|b| &b[..]).collect(),
            stride: hd,
            base,
        };
        prefill_attention(out, q, &kv, t, p0, &shape);
    }
}
