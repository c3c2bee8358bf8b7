//! # lowbit-format
//!
//! The one-file model format shared by the converter (which writes it) and the runtime (which
//! maps it): a fixed preamble, a JSON header (model config, tokenizer, chat template,
//! quantization settings, source digests, and the tensor index), then page-aligned tensor data
//! laid out so the kernels read weights in place. The full specification is `docs/FORMAT.md`.
//!
//! Files come from strangers: [`ModelFile::open`] validates bounds, overlaps, alignment,
//! shape × scheme = length and known schemes before handing out a single byte, and never
//! allocates by an unchecked field. [`Writer`] writes atomically (temp file, fsync, rename).
//! Little-endian only, like every target we build for (x86-64, aarch64).

#![warn(missing_docs)]

mod error;
mod header;
pub mod layout;
mod reader;
mod scheme;
mod writer;

pub use error::{FormatError, Result};
pub use header::{ConverterInfo, Header, Metadata, QuantSettings, SourceDigest, TensorInfo};
pub use reader::{ChecksumMismatch, ModelFile, TensorRef};
pub use scheme::{FourBitKind, Nested, PartLayout, Scheme, PART_ALIGN};
pub use writer::{PlannedTensor, TensorSpec, WriteSummary, Writer};

#[cfg(not(target_endian = "little"))]
compile_error!("lowbit files are little-endian and are mapped in place: big-endian targets are not supported");
