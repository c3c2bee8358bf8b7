//! `lowbit logits`: every position's logits, for checking a conversion against a reference.

use crate::args::LogitsArgs;
use crate::npy;
use anyhow::Result;
use lowbit_kernels::MatmulOptions;
use lowbit_runtime::{Logits, Model, TextCodec};

pub fn run(a: LogitsArgs) -> Result<()> {
    let (file, _) = super::open(&a.model)?;
    let mut model = Model::new(&file)?;
    model.set_options(MatmulOptions { fourbit_exact: a.exact, ..model.options() });
    let tokens = match (&a.tokens, &a.text) {
        (Some(t), _) => t.clone(),
        (None, Some(text)) => TextCodec::from_metadata(file.metadata())?.encode(text, true)?,
        (None, None) => anyhow::bail!("give --tokens 1,2,3 or --text TEXT"),
    };
    anyhow::ensure!(!tokens.is_empty(), "no tokens to score");
    let mut cache = model.new_cache(tokens.len());
    let logits = model.forward(&mut cache, &tokens, Logits::All)?;
    npy::write_f32(&a.out, &[tokens.len(), model.config.vocab_size], &logits)?;
    eprintln!("wrote {} x {} logits to {}", tokens.len(), model.config.vocab_size, a.out.display());
    Ok(())
}
