//! ggml tensor types: the on-disk id, the block shape, and the name, in one table.
//!
//! The reader needs the block layout of *every* type, not only the ones we can dequantize: a
//! tensor's byte size (elements / block × bytes per block) is what lets it check that the data
//! lies inside the file. Ids and sizes are from ggml's `ggml.h` / `ggml-common.h` (FORMATS.md
//! §F.2). One table generates everything so ids, names and sizes cannot drift apart across
//! several `match`es.
//!
//! The ggml spellings (`Q4_K`, `IQ2_XXS`) are kept on purpose so that they grep against the spec.

macro_rules! ggml_types {
    ($($(#[$doc:meta])* $name:ident = $id:literal, $block:literal, $bytes:expr;)*) => {
        /// A ggml tensor type, as stored in a GGUF tensor info.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum GgmlType {
            $($(#[$doc])* $name,)*
        }

        impl GgmlType {
            /// Every known type.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$name,)*];

            /// The type with on-disk id `id`, if known.
            pub fn from_u32(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$name),)*
                    _ => None,
                }
            }

            /// The on-disk id.
            pub fn to_u32(self) -> u32 {
                match self {
                    $(GgmlType::$name => $id,)*
                }
            }

            /// ggml's name for the type.
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$name => stringify!($name),)*
                }
            }

            /// Elements per block (1 for plain element types).
            pub fn block_len(self) -> usize {
                match self {
                    $(GgmlType::$name => $block,)*
                }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> usize {
                match self {
                    $(GgmlType::$name => $bytes,)*
                }
            }
        }
    };
}

/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

ggml_types! {
    /// IEEE float32.
    F32 = 0, 1, 4;
    /// IEEE binary16.
    F16 = 1, 1, 2;
    /// `d: f16`, 16 bytes of 4-bit codes offset by 8.
    Q4_0 = 2, 32, 2 + 16;
    /// `d: f16`, `m: f16`, 16 bytes of unsigned 4-bit codes.
    Q4_1 = 3, 32, 2 + 2 + 16;
    /// 5-bit, symmetric.
    Q5_0 = 6, 32, 2 + 4 + 16;
    /// 5-bit, with min.
    Q5_1 = 7, 32, 2 + 2 + 4 + 16;
    /// `d: f16`, 32 int8 codes.
    Q8_0 = 8, 32, 2 + 32;
    /// `d, s: f16`, 32 int8 codes (ggml's size; gguf-py's table says 40, but this type is only
    /// ever an activation format and never appears in files).
    Q8_1 = 9, 32, 2 + 2 + 32;
    /// 2-bit K-quant.
    Q2_K = 10, 256, 2 + 2 + QK_K / 16 + QK_K / 4;
    /// 3-bit K-quant.
    Q3_K = 11, 256, 2 + QK_K / 4 + QK_K / 8 + 12;
    /// 4-bit K-quant: `d, dmin: f16`, 12 bytes of 6-bit scales/mins, 128 bytes of codes.
    Q4_K = 12, 256, 2 + 2 + 12 + QK_K / 2;
    /// 5-bit K-quant.
    Q5_K = 13, 256, 2 + 2 + 12 + QK_K / 8 + QK_K / 2;
    /// 6-bit K-quant: `ql[128]`, `qh[64]`, `scales: i8[16]`, `d: f16` last.
    Q6_K = 14, 256, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;
    /// 8-bit K-quant (activations; `d: f32`, 256 codes, 16 i16 sums).
    Q8_K = 15, 256, 4 + QK_K + QK_K / 8;
    /// i-quant.
    IQ2_XXS = 16, 256, 2 + QK_K / 4;
    /// i-quant.
    IQ2_XS = 17, 256, 2 + QK_K / 4 + QK_K / 32;
    /// i-quant.
    IQ3_XXS = 18, 256, 2 + QK_K / 4 + QK_K / 8;
    /// i-quant.
    IQ1_S = 19, 256, 2 + QK_K / 8 + QK_K / 16;
    /// Non-linear 4-bit with a fixed codebook.
    IQ4_NL = 20, 32, 2 + 16;
    /// i-quant.
    IQ3_S = 21, 256, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    /// i-quant.
    IQ2_S = 22, 256, 2 + QK_K / 4 + QK_K / 16;
    /// i-quant.
    IQ4_XS = 23, 256, 2 + 2 + QK_K / 2 + QK_K / 64;
    /// int8.
    I8 = 24, 1, 1;
    /// int16.
    I16 = 25, 1, 2;
    /// int32.
    I32 = 26, 1, 4;
    /// int64.
    I64 = 27, 1, 8;
    /// float64.
    F64 = 28, 1, 8;
    /// i-quant.
    IQ1_M = 29, 256, QK_K / 8 + QK_K / 16 + QK_K / 32;
    /// bfloat16.
    BF16 = 30, 1, 2;
    /// Ternary.
    TQ1_0 = 34, 256, 2 + 4 * 13;
    /// Ternary.
    TQ2_0 = 35, 256, 2 + 64;
    /// Microscaling FP4.
    MXFP4 = 39, 32, 1 + 16;
    /// NVIDIA FP4.
    NVFP4 = 40, 64, 4 + 32;
    /// 1-bit.
    Q1_0 = 41, 128, 2 + 16;
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::GgmlType;

    #[test]
    fn ids_round_trip_and_sizes_match_the_spec() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_u32(t.to_u32()), Some(t));
        }
        // FORMATS.md §F.2.
        let spec = [
            (GgmlType::F32, 1, 4),
            (GgmlType::F16, 1, 2),
            (GgmlType::BF16, 1, 2),
            (GgmlType::Q4_0, 32, 18),
            (GgmlType::Q4_1, 32, 20),
            (GgmlType::Q8_0, 32, 34),
            (GgmlType::Q4_K, 256, 144),
            (GgmlType::Q6_K, 256, 210),
            (GgmlType::IQ4_NL, 32, 18),
        ];
        for (t, block, bytes) in spec {
            assert_eq!((t.block_len(), t.block_bytes()), (block, bytes), "{t}");
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38] {
            assert_eq!(GgmlType::from_u32(removed), None);
        }
    }
}
