//! GGUF v2/v3 container parsing (FORMATS.md §F.1).
//!
//! [`GgufHeader::parse`] reads the header, metadata and tensor infos from a byte slice and checks
//! every tensor's data range against the slice, so that afterwards any tensor's bytes can be
//! sliced without further checks. The input is treated as hostile throughout: each count or
//! length is compared with the bytes that remain *before* anything is allocated for it, array
//! nesting is bounded, and every offset computation is checked for overflow. A malformed file is
//! an error naming the key or tensor, never a panic and never a large allocation.
//!
//! [`GgufFile`](super::GgufFile) (in `file.rs`) owns the bytes together with the parsed header.

use super::cursor::{Cursor, Short};
use super::error::{GgufError, Result};
use super::types::GgmlType;
use super::value::{Array, Value, ValueType};
use std::collections::HashMap;

/// `GGUF` as it appears in the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest array-of-array nesting accepted. Real files use one level; the bound keeps recursion
/// (and stack use) small whatever the input says.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Longest key, per the spec.
pub const MAX_KEY_LEN: u64 = 65535;
/// Longest tensor name, per the spec (ggml's `GGML_MAX_NAME`).
pub const MAX_TENSOR_NAME_LEN: u64 = 64;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: u32 = 4;
/// Smallest tensor info: name length (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 24;
/// Smallest key/value pair: key length (8) + type (4) + a one-byte value.
const MIN_KV_BYTES: u64 = 13;

/// Metadata key/value pairs in file order, with lookup by key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// All pairs, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a pair; false (and nothing added) if the key exists.
    fn insert(&mut self, key: String, value: Value) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }
}

/// One tensor's entry, with its data range already validated against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` (ne0) is the innermost, contiguous one.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset from the start of the data section, as stored.
    pub offset: u64,
    /// Absolute offset of the first byte in the file.
    pub start: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        // Validated by the parser not to overflow.
        self.dims.iter().product()
    }

    /// Elements per row (ne0; 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Rows: every dimension but the innermost.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> u64 {
        self.row_len() / self.ty.block_len() as u64 * self.ty.block_bytes() as u64
    }

    /// The shape outermost first, as PyTorch / Hugging Face write it: ggml's dims reversed, so an
    /// HF `[out, in]` weight stored as ggml `[in, out]` comes back as `[out, in]`. The memory
    /// order is the same either way.
    pub fn hf_shape(&self) -> Vec<usize> {
        // Validated by the parser to fit in usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed and validated GGUF header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Alignment of the data section and of every tensor in it.
    pub alignment: u64,
    /// Metadata, in file order.
    pub metadata: Metadata,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Length of the file the header was validated against.
    pub file_len: u64,
}

fn truncated(what: impl FnOnce() -> String) -> impl FnOnce(Short) -> GgufError {
    move |s| GgufError::Truncated { what: what(), offset: s.offset, needed: s.needed, available: s.available }
}

/// Reads a GGUF string (u64 length + UTF-8), refusing lengths above `max`.
fn read_string(cur: &mut Cursor<'_>, max: u64, what: &dyn Fn() -> String) -> Result<String> {
    let len = cur.u64().map_err(truncated(|| format!("length of {}", what())))?;
    if len > max {
        return Err(GgufError::StringTooLong { what: what(), len, max });
    }
    let bytes = cur.take(len).map_err(truncated(what))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
}

/// Reads one metadata value of type `ty`; `key` is only for error messages.
fn read_value(cur: &mut Cursor<'_>, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
    let short = || truncated(|| format!("value of key {key}"));
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8().map_err(short())?),
        ValueType::I8 => Value::I8(cur.i8().map_err(short())?),
        ValueType::U16 => Value::U16(cur.u16().map_err(short())?),
        ValueType::I16 => Value::I16(cur.i16().map_err(short())?),
        ValueType::U32 => Value::U32(cur.u32().map_err(short())?),
        ValueType::I32 => Value::I32(cur.i32().map_err(short())?),
        ValueType::U64 => Value::U64(cur.u64().map_err(short())?),
        ValueType::I64 => Value::I64(cur.i64().map_err(short())?),
        ValueType::F32 => Value::F32(cur.f32().map_err(short())?),
        ValueType::F64 => Value::F64(cur.f64().map_err(short())?),
        ValueType::Bool => Value::Bool(read_bool(cur.u8().map_err(short())?, key)?),
        // Values are not bounded by the spec beyond the file itself (a chat template or a whole
        // tokenizer.json can be large); the cursor bounds them by what remains.
        ValueType::String => Value::String(read_string(cur, u64::MAX, &|| format!("value of key {key}"))?),
        ValueType::Array => Value::Array(read_array(cur, key, depth + 1)?),
    })
}

