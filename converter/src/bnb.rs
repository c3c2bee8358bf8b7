//! bitsandbytes pre-quantized checkpoints (saved by transformers' `save_pretrained` after
//! `load_in_4bit` / `load_in_8bit`), FORMATS.md §C. Their tensors are taken over byte for byte —
//! codes, block scales, nested scales and offset — with no dequantize → requantize step.
//!
//! Detection goes by tensor names (the `quant_state` side tensors and `SCB`), not by the config,
//! which can list skipped modules wrongly. Everything about a tensor is checked against
//! everything else before a byte is copied: the quant-state JSON is untrusted, so its shape must
//! match the packed weight's byte count, every side tensor must have the dtype and length the
//! shape implies, and the code tables must be bitsandbytes' own, bit for bit.

use crate::error::{ConvertError, Result};
use crate::source::{SrcDtype, SrcTensor, TensorSource};
use lowbit_format::{FourBitKind, Nested, Scheme, MAX_ELEMENTS, ORIG_DTYPES};
use lowbit_kernels::{Absmax, FourBitTensor, Int8Tensor};
use serde_json::Value;
use std::collections::BTreeSet;

/// Suffix of the 4-bit quant-state tensor: `P.weight.quant_state.bitsandbytes__nf4|fp4`.
const QUANT_STATE: &str = ".weight.quant_state.bitsandbytes__";

/// Longest quant-state JSON accepted (real ones are ~150 bytes).
const MAX_QUANT_STATE: usize = 1 << 16;

/// Side tensors consumed together with their weight.
const AUX: [&str; 6] = [
    ".weight.absmax",
    ".weight.quant_map",
    ".weight.nested_absmax",
    ".weight.nested_quant_map",
    ".SCB",
    ".weight_format",
];

/// The nested (double-quant) parameters of a 4-bit tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NestedState {
    /// Block scales per nested block.
    pub blocksize: u32,
    /// The mean subtracted from the block scales.
    pub offset: f32,
}

/// One pre-quantized linear weight.
#[derive(Debug, Clone, PartialEq)]
pub enum BnbTensor {
    /// 4-bit: `P.weight` (packed codes) with `absmax`, `quant_map`, nested parts and quant state.
    FourBit {
        /// Output tensor name (`P.weight`).
        name: String,
        /// Code table.
        kind: FourBitKind,
        /// Elements per block.
        blocksize: u32,
        /// Double quantization, if used.
        nested: Option<NestedState>,
        /// Dtype of the weights before quantization ("float16", …).
        orig_dtype: String,
        /// Original shape `[out, in]`.
        shape: Vec<usize>,
    },
    /// LLM.int8: `P.weight` (i8, row-major) and `P.SCB` (f32 per row).
    Int8 {
        /// Output tensor name.
        name: String,
        /// Shape `[out, in]`.
        shape: Vec<usize>,
    },
}

/// Whether a source tensor is a bitsandbytes side tensor (consumed with its weight).
pub fn is_aux(name: &str) -> bool {
    AUX.iter().any(|s| name.ends_with(s)) || name.contains(QUANT_STATE)
}

/// The weight a side tensor belongs to.
fn aux_owner(name: &str) -> Option<String> {
    if let Some(p) = name.find(QUANT_STATE) {
        return Some(format!("{}.weight", &name[..p]));
    }
    let prefix = AUX.iter().find_map(|s| name.strip_suffix(s))?;
    Some(format!("{prefix}.weight"))
}

fn bad(name: &str, problem: impl Into<String>) -> ConvertError {
    ConvertError::quant_state(name, problem)
}

