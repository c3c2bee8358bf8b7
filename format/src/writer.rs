//! The streaming writer. Every tensor's place is fixed up front (the converter knows all shapes
//! before converting anything), so tensors can be written in any order, from several threads,
//! with positional writes, and no tensor is ever held in memory longer than its own conversion.
//!
//! The header goes in last, when the checksums are known. Its space is reserved at the start by
//! serializing it with placeholder checksums: a checksum is always exactly 8 hex digits, so the
//! final header is exactly as long, and any slack is filled with JSON whitespace.
//!
//! Atomicity: everything goes to a hidden temporary file in the output's folder (same file
//! system, so the final rename is atomic), which [`Writer::finish`] fsyncs and renames over the
//! output. Dropping an unfinished writer deletes the temporary file; a killed process leaves only
//! that hidden file, never a partial output under the real name.

use crate::error::{FormatError, Result};
use crate::header::{HeaderRef, Metadata, TensorInfo};
use crate::layout::{self, preamble, tensor_align, MAX_HEADER, PREAMBLE_LEN};
use crate::scheme::{end_of, PartLayout, Scheme, PART_ALIGN};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A tensor to be written: its name, scheme and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name (unique within the file).
    pub name: String,
    /// Storage scheme.
    pub scheme: Scheme,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
}

/// Where a tensor goes, as planned by [`Writer::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Index entry: name, scheme, shape, absolute offset and length (checksum still the
    /// placeholder `00000000`).
    pub info: TensorInfo,
    /// Its parts, in the order [`Writer::write_tensor`] takes them.
    pub parts: Vec<PartLayout>,
}

/// What [`Writer::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// The output file.
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// Tensors written.
    pub tensors: usize,
}

/// Progress of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending,
    /// Claimed by a `write_tensor` call in progress: a second call for the same tensor fails
    /// instead of racing it.
    Writing,
    Done(u32),
}

/// A lowbit file being written. `Send + Sync`: share it by reference between threads that each
/// call [`Writer::write_tensor`] for different tensors.
#[derive(Debug)]
pub struct Writer {
    out: PathBuf,
    tmp: PathBuf,
    file: File,
    metadata: Metadata,
    planned: Vec<PlannedTensor>,
    header_len: u64,
    file_len: u64,
    slots: Mutex<Vec<Slot>>,
    finished: bool,
}

const PLACEHOLDER_CRC: &str = "00000000";

/// Distinguishes temporary files of writers created by one process.
static TMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn header_json(metadata: &Metadata, tensors: &[TensorInfo]) -> Result<Vec<u8>> {
    // Serializing plain data to a Vec cannot fail in practice; map it rather than unwrap.
    serde_json::to_vec(&HeaderRef { metadata, tensors }).map_err(|source| FormatError::HeaderJson { source })
}

/// Places the tensors, in order, from `data_start`; returns the end of the last one.
fn place(planned: &mut [PlannedTensor], data_start: u64) -> Result<u64> {
    let mut off = data_start;
    for p in planned.iter_mut() {
        let overflow = || FormatError::LayoutOverflow { tensor: p.info.name.clone() };
        off = off.checked_next_multiple_of(tensor_align(p.info.length)).ok_or_else(overflow)?;
        p.info.offset = off;
        off = off.checked_add(p.info.length).ok_or_else(overflow)?;
    }
    Ok(off)
}

/// Plans every tensor: parts, length, offset; returns the plan, the header length and the file
/// length.
fn plan(metadata: &Metadata, tensors: Vec<TensorSpec>) -> Result<(Vec<PlannedTensor>, u64, u64)> {
    metadata.validate()?;
    let mut seen = std::collections::HashSet::with_capacity(tensors.len());
    let mut planned = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !seen.insert(t.name.clone()) {
            return Err(FormatError::DuplicateTensor { name: t.name });
        }
        let parts = t.scheme.parts_for(&t.name, &t.shape)?;
        let length = end_of(&parts);
        let info = TensorInfo {
            name: t.name,
            scheme: t.scheme,
            shape: t.shape,
            offset: 0,
            length,
            crc32: PLACEHOLDER_CRC.into(),
        };
        planned.push(PlannedTensor { info, parts });
    }
    // The header's length depends on the offsets (their digit counts) and the offsets on the
    // header's length: start from the smallest data start and grow it until the header fits.
    // Offsets only grow, so this converges, in two or three rounds in practice.
    let mut data_start = layout::data_start(0).expect("constant");
    loop {
        let end = place(&mut planned, data_start)?;
        let json_len = header_json(metadata, planned_infos(&planned).as_slice())?.len() as u64;
        let need =
            layout::data_start(json_len).ok_or(FormatError::HeaderTooLarge { len: json_len, limit: MAX_HEADER })?;
        if need <= data_start {
            // The header is padded to fill everything up to the data start.
            let header_len = data_start - PREAMBLE_LEN;
            if header_len > MAX_HEADER {
                return Err(FormatError::HeaderTooLarge { len: header_len, limit: MAX_HEADER });
            }
            return Ok((planned, header_len, end));
        }
        if need - PREAMBLE_LEN > MAX_HEADER {
            return Err(FormatError::HeaderTooLarge { len: json_len, limit: MAX_HEADER });
        }
        data_start = need;
    }
}

