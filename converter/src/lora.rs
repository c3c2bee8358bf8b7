//! PEFT LoRA adapters merged into the base weights at conversion, before quantization.
//!
//! An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` as PEFT's
//! `save_pretrained` writes them: `base_model.model.<module>.lora_A.weight` (r × in),
//! `….lora_B.weight` (out × r), for DoRA `….lora_magnitude_vector` (out), and full replacement
//! tensors for `modules_to_save` and trained biases. For each targeted linear, in f32:
//! `W' = W + s·B·A` with `s = scale · lora_alpha / r` (`/ √r` with `use_rslora`; `r` and
//! `lora_alpha` per module from `rank_pattern` / `alpha_pattern`); with DoRA
//! `W' = (m / ‖W + s·B·A‖_row) ⊙ (W + s·B·A)`. Several adapters apply in order. [`Merged`] wraps
//! a tensor source and serves merged rows, so the pipeline still streams tensor by tensor.
//!
//! `fan_in_fan_out` only concerns GPT-2's `Conv1D` weights; PEFT turns it off for the `Linear`
//! layers of Llama, Mistral and Qwen2, and so does this.

use crate::bnb::BnbTensor;
use crate::error::{ConvertError, Result};
use crate::sidefile;
use crate::source::safetensors::SafetensorsSource;
use crate::source::{SrcDtype, SrcTensor, TensorSource};
use lowbit_format::{AdapterRecord, AdapterValues};
use regex::Regex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Elements checked for NaN/inf per read when an adapter is loaded (its tensors are streamed,
/// never held whole: a rank-64 adapter of a 14B model is half a gigabyte in bf16).
const CHECK_CHUNK: usize = 1 << 20;

/// `DIR` or `DIR:SCALE` from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The adapter folder.
    pub dir: PathBuf,
    /// Multiplies the adapter's own scaling (1 = as trained).
    pub scale: f32,
}

impl std::str::FromStr for LoraSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<LoraSpec, String> {
        // A trailing `:number` is the scale; anything else is part of the path.
        if let Some((dir, scale)) = s.rsplit_once(':') {
            if let Ok(scale) = scale.parse::<f32>() {
                if !scale.is_finite() {
                    return Err(format!("adapter scale {scale} is not a finite number"));
                }
                return Ok(LoraSpec { dir: dir.into(), scale });
            }
        }
        Ok(LoraSpec { dir: s.into(), scale: 1.0 })
    }
}

/// One targeted linear's low-rank update; A and B stay in the adapter file until used.
#[derive(Debug)]
struct Delta {
    /// Tensor name of A (r × in).
    a: String,
    /// Tensor name of B (out × r).
    b: String,
    r: usize,
    /// The whole scaling: user scale · alpha / r (or / √r).
    s: f32,
    /// This module's `lora_alpha` and divisor (r, or √r with rsLoRA), which give `s` for any
    /// user scale: `f32(scale · alpha / divisor)`, computed in f64.
    alpha: f64,
    divisor: f64,
    /// DoRA's magnitude per output row.
    magnitude: Option<Vec<f32>>,
}

/// A loaded adapter: its checked configuration, with the tensors read from its file as needed.
#[derive(Debug)]
pub struct Adapter {
    record: AdapterRecord,
    file: SafetensorsSource,
    deltas: HashMap<String, Delta>,
    /// Base tensor name → the adapter tensor that replaces it whole (modules_to_save, biases).
    replace: HashMap<String, String>,
}

impl Adapter {
    /// What the output file records about it.
    pub fn record(&self) -> &AdapterRecord {
        &self.record
    }

