//! # lowbit-convert
//!
//! Offline, streaming conversion of checkpoints into one lowbit file: Hugging Face safetensors
//! folders (f32/f16/bf16, single or sharded), bitsandbytes pre-quantized checkpoints (NF4/FP4 with
//! or without double quantization, LLM.int8 — taken over byte for byte), and GGUF files.
//!
//! * [`source`] reads tensors (safetensors headers via the `safetensors` crate; GGUF via [`gguf`]);
//! * [`config`] normalises config.json and says what shape every tensor must have;
//! * [`bnb`] recognises and checks bitsandbytes tensors;
//! * [`plan`] decides every tensor's scheme (bitsandbytes' defaults: only the attention and MLP
//!   linear weights are quantized);
//! * [`convert()`] runs it: tensors one chunk at a time, several in parallel, into the format's
//!   atomic writer. The output appears only when complete.
//!
//! The quantizers used are the kernels' scalar ones, so a file is byte-identical whichever CPU
//! made it.
//!
//! ```no_run
//! # fn main() -> lowbit_convert::Result<()> {
//! use lowbit_convert::{convert, ConvertOptions, QuantChoice};
//! let opts = ConvertOptions { quant: QuantChoice::Nf4, ..Default::default() };
//! let summary = convert("Mistral-7B".as_ref(), "mistral.lowbit".as_ref(), &opts, &|_| {})?;
//! println!("{:.2} bits/weight", summary.bits_per_weight());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bnb;
pub mod cache;
pub mod config;
mod convert;
mod error;
pub mod gguf;
pub mod imatrix;
pub mod lora;
pub mod lora_file;
pub mod plan;
mod quantize;
mod sidefile;
pub mod source;
pub mod synth;

pub use convert::{convert, ConvertSummary, ProgressEvent};
pub use error::{ConvertError, Result};
pub use plan::{ConvertOptions, HeadChoice, QuantChoice};
