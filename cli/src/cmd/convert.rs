//! `lowbit convert`: a progress bar over the converter, then a summary.

use crate::args::{ConvertArgs, Head, Quant};
use crate::stats::{human, peak_rss};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use lowbit_convert::{convert, ConvertOptions, HeadChoice, ProgressEvent, QuantChoice};

/// The converter's scheme for a `--quant` value.
pub fn quant_choice(q: Quant) -> QuantChoice {
    match q {
        Quant::Nf4 => QuantChoice::Nf4,
        Quant::Nf4Small => QuantChoice::Nf4Small,
        Quant::Nf4Mix => QuantChoice::Nf4Mix,
        Quant::Nf4Plus => QuantChoice::Nf4Plus,
        Quant::Q5 => QuantChoice::Q5,
        Quant::Q5Mix => QuantChoice::Q5Mix,
        Quant::Fp4 => QuantChoice::Fp4,
        Quant::Int8 => QuantChoice::Int8,
        Quant::Q8 => QuantChoice::Q8,
        Quant::F16 => QuantChoice::F16,
        Quant::Bf16 => QuantChoice::Bf16,
        Quant::F32 => QuantChoice::F32,
    }
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let quant = quant_choice(a.quant);
    let opts = ConvertOptions {
        quant,
        blocksize: a.blocksize.unwrap_or(quant.default_blocksize()),
        double_quant: !a.no_double_quant,
        int8_threshold: a.threshold,
        keep: a.keep.clone(),
        q8: a.q8.clone(),
        q5: a.q5.clone(),
        quantize_all: a.quantize_all,
        head: match a.head {
            Head::Source => HeadChoice::Source,
            Head::Int8 => HeadChoice::Int8,
        },
        nested_rule: if a.bnb_cpu_rounding {
            lowbit_kernels::NestedRule::CpuLut
        } else {
            lowbit_kernels::NestedRule::Nearest
        },
        bnb_exact: a.bnb_exact,
        lora: a.lora.clone(),
        imatrix: match &a.imatrix {
            Some(p) => Some(std::sync::Arc::new(lowbit_convert::imatrix::Imatrix::read(p)?)),
            None => None,
        },
    };
    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    let progress = |e: ProgressEvent| match e {
        ProgressEvent::Start { total_bytes } => bar.set_length(total_bytes),
        ProgressEvent::Tensor { name, bytes } => {
            bar.inc(bytes);
            bar.set_message(name);
        }
    };
    let res = convert(&a.src, &a.out, &opts, &progress);
    bar.finish_and_clear();
    // The source's path once: most conversion errors already start with the file they concern.
    let s = res.map_err(|e| {
        let named = e.to_string().contains(&a.src.display().to_string());
        let e = anyhow::anyhow!(e);
        if named {
            e
        } else {
            e.context(format!("converting {}", a.src.display()))
        }
    })?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    let secs = s.elapsed.as_secs_f64();
    println!(
        "{} → {}: {} → {} ({:.2} bits/weight overall{}), {} tensors, {:.1} s, {:.0} MB/s of input, peak RSS {}",
        a.src.display(),
        a.out.display(),
        human(s.input_bytes),
        human(s.output_bytes),
        s.output_bytes as f64 * 8.0 / s.params.max(1) as f64,
        if s.quantized_params > 0 {
            format!(", {:.3} in quantized layers", s.quantized_bytes as f64 * 8.0 / s.quantized_params as f64)
        } else {
            String::new()
        },
        s.tensors,
        secs,
        s.input_bytes as f64 / 1e6 / secs.max(1e-9),
        peak_rss().map(human).unwrap_or_else(|| "?".into())
    );
    Ok(())
}