    /// The weights its low-rank updates change, sorted.
    pub(crate) fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self.deltas.keys().cloned().collect();
        t.sort();
        t
    }

    /// A target's rank and whole scaling (user scale · alpha / r, or / √r).
    pub(crate) fn rank_and_scale(&self, target: &str) -> (usize, f32) {
        self.deltas.get(target).map_or((0, 0.0), |d| (d.r, d.s))
    }

    /// A target's `lora_alpha` and divisor (r, or √r with rsLoRA): [`scaling`] of them and a
    /// user scale is its whole scaling.
    pub(crate) fn alpha_and_divisor(&self, target: &str) -> (f64, f64) {
        self.deltas.get(target).map_or((0.0, 1.0), |d| (d.alpha, d.divisor))
    }

    /// A target's A (r × in) and B (out × r) as f32.
    pub(crate) fn pair_f32(&self, target: &str) -> Result<(Vec<f32>, Vec<f32>)> {
        let d = self.deltas.get(target).ok_or_else(|| ConvertError::MissingTensor(target.to_string()))?;
        let whole = |name: &str| -> Result<Vec<f32>> {
            let n = self.file.get(name).map_or(0, |t| t.shape.iter().product());
            let mut v = Vec::new();
            self.file.read_f32(name, 0, n, &mut v)?;
            Ok(v)
        };
        Ok((whole(&d.a)?, whole(&d.b)?))
    }

    /// A target's A and B as stored: dtype and shape of each.
    pub(crate) fn pair_layout(&self, target: &str) -> Result<[(SrcDtype, Vec<usize>); 2]> {
        let d = self.deltas.get(target).ok_or_else(|| ConvertError::MissingTensor(target.to_string()))?;
        let layout = |name: &str| -> Result<(SrcDtype, Vec<usize>)> {
            let t = self.file.get(name).ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
            Ok((t.dtype, t.shape.clone()))
        };
        Ok([layout(&d.a)?, layout(&d.b)?])
    }

    /// The adapter's own names of a target's A and B tensors (`base_model.model.….lora_A.weight`).
    pub(crate) fn pair_names(&self, target: &str) -> Result<[&str; 2]> {
        let d = self.deltas.get(target).ok_or_else(|| ConvertError::MissingTensor(target.to_string()))?;
        Ok([&d.a, &d.b])
    }

    /// A target's A and B as stored: the raw little-endian bytes of each, in the dtypes
    /// [`Adapter::pair_layout`] gives.
    pub(crate) fn pair_raw(&self, target: &str) -> Result<[Vec<u8>; 2]> {
        let d = self.deltas.get(target).ok_or_else(|| ConvertError::MissingTensor(target.to_string()))?;
        let raw = |name: &str| -> Result<Vec<u8>> {
            let n = self.file.get(name).map_or(0, |t| t.shape.iter().product());
            self.file.read_raw(name, 0, n)
        };
        Ok([raw(&d.a)?, raw(&d.b)?])
    }
}

fn bad(dir: &Path, problem: impl Into<String>) -> ConvertError {
    ConvertError::Config(format!("LoRA adapter {}: {}", dir.display(), problem.into()))
}

/// The adapter configuration fields that change the math.
struct AdapterConfig {
    r: usize,
    alpha: f64,
    rslora: bool,
    dora: bool,
    rank_pattern: Vec<(String, usize)>,
    alpha_pattern: Vec<(String, f64)>,
}

/// PEFT's pattern lookup: the first key `p` such that the module name is `p` or ends in `.p`, `p`
/// read as a regular expression.
fn pattern_value<T: Copy>(patterns: &[(Regex, T)], module: &str) -> Option<T> {
    patterns.iter().find(|(re, _)| re.is_match(module)).map(|(_, v)| *v)
}

fn compile<T: Copy>(dir: &Path, patterns: &[(String, T)]) -> Result<Vec<(Regex, T)>> {
    patterns
        .iter()
        .map(|(p, v)| {
            Regex::new(&format!(r"^(.*\.)?({p})$"))
                .map(|re| (re, *v))
                .map_err(|e| bad(dir, format!("pattern {p:?} is not a regular expression this reader supports: {e}")))
        })
        .collect()
}

