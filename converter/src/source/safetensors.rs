//! A Hugging Face checkpoint folder: `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`.
//!
//! Each shard's header is parsed and validated by the `safetensors` crate, and checked against
//! the file's real length, so a truncated or padded shard is refused before anything is written.
//! Tensor data is read with positional reads (`pread`) rather than through a memory map: the
//! memory a conversion holds is exactly the chunks it asked for, whereas pages of a map stay
//! resident (and count in the RSS) until the kernel evicts them — for a 14 GB checkpoint that
//! would be the whole model.

use super::{decode_f32, SrcDtype, SrcTensor, TensorSource};
use crate::error::{ConvertError, Result};
use safetensors::tensor::Metadata;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where a tensor's bytes are.
#[derive(Debug, Clone, Copy)]
struct Location {
    shard: usize,
    /// Absolute file offset of the first byte.
    offset: u64,
}

/// An opened safetensors checkpoint.
#[derive(Debug)]
pub struct SafetensorsSource {
    shards: Vec<(PathBuf, std::fs::File)>,
    index: Option<PathBuf>,
    tensors: Vec<SrcTensor>,
    locations: Vec<Location>,
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

/// Maximum size of `model.safetensors.index.json` read (real ones are tens of kilobytes).
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// The index's `weight_map`: tensor name → shard file name.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let bad = |problem: String| ConvertError::BadJson { what: index.display().to_string(), problem };
    let text =
        crate::sidefile::read(index, MAX_INDEX_BYTES)?.ok_or_else(|| ConvertError::Missing(index.to_path_buf()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no weight_map object".into()))?;
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("weight_map[{name:?}] is not a file name")))?;
        // Shards live in the folder itself: no paths, no way out of it.
        if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
            return Err(bad(format!("shard name {file:?} is not a file in the folder")));
        }
        out.insert(name.clone(), file.to_string());
    }
    if out.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(out)
}

impl SafetensorsSource {
    /// Opens every shard of the checkpoint in `dir` and reads its header. With an index, every
    /// tensor it lists must be in the shard it names.
    pub fn open(dir: &Path) -> Result<SafetensorsSource> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let (files, weight_map, index) = if index_path.is_file() {
            let map = read_index(&index_path)?;
            let mut files: Vec<String> = map.values().cloned().collect();
            files.sort();
            files.dedup();
            (files, Some(map), Some(index_path))
        } else if single.is_file() {
            (vec!["model.safetensors".to_string()], None, None)
        } else {
            return Err(ConvertError::Missing(single));
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut found: BTreeMap<String, (SrcTensor, Location)> = BTreeMap::new();
        for (si, file_name) in files.iter().enumerate() {
            let path = dir.join(file_name);
            let file = std::fs::File::open(&path).map_err(|e| ConvertError::io(&path, e))?;
            for (t, offset) in read_header(&file, &path)? {
                let name = t.name.clone();
                if let Some(map) = &weight_map {
                    match map.get(&name) {
                        Some(f) if f == file_name => {}
                        // Listed elsewhere or not at all: transformers loads by the index, so a
                        // tensor the index does not place here is not part of the model.
                        _ => continue,
                    }
                }
                if found.insert(name.clone(), (t, Location { shard: si, offset })).is_some() {
                    return Err(ConvertError::BadSafetensors {
                        path: path.clone(),
                        problem: format!("tensor {name} appears twice"),
                    });
                }
            }
            shards.push((path, file));
        }
        if let (Some(map), Some(index)) = (&weight_map, &index) {
            if let Some((name, file)) = map.iter().find(|(n, _)| !found.contains_key(*n)) {
                return Err(ConvertError::BadSafetensors {
                    path: dir.join(file),
                    problem: format!("{} lists tensor {name} in this shard, but it is not there", index.display()),
                });
            }
        }
        let (tensors, locations) = found.into_values().unzip();
        Ok(SafetensorsSource { shards, index, tensors, locations })
    }

    /// One safetensors file on its own (a PEFT adapter's `adapter_model.safetensors`).
    pub fn open_file(path: &Path) -> Result<SafetensorsSource> {
        let meta = std::fs::metadata(path).map_err(|e| ConvertError::io(path, e))?;
        if !meta.is_file() {
            return Err(ConvertError::BadSafetensors {
                path: path.to_path_buf(),
                problem: "not a regular file".into(),
            });
        }
        let file = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
        let mut found: BTreeMap<String, (SrcTensor, Location)> = BTreeMap::new();
        for (t, offset) in read_header(&file, path)? {
            found.insert(t.name.clone(), (t, Location { shard: 0, offset }));
        }
        let (tensors, locations) = found.into_values().unzip();
        Ok(SafetensorsSource { shards: vec![(path.to_path_buf(), file)], index: None, tensors, locations })
    }

