//! Where the decode loops' software prefetches put the weights they stream, chosen once per
//! process from the CPU (or `LOWBIT_PREFETCH`).
//!
//! Decode reads every weight once a token, far ahead of use. Which cache level to aim those
//! prefetches at is a property of the core, measured rather than derived
//! (docs/PERFORMANCE.md): on AMD Zen 4 the non-temporal hint lost 9–18 % of SmolLM2's 4-bit
//! decode and a third of LLM.int8's at one thread against the L2 hint, while on AMD Zen 5 it
//! won 3–15 % (there the weights prefetched into L2 flushed the KV cache out of the L3 every
//! token).

use crate::error::{KernelError, Result};
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// The cache level the weights' software prefetches aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefetch {
    /// Into the outer caches (`prefetcht1`): the default, as measured on AMD Zen 4.
    Outer,
    /// Non-temporal (`prefetchnta`): kept out of the outer caches, leaving them to what is read
    /// again (the KV cache, adapters, activations); the choice on AMD Zen 5 and later.
    NonTemporal,
}

/// 0 until chosen, then 1 + the variant's index; read on every prefetch, so a plain byte.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

impl Prefetch {
    /// The name `LOWBIT_PREFETCH` takes and `lowbit cpu` prints.
    pub fn name(self) -> &'static str {
        match self {
            Prefetch::Outer => "outer",
            Prefetch::NonTemporal => "nta",
        }
    }

    /// Parses a name as written in `LOWBIT_PREFETCH`.
    pub fn from_name(s: &str) -> Result<Prefetch> {
        [Prefetch::Outer, Prefetch::NonTemporal]
            .into_iter()
            .find(|p| p.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| KernelError::UnknownPrefetch(s.to_string()))
    }

    /// The hint this CPU runs fastest with, as measured: non-temporal on AMD family 0x1A (Zen 5)
    /// and later, the outer caches elsewhere.
    pub fn for_cpu() -> Prefetch {
        match crate::arch::cpu_vendor_family() {
            Some((vendor, family)) if vendor == *b"AuthenticAMD" && family >= 0x1A => Prefetch::NonTemporal,
            _ => Prefetch::Outer,
        }
    }

    /// `LOWBIT_PREFETCH` if set (an unknown name is an error), otherwise [`Prefetch::for_cpu`].
    pub fn from_env() -> Result<Prefetch> {
        match std::env::var("LOWBIT_PREFETCH") {
            Ok(s) if !s.trim().is_empty() => Prefetch::from_name(&s),
            _ => Ok(Prefetch::for_cpu()),
        }
    }

    /// The hint of this process: chosen on first use from [`Prefetch::from_env`] (an invalid
    /// `LOWBIT_PREFETCH` falls back to [`Prefetch::for_cpu`] here; the CLI reports it first).
    pub fn current() -> Prefetch {
        match CHOSEN.load(Ordering::Relaxed) {
            1 => Prefetch::Outer,
            2 => Prefetch::NonTemporal,
            _ => Prefetch::choose(),
        }
    }

    /// The hint the decode loops issue: [`Prefetch::current`] once it has been chosen (building
    /// a kernel table chooses it), `Outer` before. It never calls out: a call inside a loop,
    /// even one never taken, made the compiler keep the loop's accumulators on the stack (all
    /// vector registers are the caller's to save).
    #[inline(always)]
    pub fn in_loop() -> Prefetch {
        if CHOSEN.load(Ordering::Relaxed) == 2 {
            Prefetch::NonTemporal
        } else {
            Prefetch::Outer
        }
    }

    #[cold]
    fn choose() -> Prefetch {
        let p = Prefetch::from_env().unwrap_or_else(|_| Prefetch::for_cpu());
        // Racing first callers compute the same value, so any store wins.
        CHOSEN.store(if p == Prefetch::Outer { 1 } else { 2 }, Ordering::Relaxed);
        p
    }
}

impl fmt::Display for Prefetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for p in [Prefetch::Outer, Prefetch::NonTemporal] {
            assert_eq!(Prefetch::from_name(&p.name().to_uppercase()).unwrap(), p);
        }
        assert!(matches!(Prefetch::from_name("t0"), Err(KernelError::UnknownPrefetch(_))));
    }
}
