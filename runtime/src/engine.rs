//! A model that owns its mapped file, with its tokenizer, the ids that end generation and the
//! worker pool its forward passes run in: what a command, a server or a binding holds for as long
//! as it serves (a [`Model`] borrows its file, so it cannot outlive a stack frame by itself).

use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::text::TextCodec;
use lowbit_format::ModelFile;
use lowbit_kernels::MatmulOptions;
use std::path::Path;

self_cell::self_cell!(
    /// The mapped file and the model viewing it.
    struct Loaded {
        owner: ModelFile,
        #[covariant]
        dependent: Model,
    }

    impl {Debug}
);

/// How a model runs: the knobs callers set instead of configuring the kernels themselves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeOptions {
    /// Worker threads of the forward pass; `None` takes `RAYON_NUM_THREADS`, else every core.
    pub threads: Option<usize>,
    /// The exact float path for 4-bit weights (bitsandbytes' dequantized values) instead of the
    /// integer route.
    pub fourbit_exact: bool,
    /// Element type of the KV caches the model makes.
    pub kv_type: crate::KvType,
    /// LoRA adapters applied beside the weights they change ([`crate::lora`]), to every sequence.
    pub adapters: Vec<crate::lora::LoraAdapter>,
    /// LoRA adapters a sequence (a batch request) picks by name ([`crate::Model::set_named_adapters`]).
    pub named_adapters: Vec<crate::lora::LoraAdapter>,
}

/// A loaded model, ready to run; `Send + Sync`, so it can be shared across threads.
#[derive(Debug)]
pub struct Engine {
    loaded: Loaded,
    /// The tokenizer, or why there is none (a file may carry only weights: then token ids work).
    codec: std::result::Result<TextCodec, String>,
    stop: Vec<u32>,
    pool: rayon::ThreadPool,
    /// The forward pass's spinning threads, this engine's own: engines used from different threads
    /// decode in parallel instead of taking turns on one process-wide team.
    team: lowbit_kernels::team::Team,
}

impl Engine {
    /// Maps and validates the file at `path` and loads the model, tokenizer and chat template.
    /// The mapping is populated up front where the file fits in memory
    /// ([`ModelFile::open_resident`]).
    pub fn open(path: &Path, opts: &RuntimeOptions) -> Result<Engine> {
        Engine::from_file(ModelFile::open_resident(path)?, opts)
    }

    /// [`Engine::open`] for a file already mapped.
    pub fn from_file(file: ModelFile, opts: &RuntimeOptions) -> Result<Engine> {
        if opts.threads == Some(0) {
            return Err(RuntimeError::Options("threads must be at least 1".into()));
        }
        let codec = TextCodec::from_metadata(file.metadata()).map_err(|e| e.to_string());
        let loaded = Loaded::try_new(file, |f| {
            let mut model = Model::new(f)?;
            model.set_options(MatmulOptions { fourbit_exact: opts.fourbit_exact, ..model.options() });
            model.set_kv_type(opts.kv_type);
            model.set_named_adapters(&opts.adapters, &opts.named_adapters)?;
            Ok::<_, RuntimeError>(model)
        })?;
        let stop = stop_ids(loaded.borrow_dependent(), codec.as_ref().ok());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads.unwrap_or(0))
            .build()
            .map_err(|e| RuntimeError::Options(format!("cannot start the worker threads: {e}")))?;
        let team = lowbit_kernels::team::Team::new(pool.current_num_threads());
        Ok(Engine { loaded, codec, stop, pool, team })
    }

    /// The model.
    pub fn model(&self) -> &Model<'_> {
        self.loaded.borrow_dependent()
    }

    /// The mapped file (metadata, tensors).
    pub fn file(&self) -> &ModelFile {
        self.loaded.borrow_owner()
    }

    /// The tokenizer and chat template, or the error saying the file has none.
    pub fn codec(&self) -> Result<&TextCodec> {
        self.codec.as_ref().map_err(|e| RuntimeError::Tokenizer(e.trim_start_matches("tokenizer: ").to_string()))
    }

    /// The ids that end generation: the config's EOS ids, the tokenizer's EOS token and, for
    /// ChatML and Llama-2-style models, `<|im_end|>` and `</s>`.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop
    }

    /// Worker threads of the forward pass.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` as a worker of the engine's pool. A forward pass makes hundreds of parallel calls
    /// per token; issued from outside the pool each would wake a worker and put the caller to
    /// sleep (a third of one-thread decode time went to the scheduler), while from inside the
    /// caller takes part and one thread needs no wake-ups at all. The pass's parallel loops run on
    /// the engine's own team.
    pub fn run<R: Send>(&self, f: impl FnOnce(&Model<'_>) -> R + Send) -> R {
        self.pool.install(|| self.team.install(|| f(self.model())))
    }
}

fn stop_ids(model: &Model, codec: Option<&TextCodec>) -> Vec<u32> {
    let mut ids = model.config.eos_token_ids.clone();
    if let Some(codec) = codec {
        for t in [codec.eos_token(), Some("<|im_end|>"), Some("</s>")].into_iter().flatten() {
            if let Some(id) = codec.token_id(t) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
    }
}
