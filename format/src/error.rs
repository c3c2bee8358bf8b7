//! The format's one error type. Every variant names what is wrong and, where there is one, the
//! tensor, so a user handed a bad file (or a converter bug) gets a message that points at the
//! field, not a generic "invalid file".

use std::path::{Path, PathBuf};

/// What can be wrong with a lowbit file, or with writing one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error: in the message, not also a `source` (a report that prints the chain would
        /// say it twice).
        error: std::io::Error,
    },
    /// The disk, a quota or a file-size limit (`ulimit -f`) ran out while writing.
    #[error("{path}: no space left (disk full, quota or file size limit); the output was not written")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// The path is not a regular file (a directory, FIFO or device), which we refuse to map.
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The first 8 bytes are not `LOWBIT\0\0`.
    #[error("not a lowbit file{}", magic_hint(found))]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A version this build does not read.
    #[error("unsupported lowbit format version {version} (this build reads version 1)")]
    UnsupportedVersion {
        /// Version in the preamble.
        version: u32,
    },
    /// The reserved preamble field is not zero.
    #[error("reserved preamble field is {value}, must be 0")]
    ReservedNotZero {
        /// Value found.
        value: u32,
    },
    /// The file ends before something it declares.
    #[error("file truncated: {what} needs {needed} bytes, the file has {available}")]
    Truncated {
        /// What was being read ("preamble", "header").
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The header is larger than any real model's, so we refuse to allocate for it.
    #[error("header of {len} bytes exceeds the limit of {limit}")]
    HeaderTooLarge {
        /// Declared (or, when writing, needed) header length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The header bytes are not UTF-8.
    #[error("header is not UTF-8 (invalid byte at {valid_up_to})")]
    HeaderUtf8 {
        /// Offset in the header of the first invalid byte.
        valid_up_to: usize,
    },
    /// The header is not JSON of the expected shape (this includes an unknown scheme type).
    #[error("header JSON: {source}")]
    HeaderJson {
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// A metadata field has the wrong JSON type.
    #[error("metadata.{field}: {problem}")]
    BadMetadata {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// Two tensors share a name.
    #[error("tensor {name} appears twice")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A shape is unusable (rank, or a zero dimension where the scheme forbids one).
    #[error("tensor {tensor}: bad shape {shape:?}: {problem}")]
    BadShape {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// What is wrong.
        problem: &'static str,
    },
    /// The shape's element count or byte size overflows (or exceeds 2^48 elements).
    #[error("tensor {tensor}: shape {shape:?} is too large")]
    ShapeOverflow {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
    },
    /// A 4-bit block size that bitsandbytes does not use.
    #[error("tensor {tensor}: {which} {blocksize} is not one of 32, 64, …, 4096")]
    BadBlocksize {
        /// Tensor name.
        tensor: String,
        /// "blocksize" or "nested blocksize".
        which: &'static str,
        /// Value found.
        blocksize: u32,
    },
    /// A 4-bit tensor's `orig_dtype` is not a float dtype.
    #[error("tensor {tensor}: orig_dtype {dtype:?} is not float32, float16 or bfloat16")]
    BadOrigDtype {
        /// Tensor name.
        tensor: String,
        /// Value found.
        dtype: String,
    },
    /// A tensor's declared length disagrees with its scheme and shape.
    #[error("tensor {tensor}: length {got} bytes, its scheme and shape need {expected}")]
    LengthMismatch {
        /// Tensor name.
        tensor: String,
        /// Bytes the scheme needs.
        expected: u64,
        /// Bytes declared.
        got: u64,
    },
    /// A tensor's data lies outside the data section or the file.
    #[error("tensor {tensor}: bytes {start}..{end} lie outside the data section ({data_start}..{file_len})")]
    OutOfBounds {
        /// Tensor name.
        tensor: String,
        /// First byte.
        start: u64,
        /// One past the last byte (`u64::MAX` if that overflows).
        end: u64,
        /// Where the data section starts.
        data_start: u64,
        /// File length.
        file_len: u64,
    },
    /// A tensor (or part) is not aligned for in-place use.
    #[error("tensor {tensor}: offset {offset} is not a multiple of {align}")]
    Misaligned {
        /// Tensor name (`name.part` for a part).
        tensor: String,
        /// Its offset.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
    /// Two tensors' bytes overlap.
    #[error("tensors {a} and {b} overlap")]
    Overlap {
        /// First tensor (lower offset).
        a: String,
        /// Second tensor.
        b: String,
    },
    /// A checksum string is not 8 lowercase hex digits.
    #[error("tensor {tensor}: checksum {value:?} is not 8 lowercase hex digits")]
    BadChecksum {
        /// Tensor name.
        tensor: String,
        /// What was found.
        value: String,
    },
    /// A tensor's bytes do not match its checksum.
    #[error("tensor {tensor}: crc32 {actual}, header says {expected} ({count} tensor(s) corrupt in all)")]
    ChecksumMismatch {
        /// First corrupt tensor.
        tensor: String,
        /// CRC-32 in the header.
        expected: String,
        /// CRC-32 of the bytes.
        actual: String,
        /// How many tensors failed.
        count: usize,
    },
    /// The tensor has no part of that name.
    #[error("tensor {tensor} has no part {part}")]
    NoSuchPart {
        /// Tensor name.
        tensor: String,
        /// Part asked for.
        part: String,
    },
    /// Writer: a tensor index past the end.
    #[error("writer: no tensor #{index} (the file has {count})")]
    NoSuchTensor {
        /// Index given.
        index: usize,
        /// Number of tensors.
        count: usize,
    },
    /// Writer: the wrong number of parts for the tensor's scheme.
    #[error("writer: tensor {tensor}: {got} parts given, its scheme has {expected}")]
    PartCount {
        /// Tensor name.
        tensor: String,
        /// Parts in the scheme.
        expected: usize,
        /// Parts given.
        got: usize,
    },
    /// Writer: a part of the wrong length.
    #[error("writer: tensor {tensor}: part {part} is {got} bytes, expected {expected}")]
    PartLength {
        /// Tensor name.
        tensor: String,
        /// Part name.
        part: &'static str,
        /// Bytes the scheme needs.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// Writer: the tensor was already written (or is being written by another thread).
    #[error("writer: tensor {tensor} written twice")]
    AlreadyWritten {
        /// Tensor name.
        tensor: String,
    },
    /// Writer: `finish` before every tensor was written.
    #[error("writer: tensor {tensor} was never written ({missing} tensor(s) missing)")]
    NotWritten {
        /// First missing tensor.
        tensor: String,
        /// How many are missing.
        missing: usize,
    },
    /// Writer: the tensors' total size does not fit in a 64-bit file offset.
    #[error("writer: tensor {tensor} would end past 2^64 bytes")]
    LayoutOverflow {
        /// The tensor that does not fit.
        tensor: String,
    },
    /// Writer: the final header came out longer than the space reserved for it. This means the
    /// metadata serialized differently twice, which is a bug, not a property of the input.
    #[error("writer: final header is {actual} bytes but {planned} were reserved")]
    HeaderGrew {
        /// Bytes reserved.
        planned: u64,
        /// Bytes needed.
        actual: u64,
    },
}

/// Result alias.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl FormatError {
    /// Wraps an I/O error on `path`, turning a full disk, an exhausted quota and a file-size limit
    /// (`EFBIG` from `ulimit -f`, once `SIGXFSZ` is ignored) into [`FormatError::DiskFull`].
    pub fn io(path: &Path, source: std::io::Error) -> FormatError {
        use std::io::ErrorKind;
        match source.kind() {
            ErrorKind::StorageFull | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded => {
                FormatError::DiskFull { path: path.to_path_buf() }
            }
            _ => FormatError::Io { path: path.to_path_buf(), error: source },
        }
    }
}

/// What a file that is not a lowbit file seems to be, and what to do with it.
fn magic_hint(found: &[u8; 8]) -> String {
    if found.starts_with(b"GGUF") {
        ": it is a GGUF file; convert it with `lowbit convert FILE -o OUT.lowbit`, or give it to `lowbit run` or `chat` directly".into()
    } else if u64::from_le_bytes(*found) < 1 << 27 && found[..4] != [0; 4] {
        ": it looks like a safetensors file; convert the folder holding it and its config.json with `lowbit convert`"
            .into()
    } else {
        format!(" (it starts with {found:02x?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn full_disk_and_file_size_limit_are_disk_full() {
        let p = Path::new("x");
        // ENOSPC, EFBIG, EDQUOT on Linux.
        for code in [28, 27, 122] {
            let e = FormatError::io(p, std::io::Error::from_raw_os_error(code));
            assert!(matches!(e, FormatError::DiskFull { .. }), "errno {code}: {e:?}");
        }
        let e = FormatError::io(p, std::io::Error::from_raw_os_error(2));
        assert!(matches!(e, FormatError::Io { .. }));
    }
}
