//! `lowbit logits`: every position's logits, for checking a conversion against a reference.

use crate::args::LogitsArgs;
use crate::npy;
use anyhow::Result;
use lowbit_runtime::{Logits, RuntimeOptions};

pub fn run(a: LogitsArgs, threads: Option<usize>) -> Result<()> {
    npy::check_not_input(&a.out, &[&a.model])?;
    let adapters = super::adapters(&a.model, &a.lora)?;
    let engine =
        super::engine(&a.model, &RuntimeOptions { threads, fourbit_exact: a.exact, adapters, ..Default::default() })?;
    let tokens = match (&a.tokens, &a.text) {
        (Some(t), _) => t.clone(),
        (None, Some(text)) => engine.codec()?.encode(text, true)?,
        (None, None) => anyhow::bail!("give --tokens 1,2,3 or --text TEXT"),
    };
    anyhow::ensure!(!tokens.is_empty(), "no tokens to score");
    let model = engine.model();
    let max = model.config.max_position_embeddings;
    anyhow::ensure!(
        tokens.len() <= max,
        "{} tokens are more than the model's {max} positions (max_position_embeddings)",
        tokens.len()
    );
    let logits = engine.run(|model| {
        let mut cache = model.new_cache(tokens.len());
        model.forward(&mut cache, &tokens, Logits::All)
    })?;
    npy::write_f32(&a.out, &[tokens.len(), model.config.vocab_size], &logits)?;
    eprintln!("wrote {} x {} logits to {}", tokens.len(), model.config.vocab_size, a.out.display());
    Ok(())
}