fn read_bool(byte: u8, key: &str) -> Result<bool> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(GgufError::BadBool { key: key.to_string(), byte }),
    }
}

/// Decodes `count` fixed-size little-endian elements from one checked slice.
fn fixed<const N: usize, T>(cur: &mut Cursor<'_>, count: u64, key: &str, f: fn([u8; N]) -> T) -> Result<Vec<T>> {
    // count <= remaining / N was checked by the caller, so the product cannot overflow.
    let bytes = cur.take(count * N as u64).map_err(truncated(|| format!("array elements of key {key}")))?;
    Ok(bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect())
}

/// Reads an array (element type, count, elements) at nesting level `depth` (1 = top level).
fn read_array(cur: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep { key: key.to_string(), max_depth: MAX_ARRAY_DEPTH });
    }
    let type_id = cur.u32().map_err(truncated(|| format!("array type of key {key}")))?;
    let ty = ValueType::from_u32(type_id).ok_or_else(|| GgufError::BadValueType { key: key.to_string(), type_id })?;
    let count = cur.u64().map_err(truncated(|| format!("array length of key {key}")))?;
    // The bound that makes every allocation below proportional to bytes actually present.
    let available = cur.remaining();
    if count > available / ty.min_bytes() {
        return Err(GgufError::CountTooLarge {
            what: format!("array of key {key}"),
            count,
            min_item_bytes: ty.min_bytes(),
            available,
        });
    }
    Ok(match ty {
        ValueType::U8 => Array::U8(fixed(cur, count, key, u8::from_le_bytes)?),
        ValueType::I8 => Array::I8(fixed(cur, count, key, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(fixed(cur, count, key, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(fixed(cur, count, key, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(fixed(cur, count, key, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(fixed(cur, count, key, i32::from_le_bytes)?),
        ValueType::U64 => Array::U64(fixed(cur, count, key, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(fixed(cur, count, key, i64::from_le_bytes)?),
        ValueType::F32 => Array::F32(fixed(cur, count, key, f32::from_le_bytes)?),
        ValueType::F64 => Array::F64(fixed(cur, count, key, f64::from_le_bytes)?),
        ValueType::Bool => {
            let raw: Vec<u8> = fixed(cur, count, key, u8::from_le_bytes)?;
            Array::Bool(raw.into_iter().map(|b| read_bool(b, key)).collect::<Result<_>>()?)
        }
        ValueType::String => {
            let mut out = Vec::with_capacity(count as usize);
            for i in 0..count {
                out.push(read_string(cur, u64::MAX, &|| format!("element {i} of key {key}"))?);
            }
            Array::String(out)
        }
        ValueType::Array => {
            let mut out = Vec::with_capacity(count as usize);
            for _ in 0..count {
                out.push(read_array(cur, key, depth + 1)?);
            }
            Array::Array(out)
        }
    })
}

/// A tensor info as read, before its data range is known.
struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
}

fn read_tensor_info(cur: &mut Cursor<'_>, index: u64) -> Result<RawTensorInfo> {
    let name = read_string(cur, MAX_TENSOR_NAME_LEN, &|| format!("name of tensor #{index}"))?;
    let n_dims = cur.u32().map_err(truncated(|| format!("n_dims of tensor {name}")))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims { tensor: name, n_dims });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        dims.push(cur.u64().map_err(truncated(|| format!("dimension {d} of tensor {name}")))?);
    }
    let type_id = cur.u32().map_err(truncated(|| format!("type of tensor {name}")))?;
    let offset = cur.u64().map_err(truncated(|| format!("offset of tensor {name}")))?;
    let ty = GgmlType::from_u32(type_id).ok_or_else(|| GgufError::UnknownType { tensor: name.clone(), type_id })?;
    Ok(RawTensorInfo { name, dims, ty, offset })
}

/// Checks sizes, alignment and bounds of one tensor and returns its validated info.
fn validate_tensor(raw: RawTensorInfo, data_offset: u64, alignment: u64, file_len: u64) -> Result<TensorInfo> {
    let RawTensorInfo { name, dims, ty, offset } = raw;
    let overflow = || GgufError::DimsOverflow { tensor: name.clone(), dims: dims.clone() };
    // ggml keeps dims as int64_t and we index with usize; both must hold the element count.
    let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)?;
    if i64::try_from(n_elements).is_err() || usize::try_from(n_elements).is_err() {
        return Err(overflow());
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    let block_len = ty.block_len() as u64;
    if !ne0.is_multiple_of(block_len) {
        return Err(GgufError::PartialBlock { tensor: name, ty: ty.name(), ne0, block_len: ty.block_len() });
    }
    // ne0 is a multiple of the block, hence so is the product.
    let size = (n_elements / block_len).checked_mul(ty.block_bytes() as u64).ok_or_else(overflow)?;
    if !offset.is_multiple_of(alignment) {
        return Err(GgufError::Misaligned { tensor: name, offset, align: alignment });
    }
    let start = data_offset.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(size));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len => Ok(TensorInfo { name, dims, ty, offset, start, size }),
        _ => Err(GgufError::DataOutOfBounds { tensor: name, offset: start.unwrap_or(u64::MAX), size, file_len }),
    }
}

/// The alignment the metadata asks for.
fn alignment_of(metadata: &Metadata) -> Result<u64> {
    let Some(v) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let value =
        v.as_u64().ok_or(GgufError::WrongKeyType { key: "general.alignment".into(), expected: "an integer" })?;
    if value == 0 || !value.is_power_of_two() || value > 1 << 30 {
        return Err(GgufError::BadAlignment { value });
    }
    Ok(value)
}

impl GgufHeader {
    /// Parses and validates the header of the GGUF file whose complete contents are `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader> {
        let file_len = bytes.len() as u64;
        let mut cur = Cursor::new(bytes);
        if bytes.len() < 4 || bytes[..4] != MAGIC {
            return Err(GgufError::BadMagic { found: bytes[..bytes.len().min(4)].to_vec() });
        }
        cur.take(4).map_err(truncated(|| "magic".into()))?;
        let version = cur.u32().map_err(truncated(|| "version".into()))?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = cur.u64().map_err(truncated(|| "tensor count".into()))?;
        let kv_count = cur.u64().map_err(truncated(|| "metadata count".into()))?;

        let mut metadata = Metadata::default();
        check_count(&cur, kv_count, MIN_KV_BYTES, "metadata key/value pairs")?;
        for i in 0..kv_count {
            let key = read_string(&mut cur, MAX_KEY_LEN, &|| format!("key #{i}"))?;
            let type_id = cur.u32().map_err(truncated(|| format!("value type of key {key}")))?;
            let ty =
                ValueType::from_u32(type_id).ok_or_else(|| GgufError::BadValueType { key: key.clone(), type_id })?;
            let value = read_value(&mut cur, ty, &key, 0)?;
            if !metadata.insert(key.clone(), value) {
                return Err(GgufError::DuplicateKey { key });
            }
        }
        let alignment = alignment_of(&metadata)?;

        check_count(&cur, tensor_count, MIN_TENSOR_INFO_BYTES, "tensor infos")?;
        let mut raw = Vec::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            raw.push(read_tensor_info(&mut cur, i)?);
        }
        let end = cur.pos() as u64;
        // The data section starts at the next multiple of the alignment (the padding may be
        // missing from a file with no tensor data, which is fine: nothing is read there).
        let data_offset = end.div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = HashMap::with_capacity(raw.len());
        for r in raw {
            let t = validate_tensor(r, data_offset, alignment, file_len)?;
            if seen.insert(t.name.clone(), ()).is_some() {
                return Err(GgufError::DuplicateTensor { tensor: t.name });
            }
            tensors.push(t);
        }
        Ok(GgufHeader { version, alignment, metadata, tensors, data_offset, file_len })
    }

    /// The tensor named `name` (GGUF naming).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Fails when `count` items of at least `min` bytes each cannot fit in what remains.
fn check_count(cur: &Cursor<'_>, count: u64, min: u64, what: &str) -> Result<()> {
    let available = cur.remaining();
    if count > available / min {
        return Err(GgufError::CountTooLarge { what: what.into(), count, min_item_bytes: min, available });
    }
    Ok(())
}
