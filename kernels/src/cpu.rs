//! Which instruction sets this CPU has, detected once, and the `LOWBIT_ISA` override that lets
//! tests and benches force a slower path.

use crate::error::{KernelError, Result};
use std::fmt;

/// An instruction-set level with its own kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust: the reference every other path is tested against, and the fallback.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 plus VNNI's `vpdpbusd` on 256-bit vectors for the integer kernels: AVX-VNNI (Alder
    /// Lake and later, Zen 5), or the same instruction from AVX-512 VNNI + VL.
    AvxVnni,
    /// x86-64 AVX-512 F/BW/VL with VNNI (Cascade Lake, Ice Lake and later, Zen 4); VBMI, where
    /// present, is used as well (see [`crate::Kernels::label`]).
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Isa {
    /// Every level, slowest first.
    pub const ALL: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512, Isa::Neon];

    /// The lowercase name used by `LOWBIT_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parses a name as written in `LOWBIT_ISA`.
    pub fn from_name(s: &str) -> Result<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| KernelError::UnknownIsa(s.to_string()))
    }

    /// Whether this CPU can run the level.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => Isa::Avx2.is_supported() && (Isa::has_avxvnni() || Isa::has_avx512vnni_vl()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether the CPU has AVX-VNNI (the VEX encoding of 256-bit `vpdpbusd`).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn has_avxvnni() -> bool {
        std::arch::is_x86_feature_detected!("avxvnni")
    }

    /// Whether the CPU has AVX-512 VNNI with VL (the EVEX encoding of 256-bit `vpdpbusd`).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn has_avx512vnni_vl() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }

    /// What a level needs that this CPU lacks, for saying why it was not run (`None` if it
    /// runs here, or belongs to another architecture).
    pub fn missing(self) -> Option<&'static str> {
        if self.is_supported() {
            return None;
        }
        match self {
            Isa::Avx2 => Some("AVX2, FMA and F16C"),
            Isa::AvxVnni => Some("AVX2 with AVX-VNNI (or AVX-512 VNNI and VL)"),
            Isa::Avx512 => Some("AVX-512 F, BW, VL and VNNI"),
            Isa::Neon => Some("an aarch64 CPU with NEON"),
            Isa::Scalar => None,
        }
    }

    /// Every level this CPU supports, slowest first.
    pub fn all_supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The fastest supported level.
    pub fn best() -> Isa {
        Isa::all_supported().into_iter().max().unwrap_or(Isa::Scalar)
    }

    /// The level chosen for this process: `LOWBIT_ISA` if set (an unknown or unsupported name
    /// is an error rather than a silent fallback, so a test that asks for AVX2 really runs it),
    /// otherwise [`Isa::best`].
    pub fn from_env() -> Result<Isa> {
        match std::env::var("LOWBIT_ISA") {
            Ok(s) if !s.trim().is_empty() => {
                let isa = Isa::from_name(&s)?;
                if isa.is_supported() {
                    Ok(isa)
                } else {
                    Err(KernelError::UnsupportedIsa(isa.name().to_string()))
                }
            }
            _ => Ok(Isa::best()),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
