//! The fixed preamble and the alignment rules shared by the writer and the reader.

/// File magic.
pub const MAGIC: [u8; 8] = *b"LOWBIT\0\0";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Preamble: magic (8), version (4), reserved (4), header length (8).
pub const PREAMBLE_LEN: u64 = 24;
/// The data section starts on a page boundary.
pub const DATA_ALIGN: u64 = 4096;
/// Tensors of at least this many bytes start on a page boundary (mmap-friendly, and lets the
/// kernel map them with huge pages); smaller ones on a 64-byte (cache line) boundary.
pub const PAGE_ALIGN_FROM: u64 = 1 << 20;
/// Largest header accepted: far above any real model's (a 2 MB tokenizer plus a few thousand
/// tensor entries), small enough that a hostile length cannot make us allocate much.
pub const MAX_HEADER: u64 = 256 << 20;

/// Alignment a tensor of `len` bytes must have.
pub fn tensor_align(len: u64) -> u64 {
    if len >= PAGE_ALIGN_FROM {
        DATA_ALIGN
    } else {
        crate::scheme::PART_ALIGN
    }
}

/// The preamble bytes for a header of `header_len` bytes.
pub fn preamble(header_len: u64) -> [u8; PREAMBLE_LEN as usize] {
    let mut p = [0u8; PREAMBLE_LEN as usize];
    p[..8].copy_from_slice(&MAGIC);
    p[8..12].copy_from_slice(&VERSION.to_le_bytes());
    p[16..24].copy_from_slice(&header_len.to_le_bytes());
    p
}