/// The side tensor `name`, checked to be `dtype` with `count` elements.
fn side<'a>(
    src: &'a dyn TensorSource,
    owner: &str,
    name: &str,
    dtype: SrcDtype,
    count: usize,
) -> Result<&'a SrcTensor> {
    let t = src.get(name).ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
    if t.dtype != dtype || t.numel() != count {
        return Err(bad(
            owner,
            format!(
                "{name} is {} {:?}, expected {} [{count}]{}",
                t.dtype_name,
                t.shape,
                dtype.torch_name(),
                if name.ends_with(".absmax") && t.dtype == SrcDtype::Bf16 {
                    " (bitsandbytes 0.50 on AVX512-BF16 CPUs saves a lossy bfloat16 absmax when the model \
                     ran a forward pass before save_pretrained: quantize and save it again without one)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(t)
}

fn read_f32s(src: &dyn TensorSource, name: &str, n: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(n);
    src.read_f32(name, 0, n, &mut out)?;
    Ok(out)
}

/// A quant-state integer field.
fn state_u64(qs: &Value, weight: &str, key: &str) -> Result<Option<u64>> {
    match qs.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| bad(weight, format!("quant state {key} is not an integer: {v}"))),
    }
}

fn four_bit(src: &dyn TensorSource, qs_tensor: &SrcTensor, kind_name: &str) -> Result<BnbTensor> {
    let qs_name = &qs_tensor.name;
    let weight = aux_owner(qs_name).unwrap_or_default();
    let kind = match kind_name {
        "nf4" => FourBitKind::Nf4,
        "fp4" => FourBitKind::Fp4,
        other => return Err(bad(&weight, format!("unknown 4-bit type {other:?}"))),
    };
    if qs_tensor.dtype != SrcDtype::U8 || qs_tensor.shape.len() != 1 || qs_tensor.numel() > MAX_QUANT_STATE {
        return Err(bad(&weight, format!("{qs_name} must be a uint8 vector of JSON bytes (≤ {MAX_QUANT_STATE})")));
    }
    let json = src.read_raw(qs_name, 0, qs_tensor.numel())?;
    let qs: Value = serde_json::from_slice(&json).map_err(|e| bad(&weight, format!("quant state JSON: {e}")))?;
    if !qs.is_object() {
        return Err(bad(&weight, "quant state is not a JSON object"));
    }
    if let Some(t) = qs.get("quant_type") {
        if t.as_str() != Some(kind_name) {
            return Err(bad(&weight, format!("quant state says quant_type {t}, its name says {kind_name}")));
        }
    }
    let blocksize = state_u64(&qs, &weight, "blocksize")?.ok_or_else(|| bad(&weight, "quant state lacks blocksize"))?;
    let blocksize = u32::try_from(blocksize)
        .ok()
        .filter(|b| lowbit_format::BLOCKSIZES.contains(b))
        .ok_or_else(|| bad(&weight, format!("blocksize {blocksize} is not one bitsandbytes uses")))?;
    let shape: Vec<usize> = match qs.get("shape").and_then(Value::as_array) {
        Some(a) if a.len() == 2 => a
            .iter()
            .map(|d| d.as_u64().filter(|&d| d > 0).and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(&weight, format!("shape {} is not two positive integers", Value::from(a.clone()))))?,
        other => {
            let shown = other.map_or("missing or not an array".to_string(), |v| Value::from(v.clone()).to_string());
            return Err(bad(&weight, format!("quant state shape {shown} is not a 2-D weight shape")));
        }
    };
    let n = shape[0]
        .checked_mul(shape[1])
        .filter(|&n| n as u64 <= MAX_ELEMENTS)
        .ok_or_else(|| bad(&weight, format!("shape {shape:?} is too large")))?;
    let orig = match qs.get("dtype") {
        None => "float16".to_string(),
        Some(v) => {
            let d = v.as_str().unwrap_or("").trim_start_matches("torch.");
            if !ORIG_DTYPES.contains(&d) {
                return Err(bad(&weight, format!("original dtype {v} is not float32/float16/bfloat16")));
            }
            d.to_string()
        }
    };
    // The packed weight holds exactly ⌈n/2⌉ bytes, whatever the quant_storage dtype.
    let w = src.get(&weight).ok_or_else(|| ConvertError::MissingTensor(weight.clone()))?;
    if w.dtype == SrcDtype::Other || w.bytes != n.div_ceil(2) as u64 {
        return Err(bad(
            &weight,
            format!(
                "packed weight {} {:?} does not hold the {n} 4-bit codes of shape {shape:?}",
                w.dtype_name, w.shape
            ),
        ));
    }
    let nb = n.div_ceil(blocksize as usize);
    let levels =
        read_f32s(src, side(src, &weight, &format!("{weight}.quant_map"), SrcDtype::F32, 16)?.name.as_str(), 16)?;
    let want = match kind {
        FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4.levels(),
        FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4.levels(),
    };
    // Bit for bit, except the sign of zero: bitsandbytes builds FP4's code 8 as -0.0 but
    // transformers saves it as +0.0 (the codes mean the same thing).
    if levels.iter().zip(want.iter()).any(|(a, b)| a.to_bits() != b.to_bits() && !(*a == 0.0 && *b == 0.0)) {
        return Err(bad(&weight, format!("quant_map is not bitsandbytes' {kind_name} table")));
    }
    let nested = match qs.get("nested_offset") {
        None | Some(Value::Null) => {
            if src.get(&format!("{weight}.nested_absmax")).is_some() {
                return Err(bad(&weight, "nested_absmax present but the quant state has no nested_offset"));
            }
            side(src, &weight, &format!("{weight}.absmax"), SrcDtype::F32, nb)?;
            None
        }
        Some(v) => {
            let offset = v
                .as_f64()
                .map(|o| o as f32)
                .filter(|o| o.is_finite())
                .ok_or_else(|| bad(&weight, format!("nested_offset {v} is not a finite number")))?;
            let nbs = state_u64(&qs, &weight, "nested_blocksize")?.unwrap_or(256);
            let nbs = u32::try_from(nbs)
                .ok()
                .filter(|b| lowbit_format::BLOCKSIZES.contains(b))
                .ok_or_else(|| bad(&weight, format!("nested_blocksize {nbs} is not one bitsandbytes uses")))?;
            if let Some(d) = qs.get("nested_dtype") {
                if d.as_str().map(|s| s.trim_start_matches("torch.")) != Some("float32") {
                    return Err(bad(&weight, format!("nested_dtype {d} is not float32")));
                }
            }
            side(src, &weight, &format!("{weight}.absmax"), SrcDtype::U8, nb)?;
            side(src, &weight, &format!("{weight}.nested_absmax"), SrcDtype::F32, nb.div_ceil(nbs as usize))?;
            let map_name = format!("{weight}.nested_quant_map");
            side(src, &weight, &map_name, SrcDtype::F32, 256)?;
            let map = read_f32s(src, &map_name, 256)?;
            let dynamic = lowbit_kernels::codebook::dynamic_map();
            if map.iter().zip(dynamic.iter()).any(|(a, b)| a.to_bits() != b.to_bits()) {
                return Err(bad(&weight, "nested_quant_map is not bitsandbytes' signed dynamic map"));
            }
            Some(NestedState { blocksize: nbs, offset })
        }
    };
    Ok(BnbTensor::FourBit { name: weight, kind, blocksize, nested, orig_dtype: orig, shape })
}

fn int8(src: &dyn TensorSource, scb: &SrcTensor, prefix: &str) -> Result<BnbTensor> {
    let weight = format!("{prefix}.weight");
    let w = src.get(&weight).ok_or_else(|| ConvertError::MissingTensor(weight.clone()))?;
    if w.dtype != SrcDtype::I8 || w.shape.len() != 2 || w.shape.contains(&0) {
        return Err(bad(
            &weight,
            format!("int8 weight must be a non-empty 2-D int8 tensor, not {} {:?}", w.dtype_name, w.shape),
        ));
    }
    if scb.dtype != SrcDtype::F32 || scb.shape != [w.shape[0]] {
        return Err(bad(
            &weight,
            format!("SCB is {} {:?}, expected float32 [{}]", scb.dtype_name, scb.shape, w.shape[0]),
        ));
    }
    let wf = format!("{prefix}.weight_format");
    if let Some(t) = src.get(&wf) {
        // 0 = row-major; the other values are GPU tile layouts no CPU checkpoint has.
        if t.numel() != 1 || !matches!(t.dtype, SrcDtype::U8 | SrcDtype::I8) || src.read_raw(&wf, 0, 1)?[0] != 0 {
            return Err(bad(&weight, "weight_format is not 0 (row-major); tiled layouts are not supported"));
        }
    }
    Ok(BnbTensor::Int8 { name: weight, shape: w.shape.clone() })
}

/// Finds every pre-quantized weight of `src`, sorted by name. A side tensor that belongs to no
/// quantized weight is an error (a checkpoint with half its quant states missing).
pub fn detect(src: &dyn TensorSource) -> Result<Vec<BnbTensor>> {
    let mut found = Vec::new();
    for t in src.list() {
        if let Some(pos) = t.name.find(QUANT_STATE) {
            found.push(four_bit(src, t, &t.name[pos + QUANT_STATE.len()..])?);
        } else if let Some(prefix) = t.name.strip_suffix(".SCB") {
            found.push(int8(src, t, prefix)?);
        }
    }
    let names: BTreeSet<&str> = found.iter().map(BnbTensor::name).collect();
    if names.len() != found.len() {
        let dup = found.iter().map(BnbTensor::name).find(|n| found.iter().filter(|f| f.name() == *n).count() > 1);
        return Err(bad(dup.unwrap_or("?"), "has two quant states"));
    }
    if let Some(orphan) =
        src.list().iter().find(|t| is_aux(&t.name) && !aux_owner(&t.name).is_some_and(|o| names.contains(o.as_str())))
    {
        return Err(bad(&orphan.name, "side tensor without a quant state (quant_state.* or SCB) for its weight"));
    }
    found.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(found)
}

impl BnbTensor {
    /// The output tensor's name.
    pub fn name(&self) -> &str {
        match self {
            BnbTensor::FourBit { name, .. } | BnbTensor::Int8 { name, .. } => name,
        }
    }

    /// The weight's shape `[out, in]`.
    pub fn shape(&self) -> &[usize] {
        match self {
            BnbTensor::FourBit { shape, .. } | BnbTensor::Int8 { shape, .. } => shape,
        }
    }

    /// The lowbit scheme holding this tensor's bytes unchanged.
    pub fn scheme(&self) -> Scheme {
        match self {
            BnbTensor::FourBit { kind, blocksize, nested, orig_dtype, .. } => Scheme::FourBit {
                kind: *kind,
                blocksize: *blocksize,
                nested: nested.map(|n| Nested { blocksize: n.blocksize }),
                orig_dtype: orig_dtype.clone(),
            },
            BnbTensor::Int8 { .. } => Scheme::Int8,
        }
    }

    /// The source tensors holding this weight's data.
    fn sources(&self) -> Vec<String> {
        match self {
            BnbTensor::FourBit { name, nested, .. } => {
                let mut v = vec![name.clone(), format!("{name}.absmax")];
                if nested.is_some() {
                    v.push(format!("{name}.nested_absmax"));
                }
                v
            }
            BnbTensor::Int8 { name, .. } => {
                vec![name.clone(), format!("{}.SCB", name.strip_suffix(".weight").unwrap_or(name))]
            }
        }
    }

    /// Source bytes of the data tensors (for progress and memory estimates).
    pub fn source_bytes(&self, src: &dyn TensorSource) -> u64 {
        self.sources().iter().filter_map(|n| src.get(n)).map(|t| t.bytes).sum()
    }

    /// The parts to write, straight from the source bytes (lengths were checked by
    /// [`detect`]; float scales are checked to be finite, as the kernels assume).
    pub fn parts(&self, src: &dyn TensorSource) -> Result<Vec<Vec<u8>>> {
        let read_all = |name: &str| -> Result<Vec<u8>> {
            let t = src.get(name).ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
            src.read_raw(name, 0, t.numel())
        };
        let finite = |part: &str, bytes: &[u8]| -> Result<()> {
            match bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .position(|v| !v.is_finite())
            {
                Some(i) => Err(bad(self.name(), format!("{part}[{i}] is not finite"))),
                None => Ok(()),
            }
        };
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(4);
        for (i, name) in self.sources().iter().enumerate() {
            let bytes = read_all(name)?;
            let is_float = match self {
                BnbTensor::FourBit { nested, .. } => i == 2 || (i == 1 && nested.is_none()),
                BnbTensor::Int8 { .. } => i == 1,
            };
            if is_float {
                finite(name, &bytes)?;
            }
            parts.push(bytes);
        }
        if let BnbTensor::FourBit { nested: Some(n), .. } = self {
            parts.push(n.offset.to_le_bytes().to_vec());
        }
        Ok(parts)
    }

    /// The weight dequantized to f32 exactly as bitsandbytes computes it (for `--quant
    /// f16/bf16/f32` or `--keep` on a pre-quantized checkpoint).
    pub fn dequantize(&self, src: &dyn TensorSource) -> Result<Vec<f32>> {
        let mut parts = self.parts(src)?;
        let f32s = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let n: usize = self.shape().iter().product();
        let mut out = vec![0f32; n];
        let kernel = |e| ConvertError::Kernel { tensor: self.name().into(), source: e };
        match self {
            BnbTensor::FourBit { kind, blocksize, nested, .. } => {
                let absmax = match nested {
                    None => Absmax::F32(f32s(&parts[1])),
                    Some(nd) => Absmax::Nested {
                        codes: std::mem::take(&mut parts[1]),
                        nested_absmax: f32s(&parts[2]),
                        nested_blocksize: nd.blocksize as usize,
                        offset: nd.offset,
                    },
                };
                let t = FourBitTensor {
                    kind: match kind {
                        FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4,
                        FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4,
                    },
                    blocksize: *blocksize as usize,
                    len: n,
                    codes: std::mem::take(&mut parts[0]),
                    absmax,
                };
                t.dequantize(&mut out).map_err(kernel)?;
            }
            BnbTensor::Int8 { shape, .. } => {
                let t = Int8Tensor {
                    rows: shape[0],
                    cols: shape[1],
                    cb: parts[0].iter().map(|&b| b as i8).collect(),
                    scb: f32s(&parts[1]),
                };
                t.dequantize(&mut out).map_err(kernel)?;
            }
        }
        Ok(out)
    }
}

impl BnbTensor {
    /// Elements `start .. start + len` of the weight (flat, row-major) dequantized exactly as
    /// [`BnbTensor::dequantize`] does, reading only the codes of that range: what merging a
    /// LoRA adapter into a pre-quantized weight reads, a chunk at a time.
    pub fn dequantize_range(&self, src: &dyn TensorSource, start: usize, len: usize) -> Result<Vec<f32>> {
        let n: usize = self.shape().iter().product();
        assert!(start + len <= n, "range inside the tensor");
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let read_all = |name: &str| -> Result<Vec<u8>> {
            let t = src.get(name).ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
            src.read_raw(name, 0, t.numel())
        };
        let mut out = Vec::with_capacity(len);
        match self {
            BnbTensor::FourBit { name, kind, blocksize, nested, .. } => {
                let bs = *blocksize as usize;
                let (b0, b1) = (start / bs, (start + len).div_ceil(bs));
                let (c0, c1) = (start / 2, (start + len).div_ceil(2));
                let codes = src.read_raw(name, c0, c1 - c0)?;
                let scales: Vec<f32> = match nested {
                    None => f32s(&src.read_raw(&format!("{name}.absmax"), b0, b1 - b0)?),
                    Some(nd) => {
                        let c = src.read_raw(&format!("{name}.absmax"), b0, b1 - b0)?;
                        let na = f32s(&read_all(&format!("{name}.nested_absmax"))?);
                        let nbs = nd.blocksize as usize;
                        c.iter()
                            .enumerate()
                            .map(|(i, &code)| {
                                let g = na.get((b0 + i) / nbs).copied().unwrap_or(0.0);
                                lowbit_kernels::fourbit::nested_scale(code, g, nd.offset)
                            })
                            .collect()
                    }
                };
                if let Some(i) = scales.iter().position(|v| !v.is_finite()) {
                    return Err(bad(name, format!("block scale {} is not finite", b0 + i)));
                }
                let levels = match kind {
                    FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4,
                    FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4,
                }
                .levels();
                for i in start..start + len {
                    let code = lowbit_kernels::fourbit::code_at(&codes, i - 2 * c0);
                    out.push(lowbit_kernels::fourbit::dequantize_code(levels, code, scales[i / bs - b0]));
                }
            }
            BnbTensor::Int8 { name, shape } => {
                let cols = shape[1].max(1);
                let cb = src.read_raw(name, start, len)?;
                let scb = f32s(&read_all(&format!("{}.SCB", name.strip_suffix(".weight").unwrap_or(name)))?);
                out.resize(len, 0.0);
                // Row by row (the range may start and end inside rows).
                let mut i = 0;
                while i < len {
                    let r = (start + i) / cols;
                    let end = ((r + 1) * cols - start).min(len);
                    if !scb[r].is_finite() {
                        return Err(bad(name, format!("SCB[{r}] is not finite")));
                    }
                    let row: Vec<i8> = cb[i..end].iter().map(|&c| c as i8).collect();
                    lowbit_kernels::int8::dequantize_row(&row, scb[r], &mut out[i..end]);
                    i = end;
                }
            }
        }
        Ok(out)
    }
}

/// What a checkpoint's `config.json` says about quantization.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    /// `quant_method`.
    pub method: String,
    /// `llm_int8_threshold`, if given.
    pub int8_threshold: Option<f32>,
}

/// Reads `quantization_config`; any method but bitsandbytes is refused (its tensors would not
/// convert anyway, and the error should say why).
pub fn quant_config(config: &Value) -> Result<Option<QuantConfig>> {
    let Some(q) = config.get("quantization_config").filter(|q| !q.is_null()) else { return Ok(None) };
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("bitsandbytes").to_string();
    if method != "bitsandbytes" {
        return Err(ConvertError::Config(format!(
            "quantization_config.quant_method {method:?} is not supported (only bitsandbytes checkpoints are taken over)"
        )));
    }
    let int8_threshold = q.get("llm_int8_threshold").and_then(Value::as_f64).map(|t| t as f32);
    Ok(Some(QuantConfig { method, int8_threshold }))
}