fn planned_infos(planned: &[PlannedTensor]) -> Vec<TensorInfo> {
    planned.iter().map(|p| p.info.clone()).collect()
}

impl Writer {
    /// Lays out all tensors (in the order given) and creates the temporary file
    /// `.{file name}.tmp-{pid}-{n}` next to `out`, sized to the final length (sparse: `set_len`
    /// reserves no blocks, so a full disk shows up as [`FormatError::DiskFull`] from a later
    /// write, not here).
    pub fn create(out: &Path, metadata: Metadata, tensors: Vec<TensorSpec>) -> Result<Writer> {
        let (planned, header_len, file_len) = plan(&metadata, tensors)?;
        let Some(name) = out.file_name() else {
            return Err(FormatError::NotAFile { path: out.to_path_buf() });
        };
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
        let file =
            File::options().read(true).write(true).create_new(true).open(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
        let slots = Mutex::new(vec![Slot::Pending; planned.len()]);
        // Built before `set_len` so that its Drop removes the temporary file if sizing fails.
        let w = Writer {
            out: out.to_path_buf(),
            tmp,
            file,
            metadata,
            planned,
            header_len,
            file_len,
            slots,
            finished: false,
        };
        w.file.set_len(file_len).map_err(|e| FormatError::io(&w.tmp, e))?;
        Ok(w)
    }

    /// The planned tensors, in file order (a tensor's index for [`Writer::write_tensor`] is its
    /// position here).
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.planned
    }

    /// The final file size.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Writes tensor `index`: one byte slice per part, in the scheme's part order, each exactly
    /// the part's length. Callable concurrently from several threads for different tensors.
    /// If it fails, the tensor may be written again.
    pub fn write_tensor(&self, index: usize, parts: &[&[u8]]) -> Result<()> {
        let count = self.planned.len();
        let p = self.planned.get(index).ok_or(FormatError::NoSuchTensor { index, count })?;
        let name = &p.info.name;
        if parts.len() != p.parts.len() {
            return Err(FormatError::PartCount { tensor: name.clone(), expected: p.parts.len(), got: parts.len() });
        }
        for (data, layout) in parts.iter().zip(&p.parts) {
            if data.len() as u64 != layout.len {
                return Err(FormatError::PartLength {
                    tensor: name.clone(),
                    part: layout.name,
                    expected: layout.len,
                    got: data.len() as u64,
                });
            }
        }
        let mut sink = self.tensor_sink(index)?;
        for (i, data) in parts.iter().enumerate() {
            sink.write(i, data)?;
        }
        sink.finish()
    }

    /// Starts writing tensor `index` piece by piece (see [`TensorSink`]), so a large tensor
    /// never has to be whole in memory. Fails if the tensor is written or being written.
    pub fn tensor_sink(&self, index: usize) -> Result<TensorSink<'_>> {
        let count = self.planned.len();
        let p = self.planned.get(index).ok_or(FormatError::NoSuchTensor { index, count })?;
        {
            let mut slots = self.lock_slots();
            if slots[index] != Slot::Pending {
                return Err(FormatError::AlreadyWritten { tensor: p.info.name.clone() });
            }
            slots[index] = Slot::Writing;
        }
        let n = p.parts.len();
        Ok(TensorSink {
            writer: self,
            index,
            filled: vec![0; n],
            crcs: vec![crc32fast::Hasher::new(); n],
            finished: false,
        })
    }

    fn lock_slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A panic while holding the lock cannot leave the slots inconsistent (each update is a
        // single store), so a poisoned lock is still good.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks every tensor was written, writes the preamble and the header (with checksums),
    /// fsyncs, renames the temporary file over `out` and fsyncs the folder. On error the
    /// temporary file is removed and `out` is untouched.
    pub fn finish(mut self) -> Result<WriteSummary> {
        let slots = self.lock_slots().clone();
        let missing: Vec<usize> = (0..slots.len()).filter(|&i| !matches!(slots[i], Slot::Done(_))).collect();
        if let Some(&first) = missing.first() {
            return Err(FormatError::NotWritten {
                tensor: self.planned[first].info.name.clone(),
                missing: missing.len(),
            });
        }
        for (p, slot) in self.planned.iter_mut().zip(&slots) {
            if let Slot::Done(crc) = slot {
                p.info.crc32 = format!("{crc:08x}");
            }
        }
        let mut head = preamble(self.header_len).to_vec();
        head.extend(header_json(&self.metadata, &planned_infos(&self.planned))?);
        let actual = head.len() as u64 - PREAMBLE_LEN;
        if actual > self.header_len {
            return Err(FormatError::HeaderGrew { planned: self.header_len, actual });
        }
        // Trailing spaces are JSON whitespace: the header fills exactly its reserved space.
        head.resize((PREAMBLE_LEN + self.header_len) as usize, b' ');
        let io = |e| FormatError::io(&self.tmp, e);
        self.file.write_all_at(&head, 0).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.out).map_err(|e| FormatError::io(&self.out, e))?;
        self.finished = true;
        // Make the rename itself durable. A failure here does not undo a complete, synced file,
        // and some file systems refuse to fsync a directory, so it is not an error.
        let dir = match self.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let _ = File::open(dir).and_then(|d| d.sync_all());
        Ok(WriteSummary { path: self.out.clone(), bytes: self.file_len, tensors: self.planned.len() })
    }
}

