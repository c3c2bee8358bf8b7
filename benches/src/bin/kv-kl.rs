//! What a smaller KV cache costs in accuracy: decodes a text token by token (teacher forcing:
//! the text's own next token is fed) with an f32 cache and, side by side, one of each other
//! type (f16, q8), and reports the mean KL divergence of that run's next-token distribution from
//! the f32 run's and how often their top tokens agree. An f32 run against itself comes first: it
//! must give 0 (decode is deterministic), which checks the measurement.
//!
//! `cargo run --release -p lowbit-benches --bin kv-kl -- MODEL.lowbit TEXT [TOKENS]`
//!
//! The prompt (the first 16 tokens of the text) is prefilled; every later token goes through
//! decode, which is where the cache is read.

use lowbit_runtime::score::log_softmax;
use lowbit_runtime::{Engine, KvType, Logits, RuntimeOptions};
use std::path::{Path, PathBuf};

/// Mean KL (nats) of `kv`'s next-token distributions from f32's, top-1 agreement and the
/// number of decoded positions.
fn compare(model: &Path, ids: &[u32], kv: KvType) -> (f64, f64, usize) {
    let open = |kv| Engine::open(model, &RuntimeOptions { kv_type: kv, ..Default::default() }).expect("model opens");
    let (a, b) = (open(KvType::F32), open(kv));
    let prompt = 16.min(ids.len() - 1);
    let (mut kl, mut agree, mut n) = (0f64, 0usize, 0usize);
    a.run(|ma| {
        b.run(|mb| {
            let (mut ca, mut cb) = (ma.new_cache(ids.len()), mb.new_cache(ids.len()));
            let mut la = ma.forward(&mut ca, &ids[..prompt], Logits::Last).unwrap();
            let mut lb = mb.forward(&mut cb, &ids[..prompt], Logits::Last).unwrap();
            for &next in &ids[prompt..] {
                let (pa, pb) = (log_softmax(&la), log_softmax(&lb));
                kl += pa.iter().zip(&pb).map(|(&p, &q)| (p.exp() * (p - q)) as f64).sum::<f64>();
                let top = |v: &[f32]| v.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(i, _)| i);
                agree += usize::from(top(&la) == top(&lb));
                n += 1;
                la = ma.forward(&mut ca, &[next], Logits::Last).unwrap();
                lb = mb.forward(&mut cb, &[next], Logits::Last).unwrap();
            }
        })
    });
    (kl / n as f64, 100.0 * agree as f64 / n as f64, n)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, text) = match (args.first(), args.get(1)) {
        (Some(m), Some(t)) => (PathBuf::from(m), PathBuf::from(t)),
        _ => {
            eprintln!("usage: kv-kl MODEL.lowbit TEXT [TOKENS]");
            std::process::exit(2);
        }
    };
    let limit: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(512);
    let text = std::fs::read_to_string(&text).expect("text reads");
    let probe = Engine::open(&model, &RuntimeOptions::default()).expect("model opens");
    let ids = probe.codec().expect("tokenizer").encode(&text, true).expect("encodes");
    drop(probe);
    let ids = &ids[..limit.min(ids.len())];
    println!("{}:", model.display());
    for kv in [KvType::F32, KvType::F16, KvType::Q8] {
        let (kl, agree, n) = compare(&model, ids, kv);
        println!(
            "  {} KV cache against f32: {n} decoded positions, mean KL {kl:.2e}, top-1 agreement {agree:.2} %",
            kv.name()
        );
        if kv == KvType::F32 {
            assert_eq!(kl, 0.0, "an f32 run differs from itself");
        }
    }
}
