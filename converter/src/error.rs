//! The converter's error type.

use std::path::PathBuf;

/// What can go wrong converting a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// Reading a source file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A file the checkpoint needs is missing.
    #[error("{0}: missing (the checkpoint is incomplete)")]
    Missing(PathBuf),
    /// A safetensors file is corrupt or truncated.
    #[error("{path}: invalid safetensors file: {problem}")]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        problem: String,
    },
    /// A JSON file (config, index, quant state) is invalid.
    #[error("{what}: {problem}")]
    BadJson {
        /// Which file or field.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// A tensor's dtype cannot be converted.
    #[error("tensor {tensor}: unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// Tensor name.
        tensor: String,
        /// Its dtype.
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
    /// The configuration is unsupported.
    #[error("config.json: {0}")]
    Config(String),
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
    /// GGUF input problem.
    #[error("{path}: {problem}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Result alias.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

impl ConvertError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> ConvertError {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConvertError::Missing(path.to_path_buf())
        } else {
            ConvertError::Io { path: path.to_path_buf(), source }
        }
    }
}
