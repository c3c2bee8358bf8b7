//! # lowbit-format
//!
//! The one-file model format shared by the converter (which writes it) and the runtime (which
//! maps it): a fixed preamble, a JSON header (model config, tokenizer, chat template,
//! quantization settings, source digests, and the tensor index), then page-aligned tensor data
//! laid out so the kernels read weights in place. The specification is `docs/FORMAT.md`.
//!
//! Files come from strangers: [`ModelFile::open`] checks the header length against the file
//! before allocating for it, then bounds, overlaps, alignment, shape × scheme = length, and known
//! schemes, before handing out a single byte; it never panics on file content.
//! [`Writer`] writes atomically (temp file, fsync, rename) and lets several threads write
//! different tensors at once.
//!
//! ```no_run
//! # fn main() -> lowbit_format::Result<()> {
//! use lowbit_format::{ModelFile, Scheme};
//! let file = ModelFile::open("model.lowbit".as_ref())?;
//! let t = file.tensor("model.norm.weight").expect("present");
//! if t.info.scheme == Scheme::F32 {
//!     let w: &[f32] = t.part_f32("data")?; // in place, no copy
//!     println!("{}", w.len());
//! }
//! # Ok(()) }
//! ```
//!
//! The format is little-endian only, like every target we build for (x86-64, aarch64): the
//! bytes are used in place, so a big-endian build would misread every weight and is refused at
//! compile time.

#![warn(missing_docs)]

pub mod adapter;
mod error;
pub mod fault;
mod header;
pub mod layout;
pub mod limits;
mod reader;
mod scheme;
mod validate;
mod writer;

pub use adapter::AdapterValues;
pub use error::{FormatError, Result};
pub use header::{
    AdapterRecord, ConverterInfo, Header, Metadata, QuantSettings, SourceDigest, TensorInfo, ADAPTER_ARCHITECTURE,
};
pub use reader::{ChecksumMismatch, ModelFile, TensorRef};
pub use scheme::{
    FourBitKind, Nested, PartLayout, Scheme, BLOCKSIZES, MAX_ELEMENTS, MAX_RANK, ORIG_DTYPES, PART_ALIGN,
    Q5_BLOCKSIZES, Q8_BLOCKSIZES,
};
pub use writer::{PlannedTensor, TensorSink, TensorSpec, WriteSummary, Writer};

#[cfg(not(target_endian = "little"))]
compile_error!("lowbit files are little-endian and are mapped in place: big-endian targets are not supported");
