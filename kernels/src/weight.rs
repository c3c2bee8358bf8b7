//! Borrowed views of weight matrices in every stored scheme — usually slices of an mmapped file.
//! A view is checked once ([`Weight::validate`]); the kernels then trust its lengths.

use crate::error::{KernelError, Result};
use crate::fourbit::{check_blocksize, code_at, nested_scale, FourBitKind};
use crate::int8::INV_127;
use half::{bf16, f16};

/// Block scales of a 4-bit weight, as stored.
#[derive(Debug, Clone, Copy)]
pub enum AbsmaxRef<'a> {
    /// One float32 per block.
    F32(&'a [f32]),
    /// Double quantization (see [`crate::fourbit::Absmax::Nested`]).
    Nested {
        /// One dynamic-map code per block.
        codes: &'a [u8],
        /// One scale per nested block.
        nested_absmax: &'a [f32],
        /// Nested block size.
        nested_blocksize: usize,
        /// Added back after scaling.
        offset: f32,
    },
}

impl AbsmaxRef<'_> {
    /// Number of blocks described.
    pub fn len(&self) -> usize {
        match self {
            AbsmaxRef::F32(v) => v.len(),
            AbsmaxRef::Nested { codes, .. } => codes.len(),
        }
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the scales of blocks `first .. first + out.len()` into `out` — the hot-loop form of
    /// [`AbsmaxRef::get`], with the table fetched once.
    #[inline]
    pub fn decode(&self, first: usize, out: &mut [f32]) {
        match *self {
            AbsmaxRef::F32(v) => out.copy_from_slice(&v[first..first + out.len()]),
            AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize, offset } => {
                let map = crate::codebook::dynamic_map();
                for (run, group) in nested_runs(first, out.len(), nested_blocksize) {
                    let na = nested_absmax[group];
                    for (o, &c) in out[run.clone()].iter_mut().zip(&codes[first + run.start..]) {
                        *o = map[c as usize] * na + offset;
                    }
                }
            }
        }
    }

    /// The float32 scale of block `b` (bit-exact with bitsandbytes' reconstruction).
    #[inline]
    pub fn get(&self, b: usize) -> f32 {
        match *self {
            AbsmaxRef::F32(v) => v[b],
            AbsmaxRef::Nested { codes, nested_absmax, nested_blocksize, offset } => {
                nested_scale(codes[b], nested_absmax[b / nested_blocksize], offset)
            }
        }
    }
}

/// The runs of blocks `first .. first + len` that share one nested scale, as (range relative to
/// `first`, nested group). Walking group by group costs one division per group instead of one
/// per block (a 64-bit divide costs more than the rest of a decode loop together).
pub(crate) fn nested_runs(
    first: usize,
    len: usize,
    nested_blocksize: usize,
) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> {
    let mut j = 0;
    std::iter::from_fn(move || {
        if j >= len {
            return None;
        }
        let group = (first + j) / nested_blocksize;
        let end = ((group + 1) * nested_blocksize - first).min(len);
        let run = j..end;
        j = end;
        Some((run, group))
    })
}

/// A 4-bit weight matrix, `rows × cols`, in bitsandbytes' flat-block layout.
#[derive(Debug, Clone, Copy)]
pub struct FourBitRef<'a> {
    /// Code table.
    pub kind: FourBitKind,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Elements per block.
    pub blocksize: usize,
    /// Packed codes, `ceil(rows·cols/2)` bytes.
    pub codes: &'a [u8],
    /// Block scales, `ceil(rows·cols/blocksize)`.
    pub absmax: AbsmaxRef<'a>,
}

/// An LLM.int8 weight matrix, `rows × cols`.
#[derive(Debug, Clone, Copy)]
pub struct Int8Ref<'a> {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Row-major codes.
    pub cb: &'a [i8],
    /// Per-row scales.
    pub scb: &'a [f32],
}

/// A block int8 weight matrix, `rows × cols`: each row a whole number of blocks of `blocksize`
/// int8 values with one f16 scale each (see [`crate::q8`]).
#[derive(Debug, Clone, Copy)]
pub struct Q8Ref<'a> {
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of `blocksize`).
    pub cols: usize,
    /// Elements per block (32 or 64).
    pub blocksize: usize,
    /// Row-major values.
    pub qs: &'a [i8],
    /// Block scales, row-major (`cols / blocksize` per row).
    pub scales: &'a [f16],
}