fn parse_config(dir: &Path, text: &str, v: &Value) -> Result<AdapterConfig> {
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") | None => {}
        Some(other) => return Err(bad(dir, format!("peft_type {other:?}: only LORA adapters can be merged"))),
    }
    let r = field("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0)
        .ok_or_else(|| bad(dir, "r must be a positive integer"))?;
    let alpha = match field("lora_alpha") {
        None => 8.0,
        Some(a) => a.as_f64().filter(|a| a.is_finite()).ok_or_else(|| bad(dir, "lora_alpha must be a number"))?,
    };
    let flag = |k: &str| field(k).and_then(Value::as_bool).unwrap_or(false);
    // The patterns in the file's order: PEFT takes the first that matches.
    let map = |k: &str| -> Result<Vec<(String, f64)>> {
        match field(k) {
            None => Ok(Vec::new()),
            Some(Value::Object(_)) => ordered_object(text, k)
                .ok_or_else(|| bad(dir, format!("{k} must be an object")))?
                .into_iter()
                .map(|(p, x)| {
                    x.as_f64()
                        .filter(|x| x.is_finite())
                        .map(|x| (p.clone(), x))
                        .ok_or_else(|| bad(dir, format!("{k}[{p:?}] is not a number")))
                })
                .collect(),
            Some(_) => Err(bad(dir, format!("{k} must be an object"))),
        }
    };
    let rank_pattern = map("rank_pattern")?
        .into_iter()
        .map(|(p, x)| {
            if x >= 1.0 && x.fract() == 0.0 {
                Ok((p, x as usize))
            } else {
                Err(bad(dir, format!("rank_pattern[{p:?}] = {x} is not a rank")))
            }
        })
        .collect::<Result<_>>()?;
    // Options that would change the math in ways this merge does not implement.
    for k in ["lora_bias", "use_qalora", "use_bdlora"] {
        if field(k).and_then(Value::as_bool).unwrap_or(false) {
            return Err(bad(dir, format!("{k} is set; adapters with it cannot be merged here")));
        }
    }
    for k in ["layer_replication", "target_parameters", "trainable_token_indices"] {
        if field(k)
            .is_some_and(|v| !(v.as_array().is_some_and(Vec::is_empty) || v.as_object().is_some_and(|o| o.is_empty())))
        {
            return Err(bad(dir, format!("{k} is set; adapters with it cannot be merged here")));
        }
    }
    match field("bias").and_then(Value::as_str) {
        None | Some("none") | Some("all") | Some("lora_only") => {}
        Some(other) => return Err(bad(dir, format!("bias {other:?} is not none, all or lora_only"))),
    }
    Ok(AdapterConfig {
        r: r as usize,
        alpha,
        rslora: flag("use_rslora"),
        dora: flag("use_dora"),
        rank_pattern,
        alpha_pattern: map("alpha_pattern")?,
    })
}

/// The entries of the top-level object `key` of the JSON `text`, in the file's order (a
/// `serde_json::Value` keeps them sorted).
fn ordered_object(text: &str, key: &str) -> Option<Vec<(String, Value)>> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(e) = m.next_entry::<String, Value>()? {
                out.push(e);
            }
            Ok(out)
        }
    }
    struct Top<'k>(&'k str);
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = Option<Vec<(String, Value)>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(k) = m.next_key::<String>()? {
                if k == self.0 {
                    found = Some(m.next_value_seed(OrderedSeed)?);
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    struct OrderedSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for OrderedSeed {
        type Value = Vec<(String, Value)>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
            d.deserialize_map(Entries)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Top(key)).ok().flatten()
}

/// Reads the adapter in `spec.dir`, checking every tensor against `base` (which the update
/// applies to).
pub fn load(spec: &LoraSpec, base: &dyn TensorSource, quantized: &HashMap<String, BnbTensor>) -> Result<Adapter> {
    // The logical shape of a base weight: a bitsandbytes weight is listed packed.
    let shape_of = |name: &str| -> std::result::Result<Vec<usize>, String> {
        if let Some(b) = quantized.get(name) {
            return Ok(b.shape().to_vec());
        }
        let t = base.get(name).ok_or_else(|| {
            format!("it changes {name}, which the base model does not have (an adapter for another model?)")
        })?;
        if !t.dtype.is_float() {
            return Err(format!("{name} is stored as {} in the base, which cannot be merged into", t.dtype_name));
        }
        Ok(t.shape.clone())
    };
    load_with(spec, &shape_of, true)
}

/// One low-rank update as it is applied beside its weight at run time: `y += scale · B (A x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTimeDelta {
    /// The weight it goes beside (`model.layers.N.self_attn.q_proj.weight`).
    pub target: String,
    /// `r × in`, row-major.
    pub a: AdapterValues,
    /// `out × r`, row-major.
    pub b: AdapterValues,
    /// Rank.
    pub r: usize,
    /// The whole scaling: user scale · alpha / r (or / √r).
    pub scale: f32,
}

