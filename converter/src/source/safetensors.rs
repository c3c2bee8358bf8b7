//! A Hugging Face checkpoint folder: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Headers are parsed (and validated) by the `safetensors`
//! crate over a read-only map; tensor data is read with positional reads, so the memory a
//! conversion holds is what it asked for, not the pages of a 14 GB map.

use super::{SrcDtype, TensorSource};
use crate::error::{ConvertError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

struct Entry {
    shard: usize,
    dtype: SrcDtype,
    dtype_name: String,
    shape: Vec<usize>,
    /// Absolute file offset of the first byte.
    offset: u64,
    len: u64,
}

/// An opened safetensors checkpoint.
pub struct SafetensorsSource {
    shards: Vec<(PathBuf, std::fs::File)>,
    tensors: BTreeMap<String, Entry>,
}

fn map_dtype(d: Dtype) -> SrcDtype {
    match d {
        Dtype::F32 => SrcDtype::F32,
        Dtype::F16 => SrcDtype::F16,
        Dtype::BF16 => SrcDtype::Bf16,
        Dtype::U8 => SrcDtype::U8,
        Dtype::I8 => SrcDtype::I8,
        _ => SrcDtype::Other,
    }
}

impl SafetensorsSource {
    /// The shard files of the folder (one, or those the index lists).
    pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ConvertError::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ConvertError::BadJson { what: index.display().to_string(), problem: e.to_string() })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ConvertError::BadJson {
                what: index.display().to_string(),
                problem: "no weight_map".into(),
            })?;
            let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
            files.sort();
            files.dedup();
            for f in &files {
                if f.contains('/') || f.contains("..") {
                    return Err(ConvertError::BadJson {
                        what: index.display().to_string(),
                        problem: format!("shard name {f:?} leaves the folder"),
                    });
                }
            }
            Ok(files.into_iter().map(|f| dir.join(f)).collect())
        } else if single.exists() {
            Ok(vec![single])
        } else {
            Err(ConvertError::Missing(single))
        }
    }

    /// Opens every shard and reads its header.
    pub fn open(dir: &Path) -> Result<SafetensorsSource> {
        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        for (si, path) in Self::shard_files(dir)?.into_iter().enumerate() {
            let file = std::fs::File::open(&path).map_err(|e| ConvertError::io(&path, e))?;
            // SAFETY-free: the map below is only used to parse the header, through the
            // safetensors crate, which checks every offset against the map's length.
            let map = map_file(&file, &path)?;
            let (n, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| ConvertError::BadSafetensors { path: path.clone(), problem: format!("{e:?}") })?;
            let base = 8 + n as u64;
            for (name, info) in meta.tensors() {
                let (b, e) = info.data_offsets;
                let entry = Entry {
                    shard: si,
                    dtype: map_dtype(info.dtype),
                    dtype_name: format!("{:?}", info.dtype),
                    shape: info.shape.clone(),
                    offset: base + b as u64,
                    len: (e - b) as u64,
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(ConvertError::BadSafetensors {
                        path: path.clone(),
                        problem: format!("tensor {name} appears in two shards"),
                    });
                }
            }
            shards.push((path, file));
        }
        Ok(SafetensorsSource { shards, tensors })
    }

    /// The dtype name as written in the file (for error messages).
    pub fn dtype_name(&self, name: &str) -> Option<&str> {
        self.tensors.get(name).map(|e| e.dtype_name.as_str())
    }

    /// The source files.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|(p, _)| p.clone()).collect()
    }

    /// The `__metadata__`-free names with dtype and shape, as a map.
    pub fn index(&self) -> HashMap<String, (SrcDtype, Vec<usize>)> {
        self.tensors.iter().map(|(k, e)| (k.clone(), (e.dtype, e.shape.clone()))).collect()
    }
}

fn map_file(file: &std::fs::File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: a read-only map used only while parsing the header; the file is not expected to
    // change during conversion (a concurrent truncation would raise SIGBUS, as with any reader
    // that maps files).
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| ConvertError::io(path, e))
}

impl TensorSource for SafetensorsSource {
    fn list(&self) -> Vec<(String, SrcDtype, Vec<usize>)> {
        self.tensors.iter().map(|(k, e)| (k.clone(), e.dtype, e.shape.clone())).collect()
    }

    fn read_raw(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>> {
        let e = self.tensors.get(name).ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
        let size = e.dtype.size() as u64;
        let (from, bytes) = (start as u64 * size, len as u64 * size);
        if from + bytes > e.len {
            return Err(ConvertError::BadSafetensors {
                path: self.shards[e.shard].0.clone(),
                problem: format!("read past the end of {name}"),
            });
        }
        let mut buf = vec![0u8; bytes as usize];
        let (path, file) = &self.shards[e.shard];
        file.read_exact_at(&mut buf, e.offset + from).map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                ConvertError::BadSafetensors { path: path.clone(), problem: format!("file ends inside tensor {name}") }
            }
            _ => ConvertError::io(path, err),
        })?;
        Ok(buf)
    }
}