/// A block int5 weight matrix, `rows × cols`: each row a whole number of blocks of 32 five-bit
/// integers with one f16 scale each (see [`crate::q5`]).
#[derive(Debug, Clone, Copy)]
pub struct Q5Ref<'a> {
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of 32).
    pub cols: usize,
    /// Low four bits, 16 bytes a block.
    pub qs: &'a [u8],
    /// Fifth bits, 4 bytes a block.
    pub qh: &'a [u8],
    /// Block scales, row-major (`cols / 32` per row).
    pub scales: &'a [f16],
}

impl Q5Ref<'_> {
    /// Rows `r0 .. r0 + n` as block int8 (the same integers and scales), their integers
    /// unpacked into `buf` (which grows to `n · cols`).
    pub fn as_q8<'b>(&'b self, k: &crate::Kernels, r0: usize, n: usize, buf: &'b mut Vec<i8>) -> Q8Ref<'b> {
        let (cols, nb) = (self.cols, self.cols / crate::q5::BLOCK);
        let len = n * cols;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let blocks = r0 * nb..(r0 + n) * nb;
        k.unpack_q5(
            &self.qs[blocks.start * crate::q5::QS_BYTES..blocks.end * crate::q5::QS_BYTES],
            &self.qh[blocks.start * crate::q5::QH_BYTES..blocks.end * crate::q5::QH_BYTES],
            &mut buf[..len],
        );
        Q8Ref { rows: n, cols, blocksize: crate::q5::BLOCK, qs: &buf[..len], scales: &self.scales[blocks] }
    }
}

/// A weight matrix `rows × cols` (output features × input features) in any stored scheme.
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    /// Dense float32, row-major.
    F32 {
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Values.
        data: &'a [f32],
    },
    /// Dense float16, row-major.
    F16 {
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Values.
        data: &'a [f16],
    },
    /// Dense bfloat16, row-major.
    Bf16 {
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Values.
        data: &'a [bf16],
    },
    /// LLM.int8.
    Int8(Int8Ref<'a>),
    /// Block int8.
    Q8(Q8Ref<'a>),
    /// Block int5.
    Q5(Q5Ref<'a>),
    /// NF4 / FP4.
    FourBit(FourBitRef<'a>),
}

fn expect_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::ShapeMismatch { op: "weight", what, expected, got })
    }
}

