//! Converted models kept for reuse, so `lowbit run`, `chat` and the Python `Llama` can take a
//! GGUF file or a Hugging Face / bitsandbytes folder directly: the first use converts it into
//! the cache, later ones map the cached file.

use crate::{convert, ConvertError, ConvertOptions, ProgressEvent, Result};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// Where converted models are kept: `$LOWBIT_CACHE/converted`, else `~/.cache/lowbit`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("LOWBIT_CACHE") {
        Some(d) => PathBuf::from(d).join("converted"),
        None => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(".lowbit-cache"), |h| PathBuf::from(h).join(".cache/lowbit")),
    }
}

/// Whether `path` is something to convert (a folder, or a file that starts like a GGUF file)
/// rather than a lowbit file.
pub fn is_source(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"GGUF"
}

/// Raised whenever a quantizer's output changes within one version (2: block int8's scale
/// search), so the cache does not hand back a file the current converter would make otherwise.
const QUANTIZER_REVISION: u32 = 2;

/// A key for a source and options: the source's canonical path, every file's name, size and
/// modification time, the options, the scheme's recipe, the converter's version and its
/// quantizers' revision — a changed source, option, recipe or converter converts anew.
fn key(src: &Path, opts: &ConvertOptions) -> std::io::Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::canonicalize(src)?.hash(&mut h);
    let mut files: Vec<PathBuf> = if src.is_dir() {
        std::fs::read_dir(src)?.filter_map(|e| e.ok().map(|e| e.path())).collect()
    } else {
        vec![src.to_path_buf()]
    };
    files.sort();
    for f in files {
        let m = std::fs::metadata(&f)?;
        f.file_name().hash(&mut h);
        m.len().hash(&mut h);
        m.modified().ok().hash(&mut h);
    }
    format!("{opts:?}").hash(&mut h);
    opts.recipe().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    QUANTIZER_REVISION.hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

/// The lowbit file for `src`: its cached conversion with `opts`, made now (written atomically,
/// reporting `progress`) if the cache lacks it. Returns the path and whether it was converted.
pub fn resolve(
    src: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(ProgressEvent) + Sync),
) -> Result<(PathBuf, bool)> {
    let io = |error| ConvertError::Io { path: src.to_path_buf(), error };
    let key = key(src, opts).map_err(io)?;
    let stem = src.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let dir = cache_dir();
    let out = dir.join(format!("{stem}.{}.{key}.lowbit", opts.quant.label()));
    if out.is_file() {
        return Ok((out, false));
    }
    std::fs::create_dir_all(&dir).map_err(|error| ConvertError::Io { path: dir.clone(), error })?;
    convert(src, &out, opts, progress)?;
    Ok((out, true))
}
