//! # lowbit-convert
//!
//! Offline, streaming conversion of checkpoints into one lowbit file: Hugging Face safetensors
//! folders (f32/f16/bf16, single or sharded), bitsandbytes pre-quantized checkpoints (taken over
//! losslessly), and GGUF files. Tensors are converted one chunk at a time, several in parallel;
//! the output appears only when complete.
//!
//! The quantizers used are the kernels' scalar ones, so a file is byte-identical whichever CPU
//! made it.

#![warn(missing_docs)]

pub mod bnb;
pub mod config;
mod convert;
mod error;
pub mod plan;
pub mod source;
pub mod synth;

pub use convert::{convert, ConvertSummary, ProgressEvent};
pub use error::{ConvertError, Result};
pub use plan::{ConvertOptions, QuantChoice};
