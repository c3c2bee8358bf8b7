//! `lowbit perplexity`: scored like llama.cpp's perplexity tool — the text is cut into chunks of
//! `c` tokens, each chunk starts a fresh context (its first token replaced by BOS when the model
//! has one), and only the second half of each chunk is scored, so every scored token has at least
//! c/2 tokens of context.
//!
//! `--save-logits` stores the scored positions' log-probabilities (float16, [positions, vocab]);
//! `--kl-base` reads such a file made by a base model (say the f32 conversion) and reports the
//! mean KL divergence KL(base ‖ this) and how often both pick the same top-1 token.

use crate::args::PerplexityArgs;
use crate::npy;
use anyhow::{Context, Result};
use half::f16;
use lowbit_runtime::sampler::argmax;
use lowbit_runtime::{score, Model, RuntimeOptions, TextCodec};
use std::io::{Read, Write};
use std::time::Instant;

/// `lowbit imatrix`: the calibration text read in chunks as perplexity reads it (each chunk a
/// fresh context), with the model collecting each linear layer's input statistics.
pub fn imatrix(a: crate::args::ImatrixArgs, threads: Option<usize>) -> Result<()> {
    anyhow::ensure!(a.ctx >= 2, "--ctx must be at least 2");
    npy::check_not_input(&a.out, &[&a.model, &a.file])?;
    let engine = super::engine(&a.model, &RuntimeOptions { threads, ..Default::default() })?;
    let codec = engine.codec()?;
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", a.file.display()))?;
    let tokens = codec.encode(&text, false)?;
    engine.run(|model| {
        let chunks = score::perplexity_chunks(&tokens, a.ctx, a.chunks, model.config.bos_token_id);
        anyhow::ensure!(!chunks.is_empty(), "the text has {} tokens, fewer than one chunk of {}", tokens.len(), a.ctx);
        model.collect_input_stats();
        let t = Instant::now();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut cache = model.new_cache(chunk.len());
            model.forward(&mut cache, chunk, lowbit_runtime::Logits::Last)?;
            eprint!("\rchunk {}/{} ({:.1} s)", i + 1, chunks.len(), t.elapsed().as_secs_f64());
        }
        eprintln!();
        let read = (chunks.len() * a.ctx) as u64;
        let stats = model.input_stats();
        let m = lowbit_convert::imatrix::Imatrix::new(stats.into_iter().map(|(name, v, _)| (name, v)), read);
        m.write(&a.out)?;
        println!(
            "{}: {} weights, {} tokens of {} in {} chunks",
            a.out.display(),
            m.len(),
            read,
            a.file.display(),
            chunks.len()
        );
        Ok(())
    })
}

pub fn run(a: PerplexityArgs, threads: Option<usize>) -> Result<()> {
    anyhow::ensure!(a.ctx >= 4, "--ctx must be at least 4");
    let adapters = super::adapters(&a.model, &a.lora)?;
    let engine =
        super::engine(&a.model, &RuntimeOptions { threads, fourbit_exact: a.exact, adapters, ..Default::default() })?;
    let codec = engine.codec()?;
    engine.run(|model| score(&a, model, codec))
}

