//! GGUF (v2, v3) container parsing from a byte slice. Every count and length read from the file
//! is checked against the bytes that remain before anything is allocated, so a hostile header
//! (a string length of 2^63, an array of billions) is an error, not an allocation.

use std::collections::BTreeMap;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U(u64),
    /// Any signed integer type.
    I(i64),
    /// f32 or f64.
    F(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array (possibly nested).
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U(v) => Some(v),
            Value::I(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// As a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F(v) => Some(v),
            Value::U(v) => Some(v as f64),
            Value::I(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGUF name.
    pub name: String,
    /// Dimensions in ggml order (innermost first).
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ty: u32,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors.
    pub tensors: Vec<TensorInfo>,
}

/// Elements per block and bytes per block of the ggml types we read.
pub fn type_layout(ty: u32) -> Option<(u64, u64, &'static str)> {
    Some(match ty {
        0 => (1, 4, "F32"),
        1 => (1, 2, "F16"),
        30 => (1, 2, "BF16"),
        2 => (32, 18, "Q4_0"),
        3 => (32, 20, "Q4_1"),
        8 => (32, 34, "Q8_0"),
        12 => (256, 144, "Q4_K"),
        14 => (256, 210, "Q6_K"),
        _ => return None,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

const MAX_DEPTH: usize = 4;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let left = (self.b.len() - self.pos) as u64;
        if n > left {
            return Err(format!("truncated: {what} needs {n} bytes at offset {}, {left} left", self.pos));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1, "u8")?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, "u32")?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, "u64")?.try_into().expect("8 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64()?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    /// Smallest encoding of one value of type `ty` (for bounding array counts).
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,
            9 => 12,
            _ => 8,
        }
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U(self.u8()? as u64),
            1 => Value::I(self.u8()? as i8 as i64),
            2 => Value::U(u16::from_le_bytes(self.take(2, "u16")?.try_into().expect("2")) as u64),
            3 => Value::I(i16::from_le_bytes(self.take(2, "i16")?.try_into().expect("2")) as i64),
            4 => Value::U(self.u32()? as u64),
            5 => Value::I(self.u32()? as i32 as i64),
            6 => Value::F(f32::from_bits(self.u32()?) as f64),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool value {b}")),
            },
            8 => Value::Str(self.string("string")?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err("arrays nested too deeply".into());
                }
                let ety = self.u32()?;
                let count = self.u64()?;
                if count.saturating_mul(Self::min_size(ety)) > self.left() {
                    return Err(format!("array of {count} elements does not fit in the file"));
                }
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U(self.u64()?),
            11 => Value::I(self.u64()? as i64),
            12 => Value::F(f64::from_bits(self.u64()?)),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }
}

/// Parses a GGUF file held in `b`.
pub fn parse(b: &[u8]) -> Result<Gguf, String> {
    let mut c = Cursor { b, pos: 0 };
    if c.take(4, "magic")? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // Each KV needs ≥ 13 bytes, each tensor info ≥ 24: bound the counts by the file.
    if n_kv.saturating_mul(13) > c.left() || n_tensors.saturating_mul(24) > c.left() {
        return Err(format!("{n_kv} metadata entries / {n_tensors} tensors cannot fit in the file"));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32()?;
        let v = c.value(ty, 0).map_err(|e| format!("metadata {key}: {e}"))?;
        metadata.insert(key, v);
    }
    let align = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a % 8 == 0 && a <= 1 << 20 => a,
            _ => return Err("general.alignment must be a multiple of 8".into()),
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let nd = c.u32()?;
        if nd == 0 || nd > 4 {
            return Err(format!("tensor {name}: {nd} dimensions"));
        }
        let dims = (0..nd).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
        let ty = c.u32()?;
        let offset = c.u64()?;
        tensors.push((name, dims, ty, offset));
    }
    let data_start = (c.pos as u64).next_multiple_of(align);
    let file_len = b.len() as u64;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, dims, ty, offset) in tensors {
        let (blk, bytes, _) =
            type_layout(ty).ok_or_else(|| format!("tensor {name}: ggml type {ty} is not supported"))?;
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0 && n < 1 << 40)
            .ok_or_else(|| format!("tensor {name}: bad dimensions {dims:?}"))?;
        if dims[0] % blk != 0 {
            return Err(format!("tensor {name}: row of {} is not a whole number of {blk}-element blocks", dims[0]));
        }
        let size = n / blk * bytes;
        if offset % align != 0 {
            return Err(format!("tensor {name}: offset {offset} is not a multiple of {align}"));
        }
        let abs = data_start.checked_add(offset).filter(|&a| a.checked_add(size).is_some_and(|e| e <= file_len));
        let abs = abs.ok_or_else(|| format!("tensor {name}: data lies outside the file"))?;
        out.push(TensorInfo { name, dims, ty, offset: abs, size });
    }
    Ok(Gguf { version, metadata, tensors: out })
}
