//! The fixed preamble and the file-level alignment rules, shared by the writer and the reader so
//! the two cannot drift apart. (Alignment *inside* a tensor is the scheme's business:
//! [`crate::PART_ALIGN`].)

use crate::scheme::PART_ALIGN;

/// File magic.
pub const MAGIC: [u8; 8] = *b"LOWBIT\0\0";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Preamble: magic (8), version (4, LE), reserved (4, LE, zero), header length (8, LE).
pub const PREAMBLE_LEN: u64 = 24;
/// The data section starts on a page boundary.
pub const DATA_ALIGN: u64 = 4096;
/// Tensors of at least this many bytes start on a page boundary (so the kernel can map and
/// read ahead whole pages of one weight); smaller ones on a 64-byte (cache line) boundary, so
/// a model's hundreds of small norm vectors do not each waste most of a page.
pub const PAGE_ALIGN_FROM: u64 = 1 << 20;
/// Largest header accepted: far above any real model's (a 35 MB tokenizer plus a few thousand
/// tensor entries), small enough that a hostile length cannot make us allocate much.
pub const MAX_HEADER: u64 = 256 << 20;

/// Alignment a tensor of `len` bytes must have.
pub fn tensor_align(len: u64) -> u64 {
    if len >= PAGE_ALIGN_FROM {
        DATA_ALIGN
    } else {
        PART_ALIGN
    }
}

/// Where the data section starts for a header of `header_len` bytes.
pub fn data_start(header_len: u64) -> Option<u64> {
    PREAMBLE_LEN.checked_add(header_len)?.checked_next_multiple_of(DATA_ALIGN)
}

/// The preamble bytes for a header of `header_len` bytes.
pub fn preamble(header_len: u64) -> [u8; PREAMBLE_LEN as usize] {
    let mut p = [0u8; PREAMBLE_LEN as usize];
    p[..8].copy_from_slice(&MAGIC);
    p[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // p[12..16]: reserved, zero.
    p[16..24].copy_from_slice(&header_len.to_le_bytes());
    p
}

/// The preamble's fields, decoded but not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// First 8 bytes.
    pub magic: [u8; 8],
    /// Format version.
    pub version: u32,
    /// Reserved field (must be 0).
    pub reserved: u32,
    /// JSON header length.
    pub header_len: u64,
}

impl Preamble {
    /// Decodes the first [`PREAMBLE_LEN`] bytes.
    pub fn decode(b: &[u8; PREAMBLE_LEN as usize]) -> Preamble {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[..8]);
        let mut u32_at = [0u8; 4];
        u32_at.copy_from_slice(&b[8..12]);
        let version = u32::from_le_bytes(u32_at);
        u32_at.copy_from_slice(&b[12..16]);
        let reserved = u32::from_le_bytes(u32_at);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[16..24]);
        Preamble { magic, version, reserved, header_len: u64::from_le_bytes(len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips() {
        let p = Preamble::decode(&preamble(0x0102_0304_0506));
        assert_eq!(p, Preamble { magic: MAGIC, version: 1, reserved: 0, header_len: 0x0102_0304_0506 });
        assert_eq!(&preamble(5)[16..24], &[5, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn alignment_rules() {
        assert_eq!(tensor_align(0), 64);
        assert_eq!(tensor_align((1 << 20) - 1), 64);
        assert_eq!(tensor_align(1 << 20), 4096);
        assert_eq!(data_start(0), Some(4096));
        assert_eq!(data_start(4072), Some(4096));
        assert_eq!(data_start(4073), Some(8192));
        assert_eq!(data_start(u64::MAX), None);
    }
}
