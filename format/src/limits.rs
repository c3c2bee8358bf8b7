//! The largest model dimensions a file may declare, and the ranges of its float settings —
//! checked by the converter before it writes a file and by the runtime when it opens one (a file
//! can be written by anything). The bounds sit far above every published model of the
//! supported architectures and far below what would overflow a size computation or make an
//! allocation fail outright.

/// `(config.json key, largest value)` for the integer dimensions.
pub const MAX_DIMS: &[(&str, u64)] = &[
    ("hidden_size", 1 << 16),
    ("num_hidden_layers", 1024),
    ("num_attention_heads", 1024),
    ("num_key_value_heads", 1024),
    ("head_dim", 1024),
    ("intermediate_size", 1 << 20),
    ("vocab_size", 1 << 22),
    ("max_position_embeddings", 1 << 24),
    ("sliding_window", 1 << 24),
];

/// Checks every dimension of `cfg` that is present against [`MAX_DIMS`] (and that the ones
/// that must be positive are), and `rope_theta` / `rms_norm_eps` (top level or in
/// `rope_parameters`) for being finite numbers in range. Returns the first problem as
/// `(key, message)`.
pub fn check_config(cfg: &serde_json::Value) -> Result<(), (String, String)> {
    use serde_json::Value;
    let bad = |k: &str, m: String| Err((k.to_string(), m));
    for &(key, max) in MAX_DIMS {
        match cfg.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n > max => return bad(key, format!("{n} is more than lowbit allows ({max})")),
                Some(0) if key != "sliding_window" => return bad(key, "must be at least 1".into()),
                Some(_) => {}
                None => return bad(key, format!("expected a non-negative integer, got {v}")),
            },
        }
    }
    // Both places a RoPE base may be given are checked: readers prefer one or the other.
    let nested = cfg.get("rope_parameters").and_then(|r| r.get("rope_theta"));
    let checks = [
        ("rope_theta", cfg.get("rope_theta"), 1e12),
        ("rope_theta", nested, 1e12),
        ("rms_norm_eps", cfg.get("rms_norm_eps"), 1.0),
    ];
    for (key, v, hi) in checks {
        match v {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 && x < hi => {}
                Some(x) => return bad(key, format!("{x} is out of range (0, {hi})")),
                None => return bad(key, format!("expected a number, got {v}")),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranges() {
        assert!(check_config(
            &json!({"hidden_size": 4096, "num_hidden_layers": 32, "rope_theta": 1e6, "rms_norm_eps": 1e-5})
        )
        .is_ok());
        assert!(check_config(&json!({"rope_parameters": {"rope_theta": 5e5}, "sliding_window": 0})).is_ok());
        for (cfg, key) in [
            (json!({"num_hidden_layers": 1_000_000_000u64}), "num_hidden_layers"),
            (json!({"num_hidden_layers": 0}), "num_hidden_layers"),
            (json!({"vocab_size": -3}), "vocab_size"),
            (json!({"rope_theta": 0.0}), "rope_theta"),
            (json!({"rope_theta": -1.0}), "rope_theta"),
            (json!({"rope_parameters": {"rope_theta": "big"}}), "rope_theta"),
            (json!({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 0.0}}), "rope_theta"),
            (json!({"rms_norm_eps": -1e-6}), "rms_norm_eps"),
            (json!({"rms_norm_eps": "small"}), "rms_norm_eps"),
        ] {
            assert_eq!(check_config(&cfg).unwrap_err().0, key, "{cfg}");
        }
    }
}