/// [`load_for_run_time`] against the weights of a lowbit file; `spec.dir` may also be an adapter
/// file made by `lowbit convert ADAPTER_DIR` ([`crate::lora_file`]).
pub fn load_for_file(spec: &LoraSpec, file: &lowbit_format::ModelFile) -> Result<(AdapterRecord, Vec<RunTimeDelta>)> {
    let shape_of = |name: &str| file.tensor(name).map(|t| t.info.shape.iter().map(|&d| d as usize).collect());
    if spec.dir.is_file() {
        return crate::lora_file::load_adapter_file(spec, &shape_of);
    }
    load_for_run_time(spec, &shape_of)
}

/// An adapter for run time against a model whose weights have the shapes `shape_of` gives
/// (`None` for a weight it does not have): its updates, and its record. DoRA and full
/// replacement tensors (`modules_to_save`, trained biases) change the weights themselves and
/// are refused: they are merged at conversion (`convert --lora`).
pub fn load_for_run_time(
    spec: &LoraSpec,
    shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> Result<(AdapterRecord, Vec<RunTimeDelta>)> {
    let shapes = |name: &str| -> std::result::Result<Vec<usize>, String> {
        shape_of(name)
            .ok_or_else(|| format!("it changes {name}, which the model does not have (an adapter for another model?)"))
    };
    let a = load_low_rank(spec, &shapes, true)?;
    let mut deltas = Vec::with_capacity(a.deltas.len());
    for target in a.targets() {
        let (r, scale) = a.rank_and_scale(&target);
        let (av, bv) = a.pair_f32(&target)?;
        deltas.push(RunTimeDelta { target, a: AdapterValues::F32(av), b: AdapterValues::F32(bv), r, scale });
    }
    Ok((a.record, deltas))
}

/// The adapter in `spec.dir` against base weights of the shapes `shapes` gives, refused if it
/// changes the weights themselves (DoRA, full replacement tensors): what run time and an
/// adapter file can hold.
/// With `check_values` false the caller checks that every value is finite itself, as it
/// reads them (`lowbit convert ADAPTER_DIR` copies the bytes once instead of reading twice).
pub(crate) fn load_low_rank(
    spec: &LoraSpec,
    shapes: &dyn Fn(&str) -> std::result::Result<Vec<usize>, String>,
    check_values: bool,
) -> Result<Adapter> {
    let a = load_with(spec, shapes, check_values)?;
    let refuse = |what: &str| {
        bad(
            &spec.dir,
            format!("{what} changes the weights themselves: merge this adapter at conversion (lowbit convert --lora)"),
        )
    };
    if !a.replace.is_empty() {
        return Err(refuse("it has modules_to_save or trained biases, which"));
    }
    if a.deltas.values().any(|d| d.magnitude.is_some()) {
        return Err(refuse("DoRA"));
    }
    Ok(a)
}

/// [`load`] against any base: `shape_of` gives a base weight's `[out, in]` shape, or why the
/// adapter cannot change it.
fn load_with(
    spec: &LoraSpec,
    shape_of: &dyn Fn(&str) -> std::result::Result<Vec<usize>, String>,
    check_values: bool,
) -> Result<Adapter> {
    let dir = &spec.dir;
    if dir.is_file() {
        return Err(bad(
            dir,
            "an adapter file (lowbit convert ADAPTER_DIR) is applied at run time (--lora); to merge an adapter at conversion give its PEFT folder",
        ));
    }
    if !dir.is_dir() {
        return Err(bad(dir, "not a folder (an adapter is the folder holding adapter_config.json)"));
    }
    let weights = dir.join("adapter_model.safetensors");
    if !weights.exists() {
        return Err(if dir.join("adapter_model.bin").exists() {
            bad(dir, "adapter_model.bin is a pickle, which lowbit does not load: save the adapter with safetensors (PEFT's save_pretrained(..., safe_serialization=True), the default)")
        } else {
            ConvertError::Missing(weights)
        });
    }
    let config_path = dir.join("adapter_config.json");
    let text = sidefile::read(&config_path, sidefile::MAX_JSON_BYTES)?
        .ok_or_else(|| ConvertError::Missing(config_path.clone()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| ConvertError::BadJson { what: config_path.display().to_string(), problem: e.to_string() })?;
    let cfg = parse_config(dir, &text, &config)?;
    let file = SafetensorsSource::open_file(&weights)?;
    let sha256 = file_sha256(&weights)?;
    let rank_patterns = compile(dir, &cfg.rank_pattern)?;
    let alpha_patterns = compile(dir, &cfg.alpha_pattern)?;

    // A tensor's shape, after checking its type and (with `check_values`) that every element is
    // finite (streamed).
    let checked = |name: &str| -> Result<Vec<usize>> {
        let t = file.get(name).ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
        if !t.dtype.is_float() {
            return Err(ConvertError::UnsupportedDtype { tensor: name.into(), dtype: t.dtype_name.clone() });
        }
        let n: usize = if check_values { t.shape.iter().product() } else { 0 };
        let mut buf = Vec::new();
        for start in (0..n).step_by(CHECK_CHUNK) {
            file.read_f32(name, start, CHECK_CHUNK.min(n - start), &mut buf)?;
            if let Some(i) = buf.iter().position(|x| !x.is_finite()) {
                return Err(bad(dir, format!("{name}: element {} is {}", start + i, buf[i])));
            }
        }
        Ok(t.shape.clone())
    };
    let f32s = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let shape = checked(name)?;
        let mut out = Vec::new();
        file.read_f32(name, 0, shape.iter().product(), &mut out)?;
        Ok((shape, out))
    };
    let base_shape = |name: &str| -> Result<Vec<usize>> { shape_of(name).map_err(|e| bad(dir, e)) };

    let mut deltas = HashMap::new();
    let mut replace = HashMap::new();
    let names: Vec<String> = file.list().iter().map(|t| t.name.clone()).collect();
    for key in &names {
        let Some(module_key) = key.strip_prefix("base_model.model.") else {
            return Err(bad(dir, format!("tensor {key} is not under base_model.model. (not a PEFT LoRA adapter?)")));
        };
        if let Some(module) = module_key.strip_suffix(".lora_A.weight") {
            let target = format!("{module}.weight");
            let t = base_shape(&target)?;
            let ash = checked(key)?;
            let bkey = format!("base_model.model.{module}.lora_B.weight");
            if !names.contains(&bkey) {
                return Err(bad(dir, format!("{key} has no {bkey}")));
            }
            let bsh = checked(&bkey)?;
            let (rows, cols) = match t[..] {
                [rows, cols] => (rows, cols),
                _ => return Err(bad(dir, format!("{target} is not a matrix"))),
            };
            let r = ash.first().copied().unwrap_or(0);
            if ash != [r, cols] || bsh != [rows, r] || r == 0 {
                return Err(bad(
                    dir,
                    format!("{module}: lora_A {ash:?} and lora_B {bsh:?} do not fit the base weight [{rows}, {cols}]"),
                ));
            }
            let want_r = pattern_value(&rank_patterns, module).unwrap_or(cfg.r);
            if r != want_r {
                return Err(bad(dir, format!("{module}: rank {r} in the weights, {want_r} in adapter_config.json")));
            }
            let alpha = pattern_value(&alpha_patterns, module).unwrap_or(cfg.alpha);
            let divisor = if cfg.rslora { (r as f64).sqrt() } else { r as f64 };
            let s = scaling(spec.scale, alpha, divisor);
            let magnitude = if cfg.dora {
                let m = ["lora_magnitude_vector", "lora_magnitude_vector.weight"]
                    .iter()
                    .map(|suffix| format!("base_model.model.{module}.{suffix}"))
                    .find(|k| names.contains(k))
                    .ok_or_else(|| {
                        bad(dir, format!("{module}: use_dora is set but there is no lora_magnitude_vector"))
                    })?;
                let (msh, m) = f32s(&m)?;
                if msh != [rows] {
                    return Err(bad(dir, format!("{module}: magnitude vector {msh:?}, expected [{rows}]")));
                }
                Some(m)
            } else {
                None
            };
            deltas.insert(target, Delta { a: key.clone(), b: bkey, r, s, alpha, divisor, magnitude });
        } else if module_key.ends_with(".lora_B.weight") || module_key.contains(".lora_magnitude_vector") {
            let module = module_key.split(".lora_").next().unwrap_or(module_key);
            if !names.contains(&format!("base_model.model.{module}.lora_A.weight")) {
                return Err(bad(dir, format!("{key} has no lora_A beside it")));
            }
            if module_key.contains(".lora_magnitude_vector") && !cfg.dora {
                return Err(bad(dir, format!("{key} is a DoRA magnitude vector but use_dora is not set")));
            }
        } else if module_key.contains(".lora_") {
            return Err(bad(
                dir,
                format!("{key}: this kind of LoRA tensor (embedding or convolution LoRA) cannot be merged here"),
            ));
        } else {
            // modules_to_save and trained biases: full tensors that replace the base's (PEFT
            // names a wrapped layer's own parameters under `base_layer`).
            let target = module_key.replace(".modules_to_save", "").replace(".base_layer", "");
            let t = base_shape(&target)?;
            let sh = checked(key)?;
            if sh != t {
                return Err(bad(dir, format!("{key} has shape {sh:?}, the base's {target} {t:?}")));
            }
            replace.insert(target, key.clone());
        }
    }
    if deltas.is_empty() && replace.is_empty() {
        return Err(bad(dir, "no LoRA tensors in adapter_model.safetensors"));
    }
    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Adapter { record: AdapterRecord { name, sha256, scale: spec.scale }, file, deltas, replace })
}

