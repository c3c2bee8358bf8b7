//! An open GGUF file: its bytes (a read-only memory map, or a `Vec` for tests and fuzzing) and
//! the validated header, handing out tensors as raw bytes or dequantized f32. Kept apart from the
//! parser so that parsing stays a pure function of a byte slice (what the fuzz target drives).

use super::dequant::dequantize;
use super::error::{GgufError, Result};
use super::reader::{GgufHeader, Metadata, TensorInfo};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Where a file's bytes live.
enum Storage {
    /// The watch first, so it ends before the unmapping.
    Mapped {
        _watch: lowbit_format::fault::Watch,
        map: memmap2::Mmap,
    },
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped { map, .. } => map,
            Storage::Owned(v) => v,
        }
    }
}

/// A tensor dequantized to f32, shape outermost first (Hugging Face order).
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    /// Shape, outermost first (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// An open GGUF file: its bytes and validated header.
pub struct GgufFile {
    path: Option<PathBuf>,
    storage: Storage,
    header: GgufHeader,
}

// A summary: the derived form would print every token of a 150k vocabulary.
impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("metadata_keys", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if usize::try_from(len).is_err() {
            return Err(GgufError::DataOutOfBounds { tensor: "<file>".into(), offset: 0, size: len, file_len: len });
        }
        // An empty file cannot be mapped on every platform; the parser gives the real error.
        if len < 4 {
            let bytes = std::fs::read(path).map_err(io)?;
            return Self::from_vec(bytes).map(|f| f.with_path(path));
        }
        // SAFETY: the map is read-only and every access goes through offsets the parser checked
        // against its length. Another process truncating the file while it is mapped could still
        // fault (SIGBUS), which the watch turns into a message naming the file and exit status 2.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let watch = lowbit_format::fault::watch(map.as_ptr(), map.len(), path);
        let header = GgufHeader::parse(&map)?;
        Ok(GgufFile { path: Some(path.to_path_buf()), storage: Storage::Mapped { _watch: watch, map }, header })
    }

    /// Parses a copy of `bytes` (for tests and fuzzing; real files should use [`GgufFile::open`]).
    pub fn parse(bytes: &[u8]) -> Result<GgufFile> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parses `bytes`, taking ownership.
    pub fn from_vec(bytes: Vec<u8>) -> Result<GgufFile> {
        let header = GgufHeader::parse(&bytes)?;
        Ok(GgufFile { path: None, storage: Storage::Owned(bytes), header })
    }

    fn with_path(mut self, path: &Path) -> GgufFile {
        self.path = Some(path.to_path_buf());
        self
    }

    /// The file's path, when opened from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// The tensor named `name` (GGUF naming).
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The raw bytes of a tensor of this file.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        // The parser proved start + size <= the length of these very bytes.
        &self.storage.bytes()[info.start as usize..(info.start + info.size) as usize]
    }

    /// The raw bytes of rows `rows` (rows = all dims but ne0) of a tensor.
    pub fn row_bytes(&self, info: &TensorInfo, rows: std::ops::Range<usize>) -> Result<&[u8]> {
        let n_rows = info.n_rows() as usize;
        if rows.start > rows.end || rows.end > n_rows {
            return Err(GgufError::SizeMismatch {
                what: format!("tensor {}: rows {}..{} of {n_rows}", info.name, rows.start, rows.end),
                expected: n_rows,
                got: rows.end,
            });
        }
        let rb = info.row_bytes() as usize;
        Ok(&self.tensor_bytes(info)[rows.start * rb..rows.end * rb])
    }

    /// A whole tensor dequantized to f32, with its shape outermost first. Rows are dequantized in
    /// parallel; each is independent (blocks never straddle rows).
    pub fn tensor_f32(&self, name: &str) -> Result<F32Tensor> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor { name: name.into() })?;
        let bytes = self.tensor_bytes(info);
        let row_len = info.row_len() as usize;
        let row_bytes = info.row_bytes() as usize;
        let mut data = vec![0f32; info.n_elements() as usize];
        if row_len > 0 && row_bytes > 0 {
            data.par_chunks_mut(row_len)
                .zip(bytes.par_chunks(row_bytes))
                .try_for_each(|(out, raw)| dequantize(info.ty, raw, out))
                .map_err(|e| e.for_tensor(name))?;
        }
        Ok(F32Tensor { shape: info.hf_shape(), data })
    }
}
