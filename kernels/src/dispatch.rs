//! One typed table of kernel function pointers per instruction-set level. A `Kernels` value can
//! only be built for a level the CPU supports, so holding one proves the `unsafe` kernels in it
//! may run: that is the single place the SIMD `unsafe` contract is discharged.

use crate::cpu::Isa;
use crate::error::Result;
use crate::scalar;
use half::{bf16, f16};
use std::sync::OnceLock;

type DotF32 = unsafe fn(&[f32], &[f32]) -> f32;
type AxpyF32 = unsafe fn(&mut [f32], f32, &[f32]);
type ExpSub = unsafe fn(&mut [f32], f32);
type SoftmaxParts = unsafe fn(&mut [f32], f32, bool) -> (f32, f32);
type SiluMul = unsafe fn(&mut [f32], &[f32]);
type DotF32Rows = unsafe fn(&mut [f32], &[f32], &[f32], usize);
type AxpyF32Rows = unsafe fn(&mut [f32], &[f32], &[f32], usize);
type DotBf16Rows = unsafe fn(&mut [f32], &[f32], &[bf16], usize);
type AxpyBf16Rows = unsafe fn(&mut [f32], &[f32], &[bf16], usize);
type DotF16Rows = unsafe fn(&mut [f32], &[f32], &[f16], usize);
type AxpyF16Rows = unsafe fn(&mut [f32], &[f32], &[f16], usize);
type DotRowsMulti<E> = unsafe fn(&mut [f32], usize, usize, &[f32], usize, &[E], usize);
type AxpyRowsMulti<E> = unsafe fn(&mut [f32], usize, &[f32], usize, usize, &[E], usize);
type DotF16 = unsafe fn(&[f16], &[f32]) -> f32;
type DotBf16 = unsafe fn(&[bf16], &[f32]) -> f32;
type DotFourBit = unsafe fn(&[u8], &[f32], &[f32; 16], &[f32], &[f32], usize) -> f32;
type DotInt8 = unsafe fn(&[i8], &[i8]) -> i32;
type DotInt8x4 = unsafe fn([&[i8]; 4], [&[i8]; 4]) -> [[i32; 4]; 4];
type DotInt8Rows4 = unsafe fn(&[i8], [&[i8]; 4]) -> [i32; 4];
type DotInt8Many = unsafe fn(&[i8], &[i8], &mut [i32]);
type DotFourBitQ8Rows4 = unsafe fn([&[u8]; 4], [&[f32]; 4], &[i8; 16], &[i8], &[i8], &[i32], usize) -> [f32; 4];
type DotFourBitQ8Rows4T2 =
    unsafe fn([&[u8]; 4], [[&[f32]; 4]; 2], &[i8; 16], [&[i8]; 2], [&[i8]; 2], [&[i32]; 2], usize) -> [[f32; 4]; 2];
type DotFourBitQ8 = unsafe fn(&[u8], &[f32], &[i8; 16], &[i8], &[i8], &[i32], usize) -> f32;
type DotFourBitQ8T4 = unsafe fn(&[u8], [&[f32]; 4], &[i8; 16], [&[i8]; 4], [&[i8]; 4], [&[i32]; 4], usize) -> [f32; 4];
type DotFourBitQ8Many = unsafe fn(&[u8], &[f32], &[i8; 16], &[i8], &[i8], &[i32], usize, &mut [f32]);
type DotFourBitQ8ManyT2 =
    unsafe fn(&[u8], [&[f32]; 2], &[i8; 16], [&[i8]; 2], [&[i8]; 2], [&[i32]; 2], usize, [&mut [f32]; 2]);
type DotFourBitQ8ManyT4 = unsafe fn(&[u8], [&[f32]; 4], &[i8; 16], [&[i8]; 4], [&[i8]; 4], usize, [&mut [f32]; 4]);
type DotFourBitQ8ManyT8 = unsafe fn(&[u8], &[f32], &[i8; 16], crate::pairs::PairGroup<'_>, crate::Grid<'_>);
type DotQ8RowsT8 = unsafe fn(&[i8], &[f16], crate::pairs::PairGroup<'_>, crate::Grid<'_>);
type DotQ8Rows4T4 = unsafe fn([&[i8]; 4], [&[f16]; 4], [&[i8]; 4], [&[f32]; 4], usize) -> [[f32; 4]; 4];
type FourBitQ8TileRun =
    unsafe fn([&[u8]; 4], [&[f32]; 4], &[i8; 16], &[i8], &[i8], usize, &[f32], &[i32], usize, &mut [f32]);
type FourBitQ8Tile =
    unsafe fn([&[u8]; 4], [&[f32]; 4], &[i8; 16], [&[i8]; 4], [&[i8]; 4], [&[f32]; 4], [&[i32]; 4]) -> [[f32; 4]; 4];
type FourBitQ8Tile8 = unsafe fn(
    [&[u8]; 4],
    [&[f32]; 4],
    &[i8; 16],
    [&[i8]; 8],
    [&[i8]; 8],
    [&[i8]; 8],
    [&[i8]; 8],
    [&[f32]; 8],
) -> [[f32; 8]; 4];
type QuantizeQ8 = unsafe fn(&[f32], usize, &mut [i8], &mut [i8], &mut [f32], &mut [i32]);
type QuantizeQ8Plain = unsafe fn(&[f32], usize, &mut [i8], &mut [f32]);
type UnpackQ5 = unsafe fn(&[u8], &[u8], &mut [i8]);
type NestedFactors = unsafe fn(&[u8], &[f32; 256], f32, f32, &[f32], &mut [f32]);
type DotQ8 = unsafe fn(&[i8], &[f16], &[i8], &[f32], usize) -> f32;
type DotQ8Rows4 = unsafe fn([&[i8]; 4], [&[f16]; 4], &[i8], &[f32], usize) -> [f32; 4];
type DotQ8Many = unsafe fn(&[i8], &[f16], &[i8], &[f32], usize, &mut [f32]);
type DotQ5Many = unsafe fn(&[u8], &[u8], &[f16], &[i8], &[f32], &mut [f32]);
type Transpose = unsafe fn(&[f32], usize, &mut [f32], usize, usize, usize);
type Q8Panel = unsafe fn(&[i8], &[f16], &crate::panel::Panel, usize, &mut [f32], &mut [f32], bool);
type Int8Panel = unsafe fn(&[i8], &crate::panel::Panel, usize, &mut [i32]);
type FourBitQ8Rows16 = unsafe fn(&[u8], usize, &[f32], &[i8; 16], &[i8], &[i8], &[f32], &[i32]) -> [f32; 16];
type Q8Rows16 = unsafe fn(&[i8], usize, usize, &[f16], &[i8], &[f32], &[i32]) -> [f32; 16];
type Q5Rows16 = unsafe fn(&[u8], &[u8], usize, &[f16], &[i8], &[f32], &[i32]) -> [f32; 16];
type FourBitQ8Panel = unsafe fn(&[u8], &[f32], &[i8; 16], &crate::panel::Panel, usize, &mut [i8], &mut [f32], bool);

/// What the AVX-512 tables run on AMX (`LOWBIT_AMX`), where the CPU and OS allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amx {
    /// Nothing (`0`).
    Off,
    /// Prompts' products only (`prompts`): decode keeps the VNNI kernels' numbers.
    Prompts,
    /// Prompts and decode (`all`, the default): a batch's decode products on the tile unit, one
    /// token through its sixteen-row twin with the same bits (so batches keep each token's
    /// bits); faster batches, a single stream about as fast (docs/PERFORMANCE.md).
    All,
}

impl Amx {
    /// `LOWBIT_AMX`, if set.
    pub fn from_env() -> Result<Amx> {
        match std::env::var("LOWBIT_AMX") {
            Err(_) => Ok(Amx::All),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "0" | "off" => Ok(Amx::Off),
                "prompts" => Ok(Amx::Prompts),
                "all" | "1" | "" => Ok(Amx::All),
                _ => Err(crate::error::KernelError::UnknownAmx(v)),
            },
        }
    }
}

/// The kernels of one instruction-set level.
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    /// The level's name plus any optional extension its kernels use ("avx512+vbmi").
    label: &'static str,
    dot_f32: DotF32,
    axpy_f32: AxpyF32,
    exp_sub: ExpSub,
    softmax_parts: SoftmaxParts,
    silu_mul: SiluMul,
    transpose: Transpose,
    dot_f32_rows: DotF32Rows,
    axpy_f32_rows: AxpyF32Rows,
    dot_bf16_rows: DotBf16Rows,
    axpy_bf16_rows: AxpyBf16Rows,
    dot_f16_rows: DotF16Rows,
    axpy_f16_rows: AxpyF16Rows,
    /// The row loops for several queries at once; `None`: a call per query.
    rows_multi: Option<RowsMulti>,
    dot_f16: DotF16,
    dot_bf16: DotBf16,
    dot_fourbit: DotFourBit,
    /// Bytes of codes each SIMD step of `dot_fourbit` consumes; blocks must be a multiple.
    fourbit_step: usize,
    dot_int8: DotInt8,
    dot_int8_4x4: DotInt8x4,
    /// Four int8 rows against one activation row, where it beats four row calls.
    dot_int8_x4: Option<DotInt8Rows4>,
    /// A decode task's int8 rows in one call.
    dot_int8_rows: Option<DotInt8Many>,
    /// Block int8 rows: one, and four against the same activations (each row the one-row bits).
    dot_q8: DotQ8,
    dot_q8_x4: Option<DotQ8Rows4>,
    dot_q8_x4t4: Option<DotQ8Rows4T4>,
    /// Eight tokens from [`crate::pairs::TokenPairs::q8`], rows in a multiple of four.
    dot_q8_rows_t8: Option<DotQ8RowsT8>,
    /// A decode task's rows in one call, each with `dot_q8`'s bits.
    dot_q8_rows: Option<DotQ8Many>,
    /// `dot_q8_rows` over block int5 rows unpacked in registers, with its bits; only beside
    /// a `dot_q8_rows` with AVX2's bits.
    dot_q5_rows: Option<DotQ5Many>,
    /// Four 4-bit rows against the same activations, where it beats four row calls, and the
    /// one-row kernel that gives the same bits (for the rows left over).
    dot_fourbit_q8_x4: Option<(DotFourBitQ8Rows4, DotFourBitQ8)>,
    /// The four-row kernel for two tokens at once (batched decode), with its bits.
    dot_fourbit_q8_x4t2: Option<DotFourBitQ8Rows4T2>,
    /// A decode task's rows in one call, each with the four-row kernel's bits.
    dot_fourbit_q8_rows: Option<DotFourBitQ8Many>,
    /// The same for two tokens at once (a decode batch), each (row, token) with its bits.
    dot_fourbit_q8_rows_t2: Option<DotFourBitQ8ManyT2>,
    dot_fourbit_q8_rows_t4: Option<DotFourBitQ8ManyT4>,
    /// Eight tokens from [`crate::pairs::TokenPairs`], weights in blocks of 64.
    dot_fourbit_q8_rows_t8: Option<DotFourBitQ8ManyT8>,
    /// The widest rows (in weights) decode runs through the four-row kernels.
    x4_max_cols: usize,
    dot_fourbit_q8: DotFourBitQ8,
    /// `dot_fourbit_q8` for four tokens, each with its bits (a decode batch over wide rows).
    dot_fourbit_q8_t4: Option<DotFourBitQ8T4>,
    /// Bytes of codes each SIMD step of `dot_fourbit_q8` consumes.
    fourbit_q8_step: usize,
    /// Whether the decode kernels that step 32 bytes also take blocks of 32 weights (16 bytes),
    /// two to a step (all but AVX-512's own one-row and four-token kernels, which leave them to
    /// the 256-bit ones).
    fourbit_q8_split: bool,
    nested_factors: NestedFactors,
    quantize_q8: QuantizeQ8,
    quantize_q8_plain: QuantizeQ8Plain,
    unpack_q5: UnpackQ5,
    /// The prefill tile of the 4-bit integer route, where it beats dequantize + f32 gemm.
    fourbit_q8_tile: Option<FourBitQ8Tile>,
    /// Its eight-token form (AVX2's), where a level has one instead.
    fourbit_q8_tile8: Option<FourBitQ8Tile8>,
    fourbit_q8_tile_run: Option<FourBitQ8TileRun>,
    /// The same three for weights in blocks of 32, two to each 32-byte step (one `wf` entry per
    /// block of 32; the activations stay in blocks of 64).
    fourbit_q8_tile_split: Option<FourBitQ8Tile>,
    fourbit_q8_tile8_split: Option<FourBitQ8Tile8>,
    fourbit_q8_tile_run_split: Option<FourBitQ8TileRun>,
    /// A prompt's 4-bit products (blocks of 64) on a matrix unit, every token of a
    /// [`crate::panel::Panel`] against sixteen rows at a time (AMX).
    fourbit_q8_panel: Option<FourBitQ8Panel>,
    /// The same for block int8 rows.
    q8_panel: Option<Q8Panel>,
    /// LLM.int8's whole int8 rows on a matrix unit: their exact sums.
    int8_panel: Option<Int8Panel>,
    /// One token against sixteen 4-bit rows with `fourbit_q8_panel`'s bits for it (decode of
    /// one sequence where batches go to the matrix unit).
    fourbit_q8_rows16: Option<FourBitQ8Rows16>,
    /// The same for block int8 rows (`q8_panel`'s bits).
    q8_rows16: Option<Q8Rows16>,
    /// `q8_rows16` over block int5 rows unpacked in registers (the bits of their integers).
    q5_rows16: Option<Q5Rows16>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("isa", &self.isa).field("label", &self.label).finish()
    }
}

