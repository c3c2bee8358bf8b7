//! The streaming writer. Every tensor's place is fixed up front (the converter knows all shapes
//! before converting anything), so tensors can be written in any order, from several threads,
//! with positional writes. The header is written last, when the checksums are known; it was
//! sized at the start with fixed-width placeholder checksums so it fits exactly.
//!
//! Atomicity: everything goes to a temporary file in the output's folder, which is fsynced and
//! renamed over the output only by [`Writer::finish`]. Dropping an unfinished writer deletes the
//! temporary file; a killed process leaves only the hidden temporary file, never a partial
//! output.

use crate::error::{FormatError, Result};
use crate::header::{Header, Metadata, TensorInfo};
use crate::layout::{preamble, tensor_align, DATA_ALIGN, PREAMBLE_LEN};
use crate::scheme::{PartLayout, Scheme};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A tensor to be written: its name, scheme and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// Storage scheme.
    pub scheme: Scheme,
    /// Shape.
    pub shape: Vec<u64>,
}

/// Where a tensor goes.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// Index entry (checksum still a placeholder).
    pub info: TensorInfo,
    /// Its parts.
    pub parts: Vec<PartLayout>,
}

/// What [`Writer::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// File size in bytes.
    pub bytes: u64,
    /// Tensors written.
    pub tensors: usize,
}

/// A lowbit file being written.
#[derive(Debug)]
pub struct Writer {
    out: PathBuf,
    tmp: PathBuf,
    file: File,
    metadata: Metadata,
    planned: Vec<PlannedTensor>,
    header_len: u64,
    file_len: u64,
    crcs: Mutex<Vec<Option<u32>>>,
    finished: bool,
}

const PLACEHOLDER_CRC: &str = "00000000";

fn header_json(metadata: &Metadata, planned: &[PlannedTensor], crcs: Option<&[Option<u32>]>) -> Result<Vec<u8>> {
    let tensors = planned
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut t = p.info.clone();
            if let Some(Some(c)) = crcs.map(|c| c[i]) {
                t.crc32 = format!("{c:08x}");
            }
            t
        })
        .collect();
    serde_json::to_vec(&Header { metadata: metadata.clone(), tensors }).map_err(|e| FormatError::Header(e.to_string()))
}

/// Lays out the tensors after a data section starting at `data_start`; returns the end.
fn place(planned: &mut [PlannedTensor], data_start: u64) -> u64 {
    let mut off = data_start;
    for p in planned.iter_mut() {
        off = off.next_multiple_of(tensor_align(p.info.length));
        p.info.offset = off;
        off += p.info.length;
    }
    off
}

static TMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Writer {
    /// Plans the file and creates its temporary file next to `out`.
    pub fn create(out: &Path, metadata: Metadata, tensors: Vec<TensorSpec>) -> Result<Writer> {
        let mut seen = std::collections::HashSet::new();
        let mut planned = Vec::with_capacity(tensors.len());
        for t in tensors {
            if !seen.insert(t.name.clone()) {
                return Err(FormatError::DuplicateTensor(t.name));
            }
            let parts = t.scheme.parts(&t.name, &t.shape)?;
            let length = parts.last().map_or(0, |p| p.offset + p.len);
            planned.push(PlannedTensor {
                info: TensorInfo {
                    name: t.name,
                    scheme: t.scheme,
                    shape: t.shape,
                    offset: 0,
                    length,
                    crc32: PLACEHOLDER_CRC.into(),
                },
                parts,
            });
        }
        // The header's length depends on the offsets' digits and the offsets on the header's
        // length: iterate until the data start is stable (two or three rounds).
        let mut data_start = DATA_ALIGN;
        let file_len = loop {
            let end = place(&mut planned, data_start);
            let json_len = header_json(&metadata, &planned, None)?.len() as u64;
            let need = (PREAMBLE_LEN + json_len).next_multiple_of(DATA_ALIGN);
            if need <= data_start {
                break end;
            }
            data_start = need;
        };
        let header_len = data_start - PREAMBLE_LEN;
        let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("model.lowbit");
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp =
            dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), TMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
        let file =
            File::options().read(true).write(true).create_new(true).open(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
        let n = planned.len();
        let w = Writer {
            out: out.to_path_buf(),
            tmp,
            file,
            metadata,
            planned,
            header_len,
            file_len,
            crcs: Mutex::new(vec![None; n]),
            finished: false,
        };
        w.file.set_len(file_len).map_err(|e| FormatError::io(&w.tmp, e))?;
        Ok(w)
    }

    /// The planned tensors, in file order (index = position here).
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.planned
    }

    /// The final file size.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Writes tensor `index`: one byte slice per part, in order, each exactly the part's length.
    /// Safe to call from several threads for different tensors.
    pub fn write_tensor(&self, index: usize, parts: &[&[u8]]) -> Result<()> {
        let p = self.planned.get(index).ok_or_else(|| FormatError::Writer(format!("no tensor #{index}")))?;
        let name = &p.info.name;
        if parts.len() != p.parts.len() {
            return Err(FormatError::Writer(format!(
                "tensor {name}: {} parts given, its scheme has {}",
                parts.len(),
                p.parts.len()
            )));
        }
        for (data, layout) in parts.iter().zip(&p.parts) {
            if data.len() as u64 != layout.len {
                return Err(FormatError::LengthMismatch {
                    tensor: format!("{name}.{}", layout.name),
                    expected: layout.len,
                    got: data.len() as u64,
                });
            }
        }
        let mut crc = crc32fast::Hasher::new();
        let zeros = [0u8; 64];
        for (i, (data, layout)) in parts.iter().zip(&p.parts).enumerate() {
            self.file.write_all_at(data, p.info.offset + layout.offset).map_err(|e| FormatError::io(&self.tmp, e))?;
            crc.update(data);
            // The padding up to the next part is zeros in the file (set_len) and in the checksum.
            if let Some(next) = p.parts.get(i + 1) {
                crc.update(&zeros[..(next.offset - layout.offset - layout.len) as usize]);
            }
        }
        let mut crcs = self.crcs.lock().unwrap_or_else(|e| e.into_inner());
        if crcs[index].is_some() {
            return Err(FormatError::Writer(format!("tensor {name} written twice")));
        }
        crcs[index] = Some(crc.finalize());
        Ok(())
    }

    /// Writes the header, syncs, and moves the file into place.
    pub fn finish(mut self) -> Result<WriteSummary> {
        let crcs = self.crcs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(i) = crcs.iter().position(Option::is_none) {
            return Err(FormatError::Writer(format!("tensor {} was never written", self.planned[i].info.name)));
        }
        let mut json = header_json(&self.metadata, &self.planned, Some(&crcs))?;
        if json.len() as u64 > self.header_len {
            return Err(FormatError::Writer("header grew after planning".into()));
        }
        // Trailing spaces are valid JSON whitespace and keep the header at its planned size.
        json.resize(self.header_len as usize, b' ');
        let io = |e| FormatError::io(&self.tmp, e);
        self.file.write_all_at(&preamble(self.header_len), 0).map_err(io)?;
        self.file.write_all_at(&json, PREAMBLE_LEN).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.out).map_err(|e| FormatError::io(&self.out, e))?;
        self.finished = true;
        if let Some(dir) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable; failure here does not undo a complete file.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(WriteSummary { bytes: self.file_len, tensors: self.planned.len() })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
