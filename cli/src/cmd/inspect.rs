//! `lowbit inspect` and `lowbit verify`.

use crate::args::{InspectArgs, VerifyArgs};
use crate::stats::human;
use anyhow::Result;
use lowbit_runtime::ModelConfig;
use std::collections::BTreeMap;

pub fn run(a: InspectArgs) -> Result<()> {
    let (file, secs) = super::open(&a.file)?;
    if a.json {
        println!("{}", summary(&file, &a)?);
        return Ok(());
    }
    let m = file.metadata();
    println!("file: {} ({}), opened and validated in {:.1} ms", a.file.display(), human(file.file_len()), secs * 1e3);
    println!("architecture: {}", m.architecture);
    println!("converter: {} {}", m.converter.name, m.converter.version);
    let q = &m.quantization;
    println!(
        "quantization: {} (blocksize {}, double quant {}, int8 threshold {}), from {}",
        q.scheme,
        q.blocksize.map_or("-".into(), |b| b.to_string()),
        q.double_quant,
        q.int8_threshold,
        if q.source_format.is_empty() { "?" } else { &q.source_format }
    );
    println!(
        "tokenizer: {}; chat template: {}",
        if m.tokenizer_json.is_some() { "yes" } else { "no" },
        if m.chat_template.is_some() { "yes" } else { "no" }
    );
    let adapter_file = m.architecture == lowbit_format::ADAPTER_ARCHITECTURE;
    for a in &m.adapters {
        let what = if adapter_file { "LoRA adapter" } else { "LoRA adapter merged" };
        println!("{what}: {} (adapter_model.safetensors sha256 {}), scale {}", a.name, a.sha256, a.scale);
    }
    for s in &m.sources {
        println!("source: {} ({}) sha256 {}", s.file, human(s.bytes), s.sha256);
    }
    // Bytes and parameters per scheme.
    let mut per: BTreeMap<&str, (u64, u64, usize)> = BTreeMap::new();
    for t in file.tensors() {
        let e = per.entry(t.scheme.label()).or_default();
        e.0 += t.shape.iter().product::<u64>();
        e.1 += t.length;
        e.2 += 1;
    }
    println!("\n{:<6} {:>8} {:>16} {:>12} {:>8}", "scheme", "tensors", "parameters", "bytes", "bits/w");
    let (mut params, mut bytes) = (0u64, 0u64);
    for (k, (p, b, n)) in &per {
        println!("{k:<6} {n:>8} {p:>16} {:>12} {:>8.3}", human(*b), *b as f64 * 8.0 / *p as f64);
        params += p;
        bytes += b;
    }
    println!(
        "{:<6} {:>8} {params:>16} {:>12} {:>8.3}",
        "total",
        file.tensors().len(),
        human(bytes),
        bytes as f64 * 8.0 / params as f64
    );
    if a.tensors {
        println!();
        for t in file.tensors() {
            println!(
                "{:<60} {:<5} {:?} {} @{} crc {}",
                t.name,
                t.scheme.label(),
                t.shape,
                human(t.length),
                t.offset,
                t.crc32
            );
        }
    }
    if adapter_file {
        // An adapter runs beside a base model (`--lora FILE`): its targets and ranks.
        let targets = m.config.pointer("/lora/targets").and_then(|t| t.as_object());
        let mut ranks: BTreeMap<u64, usize> = BTreeMap::new();
        for t in targets.into_iter().flatten() {
            *ranks.entry(t.1.get("r").and_then(|r| r.as_u64()).unwrap_or(0)).or_default() += 1;
        }
        let ranks: Vec<String> = ranks.iter().map(|(r, n)| format!("{n} at rank {r}")).collect();
        println!(
            "\nLoRA adapter for run time (--lora {}): {} target weights ({})",
            a.file.display(),
            targets.map_or(0, |t| t.len()),
            ranks.join(", ")
        );
        return Ok(());
    }
    match ModelConfig::from_json(&m.config) {
        Ok(c) => {
            let slots = c.sliding_window.map_or(a.ctx, |w| w.min(a.ctx));
            let kv = 2 * c.num_layers * slots * c.num_kv_heads * a.kv_type.kv().row_bytes(c.head_dim);
            // Activations of one decode step are a few vectors of hidden/intermediate/vocab size.
            let scratch = 4 * (8 * c.hidden_size + 3 * c.intermediate_size + 2 * c.vocab_size);
            println!(
                "\nconfig: {} layers, hidden {}, heads {}/{} (head_dim {}), intermediate {}, vocab {}, rope_theta {}, sliding window {}",
                c.num_layers,
                c.hidden_size,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                c.intermediate_size,
                c.vocab_size,
                c.rope_theta,
                c.sliding_window.map_or("none".into(), |w| w.to_string())
            );
            // `serve` and `batch` keep one cache (and one step's activations) per sequence.
            let n = a.parallel.max(1);
            let (kv_all, scratch_all) = (kv.saturating_mul(n), scratch.saturating_mul(n));
            let who = if n > 1 { format!(" for {n} sequences") } else { String::new() };
            println!(
                "RAM to run at context {}{who}: weights {} (mapped) + KV cache {} ({}, {} slots{}) + scratch {} ≈ {}",
                a.ctx,
                human(file.file_len()),
                human(kv_all as u64),
                a.kv_type.kv().name(),
                slots,
                if n > 1 { format!(" × {n}") } else { String::new() },
                human(scratch_all as u64),
                human(file.file_len() + kv_all as u64 + scratch_all as u64)
            );
        }
        Err(e) => println!("\nconfig: {e}"),
    }
    Ok(())
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let (file, _) = super::open(&a.file)?;
    let bad = file.verify();
    for b in &bad {
        eprintln!("checksum mismatch: tensor {} (expected {}, found {})", b.name, b.expected, b.actual);
    }
    anyhow::ensure!(bad.is_empty(), "{} of {} tensors failed verification", bad.len(), file.tensors().len());
    println!("ok: {} tensors, {} verified", file.tensors().len(), human(file.file_len()));
    Ok(())
}

