//! The converter's error type: one enum, every variant naming the file or tensor it is about,
//! because "bad shape" alone is useless against a 30-shard checkpoint.

use std::path::PathBuf;

/// What can go wrong converting a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// Reading a source file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error (in the message, not also a `source`, so a chain does not repeat it).
        error: std::io::Error,
    },
    /// A file the checkpoint needs is missing (a shard, config.json, the source folder).
    #[error("{0}: missing (the checkpoint is incomplete)")]
    Missing(PathBuf),
    /// The source to convert does not exist.
    #[error("{0}: no such file or folder (give a Hugging Face or bitsandbytes checkpoint folder, or a GGUF file)")]
    NoSource(PathBuf),
    /// The folder the output should go into does not exist.
    #[error("{0}: the output folder does not exist")]
    OutputFolder(PathBuf),
    /// A safetensors file is corrupt or truncated, or its index is inconsistent.
    #[error("{path}: invalid safetensors file: {problem}")]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A JSON file (config, index, tokenizer config) is invalid.
    #[error("{what}: {problem}")]
    BadJson {
        /// Which file or field.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// A tensor's dtype cannot be converted.
    #[error("tensor {tensor}: unsupported dtype {dtype} (float32, float16 and bfloat16 weights are converted; uint8/int8 only as bitsandbytes data)")]
    UnsupportedDtype {
        /// Tensor name.
        tensor: String,
        /// Its dtype, as the file spells it.
        dtype: String,
    },
    /// A tensor's shape contradicts config.json.
    #[error("tensor {tensor}: shape {shape:?} contradicts config.json (expected {expected:?})")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What the config implies.
        expected: Vec<usize>,
    },
    /// A tensor that config.json says cannot exist (a layer past `num_hidden_layers`, a bias the
    /// architecture does not have).
    #[error("tensor {tensor}: {problem}")]
    Contradiction {
        /// Tensor name.
        tensor: String,
        /// What config.json says instead.
        problem: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor {0} is missing from the checkpoint")]
    MissingTensor(String),
    /// A bitsandbytes pre-quantized tensor is inconsistent.
    #[error("tensor {tensor}: bitsandbytes data: {problem}")]
    BadQuantState {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// The configuration (config.json or the options) is unsupported.
    #[error("config: {0}")]
    Config(String),
    /// A weight is NaN or infinite (a damaged checkpoint), or too large for the output's float16.
    #[error("tensor {tensor}: element {index} is {value}{why}")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Flat index of the first such element.
        index: usize,
        /// Its value (as read).
        value: f32,
        /// What makes it unusable.
        why: &'static str,
    },
    /// Quantization rejected a tensor (NaN/inf, …).
    #[error("tensor {tensor}: {source}")]
    Kernel {
        /// Tensor name.
        tensor: String,
        /// The kernel error.
        source: lowbit_kernels::KernelError,
    },
    /// Writing the output failed.
    #[error(transparent)]
    Format(#[from] lowbit_format::FormatError),
    /// The GGUF source is invalid or unsupported.
    #[error("{path}: {source}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What the GGUF reader said.
        source: crate::gguf::GgufError,
    },
}

/// Result alias.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

impl ConvertError {
    /// An I/O error on `path`; "not found" becomes [`ConvertError::Missing`].
    pub fn io(path: &std::path::Path, source: std::io::Error) -> ConvertError {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConvertError::Missing(path.to_path_buf())
        } else {
            ConvertError::Io { path: path.to_path_buf(), error: source }
        }
    }

    pub(crate) fn quant_state(tensor: &str, problem: impl Into<String>) -> ConvertError {
        ConvertError::BadQuantState { tensor: tensor.to_string(), problem: problem.into() }
    }
}
