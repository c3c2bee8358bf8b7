//! Reading a checkpoint's small side files (config.json, tokenizer files, the chat template,
//! the shard index): only regular files, and only up to a size stated per kind, so a path that
//! is a FIFO (or a link to one) cannot hang the conversion and `/dev/zero` or a huge file cannot
//! exhaust memory (docs/HOSTILE.md).

use crate::error::{ConvertError, Result};
use std::io::Read;
use std::path::Path;

/// Caps, in bytes: a config is a few KiB; the largest tokenizer.json files are some tens of MiB.
pub(crate) const MAX_JSON_BYTES: u64 = 16 << 20;
/// See [`MAX_JSON_BYTES`].
pub(crate) const MAX_TOKENIZER_BYTES: u64 = 128 << 20;
/// See [`MAX_JSON_BYTES`].
pub(crate) const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// The text of the side file at `path`, `None` if there is none; an error if it is not a
/// regular file, is larger than `cap`, or is not UTF-8.
pub(crate) fn read(path: &Path, cap: u64) -> Result<Option<String>> {
    let Some(bytes) = read_bytes(path, cap)? else { return Ok(None) };
    let bad = |problem: String| ConvertError::BadJson { what: path.display().to_string(), problem };
    String::from_utf8(bytes).map(Some).map_err(|_| bad("not UTF-8 text".into()))
}

/// The bytes of the file at `path`, `None` if there is none; an error if it is not a regular
/// file or is larger than `cap`.
pub(crate) fn read_bytes(path: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConvertError::io(path, e)),
    };
    let bad = |problem: String| ConvertError::BadJson { what: path.display().to_string(), problem };
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > cap {
        return Err(bad(format!("{} bytes, more than the {cap} read for such a file", meta.len())));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap + 1).read_to_end(&mut bytes))
        .map_err(|e| ConvertError::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(bad(format!("grew past the {cap} bytes read for such a file")));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        assert!(read(&p, 10).unwrap().is_none());
        std::fs::write(&p, "{}").unwrap();
        assert_eq!(read(&p, 10).unwrap().as_deref(), Some("{}"));
        std::fs::write(&p, "x".repeat(11)).unwrap();
        assert!(read(&p, 10).unwrap_err().to_string().contains("more than the 10"));
        assert!(read(dir.path(), 10).unwrap_err().to_string().contains("not a regular file"));
        assert!(read(Path::new("/dev/zero"), 10).unwrap_err().to_string().contains("not a regular file"));
    }
}
