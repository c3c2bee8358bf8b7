//! Minimal NumPy `.npy` (format 1.0) reading and writing for float32 matrices — all that
//! `lowbit logits` and `perplexity --kl-base` exchange.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes a C-order float32 array of `shape`.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    anyhow::ensure!(shape.iter().product::<usize>() == data.len(), "shape does not match data");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let tmp = path.with_extension("npy.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    for v in data {
        f.write_all(&v.to_le_bytes())?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reads a C-order little-endian float32 array; returns (shape, data).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{} is not a .npy file", path.display());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes.get(start..start + hlen).context("truncated .npy header")?;
    let header = std::str::from_utf8(header).context(".npy header is not UTF-8")?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        bail!("{}: only C-order little-endian float32 arrays are supported", path.display());
    }
    let shape_txt = header.split("'shape':").nth(1).and_then(|s| s.split(')').next()).context("no shape in .npy header")?;
    let shape: Vec<usize> = shape_txt
        .trim_start_matches([' ', '('])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().context("bad .npy shape"))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).context(".npy shape overflows")?;
    let body = &bytes[start + hlen..];
    if body.len() != n.checked_mul(4).context(".npy shape overflows")? {
        bail!("{}: {} data bytes for shape {shape:?}", path.display(), body.len());
    }
    Ok((shape, body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}
