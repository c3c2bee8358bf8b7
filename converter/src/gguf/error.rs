//! The GGUF source's error type. Every variant names the key, tensor or header field it is about,
//! because "truncated" alone is useless against a 4 GB file with hundreds of tensors.

use std::path::PathBuf;

/// What can go wrong reading a GGUF file or rebuilding a Hugging Face model from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening or mapping the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (magic {found:02x?}, expected \"GGUF\")")]
    BadMagic {
        /// The first bytes of the file (fewer than four if it is that short).
        found: Vec<u8>,
    },
    /// Only versions 2 and 3 are read (v1 used 32-bit counts and is long obsolete).
    #[error("GGUF version {version} is not supported (2 and 3 are)")]
    UnsupportedVersion {
        /// The version in the header.
        version: u32,
    },
    /// The file ends before `what` does.
    #[error("truncated: {what} needs {needed} bytes at offset {offset}, only {available} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A count or length cannot fit in what is left of the file, so it is rejected before
    /// anything is allocated for it.
    #[error("{what}: {count} items of at least {min_item_bytes} bytes cannot fit in the {available} bytes left")]
    CountTooLarge {
        /// What was counted.
        what: String,
        /// The count in the file.
        count: u64,
        /// Smallest encoding of one item.
        min_item_bytes: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A string is not UTF-8.
    #[error("{what}: string is not valid UTF-8")]
    BadUtf8 {
        /// Which string.
        what: String,
    },
    /// A string is longer than the format allows.
    #[error("{what}: {len} bytes is longer than the {max} allowed")]
    StringTooLong {
        /// Which string.
        what: String,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A metadata value type id is not one of 0..=12.
    #[error("key {key}: unknown value type {type_id}")]
    BadValueType {
        /// The key.
        key: String,
        /// The type id in the file.
        type_id: u32,
    },
    /// A bool is neither 0 nor 1.
    #[error("key {key}: bool byte {byte} is neither 0 nor 1")]
    BadBool {
        /// The key.
        key: String,
        /// The byte found.
        byte: u8,
    },
    /// Arrays nest deeper than this reader accepts.
    #[error("key {key}: arrays nested deeper than {max_depth}")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// The limit.
        max_depth: usize,
    },
    /// The same key appears twice.
    #[error("key {key} appears twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is unusable.
    #[error("general.alignment {value} is not a power of two between 1 and 2^30")]
    BadAlignment {
        /// The value found.
        value: u64,
    },
    /// The same tensor name appears twice.
    #[error("tensor {tensor} appears twice")]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
    },
    /// More dimensions than ggml's four.
    #[error("tensor {tensor}: {n_dims} dimensions (at most 4)")]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// The count in the file.
        n_dims: u32,
    },
    /// The element count or byte size overflows.
    #[error("tensor {tensor}: dimensions {dims:?} overflow")]
    DimsOverflow {
        /// The tensor.
        tensor: String,
        /// Dimensions, ggml order.
        dims: Vec<u64>,
    },
    /// A ggml type id this reader does not know at all, so the data size cannot be computed.
    #[error("tensor {tensor}: unknown ggml type id {type_id}")]
    UnknownType {
        /// The tensor.
        tensor: String,
        /// The id.
        type_id: u32,
    },
    /// The innermost dimension is not a whole number of quant blocks.
    #[error("tensor {tensor}: row length {ne0} is not a multiple of the {ty} block of {block_len}")]
    PartialBlock {
        /// The tensor.
        tensor: String,
        /// ggml type name.
        ty: &'static str,
        /// ne0.
        ne0: u64,
        /// Elements per block.
        block_len: usize,
    },
    /// A tensor offset is not a multiple of the file's alignment.
    #[error("tensor {tensor}: offset {offset} is not a multiple of the alignment {align}")]
    Misaligned {
        /// The tensor.
        tensor: String,
        /// Offset relative to the data section.
        offset: u64,
        /// The alignment.
        align: u64,
    },
    /// A tensor's bytes lie (partly) outside the file.
    #[error("tensor {tensor}: data at {offset}..+{size} lies outside the {file_len}-byte file")]
    DataOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Absolute start (saturated if it overflowed).
        offset: u64,
        /// Size in bytes.
        size: u64,
        /// File length.
        file_len: u64,
    },
    /// The type is a valid ggml type this crate does not dequantize.
    #[error("tensor {tensor}: ggml type {type_name} (id {type_id}) cannot be dequantized (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)")]
    UnsupportedType {
        /// The tensor (`"<buffer>"` when the raw [`dequantize`](super::dequantize) was called).
        tensor: String,
        /// The id.
        type_id: u32,
        /// Its ggml name.
        type_name: &'static str,
    },
    /// A buffer handed to a decoder has the wrong length.
    #[error("{what}: expected {expected}, got {got}")]
    SizeMismatch {
        /// What was measured.
        what: String,
        /// What was needed.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// A metadata key the model needs is absent.
    #[error("metadata key {key} is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata key has the wrong type (e.g. a string where a count belongs).
    #[error("metadata key {key}: expected {expected}")]
    WrongKeyType {
        /// The key.
        key: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// `general.architecture` is not one this crate maps.
    #[error("architecture {arch:?} is not supported (llama, mistral, qwen2)")]
    UnsupportedArchitecture {
        /// The architecture.
        arch: String,
    },
    /// A Hugging Face tensor name the model does not have.
    #[error("tensor {name} is not in this GGUF file")]
    MissingTensor {
        /// HF name asked for.
        name: String,
    },
    /// A tensor's shape does not fit the model (e.g. Q rows not divisible into heads).
    #[error("tensor {tensor}: shape {shape:?}: {problem}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// Its shape (HF order).
        shape: Vec<usize>,
        /// What is wrong.
        problem: &'static str,
    },
    /// The tokenizer metadata is inconsistent or of an unsupported kind.
    #[error("tokenizer ({model}): {problem}")]
    Tokenizer {
        /// `tokenizer.ggml.model`.
        model: String,
        /// What is wrong.
        problem: String,
    },
}

/// Result alias for the GGUF source.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

impl GgufError {
    /// Fills in the tensor name of an error raised on a bare buffer.
    pub(crate) fn for_tensor(self, name: &str) -> GgufError {
        match self {
            GgufError::UnsupportedType { type_id, type_name, .. } => {
                GgufError::UnsupportedType { tensor: name.to_string(), type_id, type_name }
            }
            GgufError::SizeMismatch { what, expected, got } => {
                GgufError::SizeMismatch { what: format!("tensor {name}: {what}"), expected, got }
            }
            other => other,
        }
    }
}
