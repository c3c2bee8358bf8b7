//! Scratch buffers that own whole cache lines.
//!
//! The parallel products keep small per-call and per-thread buffers: the activation scales that
//! every thread reads for every row, and the block factors that each thread rewrites for every
//! row. Allocated as plain `Vec<f32>`, such buffers land wherever the allocator puts them, and a
//! factor buffer that shares a cache line with data another thread reads sends that line between
//! the cores once per row: a product's speed then depends on the heap layout and changes from
//! run to run (docs/PERFORMANCE.md). Buffers of whole, aligned lines cannot share.

use bytemuck::Pod;
use std::marker::PhantomData;

/// 64 bytes on a 64-byte boundary. Also what keeps every 512-bit load of the quantized
/// activations inside one line: a load split across two lines costs the L1-resident 4-bit
/// decode loop dearly (docs/PERFORMANCE.md).
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

/// `len` zeroed values of `T` in whole cache lines of their own.
pub(crate) struct Lined<T> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> Lined<T> {
    /// `len` zeroed values.
    pub(crate) fn zeroed(len: usize) -> Self {
        // Zeroed by the allocator (`calloc`): a loop storing zero lines cost about 2 % of a
        // 16-sequence decode step, whose products each take a few such buffers.
        let lines = bytemuck::allocation::zeroed_vec::<Line>((len * size_of::<T>()).div_ceil(64));
        Lined { lines, len, _t: PhantomData }
    }
}

impl<T: Pod> std::ops::Deref for Lined<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> std::ops::DerefMut for Lined<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_aligned_lines() {
        for len in [0usize, 1, 15, 16, 17, 64, 100] {
            let mut v = Lined::<f32>::zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            assert_eq!(v.lines.len() * 64, (len * 4).next_multiple_of(64));
            assert_eq!(v.last().copied(), len.checked_sub(1).map(|i| i as f32));
        }
    }
}
