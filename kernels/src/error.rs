//! The kernels' one error type. Kernels validate shapes once at their public entry points and
//! keep the inner loops infallible.

/// What can go wrong when quantizing or multiplying.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum KernelError {
    /// A buffer does not have the length the operation needs.
    #[error("{op}: {what} has length {got}, expected {expected}")]
    ShapeMismatch {
        /// The operation that was called.
        op: &'static str,
        /// Which argument is wrong.
        what: &'static str,
        /// The length the shapes imply.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// A block size bitsandbytes does not allow.
    #[error("blocksize {0} is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096")]
    BadBlocksize(usize),
    /// NaN or infinity in a tensor to quantize: bitsandbytes would store garbage scales, so we refuse.
    #[error("{op}: element {index} is not finite ({value})")]
    NonFinite {
        /// The operation that was called.
        op: &'static str,
        /// Flat index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// Shapes whose product does not fit in memory addresses.
    #[error("{op}: shape {rows}x{cols} overflows")]
    Overflow {
        /// The operation that was called.
        op: &'static str,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// The requested instruction set is not available on this CPU.
    #[error("instruction set {0} is not supported on this CPU")]
    UnsupportedIsa(String),
    /// An unknown name in `LOWBIT_ISA` or an API call.
    #[error("unknown instruction set {0:?} (expected scalar, avx2, avxvnni, avx512, neon)")]
    UnknownIsa(String),
    /// An unknown name in `LOWBIT_PREFETCH`.
    #[error("unknown prefetch hint {0:?} (expected outer, nta)")]
    UnknownPrefetch(String),
    /// An unknown value in `LOWBIT_AMX`.
    #[error("unknown LOWBIT_AMX value {0:?} (expected all, prompts, 0)")]
    UnknownAmx(String),
}

/// Result alias for the kernels.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
