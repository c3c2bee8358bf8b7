//! Conversion from Python: `lowbit.convert`, `lowbit.inspect`, and the cache that lets
//! `Llama(model_path=...)` take a GGUF file or a Hugging Face / bitsandbytes folder directly.

use crate::lowbit_err;
use lowbit_convert::{ConvertOptions, ProgressEvent, QuantChoice};
use lowbit_format::ModelFile;
use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn quant_choice(quant: &str) -> PyResult<QuantChoice> {
    Ok(match quant {
        "nf4" => QuantChoice::Nf4,
        "nf4-small" => QuantChoice::Nf4Small,
        "nf4-mix" => QuantChoice::Nf4Mix,
        "nf4-plus" => QuantChoice::Nf4Plus,
        "q5" => QuantChoice::Q5,
        "q5-mix" => QuantChoice::Q5Mix,
        "fp4" => QuantChoice::Fp4,
        "int8" => QuantChoice::Int8,
        "q8" => QuantChoice::Q8,
        "f16" => QuantChoice::F16,
        "bf16" => QuantChoice::Bf16,
        "f32" => QuantChoice::F32,
        other => {
            return Err(PyValueError::new_err(format!(
                "quant {other:?} is not one of nf4, nf4-small, nf4-mix, nf4-plus, q5, q5-mix, fp4, int8, q8, f16, bf16, f32"
            )))
        }
    })
}

/// The lowbit file to open for `path`: itself, or its cached conversion (made now if missing).
pub fn resolve(py: Python<'_>, path: &Path, quant: &str, verbose: bool) -> PyResult<PathBuf> {
    if !lowbit_convert::cache::is_source(path) {
        return Ok(path.to_path_buf());
    }
    let opts = ConvertOptions::for_quant(quant_choice(quant)?);
    if verbose {
        eprintln!(
            "lowbit: {} is a source: using its {quant} conversion in {}",
            path.display(),
            lowbit_convert::cache::cache_dir().display()
        );
    }
    let (file, _) = py.detach(|| lowbit_convert::cache::resolve(path, &opts, &|_| {})).map_err(lowbit_err)?;
    Ok(file)
}

/// Converts `src` into `dst` (written to a temporary file and renamed: never a partial file).
pub fn convert_file(py: Python<'_>, src: &Path, dst: &Path, quant: &str, progress: Option<Py<PyAny>>) -> PyResult<()> {
    if !src.exists() {
        return Err(PyFileNotFoundError::new_err(format!("{}: no such file or folder", src.display())));
    }
    let opts = ConvertOptions::for_quant(quant_choice(quant)?);
    // Progress is reported from the converter's threads; the callback runs with the GIL and
    // under the lock that counts the bytes, so it sees the counts in increasing order (the last
    // call is the whole), and the first exception it raises is kept and raised at the end.
    let done = Mutex::new((0u64, 0u64, None::<PyErr>));
    let report = |e: ProgressEvent| {
        let Some(cb) = &progress else { return };
        let mut g = done.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            ProgressEvent::Start { total_bytes } => g.1 = total_bytes,
            ProgressEvent::Tensor { bytes, .. } => g.0 += bytes,
        }
        let (d, t) = (g.0, g.1);
        Python::attach(|py| {
            if let Err(err) = cb.call1(py, (d, t)) {
                g.2.get_or_insert(err);
            }
        });
    };
    let result = py.detach(|| lowbit_convert::convert(src, dst, &opts, &report));
    if let Some(err) = done.into_inner().unwrap_or_else(|p| p.into_inner()).2 {
        return Err(err);
    }
    result.map(|_| ()).map_err(lowbit_err)
}

/// The summary `lowbit.inspect` returns.
pub fn inspect(path: &Path, n_ctx: usize) -> PyResult<Value> {
    if !path.exists() {
        return Err(PyFileNotFoundError::new_err(format!("{}: no such file", path.display())));
    }
    let file = ModelFile::open(path).map_err(lowbit_err)?;
    let meta = file.metadata();
    let tensors: Vec<Value> = file
        .tensors()
        .iter()
        .map(|t| json!({ "name": t.name, "scheme": t.scheme.label(), "shape": t.shape, "bytes": t.length }))
        .collect();
    let weights: u64 = file.tensors().iter().map(|t| t.shape.iter().product::<u64>()).sum();
    let bytes: u64 = file.tensors().iter().map(|t| t.length).sum();
    let bits_per_weight = if weights > 0 { bytes as f64 * 8.0 / weights as f64 } else { 0.0 };
    if meta.architecture == lowbit_format::ADAPTER_ARCHITECTURE {
        // An adapter file (`lowbit.convert(ADAPTER_DIR, ...)`): no model to run, so no RAM plan.
        return Ok(json!({
            "architecture": meta.architecture,
            "lora": meta.config.get("lora").cloned().unwrap_or(Value::Null),
            "adapters": serde_json::to_value(&meta.adapters).unwrap_or(Value::Null),
            "tensors": tensors,
            "bits_per_weight": bits_per_weight,
            "file_bytes": file.file_len(),
        }));
    }
    let config = lowbit_runtime::ModelConfig::from_json(&meta.config).map_err(lowbit_err)?;
    let slots = config.sliding_window.map_or(n_ctx, |w| w.min(n_ctx));
    let kv = 2 * config.num_layers * slots * config.num_kv_heads * config.head_dim * 4;
    Ok(json!({
        "architecture": meta.architecture,
        "quantization": serde_json::to_value(&meta.quantization).unwrap_or(Value::Null),
        "tensors": tensors,
        "bits_per_weight": bits_per_weight,
        "file_bytes": file.file_len(),
        "ram_bytes": { "n_ctx": n_ctx, "weights": file.file_len(), "kv_cache": kv, "total": file.file_len() + kv as u64 },
    }))
}
