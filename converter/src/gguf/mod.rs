//! GGUF (llama.cpp's single-file format) as a source of Hugging Face–shaped models.
//!
//! The pieces, each in its own file because each has one job and its own tests:
//!
//! * [`reader`] — hostile-input-safe parsing of the v2/v3 container ([`GgufFile`],
//!   [`GgufHeader`]; `file.rs` holds the bytes), with [`value`] for metadata values and [`types`] for ggml type ids;
//! * [`dequant`] — ggml blocks (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K) to f32, bit-exact with
//!   ggml's reference decoders;
//! * [`permute`] — undoing llama.cpp's Q/K row permutation so weights equal the HF checkpoint;
//! * [`names`] + [`model`] — GGUF tensor names to HF names and the HF `config.json`
//!   ([`GgufModel`]);
//! * [`tokenizer`] — an HF `tokenizer.json` rebuilt from `tokenizer.ggml.*`;
//! * [`writer`] — a minimal writer, for crafted test files and fuzz seeds.
//!
//! Facts are from FORMATS.md §F; nothing here is derived from llama.cpp's or gguf-py's code.

mod cursor;
pub mod dequant;
mod error;
mod file;
pub mod model;
pub mod names;
pub mod permute;
pub mod reader;
pub mod tokenizer;
pub mod types;
pub mod value;
pub mod writer;

pub use dequant::dequantize;
pub use error::{GgufError, Result};
pub use file::{F32Tensor, GgufFile};
pub use model::{GgufModel, HfTensor};
pub use permute::{permute_rows, unpermute_rows};
pub use reader::{GgufHeader, Metadata, TensorInfo};
pub use types::GgmlType;
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;
