//! One module per subcommand.

pub mod convert;
pub mod inspect;
pub mod logits;
pub mod perplexity;
pub mod run;

use anyhow::{Context, Result};
use lowbit_format::ModelFile;
use std::path::Path;
use std::time::Instant;

/// Opens a model file, reporting how long it took (it should be milliseconds: nothing is copied).
pub fn open(path: &Path) -> Result<(ModelFile, f64)> {
    let t = Instant::now();
    let file = ModelFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok((file, t.elapsed().as_secs_f64()))
}
