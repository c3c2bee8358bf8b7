//! One module per subcommand.

pub mod batch;
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
    let file = ModelFile::open(path).map_err(|e| named(path, e))?;
    Ok((file, t.elapsed().as_secs_f64()))
}

/// The LoRA adapters of `specs` for run time against the model file at `path` (its weights'
/// shapes checked).
pub fn adapters(
    path: &Path,
    specs: &[lowbit_convert::lora::LoraSpec],
) -> Result<Vec<lowbit_runtime::lora::LoraAdapter>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let file = lowbit_format::ModelFile::open(path).map_err(|e| named(path, e))?;
    specs
        .iter()
        .map(|spec| {
            let (record, deltas) = lowbit_convert::lora::load_for_file(spec, &file)?;
            let deltas = deltas
                .into_iter()
                .map(|d| lowbit_runtime::lora::LoraDelta { target: d.target, a: d.a, b: d.b, r: d.r, scale: d.scale })
                .collect();
            Ok(lowbit_runtime::lora::LoraAdapter { name: record.name, deltas })
        })
        .collect()
}

/// Opens a model to run, naming the path in any error.
pub fn engine(path: &Path, opts: &lowbit_runtime::RuntimeOptions) -> Result<lowbit_runtime::Engine> {
    lowbit_runtime::Engine::open(path, opts).map_err(|e| named(path, e))
}

/// An error about the file at `path`, naming it once: errors from reading a file already start
/// with its path.
pub fn named(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    if e.to_string().contains(&path.display().to_string()) {
        anyhow::Error::new(e)
    } else {
        anyhow::Error::new(e).context(format!("opening {}", path.display()))
    }
}

/// `lowbit cpu`.
pub fn cpu(a: crate::args::CpuArgs) -> Result<()> {
    println!("best: {}", lowbit_kernels::Isa::best());
    println!("in use: {}", lowbit_kernels::kernels().label());
    println!("weight prefetch: {}", lowbit_kernels::Prefetch::current());
    println!("supported: {:?}", lowbit_kernels::Isa::all_supported());
    for isa in lowbit_kernels::Isa::ALL {
        if let Some(needs) = isa.missing() {
            println!("not available: {isa} (needs {needs})");
        }
    }
    if let Some(mib) = a.bandwidth {
        anyhow::ensure!(mib > 0, "--bandwidth needs a size in MiB");
        let n = mib.checked_mul(1 << 18).context("--bandwidth: that many MiB cannot be addressed")?;
        let mut buf: Vec<f32> = Vec::new();
        buf.try_reserve_exact(n).map_err(|_| anyhow::anyhow!("--bandwidth {mib}: cannot allocate {mib} MiB"))?;
        buf.resize(n, 1.0);
        let probe = || lowbit_kernels::bandwidth_probe(&buf);
        std::hint::black_box(probe());
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(probe());
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        println!(
            "bandwidth: {:.2} GB/s ({} threads, {} MiB streamed)",
            (mib << 20) as f64 / best / 1e9,
            rayon::current_num_threads(),
            mib
        );
    }
    Ok(())
}

/// `lowbit synth`.
pub fn synth(a: crate::args::SynthArgs) -> Result<()> {
    let presets = lowbit_convert::synth::presets();
    let p = presets.iter().find(|p| p.name == a.preset).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown preset {:?} (one of: {})",
            a.preset,
            presets.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
        )
    })?;
    let t = Instant::now();
    let (bytes, what) = match a.adapter_rank {
        Some(r) => (lowbit_convert::synth::synthesize_adapter(&p.config, &a.out, r, a.seed, a.layers)?, "adapter for "),
        None => (lowbit_convert::synth::synthesize(&p.config, &a.out, a.seed, a.layers, a.shard_mib << 20)?, ""),
    };
    println!(
        "wrote {what}{} ({:.2} GB of bf16 weights) to {} in {:.1} s, peak RSS {}",
        a.preset,
        bytes as f64 / 1e9,
        a.out.display(),
        t.elapsed().as_secs_f64(),
        crate::stats::peak_rss().map(crate::stats::human).unwrap_or_else(|| "?".into())
    );
    Ok(())
}

/// `lowbit serve`: the HTTP server of `lowbit-server`.
pub fn serve(a: crate::args::ServeArgs, threads: Option<usize>) -> Result<()> {
    anyhow::ensure!(a.max_body_kib > 0, "--max-body-kib must be at least 1");
    let model = model_path(&a.model, a.quant)?;
    let (picked, always): (Vec<_>, Vec<_>) = a.lora.iter().partition(|l| l.name.is_some());
    let adapters = adapters(&model, &always.iter().map(|l| l.spec.clone()).collect::<Vec<_>>())?;
    let mut named_adapters = Vec::with_capacity(picked.len());
    for l in picked {
        let mut one = self::adapters(&model, std::slice::from_ref(&l.spec))?;
        let mut adapter = one.pop().expect("one adapter per spec");
        adapter.name = l.name.clone().expect("partitioned by name");
        named_adapters.push(adapter);
    }
    let opts = lowbit_server::ServeOptions {
        model,
        host: a.host,
        port: a.port,
        runtime: lowbit_runtime::RuntimeOptions {
            threads,
            fourbit_exact: a.exact,
            kv_type: a.kv_type.kv(),
            adapters,
            named_adapters,
        },
        batch: lowbit_runtime::batch::BatchOptions {
            parallel: a.parallel,
            context: a.ctx,
            queue: a.queue,
            prefill_chunk: a.prefill_chunk,
        },
        api_key: a.api_key,
        // Named after what the user gave, not the cache's file name.
        model_name: a.model_name.or_else(|| a.model.file_stem().map(|s| s.to_string_lossy().into_owned())),
        max_body: a.max_body_kib.saturating_mul(1024),
        max_tokens: a.max_tokens,
    };
    lowbit_server::serve(opts).map_err(|e| named(&a.model, e))
}

/// The lowbit file to run for `path`: itself, or — for a GGUF file or a Hugging Face /
/// bitsandbytes folder — its conversion to `quant`, made once (with a progress bar) and then
/// taken from the cache.
pub fn model_path(path: &Path, quant: crate::args::Quant) -> Result<std::path::PathBuf> {
    use indicatif::{ProgressBar, ProgressStyle};
    use lowbit_convert::{cache, ConvertOptions, ProgressEvent};
    if !path.exists() {
        anyhow::bail!("{}: no such file or folder", path.display());
    }
    if !cache::is_source(path) {
        return Ok(path.to_path_buf());
    }
    let opts = ConvertOptions::for_quant(convert::quant_choice(quant));
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} converting {bar:30} {bytes}/{total_bytes} ETA {eta}")
            .expect("valid template"),
    );
    let progress = |e: ProgressEvent| match e {
        ProgressEvent::Start { total_bytes } => bar.set_length(total_bytes),
        ProgressEvent::Tensor { bytes, .. } => bar.inc(bytes),
    };
    let res = cache::resolve(path, &opts, &progress);
    bar.finish_and_clear();
    let (file, converted) = res.map_err(|e| named(path, e))?;
    let label = opts.quant.label();
    if converted {
        eprintln!("[converted {} to {label} once: {}]", path.display(), file.display());
    } else {
        eprintln!("[using the {label} conversion of {} cached at {}]", path.display(), file.display());
    }
    Ok(file)
}