impl Weight<'_> {
    /// The storage scheme's short name (`nf4`, `fp4`, `int8`, `f16`, `bf16`, `f32`).
    pub fn scheme_name(&self) -> &'static str {
        match self {
            Weight::F32 { .. } => "f32",
            Weight::F16 { .. } => "f16",
            Weight::Bf16 { .. } => "bf16",
            Weight::Int8(_) => "int8",
            Weight::Q8(_) => "q8",
            Weight::Q5(_) => "q5",
            Weight::FourBit(w) => match w.kind {
                crate::FourBitKind::Nf4 => "nf4",
                crate::FourBitKind::Fp4 => "fp4",
            },
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Weight::F32 { rows, .. } | Weight::F16 { rows, .. } | Weight::Bf16 { rows, .. } => *rows,
            Weight::Int8(w) => w.rows,
            Weight::Q8(w) => w.rows,
            Weight::Q5(w) => w.rows,
            Weight::FourBit(w) => w.rows,
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Weight::F32 { cols, .. } | Weight::F16 { cols, .. } | Weight::Bf16 { cols, .. } => *cols,
            Weight::Int8(w) => w.cols,
            Weight::Q8(w) => w.cols,
            Weight::Q5(w) => w.cols,
            Weight::FourBit(w) => w.cols,
        }
    }

    /// Checks every buffer length against the shape. Call once when the weight is loaded.
    pub fn validate(&self) -> Result<()> {
        let (rows, cols) = (self.rows(), self.cols());
        let n = rows.checked_mul(cols).ok_or(KernelError::Overflow { op: "weight", rows, cols })?;
        match self {
            Weight::F32 { data, .. } => expect_len("data", n, data.len()),
            Weight::F16 { data, .. } => expect_len("data", n, data.len()),
            Weight::Bf16 { data, .. } => expect_len("data", n, data.len()),
            Weight::Int8(w) => {
                expect_len("cb", n, w.cb.len())?;
                expect_len("scb", rows, w.scb.len())
            }
            Weight::Q8(w) => {
                if !crate::q8::BLOCKSIZES.contains(&w.blocksize) || !cols.is_multiple_of(w.blocksize) {
                    return Err(KernelError::BadBlocksize(w.blocksize));
                }
                expect_len("qs", n, w.qs.len())?;
                expect_len("scales", n / w.blocksize, w.scales.len())
            }
            Weight::Q5(w) => {
                if !cols.is_multiple_of(crate::q5::BLOCK) {
                    return Err(KernelError::BadBlocksize(crate::q5::BLOCK));
                }
                expect_len("qs", n / 2, w.qs.len())?;
                expect_len("qh", n / 8, w.qh.len())?;
                expect_len("scales", n / crate::q5::BLOCK, w.scales.len())
            }
            Weight::FourBit(w) => {
                check_blocksize(w.blocksize)?;
                expect_len("codes", n.div_ceil(2), w.codes.len())?;
                let nb = n.div_ceil(w.blocksize);
                expect_len("absmax", nb, w.absmax.len())?;
                if let AbsmaxRef::Nested { nested_absmax, nested_blocksize, .. } = w.absmax {
                    if nested_blocksize == 0 {
                        return Err(KernelError::BadBlocksize(0));
                    }
                    expect_len("nested_absmax", nb.div_ceil(nested_blocksize), nested_absmax.len())?;
                }
                Ok(())
            }
        }
    }

    /// Dequantizes row `r` into `out` (length `cols`) — bit-exact with bitsandbytes for the
    /// quantized schemes. Used for embedding lookups, never for whole matrices.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let cols = self.cols();
        assert!(r < self.rows() && out.len() == cols, "row {r} / out {} out of range", out.len());
        let range = r * cols..(r + 1) * cols;
        match self {
            Weight::F32 { data, .. } => out.copy_from_slice(&data[range]),
            Weight::F16 { data, .. } => out.iter_mut().zip(&data[range]).for_each(|(o, v)| *o = v.to_f32()),
            Weight::Bf16 { data, .. } => out.iter_mut().zip(&data[range]).for_each(|(o, v)| *o = v.to_f32()),
            Weight::Int8(w) => {
                let s = w.scb[r] * INV_127;
                out.iter_mut().zip(&w.cb[range]).for_each(|(o, &c)| *o = c as f32 * s);
            }
            Weight::Q8(w) => {
                let scales = &w.scales[r * cols / w.blocksize..(r + 1) * cols / w.blocksize];
                for ((o, q), s) in out.chunks_mut(w.blocksize).zip(w.qs[range].chunks(w.blocksize)).zip(scales) {
                    let s = s.to_f32();
                    o.iter_mut().zip(q).for_each(|(o, &q)| *o = q as f32 * s);
                }
            }
            Weight::Q5(w) => {
                let nb = cols / crate::q5::BLOCK;
                let mut ints = [0i8; crate::q5::BLOCK];
                for (b, o) in (r * nb..(r + 1) * nb).zip(out.chunks_mut(crate::q5::BLOCK)) {
                    let (qs, qh) = (crate::q5::QS_BYTES, crate::q5::QH_BYTES);
                    crate::q5::unpack_block(&w.qs[b * qs..(b + 1) * qs], &w.qh[b * qh..(b + 1) * qh], &mut ints);
                    let s = w.scales[b].to_f32();
                    o.iter_mut().zip(&ints).for_each(|(o, &q)| *o = q as f32 * s);
                }
            }
            Weight::FourBit(w) => {
                let levels = w.kind.levels();
                for (o, i) in out.iter_mut().zip(range) {
                    *o = levels[code_at(w.codes, i) as usize] * w.absmax.get(i / w.blocksize);
                }
            }
        }
    }

    /// Bytes the weight occupies (what a matvec must stream from memory).
    pub fn byte_len(&self) -> usize {
        match self {
            Weight::F32 { data, .. } => data.len() * 4,
            Weight::F16 { data, .. } => data.len() * 2,
            Weight::Bf16 { data, .. } => data.len() * 2,
            Weight::Int8(w) => w.cb.len() + w.scb.len() * 4,
            Weight::Q8(w) => w.qs.len() + w.scales.len() * 2,
            Weight::Q5(w) => w.qs.len() + w.qh.len() + w.scales.len() * 2,
            Weight::FourBit(w) => {
                w.codes.len()
                    + match w.absmax {
                        AbsmaxRef::F32(v) => v.len() * 4,
                        AbsmaxRef::Nested { codes, nested_absmax, .. } => codes.len() + nested_absmax.len() * 4,
                    }
            }
        }
    }
}
