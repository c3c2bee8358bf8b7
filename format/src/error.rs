//! The format's error type: every variant names what is wrong and, where there is one, the tensor.

use std::path::PathBuf;

/// What can be wrong with a lowbit file, or with writing one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The disk (or a file-size limit) ran out while writing.
    #[error("{path}: no space left (disk full or file size limit); nothing was written")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// Not a lowbit file.
    #[error("not a lowbit file (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("unsupported lowbit format version {0}")]
    UnsupportedVersion(u32),
    /// The file ends before something it declares.
    #[error("file truncated: {what} needs {needed} bytes, the file has {available}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The header is larger than allowed.
    #[error("header of {0} bytes exceeds the limit")]
    HeaderTooLarge(u64),
    /// The header is not valid JSON of the expected shape.
    #[error("header: {0}")]
    Header(String),
    /// Two tensors share a name.
    #[error("tensor {0} appears twice")]
    DuplicateTensor(String),
    /// A shape is unusable (rank, zero dimension, overflow).
    #[error("tensor {tensor}: bad shape {shape:?}: {problem}")]
    BadShape {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// What is wrong.
        problem: &'static str,
    },
    /// A scheme parameter is invalid.
    #[error("tensor {tensor}: {problem}")]
    BadScheme {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// A tensor's declared length disagrees with its scheme and shape.
    #[error("tensor {tensor}: length {got} bytes, its scheme and shape need {expected}")]
    LengthMismatch {
        /// Tensor name.
        tensor: String,
        /// Bytes the scheme needs.
        expected: u64,
        /// Bytes declared (or passed to the writer).
        got: u64,
    },
    /// A tensor's data lies outside the data section or the file.
    #[error("tensor {tensor}: bytes {start}..{end} lie outside the data section ({data_start}..{file_len})")]
    OutOfBounds {
        /// Tensor name.
        tensor: String,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Where the data section starts.
        data_start: u64,
        /// File length.
        file_len: u64,
    },
    /// A tensor is not aligned for in-place use.
    #[error("tensor {tensor}: offset {offset} is not a multiple of {align}")]
    Misaligned {
        /// Tensor name.
        tensor: String,
        /// Its offset.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
    /// Two tensors' bytes overlap.
    #[error("tensors {a} and {b} overlap")]
    Overlap {
        /// First tensor.
        a: String,
        /// Second tensor.
        b: String,
    },
    /// The tensor has no part of that name.
    #[error("tensor {tensor} has no part {part}")]
    NoSuchPart {
        /// Tensor name.
        tensor: String,
        /// Part asked for.
        part: String,
    },
    /// A checksum string is not 8 hex digits.
    #[error("tensor {tensor}: checksum {value:?} is not 8 hex digits")]
    BadChecksum {
        /// Tensor name.
        tensor: String,
        /// What was found.
        value: String,
    },
    /// Writing: a tensor index that does not exist, or one written twice, or one never written.
    #[error("writer: {0}")]
    Writer(String),
}

/// Result alias.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl FormatError {
    /// Wraps an I/O error, recognising a full disk or file-size limit.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> FormatError {
        // ENOSPC = 28, EFBIG = 27, EDQUOT = 122 on Linux.
        match source.raw_os_error() {
            Some(28) | Some(27) | Some(122) => FormatError::DiskFull { path: path.to_path_buf() },
            _ => FormatError::Io { path: path.to_path_buf(), source },
        }
    }
}