fn score(a: &PerplexityArgs, model: &Model, codec: &TextCodec) -> Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", a.file.display()))?;
    let tokens = codec.encode(&text, false)?;
    let chunks = score::perplexity_chunks(&tokens, a.ctx, a.chunks, model.config.bos_token_id);
    let n_chunks = chunks.len();
    anyhow::ensure!(n_chunks > 0, "the text has {} tokens, fewer than one chunk of {}", tokens.len(), a.ctx);
    let vocab = model.config.vocab_size;
    let scored_per_chunk = a.ctx - 1 - a.ctx / 2;

    let mut base = match &a.kl_base {
        Some(p) => {
            let rows = F16Rows::open(p, vocab)?;
            anyhow::ensure!(
                rows.left == n_chunks * scored_per_chunk,
                "{} holds {} positions but this run scores {} ({} chunks of {}): make the base with the same text, -c and --chunks",
                p.display(),
                rows.left,
                n_chunks * scored_per_chunk,
                n_chunks,
                a.ctx
            );
            Some(rows)
        }
        None => None,
    };
    if let Some(out) = &a.save_logits {
        npy::check_not_input(out, &[&a.model, &a.file])?;
    }
    let mut save = match &a.save_logits {
        Some(p) => Some(F16Writer::create(p, n_chunks * scored_per_chunk, vocab)?),
        None => None,
    };
    let (mut nll, mut count) = (0f64, 0usize);
    let (mut kl_sum, mut same_top) = (0f64, 0usize);
    let t = Instant::now();
    let mut per_chunk = Vec::new();
    for (ch, chunk) in chunks.iter().enumerate() {
        let scored = score::score_chunk(model, chunk)?;
        let (chunk_nll, n) = (scored.nll(), scored.targets.len());
        nll += chunk_nll;
        count += n;
        let (mut chunk_kl, mut chunk_top) = (0f64, 0usize);
        for lp in scored.logprobs.chunks(vocab) {
            if let Some(w) = &mut save {
                w.push(lp)?;
            }
            if let Some(b) = &mut base {
                let bp = b.next_row()?;
                let kl = score::kl_divergence(&bp, lp);
                let same = usize::from(argmax(&bp) == argmax(lp));
                (kl_sum, chunk_kl) = (kl_sum + kl, chunk_kl + kl);
                (same_top, chunk_top) = (same_top + same, chunk_top + same);
            }
        }
        if a.json {
            let mut c = serde_json::json!({ "perplexity": (chunk_nll / n as f64).exp() });
            if base.is_some() {
                c["kl_divergence"] = serde_json::json!(chunk_kl / n as f64);
                c["top1_agreement"] = serde_json::json!(chunk_top as f64 / n as f64);
            }
            per_chunk.push(c);
        }
        eprint!("\r[{}/{}] ppl {:.4}", ch + 1, n_chunks, (nll / count as f64).exp());
    }
    eprintln!();
    let secs = t.elapsed().as_secs_f64();
    if let Some(w) = save {
        w.finish()?;
    }
    if a.json {
        let mut out = serde_json::json!({
            "perplexity": (nll / count as f64).exp(),
            "scored_tokens": count,
            "chunks": n_chunks,
            "ctx": a.ctx,
            "seconds": secs,
            "tokens_per_s": (n_chunks * a.ctx) as f64 / secs,
            "per_chunk": per_chunk,
        });
        if base.is_some() {
            out["kl_divergence"] = serde_json::json!(kl_sum / count as f64);
            out["top1_agreement"] = serde_json::json!(same_top as f64 / count as f64);
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "perplexity: {:.4} over {} tokens in {} chunks of {} ({:.1} s, {:.0} tok/s)",
        (nll / count as f64).exp(),
        count,
        n_chunks,
        a.ctx,
        secs,
        (n_chunks * a.ctx) as f64 / secs
    );
    if base.is_some() {
        println!(
            "KL divergence vs base: {:.6} nats/token; top-1 agreement {:.2}%",
            kl_sum / count as f64,
            100.0 * same_top as f64 / count as f64
        );
    }
    Ok(())
}

/// Streams rows of log-probabilities to a float16 .npy file.
struct F16Writer {
    out: std::io::BufWriter<std::fs::File>,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    /// Renamed into place: nothing to clean up.
    done: bool,
}

impl Drop for F16Writer {
    /// A run that fails (a bad chunk, a short base file, a full disk) leaves no temporary file.
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl F16Writer {
    fn create(path: &std::path::Path, rows: usize, cols: usize) -> Result<F16Writer> {
        let tmp = path.with_extension("npy.tmp");
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        let mut header = format!("{{'descr': '<f2', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
        header.push('\n');
        out.write_all(b"\x93NUMPY\x01\x00")?;
        out.write_all(&(header.len() as u16).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        Ok(F16Writer { out, tmp, path: path.to_path_buf(), done: false })
    }

    fn push(&mut self, row: &[f32]) -> Result<()> {
        for &v in row {
            self.out.write_all(&f16::from_f32(v.max(-65000.0)).to_le_bytes())?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.done = true;
        Ok(())
    }
}

/// Reads rows of a float16 .npy written by [`F16Writer`].
struct F16Rows {
    input: std::io::BufReader<std::fs::File>,
    cols: usize,
    left: usize,
}

impl F16Rows {
    fn open(path: &std::path::Path, cols: usize) -> Result<F16Rows> {
        let mut input =
            std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
        let mut pre = [0u8; 10];
        input.read_exact(&mut pre)?;
        anyhow::ensure!(&pre[..6] == b"\x93NUMPY" && pre[6] == 1, "{} is not a version-1 .npy file", path.display());
        let mut header = vec![0u8; u16::from_le_bytes([pre[8], pre[9]]) as usize];
        input.read_exact(&mut header)?;
        let header = String::from_utf8_lossy(&header);
        anyhow::ensure!(header.contains("'<f2'"), "{}: expected float16 log-probabilities", path.display());
        let shape = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).context("no shape")?;
        let dims: Vec<usize> = shape.split(',').filter_map(|d| d.trim().parse().ok()).collect();
        anyhow::ensure!(
            dims.len() == 2 && dims[1] == cols,
            "{}: shape {dims:?} does not match vocabulary {cols}",
            path.display()
        );
        Ok(F16Rows { input, cols, left: dims[0] })
    }

    fn next_row(&mut self) -> Result<Vec<f32>> {
        anyhow::ensure!(
            self.left > 0,
            "the base logits file has fewer positions than this run scores (use the same text and -c)"
        );
        self.left -= 1;
        let mut buf = vec![0u8; self.cols * 2];
        self.input.read_exact(&mut buf)?;
        Ok(buf.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
    }
}