    /// The files read: the index (if any), then the shards.
    pub fn files(&self) -> Vec<PathBuf> {
        self.index.iter().cloned().chain(self.shards.iter().map(|(p, _)| p.clone())).collect()
    }

    fn find(&self, name: &str) -> Result<(usize, &SrcTensor)> {
        let i = self
            .tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .map_err(|_| ConvertError::MissingTensor(name.to_string()))?;
        Ok((i, &self.tensors[i]))
    }
}

/// Largest header accepted (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Parses one shard's header; returns its tensors with their absolute data offsets.
///
/// The header is read with a positional read (its length checked against the file first) and
/// deserialized into the `safetensors` crate's `Metadata`, which validates it exactly as
/// `SafeTensors::read_metadata` does: offsets contiguous from 0, each tensor's byte length equal
/// to shape × dtype size, no overflow. What `read_metadata` adds — that the data ends exactly at
/// the end of the file — is checked here. No map is needed, so this crate has no `unsafe`.
fn read_header(file: &std::fs::File, path: &Path) -> Result<Vec<(SrcTensor, u64)>> {
    let bad = |problem: String| ConvertError::BadSafetensors { path: path.to_path_buf(), problem };
    let io = |e| ConvertError::io(path, e);
    let len = file.metadata().map_err(io)?.len();
    if len < 8 {
        return Err(bad(format!("{len} bytes: too short for a safetensors header")));
    }
    let mut n = [0u8; 8];
    file.read_exact_at(&mut n, 0).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > len - 8 {
        return Err(bad(format!("header length {n} exceeds the file ({len} bytes) or the 100 MB limit")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8).map_err(io)?;
    let text = std::str::from_utf8(&header).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let meta: Metadata = serde_json::from_str(text).map_err(|e| bad(format!("header: {e}")))?;
    let data_len = meta.data_len() as u64;
    if 8 + n + data_len != len {
        return Err(bad(format!(
            "the header describes {data_len} bytes of tensor data but the file holds {} (truncated or padded)",
            len - 8 - n
        )));
    }
    let base = 8 + n;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (b, e) = info.data_offsets;
        let t = SrcTensor {
            name,
            dtype: map_dtype(info.dtype),
            dtype_name: format!("{:?}", info.dtype),
            shape: info.shape.clone(),
            bytes: (e - b) as u64,
        };
        out.push((t, base + b as u64));
    }
    Ok(out)
}

impl TensorSource for SafetensorsSource {
    fn list(&self) -> &[SrcTensor] {
        &self.tensors
    }

    fn read_raw(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>> {
        let (i, t) = self.find(name)?;
        let (path, file) = &self.shards[self.locations[i].shard];
        let size = t.dtype.size() as u64;
        let from = (start as u64).checked_mul(size);
        let bytes = (len as u64).checked_mul(size);
        let (from, bytes) = match (from, bytes) {
            (Some(f), Some(b)) if f.checked_add(b).is_some_and(|end| end <= t.bytes) => (f, b),
            _ => {
                return Err(ConvertError::BadSafetensors {
                    path: path.clone(),
                    problem: format!("read of elements {start}..+{len} past the end of {name}"),
                })
            }
        };
        let mut buf = vec![0u8; bytes as usize];
        file.read_exact_at(&mut buf, self.locations[i].offset + from).map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => ConvertError::BadSafetensors {
                path: path.clone(),
                problem: format!("the file ends inside tensor {name} (truncated while converting?)"),
            },
            _ => ConvertError::io(path, err),
        })?;
        Ok(buf)
    }

    fn read_f32(&self, name: &str, start: usize, len: usize, out: &mut Vec<f32>) -> Result<()> {
        let (_, t) = self.find(name)?;
        if !t.dtype.is_float() {
            return Err(ConvertError::UnsupportedDtype { tensor: name.into(), dtype: t.dtype_name.clone() });
        }
        let dtype = t.dtype;
        decode_f32(dtype, &self.read_raw(name, start, len)?, out);
        Ok(())
    }
}
