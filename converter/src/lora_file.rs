//! A PEFT LoRA adapter converted on its own into a lowbit file (`lowbit convert ADAPTER_DIR -o
//! A.lowbit`), to run beside any base model it fits (`--lora A.lowbit`). The adapter is checked
//! once (ranks against `adapter_config.json`, shapes, every value finite), its scaling resolved
//! per weight (`rank_pattern`, `alpha_pattern`, rsLoRA), and its
//! pairs copied in their own dtype, so loading it is a map and a read — no JSON patterns or
//! safetensors parsing.
//!
//! Layout: the file's architecture is [`ADAPTER_ARCHITECTURE`]; `config` is
//! `{"lora": {"targets": {TARGET: {"r": r, "alpha": a, "divisor": d, "scale": s}}}}` — the module's
//! `lora_alpha`, its divisor (r, or √r with rsLoRA), and `s = a / d` for reading; a loader
//! computes `f32(SCALE · a / d)` in f64 as the folder's loader does; tensors
//! `TARGET.lora_a` (`r × in`) and `TARGET.lora_b` (`out × r`) for every target weight; the
//! adapter's name, sha256 and scale (1) in `adapters`. DoRA and full replacement tensors
//! change the weights themselves and are merged at conversion instead (`convert --lora`).

use crate::convert::ConvertSummary;
use crate::error::{ConvertError, Result};
use crate::lora::{load_low_rank, scaling, LoraSpec, RunTimeDelta};
use crate::source::safetensors::SafetensorsSource;
use crate::source::{SrcDtype, TensorSource};
use lowbit_format::{
    AdapterRecord, AdapterValues, ConverterInfo, Metadata, ModelFile, QuantSettings, Scheme, TensorSpec, Writer,
    ADAPTER_ARCHITECTURE,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Whether `dir` holds a PEFT adapter rather than a model: `adapter_config.json` and no
/// `config.json`.
pub fn is_adapter_folder(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file() && !dir.join("config.json").exists()
}

/// Whether the lowbit file holds an adapter (see the module docs).
pub fn is_adapter_file(file: &ModelFile) -> bool {
    file.metadata().architecture == ADAPTER_ARCHITECTURE
}

/// The scheme that stores a source dtype exactly.
fn scheme_of(dtype: SrcDtype) -> Scheme {
    match dtype {
        SrcDtype::Bf16 => Scheme::Bf16,
        SrcDtype::F16 => Scheme::F16,
        _ => Scheme::F32,
    }
}

/// Converts the adapter in `spec.dir` (its scaling times `spec.scale`) into the adapter file
/// `out`, one pair at a time. Nothing is left at `out` on error.
pub fn convert_adapter(spec: &LoraSpec, out: &Path) -> Result<ConvertSummary> {
    let start = Instant::now();
    let weights = spec.dir.join("adapter_model.safetensors");
    // With no base at hand, a target's shape is what its own pair says; the pair is then
    // checked against that (and against any base when the file is loaded).
    let file = if weights.is_file() { Some(SafetensorsSource::open_file(&weights)?) } else { None };
    let shapes = |target: &str| -> std::result::Result<Vec<usize>, String> {
        let module = target.strip_suffix(".weight").unwrap_or(target);
        let get = |kind: &str| file.as_ref()?.get(&format!("base_model.model.{module}.lora_{kind}.weight"));
        match (get("A"), get("B")) {
            (Some(a), Some(b)) if a.shape.len() == 2 && b.shape.len() == 2 => Ok(vec![b.shape[0], a.shape[1]]),
            _ => Err(format!("{target}: lora_A and lora_B are not a pair of matrices")),
        }
    };
    // Values are checked below as their bytes are copied: one read of each tensor.
    let adapter = load_low_rank(spec, &shapes, false)?;
    let targets = adapter.targets();
    let mut specs = Vec::with_capacity(2 * targets.len());
    let mut table = serde_json::Map::new();
    let mut params = 0u64;
    for t in &targets {
        let (r, scale) = adapter.rank_and_scale(t);
        let (alpha, divisor) = adapter.alpha_and_divisor(t);
        if !scale.is_finite() || !alpha.is_finite() {
            return Err(ConvertError::Config(format!(
                "LoRA adapter {}: {t}: its scaling lora_alpha / r = {alpha} / {divisor} is not a finite number",
                spec.dir.display()
            )));
        }
        table.insert(t.clone(), json!({ "r": r, "alpha": alpha, "divisor": divisor, "scale": scale }));
        let [(da, sa), (db, sb)] = adapter.pair_layout(t)?;
        for (kind, dtype, shape) in [("lora_a", da, sa), ("lora_b", db, sb)] {
            params += shape.iter().product::<usize>() as u64;
            specs.push(TensorSpec {
                name: format!("{t}.{kind}"),
                scheme: scheme_of(dtype),
                shape: shape.iter().map(|&d| d as u64).collect(),
            });
        }
    }
    let metadata = Metadata {
        architecture: ADAPTER_ARCHITECTURE.into(),
        config: json!({ "lora": { "targets": Value::Object(table) } }),
        tokenizer_json: None,
        tokenizer_config: None,
        chat_template: None,
        generation_config: None,
        quantization: QuantSettings { scheme: "lora".into(), source_format: "peft".into(), ..QuantSettings::default() },
        converter: ConverterInfo { name: "lowbit".into(), version: env!("CARGO_PKG_VERSION").into() },
        sources: Vec::new(),
        adapters: vec![adapter.record().clone()],
    };
    let writer = Writer::create(out, metadata, specs)?;
    for (i, t) in targets.iter().enumerate() {
        // Bytes as stored: the adapter's floats are f32, f16 or bf16 (checked when it was
        // read), each kept in its own scheme.
        let [a, b] = adapter.pair_raw(t)?;
        let [(da, _), (db, _)] = adapter.pair_layout(t)?;
        let [na, nb] = adapter.pair_names(t)?;
        for (name, dtype, bytes) in [(na, da, &a), (nb, db, &b)] {
            if let Some((i, v)) = first_non_finite_bytes(dtype, bytes) {
                // As the folder loader says it (`convert --lora`, `--lora DIR`).
                return Err(ConvertError::Config(format!(
                    "LoRA adapter {}: {name}: element {i} is {v}",
                    spec.dir.display()
                )));
            }
        }
        writer.write_tensor(2 * i, &[&a])?;
        writer.write_tensor(2 * i + 1, &[&b])?;
    }
    let tensors = writer.tensors().len();
    let written = writer.finish()?;
    let input_bytes = std::fs::metadata(&weights).map_or(0, |m| m.len());
    Ok(ConvertSummary {
        input_bytes,
        output_bytes: written.bytes,
        params,
        quantized_params: 0,
        quantized_bytes: 0,
        tensors,
        elapsed: start.elapsed(),
        warnings: Vec::new(),
    })
}

/// The adapter file `spec.dir` for run time against weights of the shapes `shape_of` gives:
/// each pair checked against its target (present, `[out, in]`, rank), every value finite, the
/// stored scaling times `spec.scale`.
pub fn load_adapter_file(
    spec: &LoraSpec,
    shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> Result<(AdapterRecord, Vec<RunTimeDelta>)> {
    let path = &spec.dir;
    let bad = |problem: String| ConvertError::Config(format!("LoRA adapter file {}: {problem}", path.display()));
    let file = Arc::new(ModelFile::open(path)?);
    if !is_adapter_file(&file) {
        return Err(bad(format!(
            "this is a {} model, not an adapter (an adapter is a PEFT folder or a file made from one by lowbit convert)",
            file.metadata().architecture
        )));
    }
    let targets = file.metadata().config.pointer("/lora/targets").and_then(Value::as_object);
    let Some(targets) = targets.filter(|t| !t.is_empty()) else {
        return Err(bad("its header lists no targets".into()));
    };
    let mut record =
        file.metadata().adapters.first().cloned().ok_or_else(|| bad("its header does not name the adapter".into()))?;
    record.scale *= spec.scale;
    let mut deltas = Vec::with_capacity(targets.len());
    for (target, entry) in targets {
        let r = entry.get("r").and_then(Value::as_u64).filter(|&r| r > 0).map(|r| r as usize);
        let alpha = entry.get("alpha").and_then(Value::as_f64).filter(|a| a.is_finite());
        let divisor = entry.get("divisor").and_then(Value::as_f64).filter(|d| d.is_finite() && *d > 0.0);
        // The folder's own formula, so a scale given at load gives the folder's bits.
        let scale = alpha.zip(divisor).map(|(a, d)| scaling(spec.scale, a, d)).filter(|s| s.is_finite());
        let (Some(r), Some(scale)) = (r, scale) else {
            return Err(bad(format!("{target}: rank or scaling (alpha, divisor) missing or not a finite number")));
        };
        let Some(shape) = shape_of(target) else {
            return Err(bad(format!(
                "it changes {target}, which the model does not have (an adapter for another model?)"
            )));
        };
        let [rows, cols] = shape[..] else { return Err(bad(format!("{target} is not a matrix in the model"))) };
        // Checked here, used in place by the runtime (nothing copied).
        let check = |kind: &str, want: [usize; 2]| -> Result<AdapterValues> {
            let name = format!("{target}.{kind}");
            let t = file.tensor(&name).ok_or_else(|| ConvertError::MissingTensor(name.clone()))?;
            let shape: Vec<usize> = t.info.shape.iter().map(|&d| d as usize).collect();
            if shape != want {
                return Err(bad(format!(
                    "{name} is {shape:?}; the model's {target} [{rows}, {cols}] with rank {r} needs {want:?}"
                )));
            }
            let bad_value = match t.info.scheme {
                Scheme::F32 => first_non_finite(t.part_f32("data")?.iter().copied()),
                Scheme::Bf16 => {
                    first_non_finite(t.part_u16("data")?.iter().map(|&b| half::bf16::from_bits(b).to_f32()))
                }
                Scheme::F16 => first_non_finite(t.part_u16("data")?.iter().map(|&b| half::f16::from_bits(b).to_f32())),
                _ => return Err(bad(format!("{name} is stored as {}, not as floats", t.info.scheme.label()))),
            };
            if let Some((i, v)) = bad_value {
                return Err(bad(format!("{name}: element {i} is {v}")));
            }
            Ok(AdapterValues::InFile { file: file.clone(), tensor: name })
        };
        let (a, b) = (check("lora_a", [r, cols])?, check("lora_b", [rows, r])?);
        deltas.push(RunTimeDelta { target: target.clone(), a, b, r, scale });
    }
    Ok((record, deltas))
}

/// The first of `values` that is not finite, with its index.
fn first_non_finite(values: impl Iterator<Item = f32>) -> Option<(usize, f32)> {
    values.enumerate().find(|(_, v)| !v.is_finite())
}

/// The first value of little-endian `bytes` of `dtype` (f32, f16 or bf16) that is not finite.
fn first_non_finite_bytes(dtype: SrcDtype, bytes: &[u8]) -> Option<(usize, f32)> {
    let halves = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    match dtype {
        SrcDtype::Bf16 => first_non_finite(halves.map(|b| half::bf16::from_bits(b).to_f32())),
        SrcDtype::F16 => first_non_finite(halves.map(|b| half::f16::from_bits(b).to_f32())),
        _ => first_non_finite(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
    }
}
