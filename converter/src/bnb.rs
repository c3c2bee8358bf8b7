//! bitsandbytes pre-quantized checkpoints (saved by transformers' `save_pretrained` after
//! `load_in_4bit` / `load_in_8bit`). Their tensors are taken over byte for byte — codes, block
//! scales, nested scales and offset — with no dequantize → requantize step (FORMATS.md §C).
//! Detection goes by tensor names, not by config lists, which published checkpoints get wrong.

use crate::error::{ConvertError, Result};
use crate::source::{SrcDtype, TensorSource};
use lowbit_format::{FourBitKind, Nested, Scheme};
use std::collections::HashMap;

/// One pre-quantized linear weight.
#[derive(Debug, Clone, PartialEq)]
pub enum BnbTensor {
    /// 4-bit: `P.weight` and its `absmax`, `quant_map`, nested parts and quant-state JSON.
    FourBit {
        /// Output tensor name (`P.weight`).
        name: String,
        /// Scheme with the stored parameters.
        scheme: Scheme,
        /// Original shape `[out, in]`.
        shape: Vec<usize>,
        /// The `nested_offset` from the quant state.
        offset: Option<f32>,
    },
    /// LLM.int8: `P.weight` (i8) and `P.SCB` (f32).
    Int8 {
        /// Output tensor name.
        name: String,
        /// Shape `[out, in]`.
        shape: Vec<usize>,
    },
}

const QS: &str = ".weight.quant_state.bitsandbytes__";

/// Whether a source tensor is a bitsandbytes side tensor (consumed with its weight).
pub fn is_aux(name: &str) -> bool {
    [
        ".weight.absmax",
        ".weight.quant_map",
        ".weight.nested_absmax",
        ".weight.nested_quant_map",
        ".SCB",
        ".weight_format",
    ]
    .iter()
    .any(|s| name.ends_with(s))
        || name.contains(QS)
}

fn bad(name: &str, problem: impl Into<String>) -> ConvertError {
    ConvertError::BadQuantState { tensor: name.to_string(), problem: problem.into() }
}

fn f32s(src: &dyn TensorSource, index: &HashMap<String, (SrcDtype, Vec<usize>)>, name: &str) -> Result<Vec<f32>> {
    let (dtype, shape) = index.get(name).ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
    if *dtype != SrcDtype::F32 {
        return Err(bad(name, format!("expected float32, found {dtype:?}")));
    }
    let n: usize = shape.iter().product();
    let raw = src.read_raw(name, 0, n)?;
    let mut out = Vec::new();
    crate::source::decode_f32(SrcDtype::F32, &raw, &mut out);
    Ok(out)
}

/// The non-tensor fields of a bitsandbytes 4-bit quant state (the JSON packed into the
/// `quant_state.bitsandbytes__*` tensor).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantState {
    /// Elements per block (checked against bitsandbytes' allowed sizes).
    pub blocksize: usize,
    /// Original weight shape `[out, in]`, no zero dimension, product without overflow.
    pub shape: Vec<usize>,
    /// Original dtype ("float16", …).
    pub orig_dtype: String,
    /// `nested_offset` (double quant only), finite.
    pub nested_offset: Option<f32>,
    /// Nested block size (256 if absent).
    pub nested_blocksize: u32,
}

