//! The runtime's error type.

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The file itself is invalid.
    #[error(transparent)]
    Format(#[from] lowbit_format::FormatError),
    /// A kernel rejected its input.
    #[error(transparent)]
    Kernel(#[from] lowbit_kernels::KernelError),
    /// A configuration value is missing or unusable.
    #[error("config: {key}: {problem}")]
    Config {
        /// The config.json key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor the architecture needs is not in the file.
    #[error("tensor {name} is missing from the model file")]
    MissingTensor {
        /// Its name.
        name: String,
    },
    /// A tensor has the wrong shape or an unusable scheme.
    #[error("tensor {name}: {problem}")]
    BadTensor {
        /// Its name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The prompt does not fit in the context.
    #[error("{tokens} tokens do not fit in the context of {context} tokens")]
    ContextFull {
        /// Tokens that would be in the cache.
        tokens: usize,
        /// Maximum.
        context: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The file has no tokenizer, or it could not be loaded.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// Sampling parameters out of range.
    #[error("sampling: {0}")]
    Sampling(String),
    /// Runtime options out of range, or the worker threads could not start.
    #[error("options: {0}")]
    Options(String),
}

/// Result alias for the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