/// [`Kernels::dot_f32_rows_multi`] and its siblings on a level that has them.
#[derive(Clone, Copy)]
struct RowsMulti {
    dot_f32: DotRowsMulti<f32>,
    dot_f16: DotRowsMulti<f16>,
    axpy_f32: AxpyRowsMulti<f32>,
    axpy_f16: AxpyRowsMulti<f16>,
}

/// The x86 levels' [`RowsMulti`]: the AVX2 loops, as their one-query row loops are.
#[cfg(target_arch = "x86_64")]
const AVX2_ROWS_MULTI: RowsMulti = {
    use crate::arch::x86_64::avx2 as k;
    RowsMulti {
        dot_f32: k::dot_f32_rows_multi,
        dot_f16: k::dot_f16_rows_multi,
        axpy_f32: k::axpy_f32_rows_multi,
        axpy_f16: k::axpy_f16_rows_multi,
    }
};

impl Kernels {
    /// The table for `isa`, or `None` if this CPU lacks it.
    pub fn for_isa(isa: Isa) -> Option<Kernels> {
        if !isa.is_supported() {
            return None;
        }
        // The weights' prefetch hint is chosen here, once, for the loops to read.
        crate::Prefetch::current();
        let scalar = Kernels {
            isa: Isa::Scalar,
            label: "scalar",
            dot_f32: scalar::dot_f32,
            axpy_f32: scalar::axpy_f32,
            exp_sub: scalar::exp_sub,
            softmax_parts: scalar::softmax_parts,
            silu_mul: scalar::silu_mul,
            transpose: scalar::transpose,
            dot_f32_rows: scalar::dot_f32_rows,
            axpy_f32_rows: scalar::axpy_f32_rows,
            dot_bf16_rows: scalar::dot_bf16_rows,
            axpy_bf16_rows: scalar::axpy_bf16_rows,
            dot_f16_rows: scalar::dot_f16_rows,
            axpy_f16_rows: scalar::axpy_f16_rows,
            rows_multi: None,
            dot_f16: scalar::dot_f16,
            dot_bf16: scalar::dot_bf16,
            dot_fourbit: scalar::dot_fourbit,
            fourbit_step: 1,
            dot_int8: scalar::dot_int8,
            dot_int8_4x4: scalar::dot_int8_4x4,
            dot_int8_x4: None,
            dot_int8_rows: None,
            dot_q8: scalar::dot_q8,
            dot_q8_x4: None,
            dot_q8_x4t4: None,
            dot_q8_rows_t8: None,
            dot_q8_rows: None,
            dot_q5_rows: None,
            dot_fourbit_q8_x4: None,
            dot_fourbit_q8_x4t2: None,
            dot_fourbit_q8_rows: None,
            dot_fourbit_q8_rows_t2: None,
            dot_fourbit_q8_rows_t4: None,
            dot_fourbit_q8_rows_t8: None,
            x4_max_cols: 0,
            dot_fourbit_q8: scalar::dot_fourbit_q8,
            dot_fourbit_q8_t4: None,
            fourbit_q8_step: 1,
            fourbit_q8_split: false,
            nested_factors: scalar::nested_factors,
            quantize_q8: scalar::quantize_q8,
            quantize_q8_plain: crate::q8::quantize_activations,
            unpack_q5: crate::q5::unpack,
            fourbit_q8_tile: None,
            fourbit_q8_tile8: None,
            fourbit_q8_tile_run: None,
            fourbit_q8_tile_split: None,
            fourbit_q8_tile8_split: None,
            fourbit_q8_tile_run_split: None,
            fourbit_q8_panel: None,
            q8_panel: None,
            int8_panel: None,
            fourbit_q8_rows16: None,
            q8_rows16: None,
            q5_rows16: None,
        };
        match isa {
            Isa::Scalar => Some(scalar),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                use crate::arch::x86_64::avx2 as k;
                Some(Kernels {
                    isa,
                    label: isa.name(),
                    dot_f32: k::dot_f32,
                    axpy_f32: k::axpy_f32,
                    exp_sub: k::exp_sub,
                    softmax_parts: k::softmax_parts,
                    silu_mul: k::silu_mul,
                    transpose: k::transpose,
                    dot_f32_rows: k::dot_f32_rows,
                    axpy_f32_rows: k::axpy_f32_rows,
                    dot_bf16_rows: k::dot_bf16_rows,
                    axpy_bf16_rows: k::axpy_bf16_rows,
                    dot_f16_rows: k::dot_f16_rows,
                    axpy_f16_rows: k::axpy_f16_rows,
                    rows_multi: Some(AVX2_ROWS_MULTI),
                    dot_f16: k::dot_f16,
                    dot_bf16: k::dot_bf16,
                    dot_fourbit: k::dot_fourbit,
                    fourbit_step: 8,
                    dot_int8: k::dot_int8,
                    dot_int8_4x4: k::dot_int8_4x4,
                    dot_int8_x4: Some(k::dot_int8_x4),
                    dot_int8_rows: Some(k::dot_int8_rows),
                    dot_q8: k::dot_q8,
                    dot_q8_x4: Some(k::dot_q8_x4),
                    dot_q8_x4t4: None,
                    dot_q8_rows_t8: Some(k::dot_q8_rows_t8),
                    dot_q8_rows: Some(k::dot_q8_rows),
                    dot_q5_rows: Some(k::dot_q5_rows),
                    dot_fourbit_q8_x4: Some((k::dot_fourbit_q8_x4, k::dot_fourbit_q8)),
                    dot_fourbit_q8_x4t2: Some(k::dot_fourbit_q8_x4t2),
                    dot_fourbit_q8_rows: Some(k::dot_fourbit_q8_rows),
                    dot_fourbit_q8_rows_t2: Some(k::dot_fourbit_q8_rows_t2),
                    dot_fourbit_q8_rows_t4: None,
                    dot_fourbit_q8_rows_t8: Some(k::dot_fourbit_q8_rows_t8),
                    x4_max_cols: usize::MAX,
                    dot_fourbit_q8: k::dot_fourbit_q8,
                    dot_fourbit_q8_t4: None,
                    fourbit_q8_step: 32,
                    fourbit_q8_split: true,
                    nested_factors: k::nested_factors,
                    quantize_q8: k::quantize_q8,
                    quantize_q8_plain: k::quantize_q8_plain,
                    unpack_q5: k::unpack_q5,
                    fourbit_q8_tile: None,
                    fourbit_q8_tile8: Some(k::fourbit_q8_tile8),
                    fourbit_q8_tile_run: None,
                    fourbit_q8_tile_split: None,
                    fourbit_q8_tile8_split: Some(k::fourbit_q8_tile8_split),
                    fourbit_q8_tile_run_split: None,
                    fourbit_q8_panel: None,
                    q8_panel: None,
                    int8_panel: None,
                    fourbit_q8_rows16: None,
                    q8_rows16: None,
                    q5_rows16: None,
                })
            }
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => Some(Self::avxvnni(!Isa::has_avxvnni())),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(Self::avx512(Self::vbmi(), Self::amx())),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => {
                use crate::arch::aarch64::neon as k;
                Some(Kernels {
                    isa,
                    label: isa.name(),
                    dot_f32: k::dot_f32,
                    axpy_f32: scalar::axpy_f32,
                    exp_sub: scalar::exp_sub,
                    softmax_parts: scalar::softmax_parts,
                    silu_mul: scalar::silu_mul,
                    transpose: scalar::transpose,
                    dot_f32_rows: scalar::dot_f32_rows,
                    axpy_f32_rows: scalar::axpy_f32_rows,
                    dot_bf16_rows: scalar::dot_bf16_rows,
                    axpy_bf16_rows: scalar::axpy_bf16_rows,
                    dot_f16_rows: scalar::dot_f16_rows,
                    axpy_f16_rows: scalar::axpy_f16_rows,
                    rows_multi: None,
                    dot_f16: k::dot_f16,
                    dot_bf16: k::dot_bf16,
                    dot_fourbit: k::dot_fourbit,
                    fourbit_step: 4,
                    dot_int8: k::dot_int8,
                    dot_int8_4x4: scalar::dot_int8_4x4,
                    dot_int8_x4: None,
                    dot_int8_rows: None,
                    dot_q8: scalar::dot_q8,
                    dot_q8_x4: None,
                    dot_q8_x4t4: None,
                    dot_q8_rows_t8: None,
                    dot_q8_rows: None,
                    dot_q5_rows: None,
                    dot_fourbit_q8_x4: None,
                    dot_fourbit_q8_x4t2: None,
                    dot_fourbit_q8_rows: None,
                    dot_fourbit_q8_rows_t2: None,
                    dot_fourbit_q8_rows_t4: None,
                    dot_fourbit_q8_rows_t8: None,
                    x4_max_cols: 0,
                    dot_fourbit_q8: k::dot_fourbit_q8,
                    dot_fourbit_q8_t4: None,
                    fourbit_q8_step: 16,
                    fourbit_q8_split: false,
                    nested_factors: scalar::nested_factors,
                    quantize_q8: scalar::quantize_q8,
                    quantize_q8_plain: crate::q8::quantize_activations,
                    unpack_q5: crate::q5::unpack,
                    fourbit_q8_tile: None,
                    fourbit_q8_tile8: None,
                    fourbit_q8_tile_run: None,
                    fourbit_q8_tile_split: None,
                    fourbit_q8_tile8_split: None,
                    fourbit_q8_tile_run_split: None,
                    fourbit_q8_panel: None,
                    q8_panel: None,
                    int8_panel: None,
                    fourbit_q8_rows16: None,
                    q8_rows16: None,
                    q5_rows16: None,
                })
            }
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The level these kernels run.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The level's name and any optional extension in use, e.g. `avx512+vbmi`.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// Every kernel table this CPU can run, slowest first: each supported level, and where a
    /// level uses an optional extension, that level without it as well — so tests reach the
    /// code other CPUs of the level run.
    pub fn variants() -> Vec<Kernels> {
        let mut out = Vec::new();
        for k in Isa::all_supported().into_iter().filter_map(Kernels::for_isa) {
            #[cfg(target_arch = "x86_64")]
            if k.isa == Isa::Avx512 && Self::vbmi() {
                out.push(Self::avx512(false, Amx::Off));
            }
            // Every use of AMX the CPU allows, whichever the process runs.
            #[cfg(target_arch = "x86_64")]
            if k.isa == Isa::Avx512 && crate::arch::x86_64::amx::usable() {
                for amx in [Amx::Off, Amx::Prompts, Amx::All] {
                    if amx != Self::amx() {
                        out.push(Self::avx512(Self::vbmi(), amx));
                    }
                }
            }
            // A CPU with both encodings of 256-bit VNNI runs the EVEX twin as well.
            #[cfg(target_arch = "x86_64")]
            if k.isa == Isa::AvxVnni && Isa::has_avxvnni() && Isa::has_avx512vnni_vl() {
                out.push(Self::avxvnni(true));
            }
            out.push(k);
        }
        out
    }

    /// The kernel tables of this build's architecture that [`Kernels::variants`] leaves out
    /// because the CPU cannot run them, each with what it lacks — so a test run can say what it
    /// did not check instead of passing silently.
    pub fn not_run() -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            for isa in [Isa::Avx2, Isa::Avx512] {
                if let Some(needs) = isa.missing() {
                    out.push((isa.name(), needs));
                }
            }
            if Isa::Avx2.is_supported() && !Isa::has_avxvnni() {
                out.push(("avxvnni (VEX encoding)", "AVX-VNNI"));
            }
            if Isa::Avx2.is_supported() && !Isa::has_avx512vnni_vl() {
                out.push(("avxvnni(evex)", "AVX-512 VNNI and VL"));
            }
            if Isa::Avx512.is_supported() && !std::arch::is_x86_feature_detected!("avx512vbmi") {
                out.push(("avx512+vbmi", "AVX-512 VBMI"));
            }
            if Isa::Avx512.is_supported() && !crate::arch::x86_64::amx::usable() {
                out.push(("avx512+amx", "AMX-TILE and AMX-INT8 with the OS's leave to use them"));
            }
        }
        #[cfg(target_arch = "aarch64")]
        if let Some(needs) = Isa::Neon.missing() {
            out.push(("neon", needs));
        }
        out
    }

    /// The AVX2 table with the integer kernels on 256-bit VNNI: AVX-VNNI's encoding, or AVX-512
    /// VNNI's (`evex`) on CPUs that have that instead (the same instruction on the same vectors).
    /// Int8 decode keeps the AVX2 kernel, which measured faster than a two-`vpdpbusd` one (the row
    /// sum costs a second product); the int8 prefill tile is VNNI's (docs/PERFORMANCE.md).
    #[cfg(target_arch = "x86_64")]
    fn avxvnni(evex: bool) -> Kernels {
        use crate::arch::x86_64::avxvnni as k;
        let avx2 = Kernels::for_isa(Isa::Avx2).expect("AVX-VNNI implies AVX2");
        if evex {
            Kernels {
                isa: Isa::AvxVnni,
                label: "avxvnni(evex)",
                dot_int8_4x4: k::dot_int8_4x4_evex,
                dot_fourbit_q8: k::dot_fourbit_q8_evex,
                dot_fourbit_q8_t4: None,
                dot_fourbit_q8_x4: Some((k::dot_fourbit_q8_x4_evex, k::dot_fourbit_q8_evex)),
                dot_fourbit_q8_x4t2: Some(k::dot_fourbit_q8_x4t2_evex),
                dot_fourbit_q8_rows: Some(k::dot_fourbit_q8_rows_evex),
                dot_fourbit_q8_rows_t2: Some(k::dot_fourbit_q8_rows_t2_evex),
                dot_fourbit_q8_rows_t4: None,
                dot_fourbit_q8_rows_t8: None,
                fourbit_q8_tile: Some(k::fourbit_q8_tile_evex),
                fourbit_q8_tile8: None,
                fourbit_q8_tile_run: Some(k::fourbit_q8_tile_run_evex),
                fourbit_q8_tile_split: Some(k::fourbit_q8_tile_split_evex),
                fourbit_q8_tile8_split: None,
                fourbit_q8_tile_run_split: Some(k::fourbit_q8_tile_run_split_evex),
                ..avx2
            }
        } else {
            Kernels {
                isa: Isa::AvxVnni,
                label: "avxvnni",
                dot_int8_4x4: k::dot_int8_4x4_vex,
                dot_fourbit_q8: k::dot_fourbit_q8_vex,
                dot_fourbit_q8_t4: None,
                dot_fourbit_q8_x4: Some((k::dot_fourbit_q8_x4_vex, k::dot_fourbit_q8_vex)),
                dot_fourbit_q8_x4t2: Some(k::dot_fourbit_q8_x4t2_vex),
                dot_fourbit_q8_rows: Some(k::dot_fourbit_q8_rows_vex),
                dot_fourbit_q8_rows_t2: Some(k::dot_fourbit_q8_rows_t2_vex),
                dot_fourbit_q8_rows_t4: None,
                dot_fourbit_q8_rows_t8: None,
                fourbit_q8_tile: Some(k::fourbit_q8_tile_vex),
                fourbit_q8_tile8: None,
                fourbit_q8_tile_run: Some(k::fourbit_q8_tile_run_vex),
                fourbit_q8_tile_split: Some(k::fourbit_q8_tile_split_vex),
                fourbit_q8_tile8_split: None,
                fourbit_q8_tile_run_split: Some(k::fourbit_q8_tile_run_split_vex),
                ..avx2
            }
        }
    }

    /// The AVX-512 table, with VBMI's nibble lookups or without. vpermb saves two instructions
    /// per 64 code bytes where VBMI exists (Ice Lake, Zen 4 and later; Cascade Lake has VNNI
    /// without it), which shows in a decode row from L1 (bench `fourbit_q8_row`;
    /// docs/PERFORMANCE.md).
    #[cfg(target_arch = "x86_64")]
    fn avx512(vbmi: bool, amx: Amx) -> Kernels {
        let k = Self::avx512_vnni(vbmi);
        let all = amx == Amx::All;
        if amx == Amx::Off {
            return k;
        }
        Kernels {
            label: match (vbmi, all) {
                (true, false) => "avx512+vbmi+amx(prompts)",
                (true, true) => "avx512+vbmi+amx",
                (false, false) => "avx512+amx(prompts)",
                (false, true) => "avx512+amx",
            },
            fourbit_q8_panel: Some(crate::arch::x86_64::amx::fourbit_q8_panel),
            q8_panel: Some(crate::arch::x86_64::amx::q8_panel),
            int8_panel: Some(crate::arch::x86_64::amx::int8_panel),
            fourbit_q8_rows16: all.then_some(crate::arch::x86_64::amx::fourbit_q8_rows16 as FourBitQ8Rows16),
            q8_rows16: all.then_some(crate::arch::x86_64::amx::q8_rows16 as Q8Rows16),
            q5_rows16: all.then_some(crate::arch::x86_64::amx::q5_rows16 as Q5Rows16),
            ..k
        }
    }

    /// The AVX-512 table without AMX.
    #[cfg(target_arch = "x86_64")]
    fn avx512_vnni(vbmi: bool) -> Kernels {
        use crate::arch::x86_64::avx512 as k;
        let plain = Kernels {
            isa: Isa::Avx512,
            label: Isa::Avx512.name(),
            dot_f32: k::dot_f32,
            axpy_f32: k::axpy_f32,
            exp_sub: k::exp_sub,
            softmax_parts: k::softmax_parts,
            silu_mul: k::silu_mul,
            transpose: crate::arch::x86_64::avx2::transpose,
            // The AVX2 row loops: their eight-row blocking is what matters at head sizes 64–128.
            dot_f32_rows: crate::arch::x86_64::avx2::dot_f32_rows,
            axpy_f32_rows: crate::arch::x86_64::avx2::axpy_f32_rows,
            dot_bf16_rows: crate::arch::x86_64::avx2::dot_bf16_rows,
            axpy_bf16_rows: crate::arch::x86_64::avx2::axpy_bf16_rows,
            dot_f16_rows: crate::arch::x86_64::avx2::dot_f16_rows,
            axpy_f16_rows: crate::arch::x86_64::avx2::axpy_f16_rows,
            rows_multi: Some(AVX2_ROWS_MULTI),
            dot_f16: k::dot_f16,
            dot_bf16: k::dot_bf16,
            dot_fourbit: k::dot_fourbit,
            fourbit_step: 16,
            dot_int8: k::dot_int8,
            dot_int8_4x4: k::dot_int8_4x4,
            // Rows narrower than Mistral's 4096 decode four at a time on 256-bit VNNI: on narrow
            // rows the one-row 512-bit kernel's per-row work outweighs its wider steps, on wide
            // ones the two measured level (docs/PERFORMANCE.md, "AVX-512, narrow rows").
            dot_int8_x4: Some(crate::arch::x86_64::avx2::dot_int8_x4),
            dot_int8_rows: Some(crate::arch::x86_64::avx2::dot_int8_rows),
            dot_q8: crate::arch::x86_64::avx2::dot_q8,
            dot_q8_x4: Some(crate::arch::x86_64::avx2::dot_q8_x4),
            dot_q8_x4t4: Some(k::dot_q8_x4t4),
            dot_q8_rows_t8: Some(k::dot_q8_rows_t8),
            dot_q8_rows: Some(k::dot_q8_rows),
            // This level's block int8 rows give AVX2's bits, so AVX2's int5 rows (unpacked in
            // registers) keep block int8's numbers here too.
            dot_q5_rows: Some(crate::arch::x86_64::avx2::dot_q5_rows),
            dot_fourbit_q8_x4: Some((
                crate::arch::x86_64::avxvnni::dot_fourbit_q8_x4_evex,
                crate::arch::x86_64::avxvnni::dot_fourbit_q8_evex,
            )),
            dot_fourbit_q8_x4t2: Some(crate::arch::x86_64::avxvnni::dot_fourbit_q8_x4t2_evex),
            dot_fourbit_q8_rows: Some(crate::arch::x86_64::avxvnni::dot_fourbit_q8_rows_evex),
            dot_fourbit_q8_rows_t2: Some(crate::arch::x86_64::avxvnni::dot_fourbit_q8_rows_t2_evex),
            dot_fourbit_q8_rows_t4: Some(k::dot_fourbit_q8_rows_t4),
            dot_fourbit_q8_rows_t8: Some(k::dot_fourbit_q8_rows_t8),
            x4_max_cols: 4095,
            dot_fourbit_q8: k::dot_fourbit_q8,
            dot_fourbit_q8_t4: Some(k::dot_fourbit_q8_t4),
            fourbit_q8_step: 32,
            fourbit_q8_split: true,
            // The map looked up in registers (the 16-wide gather had taken a quarter of nf4
            // decode on AMD Zen 5, the AVX2 kernel's scalar loads a tenth; docs/PERFORMANCE.md).
            nested_factors: k::nested_factors,
            quantize_q8: k::quantize_q8,
            quantize_q8_plain: crate::arch::x86_64::avx2::quantize_q8_plain,
            unpack_q5: k::unpack_q5,
            fourbit_q8_tile: Some(k::fourbit_q8_tile),
            fourbit_q8_tile8: None,
            fourbit_q8_tile_run: Some(k::fourbit_q8_tile_run),
            fourbit_q8_tile_split: Some(k::fourbit_q8_tile_split),
            fourbit_q8_tile8_split: None,
            fourbit_q8_tile_run_split: Some(k::fourbit_q8_tile_run_split),
            fourbit_q8_panel: None,
            q8_panel: None,
            int8_panel: None,
            fourbit_q8_rows16: None,
            q8_rows16: None,
            q5_rows16: None,
        };
        if !vbmi {
            return plain;
        }
        Kernels {
            label: "avx512+vbmi",
            dot_fourbit_q8: k::dot_fourbit_q8_vbmi,
            dot_fourbit_q8_t4: Some(k::dot_fourbit_q8_t4_vbmi),
            dot_fourbit_q8_rows_t4: Some(k::dot_fourbit_q8_rows_t4_vbmi),
            dot_fourbit_q8_rows_t8: Some(k::dot_fourbit_q8_rows_t8_vbmi),
            fourbit_q8_tile: Some(k::fourbit_q8_tile_vbmi),
            fourbit_q8_tile8: None,
            fourbit_q8_tile_run: Some(k::fourbit_q8_tile_run_vbmi),
            fourbit_q8_tile_split: Some(k::fourbit_q8_tile_split_vbmi),
            fourbit_q8_tile_run_split: Some(k::fourbit_q8_tile_run_split_vbmi),
            ..plain
        }
    }

    /// How the AVX-512 tables use AMX where this process may (the CPU has AMX-TILE and AMX-INT8
    /// and the OS granted their state): `LOWBIT_AMX`, [`Amx::All`] by default.
    #[cfg(target_arch = "x86_64")]
    fn amx() -> Amx {
        if !crate::arch::x86_64::amx::usable() {
            return Amx::Off;
        }
        Amx::from_env().unwrap_or(Amx::All)
    }

    /// Whether the AVX-512 tables use VBMI: when the CPU has it, unless `LOWBIT_VBMI=0` asks
    /// for the plain AVX-512 kernels (what VNNI CPUs without VBMI run), e.g. to time them.
    #[cfg(target_arch = "x86_64")]
    fn vbmi() -> bool {
        std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::env::var("LOWBIT_VBMI").map_or(true, |v| v.trim() != "0")
    }

    /// `Σ w·x`; slices must have equal length.
    #[inline]
    pub fn dot_f32(&self, w: &[f32], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_f32)(w, x) }
    }

    /// `y += a·x` with one fused multiply-add per element (bit-identical on every ISA); slices
    /// must have equal length.
    #[inline]
    pub fn axpy_f32(&self, y: &mut [f32], a: f32, x: &[f32]) {
        assert_eq!(y.len(), x.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.axpy_f32)(y, a, x) }
    }

    /// `x[i] = exp(x[i] − sub)`, bit-identical on every ISA ([`crate::scalar::exp_sub`]).
    #[inline]
    pub fn exp_sub(&self, x: &mut [f32], sub: f32) {
        // SAFETY: `self` exists only for a supported ISA; the kernel touches only `x`.
        unsafe { (self.exp_sub)(x, sub) }
    }

    /// Softmax over `x` scaled by `scale`, in place, bit-identical on every ISA
    /// ([`crate::scalar::softmax_parts`]): `x[i] = exp(x[i]·scale − m)`, `m` the largest scaled
    /// value; returns `(m, Σ x[i])`, and with `normalize` divides `x` by the sum.
    #[inline]
    pub fn softmax_parts(&self, x: &mut [f32], scale: f32, normalize: bool) -> (f32, f32) {
        // SAFETY: `self` exists only for a supported ISA; the kernel touches only `x`.
        unsafe { (self.softmax_parts)(x, scale, normalize) }
    }

    /// `gate = silu(gate) ⊙ up`, bit-identical on every ISA ([`crate::scalar::silu_mul`]);
    /// slices must have equal length.
    #[inline]
    pub fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        assert_eq!(gate.len(), up.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.silu_mul)(gate, up) }
    }

    /// A `rows × cols` block of `src` (rows `src_stride` apart) transposed into `dst` (rows
    /// `dst_stride` apart): `dst[c·dst_stride + r] = src[r·src_stride + c]`
    /// ([`crate::scalar::transpose`]).
    ///
    /// # Panics
    /// If a value falls outside `src` or `dst`.
    #[inline]
    pub fn transpose(
        &self,
        src: &[f32],
        src_stride: usize,
        dst: &mut [f32],
        dst_stride: usize,
        rows: usize,
        cols: usize,
    ) {
        if rows == 0 || cols == 0 {
            return;
        }
        let need = |n: usize, stride: usize, len: usize| (n - 1).checked_mul(stride).and_then(|v| v.checked_add(len));
        assert!(need(rows, src_stride, cols).is_some_and(|v| v <= src.len()), "transpose: source too short");
        assert!(need(cols, dst_stride, rows).is_some_and(|v| v <= dst.len()), "transpose: destination too short");
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.transpose)(src, src_stride, dst, dst_stride, rows, cols) }
    }

    /// `out[j] = Σ q·rows[j·stride ..]` (see [`crate::scalar::dot_f32_rows`]); each entry within
    /// the dot-product tolerance of the scalar one.
    ///
    /// # Panics
    /// If `rows` is too short for `out.len()` rows `stride` apart, or `stride < q.len()`.
    #[inline]
    pub fn dot_f32_rows(&self, out: &mut [f32], q: &[f32], rows: &[f32], stride: usize) {
        assert!(out.is_empty() || (stride >= q.len() && rows_fit(out.len(), stride, q.len(), rows.len())));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_f32_rows)(out, q, rows, stride) }
    }

    /// `y += Σ_j a[j]·rows[j·stride ..]`, one fused multiply-add per element and row in row order
    /// (bit-identical on every ISA; see [`crate::scalar::axpy_f32_rows`]).
    ///
    /// # Panics
    /// If `rows` is too short for `a.len()` rows `stride` apart, or `stride < y.len()`.
    #[inline]
    pub fn axpy_f32_rows(&self, y: &mut [f32], a: &[f32], rows: &[f32], stride: usize) {
        assert!(a.is_empty() || (stride >= y.len() && rows_fit(a.len(), stride, y.len(), rows.len())));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.axpy_f32_rows)(y, a, rows, stride) }
    }

    /// [`Kernels::dot_f32_rows`] over bf16 rows, widened exactly: the bits it gives over the
    /// widened rows (run-time LoRA keeps bf16 adapters in bf16).
    ///
    /// # Panics
    /// As [`Kernels::dot_f32_rows`].
    #[inline]
    pub fn dot_bf16_rows(&self, out: &mut [f32], q: &[f32], rows: &[bf16], stride: usize) {
        assert!(out.is_empty() || (stride >= q.len() && rows_fit(out.len(), stride, q.len(), rows.len())));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_bf16_rows)(out, q, rows, stride) }
    }

    /// [`Kernels::axpy_f32_rows`] over bf16 rows, widened exactly (the same bits).
    ///
    /// # Panics
    /// As [`Kernels::axpy_f32_rows`].
    #[inline]
    pub fn axpy_bf16_rows(&self, y: &mut [f32], a: &[f32], rows: &[bf16], stride: usize) {
        assert!(a.is_empty() || (stride >= y.len() && rows_fit(a.len(), stride, y.len(), rows.len())));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.axpy_bf16_rows)(y, a, rows, stride) }
    }

    /// [`Kernels::dot_f32_rows`] over f16 rows, widened exactly: the bits it gives over the
    /// widened rows (an f16 KV cache is read in place).
    ///
    /// # Panics
    /// As [`Kernels::dot_f32_rows`].
    #[inline]
    pub fn dot_f16_rows(&self, out: &mut [f32], q: &[f32], rows: &[f16], stride: usize) {
        assert!(out.is_empty() || (stride >= q.len() && rows_fit(out.len(), stride, q.len(), rows.len())));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_f16_rows)(out, q, rows, stride) }
    }

    /// [`Kernels::axpy_f32_rows`] over f16 rows, widened exactly (the same bits).
    ///
    /// # Panics
    /// As [`Kernels::axpy_f32_rows`].
    #[inline]
    pub fn axpy_f16_rows(&self, y: &mut [f32], a: &[f32], rows: &[f16], stride: usize) {
        assert!(a.is_empty() || (stride >= y.len() && rows_fit(a.len(), stride, y.len(), rows.len())));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.axpy_f16_rows)(y, a, rows, stride) }
    }

    /// [`Kernels::dot_f32_rows`] for the queries `q[g·d .. (g + 1)·d]` against the same rows
    /// `0 .. n`, query `g`'s scores into `out[g·ostride .. g·ostride + n]`, each with the bits
    /// of [`Kernels::dot_f32_rows`] for that query alone (grouped-query attention: the heads
    /// of one kv head read its keys once).
    ///
    /// # Panics
    /// If `d` is 0 or does not divide `q.len()`, the queries' outputs overlap or do not fit in
    /// `out`, or `rows` is too short for `n` rows `stride` apart (`stride < d`).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn dot_f32_rows_multi(
        &self,
        out: &mut [f32],
        ostride: usize,
        n: usize,
        q: &[f32],
        d: usize,
        rows: &[f32],
        stride: usize,
    ) {
        let one = |o: &mut [f32], q: &[f32]| self.dot_f32_rows(o, q, rows, stride);
        self.dot_multi(|m| m.dot_f32, one, out, ostride, n, q, d, rows, stride)
    }

    /// [`Kernels::dot_f32_rows_multi`] over f16 rows, widened exactly (the bits of
    /// [`Kernels::dot_f16_rows`] per query).
    ///
    /// # Panics
    /// As [`Kernels::dot_f32_rows_multi`].
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn dot_f16_rows_multi(
        &self,
        out: &mut [f32],
        ostride: usize,
        n: usize,
        q: &[f32],
        d: usize,
        rows: &[f16],
        stride: usize,
    ) {
        let one = |o: &mut [f32], q: &[f32]| self.dot_f16_rows(o, q, rows, stride);
        self.dot_multi(|m| m.dot_f16, one, out, ostride, n, q, d, rows, stride)
    }

    /// [`Kernels::axpy_f32_rows`] for several queries over the same rows `0 .. n`: `y[g·d ..
    /// (g + 1)·d]` weighted by `a[g·astride .. g·astride + n]`, bit-identical to
    /// [`Kernels::axpy_f32_rows`] per query (and so on every ISA).
    ///
    /// # Panics
    /// If `d` is 0 or does not divide `y.len()`, the weights overlap or do not fit in `a`, or
    /// `rows` is too short for `n` rows `stride` apart (`stride < d`).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn axpy_f32_rows_multi(
        &self,
        y: &mut [f32],
        d: usize,
        a: &[f32],
        astride: usize,
        n: usize,
        rows: &[f32],
        stride: usize,
    ) {
        let one = |y: &mut [f32], a: &[f32]| self.axpy_f32_rows(y, a, rows, stride);
        self.axpy_multi(|m| m.axpy_f32, one, y, d, a, astride, n, rows, stride)
    }

    /// [`Kernels::axpy_f32_rows_multi`] over f16 rows, widened exactly (the same bits).
    ///
    /// # Panics
    /// As [`Kernels::axpy_f32_rows_multi`].
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn axpy_f16_rows_multi(
        &self,
        y: &mut [f32],
        d: usize,
        a: &[f32],
        astride: usize,
        n: usize,
        rows: &[f16],
        stride: usize,
    ) {
        let one = |y: &mut [f32], a: &[f32]| self.axpy_f16_rows(y, a, rows, stride);
        self.axpy_multi(|m| m.axpy_f16, one, y, d, a, astride, n, rows, stride)
    }

    /// The multi-query score loops: the level's kernel (`pick` of its [`RowsMulti`]), or `one`
    /// query's loop at a time.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn dot_multi<E>(
        &self,
        pick: fn(&RowsMulti) -> DotRowsMulti<E>,
        one: impl Fn(&mut [f32], &[f32]),
        out: &mut [f32],
        ostride: usize,
        n: usize,
        q: &[f32],
        d: usize,
        rows: &[E],
        stride: usize,
    ) {
        multi_fits(out.len(), ostride, n, q.len(), d, rows.len(), stride);
        match &self.rows_multi {
            // SAFETY: `self` exists only for a supported ISA; lengths checked above.
            Some(m) => unsafe { pick(m)(out, ostride, n, q, d, rows, stride) },
            None => {
                for (g, q) in q.chunks_exact(d).enumerate() {
                    one(&mut out[g * ostride..g * ostride + n], q);
                }
            }
        }
    }

    /// The multi-query weighted sums: the level's kernel (`pick` of its [`RowsMulti`]), or
    /// `one` query's loop at a time.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn axpy_multi<E>(
        &self,
        pick: fn(&RowsMulti) -> AxpyRowsMulti<E>,
        one: impl Fn(&mut [f32], &[f32]),
        y: &mut [f32],
        d: usize,
        a: &[f32],
        astride: usize,
        n: usize,
        rows: &[E],
        stride: usize,
    ) {
        multi_fits(a.len(), astride, n, y.len(), d, rows.len(), stride);
        match &self.rows_multi {
            // SAFETY: `self` exists only for a supported ISA; lengths checked above.
            Some(m) => unsafe { pick(m)(y, d, a, astride, n, rows, stride) },
            None => {
                for (g, y) in y.chunks_exact_mut(d).enumerate() {
                    one(y, &a[g * astride..g * astride + n]);
                }
            }
        }
    }

    /// `Σ f32(w)·x`; slices must have equal length.
    #[inline]
    pub fn dot_f16(&self, w: &[f16], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_f16)(w, x) }
    }

    /// `Σ f32(w)·x`; slices must have equal length.
    #[inline]
    pub fn dot_bf16(&self, w: &[bf16], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_bf16)(w, x) }
    }

    /// Whether [`Kernels::dot_fourbit`] can take blocks of `half_block` bytes.
    #[inline]
    pub fn fourbit_block_ok(&self, half_block: usize) -> bool {
        half_block.is_multiple_of(self.fourbit_step)
    }

    /// 4-bit row dot product; see [`crate::scalar::dot_fourbit`]. Falls back to scalar for block
    /// sizes the SIMD loop does not step evenly through.
    #[inline]
    pub fn dot_fourbit(
        &self,
        codes: &[u8],
        scales: &[f32],
        levels: &[f32; 16],
        xe: &[f32],
        xo: &[f32],
        half_block: usize,
    ) -> f32 {
        let n = scales.len() * half_block;
        assert!(codes.len() >= n && xe.len() >= n && xo.len() >= n);
        if !self.fourbit_block_ok(half_block) {
            return scalar::dot_fourbit(codes, scales, levels, xe, xo, half_block);
        }
        // SAFETY: `self` exists only for a supported ISA; lengths and step checked above.
        unsafe { (self.dot_fourbit)(codes, scales, levels, xe, xo, half_block) }
    }

    /// 4-bit weights against int8 block-quantized activations; see
    /// [`crate::scalar::dot_fourbit_q8`]. Falls back to scalar for block sizes the SIMD loop
    /// does not step evenly through.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8(
        &self,
        codes: &[u8],
        factors: &[f32],
        lut: &[i8; 16],
        qe: &[i8],
        qo: &[i8],
        qsum: &[i32],
        half_block: usize,
    ) -> f32 {
        // Blocks of 32 go to the kernel `dot_fourbit_q8_x1` uses (AVX-512's own one-row kernel
        // steps 64 bytes), so both give a row the same bits.
        let f = if self.splits(half_block, factors.len()) {
            self.dot_fourbit_q8_x4.map_or(self.dot_fourbit_q8, |(_, one)| one)
        } else {
            self.dot_fourbit_q8
        };
        self.row_q8(f, codes, factors, lut, qe, qo, qsum, half_block)
    }

    /// [`Kernels::dot_fourbit_q8`] for four tokens over one row, each token's result with the
    /// bits the one-token call gives it; `None` where this level has no such kernel or the
    /// blocks go elsewhere.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8_t4(
        &self,
        codes: &[u8],
        factors: [&[f32]; 4],
        lut: &[i8; 16],
        qe: [&[i8]; 4],
        qo: [&[i8]; 4],
        qsum: [&[i32]; 4],
        half_block: usize,
    ) -> Option<[f32; 4]> {
        let f = self.dot_fourbit_q8_t4?;
        let nb = factors[0].len();
        let n = nb * half_block;
        if self.splits(half_block, nb) || !self.q8_blocks_ok(half_block, nb) {
            return None;
        }
        assert!(codes.len() >= n);
        assert!((0..4).all(|t| factors[t].len() == nb && qe[t].len() >= n && qo[t].len() >= n && qsum[t].len() >= nb));
        // SAFETY: `f` is one of this level's kernels, and `self` exists only for a supported
        // ISA; lengths and step checked above.
        Some(unsafe { f(codes, factors, lut, qe, qo, qsum, half_block) })
    }

    /// Whether the 32-byte-step decode kernels take these blocks: a whole number of steps, or
    /// blocks of 32 weights two to a step ([`Kernels::fourbit_q8_split`]).
    #[inline]
    fn q8_blocks_ok(&self, half_block: usize, nb: usize) -> bool {
        half_block.is_multiple_of(self.fourbit_q8_step) || self.splits(half_block, nb)
    }

    #[inline]
    fn splits(&self, half_block: usize, nb: usize) -> bool {
        self.fourbit_q8_split && half_block == 16 && nb.is_multiple_of(2)
    }

    /// Runs the one-row 4-bit kernel `f` of this level after checking the lengths; block sizes
    /// the SIMD loop does not step evenly through go to the scalar code.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn row_q8(
        &self,
        f: DotFourBitQ8,
        codes: &[u8],
        factors: &[f32],
        lut: &[i8; 16],
        qe: &[i8],
        qo: &[i8],
        qsum: &[i32],
        half_block: usize,
    ) -> f32 {
        let n = factors.len() * half_block;
        assert!(codes.len() >= n && qe.len() >= n && qo.len() >= n && qsum.len() >= factors.len());
        if !self.q8_blocks_ok(half_block, factors.len()) {
            return scalar::dot_fourbit_q8(codes, factors, lut, qe, qo, qsum, half_block);
        }
        // SAFETY: `f` is one of this level's kernels, and `self` exists only for a supported
        // ISA; lengths and step checked above.
        unsafe { f(codes, factors, lut, qe, qo, qsum, half_block) }
    }

    /// Whether decode runs rows `cols` wide four at a time ([`Kernels::dot_fourbit_q8_x4`],
    /// [`Kernels::dot_fourbit_q8_x1`], [`Kernels::dot_int8_x4`]).
    #[inline]
    pub fn x4_for(&self, cols: usize) -> bool {
        cols <= self.x4_max_cols
    }

    /// Four block-aligned 4-bit rows against the same int8 activations (see
    /// [`crate::scalar::dot_fourbit_q8_x4`]), each row equal to [`Kernels::dot_fourbit_q8_x1`] of
    /// it; `None` where this level has no such kernel or the block size does not suit it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8_x4(
        &self,
        codes: [&[u8]; 4],
        factors: [&[f32]; 4],
        lut: &[i8; 16],
        qe: &[i8],
        qo: &[i8],
        qsum: &[i32],
        half_block: usize,
    ) -> Option<[f32; 4]> {
        let (f, _) = self.dot_fourbit_q8_x4?;
        let nb = factors[0].len();
        if !self.q8_blocks_ok(half_block, nb) {
            return None;
        }
        let n = nb * half_block;
        assert!(factors.iter().all(|f| f.len() == nb) && codes.iter().all(|c| c.len() >= n));
        assert!(qe.len() >= n && qo.len() >= n && qsum.len() >= nb);
        // SAFETY: `self` exists only for a supported ISA; lengths and step checked above.
        Some(unsafe { f(codes, factors, lut, qe, qo, qsum, half_block) })
    }

    /// [`Kernels::dot_fourbit_q8_x4`] for two tokens (see [`crate::scalar::dot_fourbit_q8_x4t2`]):
    /// `out[t][r]` has the bits of row `r` of the four-row kernel on token `t` alone; `None`
    /// where this level has no such kernel or the block size does not suit it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8_x4t2(
        &self,
        codes: [&[u8]; 4],
        factors: [[&[f32]; 4]; 2],
        lut: &[i8; 16],
        qe: [&[i8]; 2],
        qo: [&[i8]; 2],
        qsum: [&[i32]; 2],
        half_block: usize,
    ) -> Option<[[f32; 4]; 2]> {
        let f = self.dot_fourbit_q8_x4t2?;
        let nb = factors[0][0].len();
        if !self.q8_blocks_ok(half_block, nb) {
            return None;
        }
        let n = nb * half_block;
        assert!(factors.iter().flatten().all(|f| f.len() == nb) && codes.iter().all(|c| c.len() >= n));
        assert!(qe.iter().chain(&qo).all(|q| q.len() >= n) && qsum.iter().all(|q| q.len() >= nb));
        // SAFETY: `self` exists only for a supported ISA; lengths and step checked above.
        Some(unsafe { f(codes, factors, lut, qe, qo, qsum, half_block) })
    }

    /// Every row of a decode task in one call (see [`crate::scalar::dot_fourbit_q8_rows`]),
    /// `out[i]` with the bits [`Kernels::dot_fourbit_q8_x1`] gives row `i`; `false` (and `out`
    /// untouched) where this level has no such kernel or the block size does not suit it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8_rows(
        &self,
        codes: &[u8],
        factors: &[f32],
        lut: &[i8; 16],
        qe: &[i8],
        qo: &[i8],
        qsum: &[i32],
        half_block: usize,
        out: &mut [f32],
    ) -> bool {
        let Some(f) = self.dot_fourbit_q8_rows else { return false };
        if out.is_empty() || !self.q8_blocks_ok(half_block, factors.len() / out.len()) {
            return false;
        }
        let nb = factors.len() / out.len();
        let n = nb * half_block;
        assert!(factors.len() == out.len() * nb && codes.len() >= out.len() * n);
        assert!(qe.len() >= n && qo.len() >= n && qsum.len() >= nb);
        // SAFETY: `self` exists only for a supported ISA; lengths and step checked above.
        unsafe { f(codes, factors, lut, qe, qo, qsum, half_block, out) };
        true
    }

    /// [`Kernels::dot_fourbit_q8_rows`] for two tokens (see
    /// [`crate::scalar::dot_fourbit_q8_rows_t2`]): `out[t][i]` with the bits
    /// [`Kernels::dot_fourbit_q8_x1`] gives row `i` against token `t`; `false` (and `out`
    /// untouched) where this level has no such kernel or the block size does not suit it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8_rows_t2(
        &self,
        codes: &[u8],
        factors: [&[f32]; 2],
        lut: &[i8; 16],
        qe: [&[i8]; 2],
        qo: [&[i8]; 2],
        qsum: [&[i32]; 2],
        half_block: usize,
        out: [&mut [f32]; 2],
    ) -> bool {
        let Some(f) = self.dot_fourbit_q8_rows_t2 else { return false };
        let rows = out[0].len();
        if rows == 0 || out[1].len() != rows || !self.q8_blocks_ok(half_block, factors[0].len() / rows) {
            return false;
        }
        let nb = factors[0].len() / rows;
        let n = nb * half_block;
        assert!(factors.iter().all(|f| f.len() == rows * nb) && codes.len() >= rows * n);
        assert!(qe.iter().chain(&qo).all(|q| q.len() >= n) && qsum.iter().all(|q| q.len() >= nb));
        // SAFETY: `self` exists only for a supported ISA; lengths and step checked above.
        unsafe { f(codes, factors, lut, qe, qo, qsum, half_block, out) };
        true
    }

    /// [`Kernels::dot_fourbit_q8_rows`] for four tokens (see
    /// [`crate::scalar::dot_fourbit_q8_rows_t4`]): `out[t][i]` with the bits
    /// [`Kernels::dot_fourbit_q8_x1`] gives row `i` against token `t`; `false` (and `out`
    /// untouched) where this level has no such kernel or the block size does not suit it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8_rows_t4(
        &self,
        codes: &[u8],
        factors: [&[f32]; 4],
        lut: &[i8; 16],
        qe: [&[i8]; 4],
        qo: [&[i8]; 4],
        half_block: usize,
        out: [&mut [f32]; 4],
    ) -> bool {
        let Some(f) = self.dot_fourbit_q8_rows_t4 else { return false };
        let rows = out[0].len();
        if !half_block.is_multiple_of(self.fourbit_q8_step) || rows == 0 || out.iter().any(|o| o.len() != rows) {
            return false;
        }
        let nb = factors[0].len() / rows;
        let n = nb * half_block;
        assert!(factors.iter().all(|f| f.len() == rows * nb) && codes.len() >= rows * n);
        assert!(qe.iter().chain(&qo).all(|q| q.len() >= n));
        // SAFETY: `self` exists only for a supported ISA; lengths and step checked above.
        unsafe { f(codes, factors, lut, qe, qo, half_block, out) };
        true
    }

    /// [`Kernels::dot_fourbit_q8_rows`] for a group of eight tokens, weights in blocks of 64
    /// (see [`crate::scalar::dot_fourbit_q8_rows_t8`]): cell (i, t) of `out` with the bits
    /// [`Kernels::dot_fourbit_q8_x1`] gives row `i` against token `t` with the factors
    /// `scales[i·nb + b] · xs`; `false` (and `out` untouched) where this level has no such kernel.
    ///
    /// # Panics
    /// If `codes` or `scales` are shorter than `out.rows()` rows of `group.blocks()` blocks.
    #[inline]
    pub fn dot_fourbit_q8_rows_t8(
        &self,
        codes: &[u8],
        scales: &[f32],
        lut: &[i8; 16],
        group: crate::pairs::PairGroup<'_>,
        out: crate::Grid<'_>,
    ) -> bool {
        let Some(f) = self.dot_fourbit_q8_rows_t8 else { return false };
        let rows = out.rows();
        let nb = group.nb;
        assert!(codes.len() >= rows * nb * 32 && scales.len() >= rows * nb);
        assert!(
            group.steps == 2 && group.q.len() == nb * 512 && group.corr.len() == nb * 64 && group.xs.len() == nb * 64
        );
        // SAFETY: `self` exists only for a supported ISA; lengths checked above, the grid's
        // cells by `Grid::new`.
        unsafe { f(codes, scales, lut, group, out) };
        true
    }

    /// [`Kernels::dot_q8_rows`] for a group of eight tokens over rows in a multiple of four (see
    /// [`crate::scalar::dot_q8_rows_t8`]): cell (i, t) of `out` with the bits [`Kernels::dot_q8_x4`] gives
    /// row `i` against token `t`; `false` (and `out` untouched) where this level has no such
    /// kernel.
    ///
    /// # Panics
    /// If the row count is not a multiple of four, or `w` and
    /// `scale` are shorter than those rows of `group.blocks()` blocks.
    #[inline]
    pub fn dot_q8_rows_t8(
        &self,
        w: &[i8],
        scale: &[f16],
        group: crate::pairs::PairGroup<'_>,
        out: crate::Grid<'_>,
    ) -> bool {
        let Some(f) = self.dot_q8_rows_t8 else { return false };
        let rows = out.rows();
        let (nb, steps) = (group.nb, group.steps);
        assert!(rows.is_multiple_of(4));
        assert!(crate::q8::BLOCKSIZES.contains(&(32 * steps)));
        assert!(w.len() >= rows * nb * 32 * steps && scale.len() >= rows * nb);
        assert!(group.q.len() == nb * 4 * steps * 64 && group.corr.len() == nb * 64 && group.xs.len() == nb * 64);
        // SAFETY: `self` exists only for a supported ISA; lengths checked above, the grid's cells
        // by `Grid::new`.
        unsafe { f(w, scale, group, out) };
        true
    }

    /// Whether [`Kernels::dot_q8_rows_t8`] runs on this level.
    pub fn has_q8_rows_t8(&self) -> bool {
        self.dot_q8_rows_t8.is_some()
    }

    /// Whether [`Kernels::dot_fourbit_q8_rows_t8`] runs on this level.
    pub fn has_rows_t8(&self) -> bool {
        self.dot_fourbit_q8_rows_t8.is_some()
    }

    /// One row through the kernel that gives the same bits as a row of
    /// [`Kernels::dot_fourbit_q8_x4`] (the plain row kernel where the level has no four-row one).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn dot_fourbit_q8_x1(
        &self,
        codes: &[u8],
        factors: &[f32],
        lut: &[i8; 16],
        qe: &[i8],
        qo: &[i8],
        qsum: &[i32],
        half_block: usize,
    ) -> f32 {
        let f = self.dot_fourbit_q8_x4.map_or(self.dot_fourbit_q8, |(_, one)| one);
        self.row_q8(f, codes, factors, lut, qe, qo, qsum, half_block)
    }

    /// Block factors of double-quantized scales sharing one nested scale; see
    /// [`crate::scalar::nested_factors`]. Bit-identical on every ISA.
    #[inline]
    pub fn nested_factors(
        &self,
        codes: &[u8],
        map: &[f32; 256],
        nested_absmax: f32,
        offset: f32,
        xs: &[f32],
        out: &mut [f32],
    ) {
        assert!(codes.len() == out.len() && xs.len() == out.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.nested_factors)(codes, map, nested_absmax, offset, xs, out) }
    }

    /// Activations to int8 per block, in order, for block int8 weights; see
    /// [`crate::q8::quantize_activations`]. Bit-identical on every ISA.
    ///
    /// # Panics
    /// If `blocksize` is 0, `q` is shorter than `x` or `d` than the block count.
    #[inline]
    pub fn quantize_q8_plain(&self, x: &[f32], blocksize: usize, q: &mut [i8], d: &mut [f32]) {
        assert!(blocksize > 0 && q.len() >= x.len() && d.len() >= x.len().div_ceil(blocksize));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.quantize_q8_plain)(x, blocksize, q, d) }
    }

    /// Block int5's integers, block by block; see [`crate::q5::unpack`]. Bit-identical on every
    /// ISA.
    ///
    /// # Panics
    /// If `out.len()` is not a multiple of 32, or `qs` / `qh` are shorter than its blocks need.
    #[inline]
    pub fn unpack_q5(&self, qs: &[u8], qh: &[u8], out: &mut [i8]) {
        let n = out.len();
        assert!(n.is_multiple_of(crate::q5::BLOCK) && qs.len() >= n / 2 && qh.len() >= n / 8);
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.unpack_q5)(qs, qh, out) }
    }

    /// Activations to int8 per block for the integer route; see [`crate::scalar::quantize_q8`].
    /// Bit-identical on every ISA.
    #[inline]
    pub fn quantize_q8(
        &self,
        x: &[f32],
        blocksize: usize,
        qe: &mut [i8],
        qo: &mut [i8],
        xs: &mut [f32],
        sum: &mut [i32],
    ) {
        let nb = x.len().div_ceil(blocksize.max(1));
        assert!(blocksize > 0 && blocksize.is_multiple_of(2));
        assert!(
            qe.len() >= x.len().div_ceil(2) && qo.len() >= x.len().div_ceil(2) && xs.len() >= nb && sum.len() >= nb
        );
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.quantize_q8)(x, blocksize, qe, qo, xs, sum) }
    }

    /// Whether this level has a prefill tile for the 4-bit integer route (without one, 4-bit
    /// prefill dequantizes tiles and runs f32 gemm).
    #[inline]
    pub fn has_fourbit_q8_tile(&self, split: bool) -> bool {
        if split {
            self.fourbit_q8_tile_split.is_some() || self.fourbit_q8_tile8_split.is_some()
        } else {
            self.fourbit_q8_tile.is_some() || self.fourbit_q8_tile8.is_some()
        }
    }

    /// Steps of 32 code bytes for `entries` block entries (`split`: blocks of 32 weights, two to
    /// a step, so an even count).
    fn tile_steps(entries: usize, split: bool) -> usize {
        if split {
            assert!(entries.is_multiple_of(2), "blocks of 32 come two to a step");
            entries / 2
        } else {
            entries
        }
    }

    /// A 4 × 4 tile of the 4-bit integer route (blocks of 64; with `split`, weights in blocks of
    /// 32, two to each 32-byte step: `wf` and `qsum` have an entry per block of 32, `xs` one
    /// per 64 activations); see
    /// [`crate::scalar::fourbit_q8_tile`]. `None` where this level has no such kernel.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn fourbit_q8_tile(
        &self,
        codes: [&[u8]; 4],
        wf: [&[f32]; 4],
        lut: &[i8; 16],
        qe: [&[i8]; 4],
        qo: [&[i8]; 4],
        xs: [&[f32]; 4],
        qsum: [&[i32]; 4],
        split: bool,
    ) -> Option<[[f32; 4]; 4]> {
        let f = if split { self.fourbit_q8_tile_split } else { self.fourbit_q8_tile }?;
        let nb = wf[0].len();
        let steps = Self::tile_steps(nb, split);
        assert!(wf.iter().all(|w| w.len() == nb) && xs.iter().all(|x| x.len() == steps));
        assert!(qsum.iter().all(|q| q.len() == nb));
        assert!(codes.iter().all(|c| c.len() >= 32 * steps) && qe.iter().chain(&qo).all(|q| q.len() >= 32 * steps));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        Some(unsafe { f(codes, wf, lut, qe, qo, xs, qsum) })
    }

    /// [`Kernels::fourbit_q8_tile`] over a run of `tokens` tokens (a multiple of 4) with the four
    /// rows looked up once: `out[4·t + r]` gets the bits the tile gives (row r, token t). Token
    /// `t`'s activations start at `t · q_stride` in `qe` / `qo`, its scales and sums at `t · nb`
    /// in `xs` / `qsum` (`nb = wf[0].len()`; `split` as for [`Kernels::fourbit_q8_tile`]).
    /// `None` where this level has no such kernel or the rows are too wide for it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn fourbit_q8_tile_run(
        &self,
        codes: [&[u8]; 4],
        wf: [&[f32]; 4],
        lut: &[i8; 16],
        qe: &[i8],
        qo: &[i8],
        q_stride: usize,
        xs: &[f32],
        qsum: &[i32],
        tokens: usize,
        out: &mut [f32],
        split: bool,
    ) -> Option<()> {
        let f = if split { self.fourbit_q8_tile_run_split } else { self.fourbit_q8_tile_run }?;
        let nb = wf[0].len();
        let steps = Self::tile_steps(nb, split);
        if !self.has_fourbit_q8_tile_run(steps, split) {
            return None;
        }
        assert!(tokens.is_multiple_of(4) && q_stride >= 32 * steps);
        assert!(wf.iter().all(|w| w.len() == nb) && codes.iter().all(|c| c.len() >= 32 * steps));
        let span = tokens.saturating_sub(1) * q_stride + 32 * steps;
        assert!(tokens == 0 || (qe.len() >= span && qo.len() >= span));
        assert!(xs.len() >= tokens * steps && qsum.len() >= tokens * nb && out.len() >= 4 * tokens);
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { f(codes, wf, lut, qe, qo, q_stride, xs, qsum, tokens, out) };
        Some(())
    }

    /// Whether this level runs decode on a matrix unit ([`Amx::All`]).
    #[inline]
    pub fn has_unit_decode(&self) -> bool {
        self.fourbit_q8_rows16.is_some() && self.q8_rows16.is_some()
    }

    /// Whether this level has [`Kernels::fourbit_q8_panel`].
    #[inline]
    pub fn has_fourbit_q8_panel(&self) -> bool {
        self.fourbit_q8_panel.is_some()
    }

    /// [`crate::scalar::fourbit_q8_panel`] on a matrix unit: `rows` 4-bit rows in blocks of 64
    /// against every token of `panel`, `out[t·rows + r]` or, `row_major`, `out[r·T + t]` (`T`
    /// the panel's tokens with padding; each within the tiles' rounding of the scalar sum).
    /// `scratch` holds the rows' levels: at least [`Kernels::panel_scratch`] bytes. `false`
    /// (nothing written) where the level has no such kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn fourbit_q8_panel(
        &self,
        codes: &[u8],
        wf: &[f32],
        lut: &[i8; 16],
        panel: &crate::panel::Panel,
        rows: usize,
        scratch: &mut [i8],
        out: &mut [f32],
        row_major: bool,
    ) -> bool {
        let Some(f) = self.fourbit_q8_panel else { return false };
        let nb = panel.nb();
        assert!(rows.is_multiple_of(16), "rows in sixteens");
        assert!(codes.len() >= 32 * nb * rows && wf.len() >= nb * rows, "codes or factors too short");
        assert!(scratch.len() >= Self::panel_scratch(nb), "scratch too short");
        assert!(out.len() >= crate::panel::PANEL_TOKENS * panel.groups() * rows, "out too short");
        // SAFETY: the level has the kernel only where the CPU and OS allow it; lengths checked.
        unsafe { f(codes, wf, lut, panel, rows, scratch, out, row_major) };
        true
    }

    /// [`Kernels::fourbit_q8_panel`]'s results for one token (its first, alone) against sixteen
    /// rows, bit for bit, without the matrix unit: row `r`'s `32 · nb` code bytes at
    /// `codes[r·half ..]` (`nb = xs.len()`) and its block factors at `wf[r·nb ..]`,
    /// the token's activations, block scales and sums as [`Kernels::fourbit_q8_tile`] takes them.
    /// `None` where the level has no such kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn fourbit_q8_rows16(
        &self,
        codes: &[u8],
        half: usize,
        wf: &[f32],
        lut: &[i8; 16],
        qe: &[i8],
        qo: &[i8],
        xs: &[f32],
        qsum: &[i32],
    ) -> Option<[f32; 16]> {
        let f = self.fourbit_q8_rows16?;
        let nb = xs.len();
        assert!(half >= 32 * nb && codes.len() >= 15 * half + 32 * nb, "codes too short");
        assert!(wf.len() >= 16 * nb && qsum.len() >= nb && qe.len() >= 32 * nb && qo.len() >= 32 * nb);
        // SAFETY: the level has the kernel only where the CPU allows it; lengths checked.
        Some(unsafe { f(codes, half, wf, lut, qe, qo, xs, qsum) })
    }

    /// [`Kernels::q8_panel`]'s results for one token (its first, alone) against sixteen block
    /// int8 rows, bit for bit, without the matrix unit: row `r`'s values at `w[r·cols ..]` and its
    /// scales at `scale[r·nb ..]`, blocks of `bs` (32 or 64), the token's activations
    /// `q`, block scales `d` (`nb = d.len()`) and block sums `qsum`. `None` where the level has no
    /// such kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn q8_rows16(
        &self,
        w: &[i8],
        cols: usize,
        bs: usize,
        scale: &[f16],
        q: &[i8],
        d: &[f32],
        qsum: &[i32],
    ) -> Option<[f32; 16]> {
        let f = self.q8_rows16?;
        let nb = d.len();
        assert!(matches!(bs, 32 | 64) && cols >= nb * bs && w.len() >= 15 * cols + nb * bs, "weights too short");
        assert!(scale.len() >= 16 * nb && q.len() >= nb * bs && qsum.len() >= nb);
        // SAFETY: the level has the kernel only where the CPU allows it; lengths checked.
        Some(unsafe { f(w, cols, bs, scale, q, d, qsum) })
    }

    /// [`Kernels::q8_rows16`] over sixteen block int5 rows (blocks of 32) unpacked in
    /// registers, with the bits it gives the block int8 rows of the same integers: row `r`'s
    /// nibbles at `qs[r·cols/2 ..]`, fifth bits at `qh[r·cols/8 ..]`, scales at `scale[r·nb ..]`
    /// (`nb = d.len()`). `None` where the level has no such kernel.
    ///
    /// # Panics
    /// If `cols` is not a multiple of 32 below which the `nb` blocks fit, or a slice is short.
    #[allow(clippy::too_many_arguments)]
    pub fn q5_rows16(
        &self,
        qs: &[u8],
        qh: &[u8],
        cols: usize,
        scale: &[f16],
        q: &[i8],
        d: &[f32],
        qsum: &[i32],
    ) -> Option<[f32; 16]> {
        let f = self.q5_rows16?;
        let nb = d.len();
        assert!(cols.is_multiple_of(32) && cols >= 32 * nb, "blocks of 32 within the rows");
        assert!(qs.len() >= 15 * (cols / 2) + 16 * nb && qh.len() >= 15 * (cols / 8) + 4 * nb, "rows too short");
        assert!(scale.len() >= 16 * nb && q.len() >= 32 * nb && qsum.len() >= nb);
        // SAFETY: the level has the kernel only where the CPU allows it; lengths checked.
        Some(unsafe { f(qs, qh, cols, scale, q, d, qsum) })
    }

    /// Whether this level has [`Kernels::q5_rows16`].
    #[inline]
    pub fn has_q5_rows16(&self) -> bool {
        self.q5_rows16.is_some()
    }

    /// Whether this level has [`Kernels::q8_panel`].
    #[inline]
    pub fn has_q8_panel(&self) -> bool {
        self.q8_panel.is_some()
    }

    /// [`crate::scalar::q8_panel`] on a matrix unit: `rows` block int8 rows against every token
    /// of `panel` (blocks of the rows' size), `out[t·rows + r]` or, `row_major`, `out[r·T + t]`
    /// (`T` the panel's tokens with padding). `scratch` holds the rows' scales in f32: at least
    /// `16 · panel.nb()` values. `false` (nothing written) where the level has no such kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn q8_panel(
        &self,
        w: &[i8],
        scale: &[f16],
        panel: &crate::panel::Panel,
        rows: usize,
        scratch: &mut [f32],
        out: &mut [f32],
        row_major: bool,
    ) -> bool {
        let Some(f) = self.q8_panel else { return false };
        let (nb, bs) = (panel.nb(), panel.blocksize());
        assert!(rows.is_multiple_of(16), "rows in sixteens");
        assert!(w.len() >= nb * bs * rows && scale.len() >= nb * rows, "weights or scales too short");
        assert!(scratch.len() >= 16 * nb, "scratch too short");
        assert!(out.len() >= crate::panel::PANEL_TOKENS * panel.groups() * rows, "out too short");
        // SAFETY: the level has the kernel only where the CPU and OS allow it; lengths checked
        // (a panel's blocks are 32 or 64).
        unsafe { f(w, scale, panel, rows, scratch, out, row_major) };
        true
    }

    /// Whether this level has [`Kernels::int8_panel`].
    #[inline]
    pub fn has_int8_panel(&self) -> bool {
        self.int8_panel.is_some()
    }

    /// [`crate::scalar::int8_panel`] on a matrix unit: the exact sums of `rows` whole int8 rows
    /// (LLM.int8's, `64 · panel.nb()` wide) against every token of `panel` ([`Panel::int8`]),
    /// `out[r·T + t]` (`T` the panel's tokens with padding). `false` (nothing written) where the
    /// level has no such kernel.
    ///
    /// [`Panel::int8`]: crate::panel::Panel::int8
    pub fn int8_panel(&self, w: &[i8], panel: &crate::panel::Panel, rows: usize, out: &mut [i32]) -> bool {
        let Some(f) = self.int8_panel else { return false };
        let tokens = crate::panel::PANEL_TOKENS * panel.groups();
        assert!(panel.blocksize() == 64 && rows.is_multiple_of(16), "rows in sixteens, tiles of 64");
        assert!(w.len() >= 64 * panel.nb() * rows, "weights too short");
        assert!(out.len() >= tokens * rows, "out too short");
        // SAFETY: the level has the kernel only where the CPU and OS allow it; lengths checked.
        unsafe { f(w, panel, rows, out) };
        true
    }

    /// Bytes of scratch [`Kernels::fourbit_q8_panel`] takes for rows of `nb` blocks of 64.
    pub fn panel_scratch(nb: usize) -> usize {
        1024 * nb
    }

    /// Whether this level has [`Kernels::fourbit_q8_tile_run`] for rows of `nb` steps of 32
    /// code bytes (blocks of 64, or with `split` pairs of blocks of 32).
    #[inline]
    pub fn has_fourbit_q8_tile_run(&self, nb: usize, split: bool) -> bool {
        #[cfg(target_arch = "x86_64")]
        let fits = nb <= crate::arch::x86_64::TILE_RUN_MAX_BLOCKS;
        #[cfg(not(target_arch = "x86_64"))]
        let fits = {
            let _ = nb;
            false
        };
        (if split { self.fourbit_q8_tile_run_split.is_some() } else { self.fourbit_q8_tile_run.is_some() }) && fits
    }

    /// Whether this level has the eight-token prefill tile ([`Kernels::fourbit_q8_tile8`]).
    #[inline]
    pub fn has_fourbit_q8_tile8(&self, split: bool) -> bool {
        if split {
            self.fourbit_q8_tile8_split.is_some()
        } else {
            self.fourbit_q8_tile8.is_some()
        }
    }

    /// Four rows × eight tokens of the 4-bit integer route (blocks of 64): each (row, token) as
    /// [`Kernels::fourbit_q8_tile`] computes it, given also the tokens' absolute values `aqe`,
    /// `aqo` (|q| of `qe`, `qo`). `None` where this level has no such kernel.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn fourbit_q8_tile8(
        &self,
        codes: [&[u8]; 4],
        wf: [&[f32]; 4],
        lut: &[i8; 16],
        qe: [&[i8]; 8],
        qo: [&[i8]; 8],
        aqe: [&[i8]; 8],
        aqo: [&[i8]; 8],
        xs: [&[f32]; 8],
        split: bool,
    ) -> Option<[[f32; 8]; 4]> {
        let f = if split { self.fourbit_q8_tile8_split } else { self.fourbit_q8_tile8 }?;
        let nb = wf[0].len();
        let steps = Self::tile_steps(nb, split);
        assert!(wf.iter().all(|w| w.len() == nb) && xs.iter().all(|x| x.len() == steps));
        assert!(codes.iter().all(|c| c.len() >= 32 * steps));
        assert!(qe.iter().chain(&qo).chain(&aqe).chain(&aqo).all(|q| q.len() >= 32 * steps));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        Some(unsafe { f(codes, wf, lut, qe, qo, aqe, aqo, xs) })
    }

    /// A 4 × 4 tile of exact int8 dot products; see [`crate::scalar::dot_int8_4x4`].
    #[inline]
    pub fn dot_int8_4x4(&self, a: [&[i8]; 4], w: [&[i8]; 4]) -> [[i32; 4]; 4] {
        let n = a[0].len();
        assert!(a.iter().chain(&w).all(|s| s.len() == n));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_int8_4x4)(a, w) }
    }

    /// Four exact int8 row products against one activation row (see
    /// [`crate::scalar::dot_int8_x4`]); `None` where this level has no such kernel.
    #[inline]
    pub fn dot_int8_x4(&self, a: &[i8], w: [&[i8]; 4]) -> Option<[i32; 4]> {
        let f = self.dot_int8_x4?;
        assert!(w.iter().all(|w| w.len() == a.len()));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        Some(unsafe { f(a, w) })
    }

    /// Every row of a decode task in one call ([`crate::scalar::dot_int8_rows`]): `out[i]` the
    /// exact `Σ a·w_i`; `false` (and `out` untouched) where this level has no such kernel.
    #[inline]
    pub fn dot_int8_rows(&self, a: &[i8], w: &[i8], out: &mut [i32]) -> bool {
        let Some(f) = self.dot_int8_rows else { return false };
        assert_eq!(w.len(), out.len() * a.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { f(a, w, out) };
        true
    }

    /// A block int8 row against block int8 activations ([`crate::scalar::dot_q8`]): exact block
    /// sums, the float sum within the dot-product tolerance of the scalar one.
    ///
    /// # Panics
    /// If `blocksize` is not 32 or 64, or the lengths do not agree (`w`, `q`: `scale.len() ·
    /// blocksize`; `d`: `scale.len()`).
    #[inline]
    pub fn dot_q8(&self, w: &[i8], scale: &[f16], q: &[i8], d: &[f32], blocksize: usize) -> f32 {
        let n = scale.len() * blocksize;
        assert!(crate::q8::BLOCKSIZES.contains(&blocksize) && w.len() == n && q.len() == n && d.len() == scale.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_q8)(w, scale, q, d, blocksize) }
    }

    /// Four block int8 rows against four tokens (see [`crate::scalar::dot_q8_x4t4`]):
    /// `out[t][r]` with the bits [`Kernels::dot_q8_x4`] gives row `r` against token `t`; `None`
    /// where this level has no such kernel.
    #[inline]
    pub fn dot_q8_x4t4(
        &self,
        w: [&[i8]; 4],
        scale: [&[f16]; 4],
        q: [&[i8]; 4],
        d: [&[f32]; 4],
        blocksize: usize,
    ) -> Option<[[f32; 4]; 4]> {
        let f = self.dot_q8_x4t4?;
        let nb = scale[0].len();
        let n = nb * blocksize;
        assert!(crate::q8::BLOCKSIZES.contains(&blocksize));
        assert!((0..4).all(|i| w[i].len() == n && scale[i].len() == nb && q[i].len() == n && d[i].len() == nb));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        Some(unsafe { f(w, scale, q, d, blocksize) })
    }

    /// Four block int8 rows against the same activations, each row bit-identical to
    /// [`Kernels::dot_q8`] of it; `None` where this level has no such kernel.
    ///
    /// # Panics
    /// As [`Kernels::dot_q8`], for every row.
    #[inline]
    pub fn dot_q8_x4(
        &self,
        w: [&[i8]; 4],
        scale: [&[f16]; 4],
        q: &[i8],
        d: &[f32],
        blocksize: usize,
    ) -> Option<[f32; 4]> {
        let f = self.dot_q8_x4?;
        let n = scale[0].len() * blocksize;
        assert!(crate::q8::BLOCKSIZES.contains(&blocksize) && q.len() == n && d.len() == scale[0].len());
        assert!((0..4).all(|r| w[r].len() == n && scale[r].len() == scale[0].len()));
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        Some(unsafe { f(w, scale, q, d, blocksize) })
    }

    /// [`Kernels::dot_q8_rows`] (blocks of 32) over block int5 rows unpacked in registers, with
    /// the bits it gives the block int8 rows of the same integers; false (nothing written) where
    /// the level has no such kernel.
    ///
    /// # Panics
    /// If the lengths do not make `out.len()` rows of `q.len()` weights.
    #[inline]
    pub fn dot_q5_rows(&self, qs: &[u8], qh: &[u8], scale: &[f16], q: &[i8], d: &[f32], out: &mut [f32]) -> bool {
        let Some(f) = self.dot_q5_rows else { return false };
        let (n, cols) = (out.len(), q.len());
        assert!(cols.is_multiple_of(32) && d.len() == cols / 32);
        assert!(scale.len() == n * (cols / 32) && qs.len() == n * cols / 2 && qh.len() == n * cols / 8);
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { f(qs, qh, scale, q, d, out) };
        true
    }

    /// Every row of a decode task in one call (see [`crate::scalar::dot_q8_rows`]), `out[i]`
    /// with [`Kernels::dot_q8`]'s bits for row `i`; `false` (and `out` untouched) where this
    /// level has no such kernel.
    ///
    /// # Panics
    /// As [`Kernels::dot_q8`], for every row.
    #[inline]
    pub fn dot_q8_rows(&self, w: &[i8], scale: &[f16], q: &[i8], d: &[f32], blocksize: usize, out: &mut [f32]) -> bool {
        let Some(f) = self.dot_q8_rows else { return false };
        if out.is_empty() {
            return false;
        }
        let nb = scale.len() / out.len();
        let n = nb * blocksize;
        assert!(crate::q8::BLOCKSIZES.contains(&blocksize) && q.len() == n && d.len() == nb);
        assert!(scale.len() == out.len() * nb && w.len() == out.len() * n);
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { f(w, scale, q, d, blocksize, out) };
        true
    }

    /// Exact `Σ a·w` in i32; entries must lie in -127..=127 (as LLM.int8 produces).
    #[inline]
    pub fn dot_int8(&self, a: &[i8], w: &[i8]) -> i32 {
        assert_eq!(a.len(), w.len());
        // SAFETY: `self` exists only for a supported ISA; lengths checked above.
        unsafe { (self.dot_int8)(a, w) }
    }
}

