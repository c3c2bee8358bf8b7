//! Opening a lowbit file: the file is mapped, every header field is checked against the map's
//! real size (see `validate.rs`), and only then are tensors handed out — as slices of the map,
//! so the runtime reads weights in place and never copies a matrix.

use crate::error::{FormatError, Result};
use crate::header::{Header, Metadata, TensorInfo};
use crate::layout::PREAMBLE_LEN;
use crate::scheme::PartLayout;
use crate::validate::{check_preamble, validate};
use memmap2::{Mmap, MmapOptions};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// A tensor whose bytes do not match the checksum in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumMismatch {
    /// Tensor name.
    pub name: String,
    /// CRC-32 in the header.
    pub expected: String,
    /// CRC-32 of the bytes.
    pub actual: String,
}

/// Bytes of memory the system has available for new use (Linux's `MemAvailable`: free memory
/// plus what the page cache can give back); `None` where that is not known.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// An open, validated lowbit file.
#[derive(Debug)]
pub struct ModelFile {
    /// Declared before the map, so the watch ends before the unmapping.
    _watch: crate::fault::Watch,
    mmap: Mmap,
    header: Header,
    parts: Vec<Vec<PartLayout>>,
    by_name: HashMap<String, usize>,
    data_start: u64,
}

/// One tensor: its index entry and its bytes in the map.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Index entry.
    pub info: &'a TensorInfo,
    /// All of its bytes (`info.length` of them).
    pub bytes: &'a [u8],
    parts: &'a [PartLayout],
}

impl ModelFile {
    /// Opens, maps and validates `path`. The checksums are not computed (that reads every byte;
    /// see [`ModelFile::verify`]).
    ///
    /// Refuses anything but a regular file before opening it: opening a FIFO would block
    /// forever, and a device's size is not its content's.
    pub fn open(path: &Path) -> Result<ModelFile> {
        ModelFile::open_with(path, false)
    }

    /// [`ModelFile::open`] for a file that is about to be read whole, again and again (a model
    /// being loaded to run): where the file fits in the memory the system has available, its
    /// mapping is populated as it is made — the pages' table entries set up in one pass, as
    /// llama.cpp maps its models — instead of one fault at a time while the first prompt runs.
    /// A file larger than that is mapped as [`ModelFile::open`] maps it.
    pub fn open_resident(path: &Path) -> Result<ModelFile> {
        ModelFile::open_with(path, true)
    }

