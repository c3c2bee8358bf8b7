//! Importance files (`lowbit imatrix` writes them, `lowbit convert --imatrix` reads them): a
//! safetensors file of one f32 vector per linear weight, named as the weight
//! (`model.layers.N.self_attn.q_proj.weight`), holding the mean square of the activations that
//! entered each of its input columns over calibration text. The 4-bit scale search weights each
//! weight's error by its column's value.

use crate::error::{ConvertError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The largest importance file read (a 70B model's is about 3 MiB).
const MAX_BYTES: u64 = 256 << 20;
/// The `format` metadata value that marks an importance file.
const FORMAT: &str = "lowbit-imatrix";

/// Per-column importance of each linear weight, by tensor name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imatrix {
    columns: HashMap<String, Vec<f32>>,
    /// Calibration tokens the statistics are over.
    pub tokens: u64,
}

fn bad(path: &Path, problem: impl Into<String>) -> ConvertError {
    ConvertError::BadJson { what: path.display().to_string(), problem: problem.into() }
}

impl Imatrix {
    /// From `(tensor name, mean x² per column)` pairs gathered over `tokens` tokens.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<f32>)>, tokens: u64) -> Imatrix {
        Imatrix { columns: entries.into_iter().collect(), tokens }
    }

    /// The importance of `name`'s input columns, if the file has it.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.columns.get(name).map(Vec::as_slice)
    }

    /// Weights covered.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether no weight is covered.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Reads an importance file: a regular file within the size cap, marked as one, every value
    /// finite and non-negative.
    pub fn read(path: &Path) -> Result<Imatrix> {
        let bytes = crate::sidefile::read_bytes(path, MAX_BYTES)?.ok_or_else(|| ConvertError::Missing(path.into()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| ConvertError::BadSafetensors { path: path.into(), problem: e.to_string() })?;
        let info = meta.metadata().clone().unwrap_or_default();
        if info.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(path, "not an importance file (lowbit imatrix writes them)"));
        }
        let tokens = info.get("tokens").and_then(|t| t.parse().ok()).unwrap_or(0);
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| ConvertError::BadSafetensors { path: path.into(), problem: e.to_string() })?;
        let mut columns = HashMap::new();
        for (name, t) in st.tensors() {
            if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 1 {
                return Err(bad(path, format!("{name}: expected a vector of f32")));
            }
            let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite() || *x < 0.0) {
                return Err(bad(path, format!("{name}[{i}] is {}, not a mean square", v[i])));
            }
            columns.insert(name, v);
        }
        Ok(Imatrix { columns, tokens })
    }

    /// Writes the file through a temporary file renamed into place.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut names: Vec<&String> = self.columns.keys().collect();
        names.sort();
        let data: Vec<(String, Vec<u8>, usize)> = names
            .iter()
            .map(|n| {
                let v = &self.columns[*n];
                ((*n).clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len())
            })
            .collect();
        let views = data
            .iter()
            .map(|(n, d, len)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], d)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| bad(path, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("tokens".to_string(), self.tokens.to_string()),
        ]);
        let tmp = temp_path(path);
        let done = safetensors::serialize_to_file(views, Some(meta), &tmp)
            .map_err(|e| bad(path, e.to_string()))
            .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| ConvertError::io(path, e)));
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        done
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.imatrix");
        let m = Imatrix::new([("a.weight".to_string(), vec![1.0, 0.5]), ("b.weight".to_string(), vec![0.0])], 42);
        m.write(&p).unwrap();
        assert_eq!(Imatrix::read(&p).unwrap(), m);
        assert_eq!(m.get("a.weight"), Some(&[1.0f32, 0.5][..]));
        let bad = Imatrix::new([("a.weight".to_string(), vec![-1.0])], 1);
        bad.write(&p).unwrap();
        assert!(Imatrix::read(&p).unwrap_err().to_string().contains("not a mean square"));
        std::fs::write(&p, b"not safetensors").unwrap();
        assert!(Imatrix::read(&p).is_err());
        assert!(Imatrix::read(&dir.path().join("none")).is_err());
    }
}