/// Whether `n ≥ 1` rows of `width` elements, `stride` apart, fit in `len` elements.
/// The checks of the multi-query row loops: `per_len` (one `per`-long stretch per query, `pstride`
/// apart, without overlap) for queries of `d` elements in `q_len`, and `n` rows of `d` `stride`
/// apart in `rows_len`.
///
/// # Panics
/// When any of them fails.
fn multi_fits(per_len: usize, pstride: usize, per: usize, q_len: usize, d: usize, rows_len: usize, stride: usize) {
    assert!(d > 0 && q_len.is_multiple_of(d), "multi-query rows: queries not a whole number of {d}");
    let nq = q_len / d;
    assert!(
        nq == 0 || ((nq < 2 || pstride >= per) && rows_fit(nq, pstride, per, per_len)),
        "multi-query rows: {nq} stretches of {per}, {pstride} apart, do not fit in {per_len}"
    );
    assert!(per == 0 || (stride >= d && rows_fit(per, stride, d, rows_len)), "multi-query rows: rows too short");
}

fn rows_fit(n: usize, stride: usize, width: usize, len: usize) -> bool {
    (n - 1).checked_mul(stride).and_then(|o| o.checked_add(width)).is_some_and(|end| end <= len)
}

/// The process-wide kernels: `LOWBIT_ISA` if set, else the best level. Chosen once.
///
/// # Panics
/// Never; an invalid `LOWBIT_ISA` is reported by [`try_kernels`] and falls back to the best level here.
pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let isa = Isa::from_env().unwrap_or_else(|_| Isa::best());
        Kernels::for_isa(isa).unwrap_or_else(|| Kernels::for_isa(Isa::Scalar).expect("scalar is always supported"))
    })
}

/// Like [`kernels`] but reports an invalid `LOWBIT_ISA` (or `LOWBIT_PREFETCH`) instead of
/// ignoring it; the CLI calls this once at start.
pub fn try_kernels() -> Result<&'static Kernels> {
    Isa::from_env()?;
    crate::Prefetch::from_env()?;
    Amx::from_env()?;
    Ok(kernels())
}
