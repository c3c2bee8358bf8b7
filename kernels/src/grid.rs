//! Where the eight-token rows kernels ([`crate::Kernels::dot_fourbit_q8_rows_t8`],
//! [`crate::Kernels::dot_q8_rows_t8`]) write: a task's rows against a group of eight tokens, in the
//! caller's own layout, so no copy rearranges them afterwards (at SmolLM2's widths that copy took
//! a tenth of a batched product).

/// Tokens in a group: the grid's width.
const TOKENS: usize = crate::pairs::GROUP;

/// `rows` × eight cells of an `f32` buffer: row `i`, token `t` at `i·row_stride + t·token_stride`.
/// Decode writes a task's rows into its row-major output (`token_stride` 1: the eight tokens of a
/// row are one store), prefill into token-major runs (`row_stride` 1).
pub struct Grid<'a> {
    data: &'a mut [f32],
    rows: usize,
    row_stride: usize,
    token_stride: usize,
}

impl<'a> Grid<'a> {
    /// The grid over `data`.
    ///
    /// # Panics
    /// If a cell falls outside `data`.
    pub fn new(data: &'a mut [f32], rows: usize, row_stride: usize, token_stride: usize) -> Grid<'a> {
        if rows > 0 {
            let last = (rows - 1).checked_mul(row_stride).and_then(|r| r.checked_add((TOKENS - 1) * token_stride));
            assert!(last.is_some_and(|l| l < data.len()), "a {rows}-row grid does not fit {} values", data.len());
        }
        Grid { data, rows, row_stride, token_stride }
    }

    /// Rows of the grid.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the cell of row `i`, token `t`.
    ///
    /// # Panics
    /// If `i ≥ rows` or `t ≥ 8`.
    pub fn set(&mut self, i: usize, t: usize, v: f32) {
        assert!(i < self.rows && t < TOKENS);
        self.data[i * self.row_stride + t * self.token_stride] = v;
    }

    /// The cell of row `i`, token `t`.
    ///
    /// # Panics
    /// If `i ≥ rows` or `t ≥ 8`.
    pub fn get(&self, i: usize, t: usize) -> f32 {
        assert!(i < self.rows && t < TOKENS);
        self.data[i * self.row_stride + t * self.token_stride]
    }

    /// The first cell and the two strides, for the SIMD kernels (every cell in bounds, checked
    /// by [`Grid::new`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn raw(&mut self) -> (*mut f32, usize, usize) {
        (self.data.as_mut_ptr(), self.row_stride, self.token_stride)
    }
}
