//! Opening a lowbit file: every field is checked against the file's real size before anything
//! is used, then tensors are handed out as slices of the mmap.

use crate::error::{FormatError, Result};
use crate::header::{Header, Metadata, TensorInfo};
use crate::layout::{tensor_align, DATA_ALIGN, MAGIC, MAX_HEADER, PREAMBLE_LEN, VERSION};
use crate::scheme::PartLayout;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::Path;

/// A checksum that did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumMismatch {
    /// Tensor name.
    pub name: String,
    /// CRC-32 in the header.
    pub expected: String,
    /// CRC-32 of the bytes.
    pub actual: String,
}

/// An open, validated lowbit file.
#[derive(Debug)]
pub struct ModelFile {
    mmap: Mmap,
    header: Header,
    parts: Vec<Vec<PartLayout>>,
    by_name: HashMap<String, usize>,
}

/// One tensor's bytes and layout.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Index entry.
    pub info: &'a TensorInfo,
    /// All of its bytes.
    pub bytes: &'a [u8],
    parts: &'a [PartLayout],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the preamble of `bytes` (the first bytes of a file of `file_len` bytes) and returns
/// the header length.
fn check_preamble(bytes: &[u8], file_len: u64) -> Result<u64> {
    if (bytes.len() as u64) < PREAMBLE_LEN {
        return Err(FormatError::Truncated { what: "preamble", needed: PREAMBLE_LEN, available: bytes.len() as u64 });
    }
    if bytes[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let header_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER {
        return Err(FormatError::HeaderTooLarge(header_len));
    }
    if PREAMBLE_LEN + header_len > file_len {
        return Err(FormatError::Truncated { what: "header", needed: PREAMBLE_LEN + header_len, available: file_len });
    }
    Ok(header_len)
}

/// Parses and validates a whole file held in `bytes`; returns the header and every tensor's parts.
fn validate(bytes: &[u8]) -> Result<(Header, Vec<Vec<PartLayout>>)> {
    let file_len = bytes.len() as u64;
    let header_len = check_preamble(bytes, file_len)?;
    let raw = &bytes[PREAMBLE_LEN as usize..(PREAMBLE_LEN + header_len) as usize];
    let text = std::str::from_utf8(raw).map_err(|e| FormatError::Header(format!("not UTF-8: {e}")))?;
    let header: Header = serde_json::from_str(text).map_err(|e| FormatError::Header(e.to_string()))?;
    if !header.metadata.config.is_object() {
        return Err(FormatError::Header("metadata.config is not an object".into()));
    }
    let data_start = (PREAMBLE_LEN + header_len).next_multiple_of(DATA_ALIGN);
    let mut seen = std::collections::HashSet::new();
    let mut parts = Vec::with_capacity(header.tensors.len());
    let mut ranges = Vec::with_capacity(header.tensors.len());
    for (i, t) in header.tensors.iter().enumerate() {
        if !seen.insert(t.name.as_str()) {
            return Err(FormatError::DuplicateTensor(t.name.clone()));
        }
        let p = t.scheme.parts(&t.name, &t.shape)?;
        let expected = p.last().map_or(0, |x| x.offset + x.len);
        if t.length != expected {
            return Err(FormatError::LengthMismatch { tensor: t.name.clone(), expected, got: t.length });
        }
        let end = t.offset.checked_add(t.length);
        match end {
            Some(end) if t.offset >= data_start && end <= file_len => {}
            _ => {
                return Err(FormatError::OutOfBounds {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_start,
                    file_len,
                })
            }
        }
        let align = tensor_align(t.length);
        if t.offset % align != 0 {
            return Err(FormatError::Misaligned { tensor: t.name.clone(), offset: t.offset, align });
        }
        if t.crc32.len() != 8 || !t.crc32.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(FormatError::BadChecksum { tensor: t.name.clone(), value: t.crc32.clone() });
        }
        parts.push(p);
        ranges.push((t.offset, t.offset + t.length, i));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(FormatError::Overlap {
                a: header.tensors[w[0].2].name.clone(),
                b: header.tensors[w[1].2].name.clone(),
            });
        }
    }
    Ok((header, parts))
}

impl ModelFile {
    /// Opens and validates `path`. Sizes are checked before the file is mapped.
    pub fn open(path: &Path) -> Result<ModelFile> {
        let io = |e| FormatError::io(path, e);
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut pre = [0u8; PREAMBLE_LEN as usize];
        if len < PREAMBLE_LEN {
            return Err(FormatError::Truncated { what: "preamble", needed: PREAMBLE_LEN, available: len });
        }
        std::io::Read::read_exact(&mut &file, &mut pre).map_err(io)?;
        check_preamble(&pre, len)?;
        // SAFETY: the map is read-only and we never hand out references that outlive it. The
        // one hazard mmap brings is another process shrinking the file while it is mapped, which
        // turns a later read into SIGBUS; that cannot be excluded by any check here, so it is
        // documented (docs/FORMAT.md) rather than prevented.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header, parts) = validate(&mmap)?;
        let by_name = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(ModelFile { mmap, header, parts, by_name })
    }

    /// Validates a file held in memory (what the fuzz target calls).
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        validate(bytes).map(|(h, _)| h)
    }

    /// Model metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The tensor index.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let &i = self.by_name.get(name)?;
        let info = &self.header.tensors[i];
        Some(TensorRef {
            info,
            bytes: &self.mmap[info.offset as usize..(info.offset + info.length) as usize],
            parts: &self.parts[i],
        })
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Recomputes every tensor's CRC-32; returns the ones that differ from the header.
    pub fn verify(&self) -> Vec<ChecksumMismatch> {
        self.header
            .tensors
            .iter()
            .filter_map(|t| {
                let actual =
                    format!("{:08x}", crc32fast::hash(&self.mmap[t.offset as usize..(t.offset + t.length) as usize]));
                (actual != t.crc32.to_ascii_lowercase()).then(|| ChecksumMismatch {
                    name: t.name.clone(),
                    expected: t.crc32.clone(),
                    actual,
                })
            })
            .collect()
    }
}

impl<'a> TensorRef<'a> {
    /// The bytes of part `name`.
    pub fn part(&self, name: &str) -> Result<&'a [u8]> {
        let p = self
            .parts
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| FormatError::NoSuchPart { tensor: self.info.name.clone(), part: name.into() })?;
        Ok(&self.bytes[p.offset as usize..(p.offset + p.len) as usize])
    }

    fn cast<T: bytemuck::AnyBitPattern>(&self, name: &str) -> Result<&'a [T]> {
        let b = self.part(name)?;
        bytemuck::try_cast_slice(b).map_err(|_| FormatError::Misaligned {
            tensor: format!("{}.{name}", self.info.name),
            offset: self.info.offset,
            align: std::mem::align_of::<T>() as u64,
        })
    }

    /// Part `name` as f32.
    pub fn part_f32(&self, name: &str) -> Result<&'a [f32]> {
        self.cast(name)
    }

    /// Part `name` as u16 (f16 / bf16 bit patterns).
    pub fn part_u16(&self, name: &str) -> Result<&'a [u16]> {
        self.cast(name)
    }

    /// Part `name` as i8.
    pub fn part_i8(&self, name: &str) -> Result<&'a [i8]> {
        self.cast(name)
    }
}
