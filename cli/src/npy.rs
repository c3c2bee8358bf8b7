//! Minimal NumPy `.npy` (format 1.0) writing of float32 matrices, for `lowbit logits`.

use anyhow::{Context, Result};
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
    let write = || -> Result<()> {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        f.write_all(b"\x93NUMPY\x01\x00")?;
        f.write_all(&(header.len() as u16).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
        for v in data {
            f.write_all(&v.to_le_bytes())?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    };
    // A failed write (a full disk) leaves neither a partial output nor the temporary file.
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// Refuses an output path that names one of the inputs (it would be overwritten while read).
pub fn check_not_input(out: &Path, inputs: &[&Path]) -> Result<()> {
    let Ok(o) = out.canonicalize() else { return Ok(()) };
    for i in inputs {
        if i.canonicalize().is_ok_and(|i| i == o) {
            anyhow::bail!("the output {} is also an input; choose another path", out.display());
        }
    }
    Ok(())
}