    fn open_with(path: &Path, resident: bool) -> Result<ModelFile> {
        let io = |e| FormatError::io(path, e);
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(FormatError::NotAFile { path: path.to_path_buf() });
        }
        let mut file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            // Swapped for something else between the two checks.
            return Err(FormatError::NotAFile { path: path.to_path_buf() });
        }
        let len = meta.len();
        // Check the preamble with a plain read first, so an obviously wrong or short file is
        // rejected before it is mapped.
        let mut pre = [0u8; PREAMBLE_LEN as usize];
        if len < PREAMBLE_LEN {
            return Err(FormatError::Truncated { what: "preamble", needed: PREAMBLE_LEN, available: len });
        }
        file.read_exact(&mut pre).map_err(io)?;
        check_preamble(&pre, len)?;
        let mut options = MmapOptions::new();
        if resident && available_memory().is_some_and(|free| len <= free) {
            options.populate();
        }
        // SAFETY: the map is read-only and private to this value; every slice we hand out
        // borrows `self`, so none outlives it. Mapping a file is only unsound if the file
        // changes underneath: we check sizes against the map's own length (taken at mapping
        // time), but another process truncating the file later would make reads of the lost
        // pages raise SIGBUS (which `fault::watch` turns into a message and exit status 2), and
        // one rewriting it would change bytes under `&[u8]`s. No check here can exclude that;
        // lowbit files are written once and renamed into place, never modified, and
        // docs/FORMAT.md tells users not to change a file that is in use. Populating changes
        // none of this: it only sets up the page tables at mapping time.
        let mmap = unsafe { options.map(&file) }.map_err(io)?;
        let watch = crate::fault::watch(mmap.as_ptr(), mmap.len(), path);
        let v = validate(&mmap)?;
        let by_name = v.header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(ModelFile { _watch: watch, mmap, header: v.header, parts: v.parts, by_name, data_start: v.data_start })
    }

    /// Runs every check [`ModelFile::open`] runs on a file held in memory, returning its header.
    /// This is what the fuzz target calls.
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        validate(bytes).map(|v| v.header)
    }

    /// Model metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// The whole header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The tensor index, in the order the writer was given.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        self.by_name.get(name).and_then(|&i| self.tensor_at(i))
    }

    /// The tensor at `index` in [`ModelFile::tensors`].
    pub fn tensor_at(&self, index: usize) -> Option<TensorRef<'_>> {
        let info = self.header.tensors.get(index)?;
        Some(TensorRef { info, bytes: self.span(info), parts: &self.parts[index] })
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Where the data section starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Recomputes every tensor's CRC-32 (reading the whole file once, sequentially) and returns
    /// the tensors whose bytes differ from their header checksum, in index order.
    pub fn verify(&self) -> Vec<ChecksumMismatch> {
        self.header
            .tensors
            .iter()
            .filter_map(|t| {
                let actual = format!("{:08x}", crc32fast::hash(self.span(t)));
                (actual != t.crc32).then(|| ChecksumMismatch {
                    name: t.name.clone(),
                    expected: t.crc32.clone(),
                    actual,
                })
            })
            .collect()
    }

    /// [`ModelFile::verify`] as a `Result`: the first mismatch becomes
    /// [`FormatError::ChecksumMismatch`].
    pub fn verify_checksums(&self) -> Result<()> {
        let bad = self.verify();
        match bad.first() {
            None => Ok(()),
            Some(m) => Err(FormatError::ChecksumMismatch {
                tensor: m.name.clone(),
                expected: m.expected.clone(),
                actual: m.actual.clone(),
                count: bad.len(),
            }),
        }
    }

    fn span(&self, t: &TensorInfo) -> &[u8] {
        // Validated: offset + length ≤ mmap.len(), which fits in usize.
        &self.mmap[t.offset as usize..(t.offset + t.length) as usize]
    }
}

impl<'a> TensorRef<'a> {
    /// The tensor's parts, in storage order.
    pub fn parts(&self) -> &'a [PartLayout] {
        self.parts
    }

    /// The bytes of part `name` (no padding).
    pub fn part(&self, name: &str) -> Result<&'a [u8]> {
        Ok(self.locate(name)?.1)
    }

    fn locate(&self, name: &str) -> Result<(&'a PartLayout, &'a [u8])> {
        let p = self
            .parts
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| FormatError::NoSuchPart { tensor: self.info.name.clone(), part: name.into() })?;
        // Validated: every part lies inside the tensor's bytes.
        Ok((p, &self.bytes[p.offset as usize..(p.offset + p.len) as usize]))
    }

    /// Part `name` as `T`s, in place. Parts are 64-byte aligned within 64-byte aligned tensors in
    /// a page-aligned map, so this succeeds for every file `open` accepts; the check stays
    /// because a cast must never be able to panic.
    fn cast<T: bytemuck::AnyBitPattern>(&self, name: &str) -> Result<&'a [T]> {
        let (p, b) = self.locate(name)?;
        bytemuck::try_cast_slice(b).map_err(|_| FormatError::Misaligned {
            tensor: format!("{}.{name}", self.info.name),
            offset: self.info.offset + p.offset,
            align: std::mem::align_of::<T>() as u64,
        })
    }

    /// Part `name` as f32 (`data` of f32 tensors, `scb`, un-nested `absmax`, `nested_absmax`,
    /// `nested_offset`).
    pub fn part_f32(&self, name: &str) -> Result<&'a [f32]> {
        self.cast(name)
    }

    /// Part `name` as u16: the bit patterns of f16 / bf16 `data`, which the caller reinterprets.
    pub fn part_u16(&self, name: &str) -> Result<&'a [u16]> {
        self.cast(name)
    }

    /// Part `name` as i8 (int8 `cb`).
    pub fn part_i8(&self, name: &str) -> Result<&'a [i8]> {
        self.cast(name)
    }

    /// Part `name` as u8 (4-bit `codes`, nested `absmax` codes). Same as [`TensorRef::part`].
    pub fn part_u8(&self, name: &str) -> Result<&'a [u8]> {
        self.part(name)
    }
}
