//! A GGUF file as a tensor source: the [`crate::gguf`] reader maps names to Hugging Face ones,
//! dequantizes ggml blocks and undoes llama.cpp's Q/K permutation; this adapter only hands out
//! element ranges as f32, reading just the rows that cover them.

use super::{SrcDtype, SrcTensor, TensorSource};
use crate::error::{ConvertError, Result};
use crate::gguf::{GgmlType, GgufError, GgufModel};
use std::path::{Path, PathBuf};

/// An opened GGUF file. Every tensor is listed as float32 (what the reader produces).
#[derive(Debug)]
pub struct GgufSource {
    path: PathBuf,
    model: GgufModel,
    tensors: Vec<SrcTensor>,
    /// ggml type of each tensor of `tensors`.
    types: Vec<GgmlType>,
}

impl GgufSource {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufSource> {
        let model = GgufModel::open(path).map_err(|e| gguf_error(path, e))?;
        let mut tensors = Vec::new();
        for t in model.tensors() {
            let bytes = model
                .file()
                .tensor_info(&t.gguf_name)
                .map(|i| i.size)
                .unwrap_or((t.shape.iter().product::<usize>() * 4) as u64);
            tensors.push((
                SrcTensor { name: t.name, dtype: SrcDtype::F32, dtype_name: t.ty.to_string(), shape: t.shape, bytes },
                t.ty,
            ));
        }
        tensors.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let (tensors, types) = tensors.into_iter().unzip();
        Ok(GgufSource { path: path.to_path_buf(), model, tensors, types })
    }

    /// The GGUF model (config, tokenizer, chat template).
    pub fn model(&self) -> &GgufModel {
        &self.model
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ggml storage type of tensor `name`.
    pub fn ggml_type(&self, name: &str) -> Option<GgmlType> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok().map(|i| self.types[i])
    }

    pub(crate) fn error(&self, e: GgufError) -> ConvertError {
        gguf_error(&self.path, e)
    }
}

fn gguf_error(path: &Path, source: GgufError) -> ConvertError {
    ConvertError::Gguf { path: path.to_path_buf(), source }
}

impl TensorSource for GgufSource {
    fn list(&self) -> &[SrcTensor] {
        &self.tensors
    }

    fn read_raw(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>> {
        let mut x = Vec::new();
        self.read_f32(name, start, len, &mut x)?;
        Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn read_f32(&self, name: &str, start: usize, len: usize, out: &mut Vec<f32>) -> Result<()> {
        let t = self.get(name).ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
        let n = t.numel();
        let end = start.checked_add(len).filter(|&e| e <= n).ok_or_else(|| ConvertError::Gguf {
            path: self.path.clone(),
            source: GgufError::SizeMismatch {
                what: format!("tensor {name}: elements {start}..+{len}"),
                expected: n,
                got: start.saturating_add(len),
            },
        })?;
        out.clear();
        if len == 0 {
            return Ok(());
        }
        // The reader's rows run along the innermost dimension.
        let row_len = t.shape.last().copied().unwrap_or(1).max(1);
        let rows = start / row_len..end.div_ceil(row_len);
        let first = rows.start * row_len;
        let data = self.model.tensor_f32_rows(name, rows).map_err(|e| self.error(e))?;
        out.extend_from_slice(&data[start - first..end - first]);
        Ok(())
    }
}