/// One tensor being written piece by piece: each part's bytes in order (the parts themselves in
/// any order, interleaved as the caller likes), then [`TensorSink::finish`], which checks every
/// part is complete and records the tensor's checksum (the parts' CRCs combined with the zero
/// padding between them). Dropped unfinished, the tensor counts as not written (it may be
/// written again; the file is still the temporary one).
#[derive(Debug)]
pub struct TensorSink<'w> {
    writer: &'w Writer,
    index: usize,
    /// Bytes written so far into each part.
    filled: Vec<u64>,
    /// CRC-32 of each part's bytes so far.
    crcs: Vec<crc32fast::Hasher>,
    finished: bool,
}

impl TensorSink<'_> {
    fn planned(&self) -> &PlannedTensor {
        &self.writer.planned[self.index]
    }

    /// Appends `data` to part `part` (its index in the scheme's part order).
    pub fn write(&mut self, part: usize, data: &[u8]) -> Result<()> {
        let w = self.writer;
        let p = &w.planned[self.index];
        let Some(layout) = p.parts.get(part) else {
            return Err(FormatError::PartCount { tensor: p.info.name.clone(), expected: p.parts.len(), got: part + 1 });
        };
        let at = self.filled[part];
        let end = at + data.len() as u64;
        if end > layout.len {
            return Err(FormatError::PartLength {
                tensor: p.info.name.clone(),
                part: layout.name,
                expected: layout.len,
                got: end,
            });
        }
        w.file.write_all_at(data, p.info.offset + layout.offset + at).map_err(|e| FormatError::io(&w.tmp, e))?;
        self.crcs[part].update(data);
        self.filled[part] = end;
        Ok(())
    }

    /// Checks every part is complete and marks the tensor written.
    pub fn finish(mut self) -> Result<()> {
        let p = self.planned();
        for (layout, &got) in p.parts.iter().zip(&self.filled) {
            if got != layout.len {
                return Err(FormatError::PartLength {
                    tensor: p.info.name.clone(),
                    part: layout.name,
                    expected: layout.len,
                    got,
                });
            }
        }
        // The padding between parts is zeros in the file (a fresh file extended by `set_len`
        // reads as zeros) and so in the checksum.
        let zeros = [0u8; PART_ALIGN as usize];
        let mut crc = crc32fast::Hasher::new();
        for (i, (layout, part_crc)) in p.parts.iter().zip(&self.crcs).enumerate() {
            crc.combine(part_crc);
            if let Some(next) = p.parts.get(i + 1) {
                crc.update(&zeros[..(next.offset - layout.offset - layout.len) as usize]);
            }
        }
        let crc = crc.finalize();
        self.writer.lock_slots()[self.index] = Slot::Done(crc);
        self.finished = true;
        Ok(())
    }
}

impl Drop for TensorSink<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.writer.lock_slots()[self.index] = Slot::Pending;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn writer_is_send_and_sync() {
        assert_send_sync::<Writer>();
    }

    #[test]
    fn placement_overflow_is_an_error() {
        let info = |name: &str, length| TensorInfo {
            name: name.into(),
            scheme: Scheme::F32,
            shape: vec![1],
            offset: 0,
            length,
            crc32: PLACEHOLDER_CRC.into(),
        };
        let mut planned = vec![
            PlannedTensor { info: info("a", u64::MAX / 2), parts: vec![] },
            PlannedTensor { info: info("b", u64::MAX / 2), parts: vec![] },
        ];
        assert!(matches!(place(&mut planned, 4096), Err(FormatError::LayoutOverflow { tensor }) if tensor == "b"));
    }
}