/// Parses a quant-state JSON from an untrusted checkpoint; every field is checked.
pub fn parse_quant_state(weight: &str, json: &[u8]) -> Result<QuantState> {
    let qs: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(weight, format!("quant state JSON: {e}")))?;
    let get_u = |k: &str| {
        qs.get(k).and_then(serde_json::Value::as_u64).ok_or_else(|| bad(weight, format!("quant state lacks {k}")))
    };
    let blocksize = get_u("blocksize")? as usize;
    lowbit_kernels::fourbit::check_blocksize(blocksize).map_err(|e| bad(weight, e.to_string()))?;
    let shape: Vec<usize> = qs
        .get("shape")
        .and_then(|s| s.as_array())
        .map(|a| a.iter().filter_map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
        .ok_or_else(|| bad(weight, "quant state lacks shape"))?;
    if shape.len() != 2 || shape.contains(&0) || shape[0].checked_mul(shape[1]).is_none_or(|n| n > 1 << 40) {
        return Err(bad(weight, format!("shape {shape:?} is not a 2-D weight shape")));
    }
    let orig_dtype =
        qs.get("dtype").and_then(|d| d.as_str()).unwrap_or("float16").trim_start_matches("torch.").to_string();
    let nested_offset = match qs.get("nested_offset") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(o) if (o as f32).is_finite() => Some(o as f32),
            _ => return Err(bad(weight, "nested_offset is not a finite number")),
        },
    };
    let nested_blocksize = match qs.get("nested_blocksize").map(serde_json::Value::as_u64) {
        None => 256,
        Some(Some(b)) if lowbit_kernels::fourbit::check_blocksize(b as usize).is_ok() => b as u32,
        Some(_) => return Err(bad(weight, "nested_blocksize is not an allowed block size")),
    };
    Ok(QuantState { blocksize, shape, orig_dtype, nested_offset, nested_blocksize })
}

/// Finds every pre-quantized weight. `index` maps source names to dtype and shape.
pub fn detect(src: &dyn TensorSource, index: &HashMap<String, (SrcDtype, Vec<usize>)>) -> Result<Vec<BnbTensor>> {
    let mut found = Vec::new();
    for (name, (dtype, shape)) in index {
        if let Some(pos) = name.find(QS) {
            let prefix = &name[..pos];
            let kind = match &name[pos + QS.len()..] {
                "nf4" => FourBitKind::Nf4,
                "fp4" => FourBitKind::Fp4,
                other => return Err(bad(name, format!("unknown quant type {other:?}"))),
            };
            if *dtype != SrcDtype::U8 || shape.len() != 1 || shape[0] > 1 << 16 {
                return Err(bad(name, "quant state must be a short uint8 vector of JSON bytes"));
            }
            let json = src.read_raw(name, 0, shape[0])?;
            let weight = format!("{prefix}.weight");
            let QuantState { blocksize, shape: qshape, orig_dtype: orig, nested_offset, nested_blocksize } =
                parse_quant_state(&weight, &json)?;
            let n = qshape[0] * qshape[1];
            // The packed weight must hold exactly ⌈n/2⌉ bytes, whatever quant_storage dtype.
            let (wd, ws) = index.get(&weight).ok_or_else(|| ConvertError::MissingTensor(weight.clone()))?;
            if ws.iter().product::<usize>() * wd.size() != n.div_ceil(2) {
                return Err(bad(&weight, format!("packed weight {ws:?} does not hold {n} 4-bit codes")));
            }
            let levels = f32s(src, index, &format!("{weight}.quant_map"))?;
            if levels.len() != 16
                || levels
                    .iter()
                    .zip(lowbit_kernels_levels(kind))
                    .any(|(a, b)| a.to_bits() != b.to_bits() && !(*a == 0.0 && *b == 0.0))
            {
                return Err(bad(&weight, "quant_map is not the standard table"));
            }
            let nested = match nested_offset {
                Some(_) => {
                    let map = f32s(src, index, &format!("{weight}.nested_quant_map"))?;
                    let want = lowbit_kernels::codebook::dynamic_map();
                    if map.len() != 256 || map.iter().zip(want.iter()).any(|(a, b)| a.to_bits() != b.to_bits()) {
                        return Err(bad(&weight, "nested_quant_map is not bitsandbytes' dynamic map"));
                    }
                    Some(Nested { blocksize: nested_blocksize })
                }
                None => None,
            };
            found.push(BnbTensor::FourBit {
                name: weight,
                scheme: Scheme::FourBit { kind, blocksize: blocksize as u32, nested, orig_dtype: orig },
                shape: qshape,
                offset: nested_offset,
            });
        } else if let Some(prefix) = name.strip_suffix(".SCB") {
            let weight = format!("{prefix}.weight");
            let (wd, ws) = index.get(&weight).ok_or_else(|| ConvertError::MissingTensor(weight.clone()))?;
            if *wd != SrcDtype::I8 || ws.len() != 2 {
                return Err(bad(&weight, "int8 weight must be a 2-D int8 tensor"));
            }
            if *dtype != SrcDtype::F32 || shape != &[ws[0]] {
                return Err(bad(name, format!("SCB must be float32 [{}]", ws[0])));
            }
            let wf = format!("{prefix}.weight_format");
            if let Some((SrcDtype::U8, s)) = index.get(&wf) {
                if s.iter().product::<usize>() == 1 && src.read_raw(&wf, 0, 1)?[0] != 0 {
                    return Err(bad(&weight, "weight_format is not 0 (row-major); other layouts are not supported"));
                }
            }
            found.push(BnbTensor::Int8 { name: weight, shape: ws.clone() });
        }
    }
    found.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(found)
}