/// `inspect --json`: what the text shows, as one object.
fn summary(file: &lowbit_format::ModelFile, a: &InspectArgs) -> Result<serde_json::Value> {
    use serde_json::json;
    let m = file.metadata();
    let mut per: BTreeMap<&str, (u64, u64, usize)> = BTreeMap::new();
    for t in file.tensors() {
        let e = per.entry(t.scheme.label()).or_default();
        e.0 += t.shape.iter().product::<u64>();
        e.1 += t.length;
        e.2 += 1;
    }
    let schemes: serde_json::Map<String, serde_json::Value> = per
        .iter()
        .map(|(k, (p, b, n))| {
            (
                k.to_string(),
                json!({ "tensors": n, "parameters": p, "bytes": b, "bits_per_weight": *b as f64 * 8.0 / *p as f64 }),
            )
        })
        .collect();
    let (params, bytes) = per.values().fold((0u64, 0u64), |(p, b), v| (p + v.0, b + v.1));
    let mut out = json!({
        "file": a.file.display().to_string(),
        "file_bytes": file.file_len(),
        "architecture": m.architecture,
        "converter": { "name": m.converter.name, "version": m.converter.version },
        "quantization": m.quantization,
        "tokenizer": m.tokenizer_json.is_some(),
        "chat_template": m.chat_template.is_some(),
        "sources": m.sources,
        "adapters": m.adapters,
        "schemes": schemes,
        "parameters": params,
        "bits_per_weight": if params > 0 { bytes as f64 * 8.0 / params as f64 } else { 0.0 },
    });
    if a.tensors {
        out["tensors"] = file
            .tensors()
            .iter()
            .map(|t| json!({ "name": t.name, "scheme": t.scheme.label(), "shape": t.shape, "bytes": t.length, "offset": t.offset, "crc32": t.crc32 }))
            .collect();
    }
    if m.architecture == lowbit_format::ADAPTER_ARCHITECTURE {
        out["lora"] = m.config.get("lora").cloned().unwrap_or_default();
        return Ok(out);
    }
    let c = ModelConfig::from_json(&m.config)?;
    let slots = c.sliding_window.map_or(a.ctx, |w| w.min(a.ctx));
    let n = a.parallel.max(1);
    let kv = 2 * c.num_layers * slots * c.num_kv_heads * a.kv_type.kv().row_bytes(c.head_dim) * n;
    let scratch = 4 * (8 * c.hidden_size + 3 * c.intermediate_size + 2 * c.vocab_size) * n;
    out["ram"] = json!({
        "context": a.ctx,
        "parallel": n,
        "kv_type": a.kv_type.kv().name(),
        "weights": file.file_len(),
        "kv_cache": kv,
        "scratch": scratch,
        "total": file.file_len() + kv as u64 + scratch as u64,
    });
    Ok(out)
}
