//! The whole validation of a file held as a byte slice. It is separate from the mmap so that the
//! reader, the tests and the fuzz target all run exactly the same checks.
//!
//! Order matters: the preamble's header length is checked against the limit and the real file
//! size *before* anything is allocated for it; the JSON is parsed only from bytes that exist;
//! every tensor field is checked with overflow-safe arithmetic before any slice is taken.

use crate::error::{FormatError, Result};
use crate::header::{is_crc_hex, Header};
use crate::layout::{self, tensor_align, Preamble, MAGIC, MAX_HEADER, PREAMBLE_LEN, VERSION};
use crate::scheme::{end_of, PartLayout};
use std::collections::HashSet;

/// A header that passed every check, with each tensor's parts.
#[derive(Debug)]
pub(crate) struct Validated {
    pub header: Header,
    pub parts: Vec<Vec<PartLayout>>,
    pub data_start: u64,
}

/// Checks the preamble (the first bytes of a file `file_len` bytes long) and returns the header
/// length, which is then known to fit in the file.
pub(crate) fn check_preamble(bytes: &[u8], file_len: u64) -> Result<u64> {
    let Some(pre) = bytes.first_chunk::<{ PREAMBLE_LEN as usize }>() else {
        return Err(FormatError::Truncated { what: "preamble", needed: PREAMBLE_LEN, available: file_len });
    };
    let p = Preamble::decode(pre);
    if p.magic != MAGIC {
        return Err(FormatError::BadMagic { found: p.magic });
    }
    if p.version != VERSION {
        return Err(FormatError::UnsupportedVersion { version: p.version });
    }
    if p.reserved != 0 {
        return Err(FormatError::ReservedNotZero { value: p.reserved });
    }
    if p.header_len > MAX_HEADER {
        return Err(FormatError::HeaderTooLarge { len: p.header_len, limit: MAX_HEADER });
    }
    // Cannot overflow: header_len ≤ 256 MiB.
    let needed = PREAMBLE_LEN + p.header_len;
    if needed > file_len {
        return Err(FormatError::Truncated { what: "header", needed, available: file_len });
    }
    Ok(p.header_len)
}

/// Parses and validates a whole file held in `bytes`.
pub(crate) fn validate(bytes: &[u8]) -> Result<Validated> {
    let file_len = bytes.len() as u64;
    let header_len = check_preamble(bytes, file_len)?;
    // In range: check_preamble proved PREAMBLE_LEN + header_len ≤ bytes.len().
    let raw = &bytes[PREAMBLE_LEN as usize..(PREAMBLE_LEN + header_len) as usize];
    let text = std::str::from_utf8(raw).map_err(|e| FormatError::HeaderUtf8 { valid_up_to: e.valid_up_to() })?;
    // serde_json limits nesting to 128 levels, so a hostile header cannot overflow the stack.
    let header: Header = serde_json::from_str(text).map_err(|source| FormatError::HeaderJson { source })?;
    header.metadata.validate()?;
    let data_start = layout::data_start(header_len).expect("header_len ≤ MAX_HEADER");

    let mut seen = HashSet::with_capacity(header.tensors.len());
    let mut parts = Vec::with_capacity(header.tensors.len());
    let mut ranges = Vec::with_capacity(header.tensors.len());
    for (i, t) in header.tensors.iter().enumerate() {
        if !seen.insert(t.name.as_str()) {
            return Err(FormatError::DuplicateTensor { name: t.name.clone() });
        }
        let p = t.scheme.parts_for(&t.name, &t.shape)?;
        let expected = end_of(&p);
        if t.length != expected {
            return Err(FormatError::LengthMismatch { tensor: t.name.clone(), expected, got: t.length });
        }
        if !is_crc_hex(&t.crc32) {
            return Err(FormatError::BadChecksum { tensor: t.name.clone(), value: t.crc32.clone() });
        }
        let end = t.offset.checked_add(t.length).filter(|&end| t.offset >= data_start && end <= file_len);
        let Some(end) = end else {
            return Err(FormatError::OutOfBounds {
                tensor: t.name.clone(),
                start: t.offset,
                end: t.offset.saturating_add(t.length),
                data_start,
                file_len,
            });
        };
        let align = tensor_align(t.length);
        if t.offset % align != 0 {
            return Err(FormatError::Misaligned { tensor: t.name.clone(), offset: t.offset, align });
        }
        parts.push(p);
        ranges.push((t.offset, end, i));
    }
    // Sorted by start, a range overlaps some other range iff it overlaps its successor's start.
    // Empty tensors occupy no bytes; one sitting strictly inside another still counts as an
    // overlap, since no writer puts one there.
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((_, a_end, a), (b_start, _, b)) = (w[0], w[1]);
        if b_start < a_end {
            return Err(FormatError::Overlap { a: header.tensors[a].name.clone(), b: header.tensors[b].name.clone() });
        }
    }
    Ok(Validated { header, parts, data_start })
}
