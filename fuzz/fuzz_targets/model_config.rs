//! A config.json of arbitrary bytes: the converter's `normalise` (what conversion checks) and the
//! runtime's `ModelConfig::from_json` (what opening a file checks again) must each return a
//! typed error or a configuration, never panic; whatever they accept has dimensions inside the
//! limits the file format sets, and the tensor names it expects can all be listed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(mut cfg) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let runtime = lowbit_runtime::ModelConfig::from_json(&cfg);
    let mut warnings = Vec::new();
    if let Ok(dims) = lowbit_convert::config::normalise(&mut cfg, &mut warnings) {
        // Every name the layout expects can be asked about without a panic.
        for name in dims.required().iter().take(10_000) {
            let _ = dims.expect(name);
        }
        // What the converter accepts, the runtime accepts too (after normalising, as the
        // file stores it), except what it stores with a warning that the runtime will not run
        // it (a RoPE type other than the default, an odd head_dim).
        if !warnings.iter().any(|w| w.contains("RoPE type") || w.contains("cannot run")) {
            assert!(lowbit_runtime::ModelConfig::from_json(&cfg).is_ok(), "normalised config refused at open: {cfg}");
        }
    }
    drop(runtime);
});