/// The whole scaling of an update: `user scale · alpha / divisor` in f64, rounded once to f32
/// (the folder and the adapter file compute it alike, so they give the same bits).
pub(crate) fn scaling(scale: f32, alpha: f64, divisor: f64) -> f32 {
    (scale as f64 * alpha / divisor) as f32
}

/// The sha256 of the file at `path`, read in pieces.
fn file_sha256(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ConvertError::io(path, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ConvertError::io(path, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A tensor source with adapters merged into the tensors they change. A weight stored
/// quantized by bitsandbytes (QLoRA's base) is dequantized as bitsandbytes does, merged in f32
/// and read as f32, to be quantized again — what PEFT's `merge_and_unload` does to a
/// `Linear4bit` or `Linear8bitLt`.
pub struct Merged<'a> {
    base: &'a dyn TensorSource,
    adapters: Vec<Adapter>,
    quantized: HashMap<String, BnbTensor>,
}

impl<'a> Merged<'a> {
    /// Wraps `base`, whose bitsandbytes weights are `quantized` (by output name); the adapters
    /// were loaded against the same two.
    pub fn new(
        base: &'a dyn TensorSource,
        adapters: Vec<Adapter>,
        quantized: HashMap<String, BnbTensor>,
    ) -> Merged<'a> {
        Merged { base, adapters, quantized }
    }

    /// Whether any adapter changes `name`.
    pub fn changes(&self, name: &str) -> bool {
        self.touched(name)
    }

    /// The records of the adapters, in order.
    pub fn records(&self) -> Vec<AdapterRecord> {
        self.adapters.iter().map(|a| a.record.clone()).collect()
    }

    fn touched(&self, name: &str) -> bool {
        self.adapters.iter().any(|a| a.deltas.contains_key(name) || a.replace.contains_key(name))
    }
}

impl Delta {
    /// Applies the update to `rows` (row-major, `cols` wide) holding weight rows `r0 ..`, given A
    /// (`r × cols`) and the rows of B for those weight rows (`rows × r`); `Err` with the row
    /// whose DoRA norm is zero.
    fn apply(&self, rows: &mut [f32], r0: usize, cols: usize, a: &[f32], b: &[f32]) -> std::result::Result<(), usize> {
        let mut delta = vec![0f32; cols];
        for (i, w) in rows.chunks_mut(cols).enumerate() {
            let r = r0 + i;
            delta.fill(0.0);
            for k in 0..self.r {
                let bk = b[i * self.r + k];
                for (d, &a) in delta.iter_mut().zip(&a[k * cols..(k + 1) * cols]) {
                    *d += bk * a;
                }
            }
            for (w, d) in w.iter_mut().zip(&delta) {
                *w += self.s * d;
            }
            if let Some(m) = &self.magnitude {
                let norm = w.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt() as f32;
                if norm == 0.0 {
                    return Err(r);
                }
                let f = m[r] / norm;
                w.iter_mut().for_each(|x| *x *= f);
            }
        }
        Ok(())
    }
}

impl TensorSource for Merged<'_> {
    fn list(&self) -> &[SrcTensor] {
        self.base.list()
    }

    fn read_raw(&self, name: &str, start: usize, len: usize) -> Result<Vec<u8>> {
        if !self.touched(name) {
            return self.base.read_raw(name, start, len);
        }
        let mut x = Vec::new();
        self.read_f32(name, start, len, &mut x)?;
        // In the listed dtype, rounded once from the f32 merge (a bitsandbytes weight is read
        // as f32).
        let dtype = match self.quantized.contains_key(name) {
            true => SrcDtype::F32,
            false => self.base.get(name).map_or(SrcDtype::F32, |t| t.dtype),
        };
        Ok(match dtype {
            SrcDtype::F16 => x.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            SrcDtype::Bf16 => x.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            _ => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    fn read_f32(&self, name: &str, start: usize, len: usize, out: &mut Vec<f32>) -> Result<()> {
        if !self.touched(name) {
            return self.base.read_f32(name, start, len, out);
        }
        let shape = match self.quantized.get(name) {
            Some(b) => b.shape(),
            None => &self.base.get(name).expect("touched tensors exist").shape,
        };
        let cols = shape.last().copied().unwrap_or(1).max(1);
        // Whole rows: DoRA normalises each row.
        let (r0, r1) = (start / cols, (start + len).div_ceil(cols));
        let mut rows = Vec::new();
        match self.quantized.get(name) {
            Some(b) => rows = b.dequantize_range(self.base, r0 * cols, (r1 - r0) * cols)?,
            None => self.base.read_f32(name, r0 * cols, (r1 - r0) * cols, &mut rows)?,
        }
        let (mut av, mut bv) = (Vec::new(), Vec::new());
        for a in &self.adapters {
            if let Some(key) = a.replace.get(name) {
                a.file.read_f32(key, r0 * cols, (r1 - r0) * cols, &mut av)?;
                rows.copy_from_slice(&av);
            } else if let Some(d) = a.deltas.get(name) {
                // A whole, and the rows of B for these weight rows, from the adapter file.
                a.file.read_f32(&d.a, 0, d.r * cols, &mut av)?;
                a.file.read_f32(&d.b, r0 * d.r, (r1 - r0) * d.r, &mut bv)?;
                // Checked when the adapter was loaded; checked again as read, in case the file
                // changed since.
                if av.iter().chain(&bv).any(|v| !v.is_finite()) {
                    return Err(ConvertError::Config(format!(
                        "LoRA adapter {}: its update of {name} is not finite (did the file change?)",
                        a.record.name
                    )));
                }
                d.apply(&mut rows, r0, cols, &av, &bv).map_err(|r| {
                    ConvertError::Config(format!(
                        "LoRA adapter {}: row {r} of {name} is all zeros after the update, which DoRA cannot normalise",
                        a.record.name
                    ))
                })?;
            }
        }
        out.clear();
        out.extend_from_slice(&rows[start - r0 * cols..start - r0 * cols + len]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_a_trailing_scale() {
        assert_eq!("a/b".parse::<LoraSpec>().unwrap(), LoraSpec { dir: "a/b".into(), scale: 1.0 });
        assert_eq!("a/b:0.5".parse::<LoraSpec>().unwrap(), LoraSpec { dir: "a/b".into(), scale: 0.5 });
        assert_eq!("c:/x".parse::<LoraSpec>().unwrap().dir, PathBuf::from("c:/x"));
        assert!("a:inf".parse::<LoraSpec>().is_err());
    }

    #[test]
    fn patterns_keep_the_files_order() {
        let text = r#"{"r": 4, "rank_pattern": {"z_proj": 1, "a_proj": 2, "m": 3}, "other": [1]}"#;
        let keys: Vec<String> = ordered_object(text, "rank_pattern").unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(keys, ["z_proj", "a_proj", "m"]);
        assert!(ordered_object(text, "alpha_pattern").is_none());
    }

    #[test]
    fn patterns_match_whole_name_parts() {
        let p = compile(Path::new("x"), &[("q_proj".to_string(), 1usize), (r"layers\.1\..*v_proj".to_string(), 2)])
            .unwrap();
        assert_eq!(pattern_value(&p, "model.layers.0.self_attn.q_proj"), Some(1));
        assert_eq!(pattern_value(&p, "model.layers.0.self_attn.xq_proj"), None);
        assert_eq!(pattern_value(&p, "model.layers.1.self_attn.v_proj"), Some(2));
        assert_eq!(pattern_value(&p, "model.layers.0.self_attn.v_proj"), None);
    }
}