fn lowbit_kernels_levels(kind: FourBitKind) -> &'static [f32; 16] {
    match kind {
        FourBitKind::Nf4 => lowbit_kernels::FourBitKind::Nf4.levels(),
        FourBitKind::Fp4 => lowbit_kernels::FourBitKind::Fp4.levels(),
    }
}

impl BnbTensor {
    /// The output tensor's name.
    pub fn name(&self) -> &str {
        match self {
            BnbTensor::FourBit { name, .. } | BnbTensor::Int8 { name, .. } => name,
        }
    }

    /// The parts to write, straight from the source bytes.
    pub fn parts(
        &self,
        src: &dyn TensorSource,
        index: &HashMap<String, (SrcDtype, Vec<usize>)>,
    ) -> Result<Vec<Vec<u8>>> {
        let raw_all = |name: &str| -> Result<Vec<u8>> {
            let (d, s) = index.get(name).ok_or_else(|| ConvertError::MissingTensor(name.into()))?;
            let n: usize = s.iter().product();
            let bytes = src.read_raw(name, 0, n)?;
            debug_assert_eq!(bytes.len(), n * d.size());
            Ok(bytes)
        };
        match self {
            BnbTensor::FourBit { name, offset, scheme, shape } => {
                let n = shape[0] * shape[1];
                let (blocksize, nested) = match scheme {
                    Scheme::FourBit { blocksize, nested, .. } => (*blocksize as usize, *nested),
                    _ => unreachable!("bnb 4-bit tensors carry a 4-bit scheme"),
                };
                let nb = n.div_ceil(blocksize);
                let codes = raw_all(name)?;
                let absmax = raw_all(&format!("{name}.absmax"))?;
                let want_absmax = if nested.is_some() { nb } else { nb * 4 };
                if absmax.len() != want_absmax {
                    return Err(bad(
                        name,
                        format!("absmax has {} bytes, {nb} blocks need {want_absmax}", absmax.len()),
                    ));
                }
                let mut parts = vec![codes, absmax];
                if let Some(nd) = nested {
                    let na = raw_all(&format!("{name}.nested_absmax"))?;
                    if na.len() != nb.div_ceil(nd.blocksize as usize) * 4 {
                        return Err(bad(name, "nested_absmax has the wrong length"));
                    }
                    parts.push(na);
                    parts.push(offset.unwrap_or(0.0).to_le_bytes().to_vec());
                }
                Ok(parts)
            }
            BnbTensor::Int8 { name, .. } => {
                let prefix = name.strip_suffix(".weight").unwrap_or(name);
                Ok(vec![raw_all(name)?, raw_all(&format!("{prefix}.SCB"))?])
            }
        }
    }
}
