//! The fixed code tables of bitsandbytes: the 4-bit NF4 and FP4 levels and the signed 8-bit
//! dynamic map used for double quantization. Values and construction follow
//! `shared/spec/FORMATS.md` §A–B; the tests pin every bit pattern.

use std::sync::OnceLock;

/// NF4 levels by code (code 7 is the exact zero). Normal-distribution quantiles scaled to [-1, 1].
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4 (1 sign, 2 exponent, 1 mantissa bit) levels by code, normalised by 12.
/// Code 8 is the negative zero that the CUDA and C++ kernels produce.
pub const FP4_LEVELS: [f32; 16] = [
    0.0,
    0.005_208_333_5,
    0.666_666_7,
    1.0,
    0.333_333_34,
    0.5,
    0.166_666_67,
    0.25,
    -0.0,
    -0.005_208_333_5,
    -0.666_666_7,
    -1.0,
    -0.333_333_34,
    -0.5,
    -0.166_666_67,
    -0.25,
];

/// Sorted 4-bit table: the levels in ascending order with the code each one stands for, and the
/// midpoints between neighbours (the quantizer's decision boundaries).
pub(crate) struct SortedTable {
    pub codes: [u8; 16],
    pub bounds: [f32; 15],
}

fn sorted_table(levels: &[f32; 16]) -> SortedTable {
    let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
    // A stable sort in which FP4's two zeros compare equal, so code 0 comes before code 8 as in
    // bitsandbytes' (Python-built, all +0.0) table: 0.0 itself quantizes to code 0, tiny
    // positive values to code 8.
    order.sort_by(|&a, &b| levels[a as usize].partial_cmp(&levels[b as usize]).expect("finite levels"));
    let mut sorted = [0f32; 16];
    for (s, &c) in sorted.iter_mut().zip(&order) {
        *s = levels[c as usize];
    }
    let bounds = std::array::from_fn(|i| (sorted[i] + sorted[i + 1]) / 2.0);
    SortedTable { codes: order, bounds }
}

pub(crate) fn nf4_sorted() -> &'static SortedTable {
    static T: OnceLock<SortedTable> = OnceLock::new();
    T.get_or_init(|| sorted_table(&NF4_LEVELS))
}

pub(crate) fn fp4_sorted() -> &'static SortedTable {
    static T: OnceLock<SortedTable> = OnceLock::new();
    T.get_or_init(|| sorted_table(&FP4_LEVELS))
}

/// One point of `torch.linspace(start, end, steps)` in float32, computed the way torch's CPU
/// kernel does: from the start for the first half, from the end for the second, each with a
/// single rounding (a fused multiply-add). Plain arithmetic differs in the last bit.
fn linspace_point(start: f32, end: f32, steps: usize, k: usize) -> f32 {
    let step = (end - start) / (steps - 1) as f32;
    if k < steps / 2 {
        step.mul_add(k as f32, start)
    } else {
        (-step).mul_add((steps - 1 - k) as f32, end)
    }
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`): 256 ascending
/// values from -0.99296875 to 1.0 with a single zero at index 127.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        // 10^(i-6) as Python computes it, then rounded to f32 (torch multiplies a float32
        // tensor by the Python scalar in float32).
        const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        let mut values = Vec::with_capacity(256);
        for (i, &scale) in SCALES.iter().enumerate() {
            let steps = (1usize << i) + 1;
            let points: Vec<f32> = (0..steps).map(|k| linspace_point(0.1, 1.0, steps, k)).collect();
            for pair in points.windows(2) {
                let mid = (pair[0] + pair[1]) / 2.0;
                let v = (scale as f32) * mid;
                values.push(v);
                values.push(-v);
            }
        }
        values.push(0.0);
        values.push(1.0);
        values.sort_by(f32::total_cmp);
        let mut out = [0f32; 256];
        out.copy_from_slice(&values);
        out
    })
}

/// Midpoints between neighbouring dynamic-map values, for nearest-value quantization.
pub(crate) fn dynamic_bounds() -> &'static [f32; 255] {
    static B: OnceLock<[f32; 255]> = OnceLock::new();
    B.get_or_init(|| {
        let m = dynamic_map();
        std::array::from_fn(|i| (m[i] + m[i + 1]) / 2.0)
    })
}

/// `torch.bucketize(x, bounds, right=False)`: the number of bounds strictly below `x`, so a value
/// exactly on a boundary goes to the lower code.
#[inline]
pub(crate) fn bucketize(x: f32, bounds: &[f32]) -> usize {
    bounds.partition_point(|&b| b < x)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NF4_BITS: [u32; 16] = [
        0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000, 0x3da2faff,
        0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
    ];

    #[test]
    fn nf4_levels_match_bitsandbytes_bits() {
        for (v, b) in NF4_LEVELS.iter().zip(NF4_BITS) {
            assert_eq!(v.to_bits(), b, "{v}");
        }
    }

    #[test]
    fn fp4_levels_match_bitsandbytes_bits() {
        assert_eq!(FP4_LEVELS[1].to_bits(), 0x3baaaaab);
        assert_eq!(FP4_LEVELS[2].to_bits(), 0x3f2aaaab);
        assert_eq!(FP4_LEVELS[4].to_bits(), 0x3eaaaaab);
        assert_eq!(FP4_LEVELS[6].to_bits(), 0x3e2aaaab);
        for i in 0..8 {
            assert_eq!(FP4_LEVELS[i + 8], -FP4_LEVELS[i]);
        }
    }

    #[test]
    fn nf4_bounds_are_the_published_midpoints() {
        let t = nf4_sorted();
        assert_eq!(t.codes, std::array::from_fn(|i| i as u8));
        // The default backend averages neighbours in float32; CUDA's decision tree uses the f64
        // midpoints written as float literals. They agree to within one float32 step.
        assert!((t.bounds[0] as f64 - -0.8480964004993439).abs() < 1e-7);
        assert!((t.bounds[14] as f64 - 0.8614784181118011).abs() < 1e-7);
    }

    /// Bit patterns of the positive half (indices 128..=255), from FORMATS.md §B.2, which were
    /// read off bitsandbytes 0.50.2.
    const DYN_POS: [u32; 128] = [
        0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b, 0x398ce705,
        0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d, 0x3af1a9fc, 0x3b1db22d,
        0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a,
        0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a,
        0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148, 0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1,
        0x3d500000, 0x3d5b851f, 0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b,
        0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85,
        0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
        0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000, 0x3eb13333,
        0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a, 0x3eeacccc, 0x3ef20000,
        0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a, 0x3f123334, 0x3f15cccd, 0x3f196666,
        0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666, 0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd,
        0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333,
        0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a,
        0x3f7e3333, 0x3f800000,
    ];

    #[test]
    fn dynamic_map_matches_bitsandbytes_bits() {
        let m = dynamic_map();
        assert_eq!(m[127], 0.0);
        assert_eq!(m[0], -0.99296875);
        for (j, &bits) in DYN_POS.iter().enumerate() {
            assert_eq!(m[128 + j].to_bits(), bits, "index {}", 128 + j);
        }
        for j in 1..=127 {
            assert_eq!(m[127 - j], -m[127 + j]);
        }
    }

    #[test]
    fn bucketize_ties_go_low() {
        let b = [0.0f32, 1.0];
        assert_eq!(bucketize(-1.0, &b), 0);
        assert_eq!(bucketize(0.0, &b), 0);
        assert_eq!(bucketize(0.5, &b), 1);
        assert_eq!(bucketize(1.0, &b), 1);
        assert_eq!(bucketize(2.0, &b), 2);
    }
}
