//! Key/value cache. With a sliding window W it is a ring of W slots indexed by position mod W,
//! so memory stays flat however long generation runs; without one it grows up to the context
//! length and a longer sequence is an error. Keys and values are kept as f32 (exact), f16
//! (half the memory; each value rounded once when stored) or q8 (about a quarter: int8 in
//! blocks of [`Q8_BLOCK`] with one f16 scale each, as llama.cpp's `q8_0` cache).

use half::f16;
use half::slice::HalfFloatSliceExt;
use std::borrow::Cow;

/// The element type of a KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// float32: attention sees exactly the keys and values computed.
    #[default]
    F32,
    /// float16: half the memory, each key and value rounded to f16 when stored.
    F16,
    /// int8 in blocks of [`Q8_BLOCK`] along each head's row, one f16 scale (absmax / 127) per
    /// block: 34 bytes per 32 values.
    Q8,
}

/// Values per scale of a q8 cache (a row shorter than a block, or its tail, is a short block).
pub const Q8_BLOCK: usize = 32;

impl KvType {
    /// Bytes one cached row of `n` values (one kv head's key or value at one position) takes.
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            KvType::F32 => 4 * n,
            KvType::F16 => 2 * n,
            KvType::Q8 => n + 2 * n.div_ceil(Q8_BLOCK),
        }
    }

    /// `f32`, `f16` or `q8`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
        }
    }

    /// Parses a name as [`KvType::name`] writes it.
    pub fn from_name(s: &str) -> Option<KvType> {
        [KvType::F32, KvType::F16, KvType::Q8].into_iter().find(|k| k.name() == s)
    }
}

/// One tensor of cached values (keys or values of a layer), slot-major. Positions and lengths
/// are in elements and, for q8, whole rows.
#[derive(Debug, Clone)]
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8(Q8Rows),
}

/// Rows of `row` values as int8 with one f16 scale per block of [`Q8_BLOCK`] (the last block of
/// a row may be short): `value = q · scale`.
#[derive(Debug, Clone)]
struct Q8Rows {
    row: usize,
    q: Vec<i8>,
    scales: Vec<f16>,
}

impl Q8Rows {
    /// Scales before element `elems` (a whole number of rows).
    fn blocks(&self, elems: usize) -> usize {
        debug_assert!(elems.is_multiple_of(self.row), "q8 cache access in whole rows");
        elems / self.row * self.row.div_ceil(Q8_BLOCK)
    }

    /// Quantizes whole rows of `x` into place `at`: per block, scale = f16(absmax / 127) and
    /// q = round-half-even(x / scale), clamped to ±127 (f16 rounding may shrink the scale).
    fn write(&mut self, at: usize, x: &[f32]) {
        let (s, nb) = (self.blocks(at), self.blocks(x.len()));
        let q = &mut self.q[at..at + x.len()];
        let blocks = q
            .chunks_mut(self.row)
            .zip(x.chunks(self.row))
            .flat_map(|(qr, xr)| qr.chunks_mut(Q8_BLOCK).zip(xr.chunks(Q8_BLOCK)));
        for ((qb, xb), scale) in blocks.zip(&mut self.scales[s..s + nb]) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = f16::from_f32(amax / 127.0);
            let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
            for (o, &v) in qb.iter_mut().zip(xb) {
                *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
            *scale = d;
        }
    }

    /// Whole rows from element `at` as f32 (`q · scale`).
    fn read(&self, at: usize, out: &mut [f32]) {
        let (s, nb) = (self.blocks(at), self.blocks(out.len()));
        let q = &self.q[at..at + out.len()];
        let blocks = out
            .chunks_mut(self.row)
            .zip(q.chunks(self.row))
            .flat_map(|(or, qr)| or.chunks_mut(Q8_BLOCK).zip(qr.chunks(Q8_BLOCK)));
        for ((ob, qb), scale) in blocks.zip(&self.scales[s..s + nb]) {
            let d = scale.to_f32();
            for (o, &v) in ob.iter_mut().zip(qb) {
                *o = v as f32 * d;
            }
        }
    }
}

impl Store {
    /// Bytes allocated.
    fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => 4 * v.len(),
            Store::F16(v) => 2 * v.len(),
            Store::Q8(r) => r.q.len() + 2 * r.scales.len(),
        }
    }

    /// `n` zero elements of this store's type, zeroed by the allocator (fresh pages cost no
    /// pass of stores: filling a 706-token prompt's cache with zeros first took 6 % of its
    /// prefill, serially).
    fn zeroed_like(&self, n: usize) -> Store {
        match self {
            Store::F32(_) => Store::F32(vec![0.0; n]),
            Store::F16(_) => Store::F16(bytemuck::zeroed_vec(n)),
            Store::Q8(r) => Store::Q8(Q8Rows { row: r.row, q: vec![0; n], scales: bytemuck::zeroed_vec(r.blocks(n)) }),
        }
    }

    fn write(&mut self, at: usize, x: &[f32]) {
        match self {
            Store::F32(v) => v[at..at + x.len()].copy_from_slice(x),
            Store::F16(v) => v[at..at + x.len()].convert_from_f32_slice(x),
            Store::Q8(r) => r.write(at, x),
        }
    }

    /// Copies `n` elements of `src` (the same type) from `from` to `at`.
    fn copy_from(&mut self, at: usize, src: &Store, from: usize, n: usize) {
        match (self, src) {
            (Store::F32(d), Store::F32(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            (Store::F16(d), Store::F16(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            (Store::Q8(d), Store::Q8(s)) => {
                d.q[at..at + n].copy_from_slice(&s.q[from..from + n]);
                let (a, f, nb) = (d.blocks(at), s.blocks(from), s.blocks(n));
                d.scales[a..a + nb].copy_from_slice(&s.scales[f..f + nb]);
            }
            _ => unreachable!("a cache has one element type"),
        }
    }

    /// Elements `at .. at + out.len()` as f32: exact for f32 and f16, `q · scale` for q8.
    fn read(&self, at: usize, out: &mut [f32]) {
        match self {
            Store::F32(v) => out.copy_from_slice(&v[at..at + out.len()]),
            Store::F16(v) => v[at..at + out.len()].convert_to_f32_slice(out),
            Store::Q8(r) => r.read(at, out),
        }
    }
}

/// Cached keys and values of one layer, head-major: `kv_heads × slots × head_dim` each, so one
/// head's cached rows are contiguous. Decode attention streams them from memory every step (the
/// weights pass through the caches in between), and the hardware prefetchers follow a contiguous
/// run where they lose rows interleaved with the other heads' (docs/PERFORMANCE.md).
#[derive(Debug, Clone)]
pub struct LayerCache {
    k: Store,
    v: Store,
    /// Slots allocated per head.
    slots: usize,
}

/// One kv head's cached keys and values of a layer, as stored: `slots × head_dim` each,
/// slot-major (the slot of position p at row [`KvCache::slot`]`(p)`).
#[derive(Debug, Clone, Copy)]
pub enum HeadView<'a> {
    /// float32 keys and values.
    F32(&'a [f32], &'a [f32]),
    /// float16 keys and values.
    F16(&'a [f16], &'a [f16]),
    /// int8 keys and values with their block scales (read through [`KvCache::gather`]).
    Q8,
}

/// The cache of every layer plus the number of positions already processed.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    kv_heads: usize,
    head_dim: usize,
    /// Ring size for sliding-window models.
    window: Option<usize>,
    /// Longest sequence allowed.
    context: usize,
    /// Element type.
    kind: KvType,
    /// Positions processed so far.
    pub len: usize,
    /// The named LoRA adapter this sequence runs with, and its multiplier.
    adapter: Option<(usize, f32)>,
}

impl KvCache {
    /// An empty cache of `kv_heads` heads of `head_dim` per layer. `context` caps the sequence for
    /// full attention; with a window the ring has `window` slots and sequences may run on
    /// indefinitely.
    pub fn new(
        num_layers: usize,
        kv_heads: usize,
        head_dim: usize,
        window: Option<usize>,
        context: usize,
        kind: KvType,
    ) -> KvCache {
        let store = || match kind {
            KvType::F32 => Store::F32(Vec::new()),
            KvType::F16 => Store::F16(Vec::new()),
            KvType::Q8 => Store::Q8(Q8Rows { row: head_dim, q: Vec::new(), scales: Vec::new() }),
        };
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache { k: store(), v: store(), slots: 0 }).collect(),
            kv_heads,
            head_dim,
            window,
            context,
            kind,
            len: 0,
            adapter: None,
        }
    }

    /// The element type.
    pub fn kind(&self) -> KvType {
        self.kind
    }

    /// Slots the cache can hold (what is allocated at most).
    pub fn capacity(&self) -> usize {
        self.window.unwrap_or(self.context)
    }

    /// Whether `n` more positions fit.
    pub fn fits(&self, n: usize) -> bool {
        self.window.is_some() || n <= self.context.saturating_sub(self.len)
    }

    /// The slot holding position `pos`.
    pub fn slot(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => pos % w,
            None => pos,
        }
    }

    /// Kv head `kvh`'s keys and values in `layer`, in their stored type.
    pub fn head(&self, layer: usize, kvh: usize) -> HeadView<'_> {
        let l = &self.layers[layer];
        let r = kvh * l.slots * self.head_dim..(kvh + 1) * l.slots * self.head_dim;
        match l {
            LayerCache { k: Store::F32(k), v: Store::F32(v), .. } => HeadView::F32(&k[r.clone()], &v[r]),
            LayerCache { k: Store::F16(k), v: Store::F16(v), .. } => HeadView::F16(&k[r.clone()], &v[r]),
            LayerCache { k: Store::Q8(_), v: Store::Q8(_), .. } => HeadView::Q8,
            _ => unreachable!("a cache has one element type"),
        }
    }

    /// Hints that kv head `kvh`'s keys and values in slots `first .. first + n` of `layer` will be
    /// read soon (a decode task's next rows; an f32 or f16 cache, read in place).
    pub fn prefetch(&self, layer: usize, kvh: usize, first: usize, n: usize) {
        let (at, len) = (first * self.head_dim, n * self.head_dim);
        match self.head(layer, kvh) {
            HeadView::F32(k, v) => {
                lowbit_kernels::prefetch(k, at, len);
                lowbit_kernels::prefetch(v, at, len);
            }
            HeadView::F16(k, v) => {
                lowbit_kernels::prefetch(k, at, len);
                lowbit_kernels::prefetch(v, at, len);
            }
            HeadView::Q8 => {}
        }
    }

    /// Slots `first .. first + n` of kv head `kvh`'s keys (or values) in `layer`, as f32 in `out`
    /// (`n × head_dim`): for caches that are not f32.
    pub fn gather(&self, layer: usize, values: bool, kvh: usize, first: usize, n: usize, out: &mut Vec<f32>) {
        let (l, hd) = (&self.layers[layer], self.head_dim);
        let store = if values { &l.v } else { &l.k };
        out.clear();
        out.resize(n * hd, 0.0);
        store.read((kvh * l.slots + first) * hd, out);
    }

    /// Kv head `kvh`'s keys and values in `layer` as f32 (`slots × head_dim`): borrowed for an
    /// f32 cache, converted (exactly) for an f16 one, dequantized for q8.
    pub fn head_f32(&self, layer: usize, kvh: usize) -> (Cow<'_, [f32]>, Cow<'_, [f32]>) {
        match self.head(layer, kvh) {
            HeadView::F32(k, v) => (Cow::Borrowed(k), Cow::Borrowed(v)),
            HeadView::F16(k, v) => {
                let conv = |x: &[f16]| {
                    let mut out = vec![0f32; x.len()];
                    x.convert_to_f32_slice(&mut out);
                    Cow::Owned(out)
                };
                (conv(k), conv(v))
            }
            HeadView::Q8 => {
                let slots = self.layers[layer].slots;
                let mut out = [Vec::new(), Vec::new()];
                for (values, o) in out.iter_mut().enumerate() {
                    self.gather(layer, values == 1, kvh, 0, slots, o);
                }
                let [k, v] = out;
                (Cow::Owned(k), Cow::Owned(v))
            }
        }
    }

    /// The slots that hold positions `lo ..= hi` (all cached and inside the window), in position
    /// order, as `(first slot, count)` runs: one run, or two where the ring wraps (the second
    /// then has a count of 0 when it does not).
    pub fn slot_runs(&self, lo: usize, hi: usize) -> [(usize, usize); 2] {
        let (a, n) = (self.slot(lo), hi + 1 - lo);
        match self.window {
            Some(w) if a + n > w => [(a, w - a), (0, n - (w - a))],
            _ => [(a, n), (0, 0)],
        }
    }

    /// Makes room for `positions` positions in every layer at once (up to the capacity), so a
    /// sequence whose length is known does not grow its cache step by step as it goes.
    pub fn reserve(&mut self, positions: usize) {
        let slots = positions.min(self.capacity());
        for layer in 0..self.layers.len() {
            if self.layers[layer].slots < slots {
                self.grow(layer, slots);
            }
        }
    }

    /// The room [`KvCache::put`] makes while growing to hold positions `.. positions` (its
    /// doubling's end), made at once: a prompt's cache then grows, allocating and moving its
    /// rows, once per layer instead of once per doubling.
    pub fn make_room(&mut self, positions: usize) {
        let cap = self.capacity();
        let need = positions.min(cap);
        for layer in 0..self.layers.len() {
            let mut slots = self.layers[layer].slots;
            if slots >= need {
                continue;
            }
            while slots < need {
                slots = (slots + 1).max((slots * 2).min(cap));
            }
            self.grow(layer, slots);
        }
    }

    /// `layer`'s stores with room for `slots` slots; each head's rows move to their place in
    /// the larger block.
    fn grow(&mut self, layer: usize, slots: usize) {
        let (nkv, hd) = (self.kv_heads, self.head_dim);
        let l = &mut self.layers[layer];
        for store in [&mut l.k, &mut l.v] {
            let mut grown = store.zeroed_like(nkv * slots * hd);
            for h in 0..nkv {
                grown.copy_from(h * slots * hd, store, h * l.slots * hd, l.slots * hd);
            }
            *store = grown;
        }
        l.slots = slots;
    }

    /// Stores the key and value of `pos` in `layer` (`kv_heads × head_dim` each).
    pub fn put(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let slot = self.slot(pos);
        let have = self.layers[layer].slots;
        if slot >= have {
            // Grow in steps so a long generation does not reallocate at every token.
            self.grow(layer, (slot + 1).max((have * 2).min(self.capacity())));
        }
        let (nkv, hd) = (self.kv_heads, self.head_dim);
        let l = &mut self.layers[layer];
        for h in 0..nkv {
            let at = (h * l.slots + slot) * hd;
            l.k.write(at, &k[h * hd..(h + 1) * hd]);
            l.v.write(at, &v[h * hd..(h + 1) * hd]);
        }
    }

    /// Stores the keys and values of positions `p0 .. p0 + n` of `layer` (`n` rows of
    /// `kv_heads × head_dim` each in `k` and `v`): what [`KvCache::put`] stores for each, with
    /// each kv head's keys and each one's values a task on the team's threads for an f32 or f16
    /// cache (a prompt's rows land on fresh pages, whose first touch dominated its store: 5 % of
    /// a 706-token prefill, serially).
    pub fn put_run(&mut self, layer: usize, p0: usize, k: &[f32], v: &[f32]) {
        let w = self.width();
        let n = k.len() / w;
        self.make_room(p0 + n);
        let (nkv, hd) = (self.kv_heads, self.head_dim);
        let slots: Vec<usize> = (p0..p0 + n).map(|p| self.slot(p)).collect();
        let l = &mut self.layers[layer];
        let per_head = l.slots * hd;
        // Task (store, head): its region of the store and the source rows' columns.
        fn run<T: Send>(
            regions: Vec<(&mut [T], &[f32], usize)>,
            slots: &[usize],
            w: usize,
            hd: usize,
            put: impl Fn(&mut [T], &[f32]) + Sync + Send,
        ) {
            let mut regions = regions;
            lowbit_kernels::team::for_each_chunk_mut(
                &mut regions,
                1,
                || (),
                |_, _, r| {
                    let (dst, src, h) = &mut r[0];
                    for (i, &slot) in slots.iter().enumerate() {
                        put(&mut dst[slot * hd..(slot + 1) * hd], &src[i * w + *h * hd..i * w + (*h + 1) * hd]);
                    }
                },
            );
        }
        match (&mut l.k, &mut l.v) {
            (Store::F32(ks), Store::F32(vs)) => {
                let regions =
                    ks.chunks_mut(per_head).zip([k].repeat(nkv)).chain(vs.chunks_mut(per_head).zip([v].repeat(nkv)));
                let regions = regions.enumerate().map(|(i, (d, s))| (d, s, i % nkv)).collect();
                run(regions, &slots, w, hd, |d: &mut [f32], s| d.copy_from_slice(s));
            }
            (Store::F16(ks), Store::F16(vs)) => {
                let regions =
                    ks.chunks_mut(per_head).zip([k].repeat(nkv)).chain(vs.chunks_mut(per_head).zip([v].repeat(nkv)));
                let regions = regions.enumerate().map(|(i, (d, s))| (d, s, i % nkv)).collect();
                run(regions, &slots, w, hd, |d: &mut [f16], s| d.convert_from_f32_slice(s));
            }
            _ => {
                for i in 0..n {
                    self.put(layer, p0 + i, &k[i * w..(i + 1) * w], &v[i * w..(i + 1) * w]);
                }
            }
        }
    }

    /// Bytes currently allocated.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.k.bytes() + l.v.bytes()).sum()
    }

    /// The width of one slot (kv heads × head dim).
    pub fn width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Forgets everything, the adapter pick too.
    pub fn clear(&mut self) {
        self.len = 0;
        self.adapter = None;
    }

    /// Runs the sequence with the named run-time LoRA adapter `index`
    /// ([`crate::Model::adapter_index`]), its update multiplied by `scale`, or with none. The
    /// cached keys and values were computed with the adapter, so it is picked once, on an empty
    /// cache; a pick on a cache that holds positions is refused.
    pub fn set_adapter(&mut self, pick: Option<(usize, f32)>) -> crate::Result<()> {
        if self.len > 0 && pick != self.adapter {
            return Err(crate::RuntimeError::Options("a sequence's adapter is picked before its first token".into()));
        }
        if pick.is_some_and(|(_, s)| !s.is_finite()) {
            return Err(crate::RuntimeError::Options("an adapter's scale must be a finite number".into()));
        }
        self.adapter = pick;
        Ok(())
    }

    /// The adapter pick ([`KvCache::set_adapter`]).
    pub fn adapter(&self) -> Option<(usize, f32)> {
        self.adapter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An f16 cache gives back each value rounded once, through every reader.
    #[test]
    fn f16_cache_rounds_once() {
        let mut c = KvCache::new(2, 2, 2, None, 8, KvType::F16);
        let k = [1.0f32 / 3.0, -70000.5, 1e-8, 2.5];
        let v = [0.1f32, 0.2, 0.3, 0.4];
        c.put(1, 3, &k, &v);
        let rounded = |x: &[f32]| x.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect::<Vec<_>>();
        for h in 0..2 {
            let (kc, vc) = c.head_f32(1, h);
            assert_eq!(&kc[6..8], rounded(&k[2 * h..2 * h + 2]).as_slice());
            assert_eq!(&vc[6..8], rounded(&v[2 * h..2 * h + 2]).as_slice());
        }
        let mut out = Vec::new();
        c.gather(1, true, 1, 3, 1, &mut out);
        assert_eq!(out, rounded(&v[2..4]));
        assert_eq!(c.bytes(), 2 * 16 * 2);
        assert!(matches!(c.head(1, 0), HeadView::F16(..)));
    }

    /// A q8 cache: each block within half a step of its scale of the stored value, the scale
    /// f16(absmax / 127), exact zeros, a short last block of a row, rows kept through growth
    /// and every reader, and a quarter of f32's bytes plus the scales.
    #[test]
    fn q8_cache_quantizes_per_block() {
        let hd = 40; // one block of 32 and a short one of 8 per row
        let mut c = KvCache::new(1, 2, hd, None, 64, KvType::Q8);
        let row = |p: usize, h: usize| -> Vec<f32> {
            (0..hd)
                .map(|i| if i == 5 { 0.0 } else { ((p * 7 + h * 3 + i) as f32 * 0.37).sin() * (1 + i % 9) as f32 })
                .collect()
        };
        for p in 0..5 {
            let k: Vec<f32> = (0..2).flat_map(|h| row(p, h)).collect();
            let v: Vec<f32> = k.iter().map(|x| -2.0 * x).collect();
            c.put(0, p, &k, &v);
        }
        assert!(matches!(c.head(0, 1), HeadView::Q8));
        for h in 0..2 {
            let (kc, vc) = c.head_f32(0, h);
            for p in 0..5 {
                let want = row(p, h);
                for (b, block) in want.chunks(Q8_BLOCK).enumerate() {
                    let d = f16::from_f32(block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).to_f32();
                    for (i, &w) in block.iter().enumerate() {
                        let j = p * hd + b * Q8_BLOCK + i;
                        assert!((kc[j] - w).abs() <= 0.5 * d * 1.001, "p={p} h={h} [{j}]: {} vs {w}", kc[j]);
                        assert!((vc[j] + 2.0 * w).abs() <= d * 1.001);
                        assert_eq!(kc[j] / d, (kc[j] / d).round(), "a multiple of the scale");
                    }
                }
                assert_eq!(kc[p * hd + 5], 0.0);
            }
            let mut out = Vec::new();
            c.gather(0, false, h, 3, 2, &mut out);
            assert_eq!(out, kc[3 * hd..5 * hd]);
        }
        let slots = 8; // grown 1 → 2 → 4 → 8
        assert_eq!(c.bytes(), 2 * 2 * slots * (hd + 2 * 2));
        assert_eq!(KvType::Q8.row_bytes(hd), hd + 4);
        assert_eq!(KvType::from_name("q8"), Some(KvType::Q8));
    }

    /// Growing keeps every head's rows in place, in order.
    #[test]
    fn a_run_of_rows_stores_what_putting_them_one_by_one_stores() {
        // Every element type; from the start and after a few rows; a ring shorter than the run
        // (its later rows win their slots) and one the run wraps around.
        for kv_type in [KvType::F32, KvType::F16, KvType::Q8] {
            for (window, before, n) in [(None, 0usize, 40usize), (None, 7, 33), (Some(16), 5, 40), (Some(32), 20, 25)] {
                let (mut one, mut run) =
                    (KvCache::new(2, 3, 4, window, 100, kv_type), KvCache::new(2, 3, 4, window, 100, kv_type));
                let rows = |p0: usize, n: usize, s: f32| -> Vec<f32> {
                    (p0 * 12..(p0 + n) * 12).map(|i| s * (i as f32).sin()).collect()
                };
                for p in 0..before {
                    for c in [&mut one, &mut run] {
                        c.put(1, p, &rows(p, 1, 1.0), &rows(p, 1, 2.0));
                    }
                }
                let (k, v) = (rows(before, n, 1.0), rows(before, n, 2.0));
                for i in 0..n {
                    one.put(1, before + i, &k[i * 12..(i + 1) * 12], &v[i * 12..(i + 1) * 12]);
                }
                run.put_run(1, before, &k, &v);
                for h in 0..3 {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    for values in [false, true] {
                        one.gather(1, values, h, 0, one.layers[1].slots, &mut a);
                        run.gather(1, values, h, 0, run.layers[1].slots, &mut b);
                        assert_eq!(a, b, "{kv_type:?} {window:?} {before}+{n} head {h} values {values}");
                    }
                }
            }
        }
    }

    #[test]
    fn making_room_ends_where_putting_token_by_token_ends() {
        // From empty, and from a partly filled cache (its rows kept); past the capacity it
        // stops there.
        for (have, positions) in [(0usize, 1usize), (0, 37), (5, 37), (20, 64), (0, 300)] {
            let (mut stepped, mut made) =
                (KvCache::new(2, 3, 2, None, 100, KvType::F32), KvCache::new(2, 3, 2, None, 100, KvType::F32));
            let kv = |p: usize| (0..6).map(|i| (10 * p + i) as f32).collect::<Vec<f32>>();
            for p in 0..have {
                for c in [&mut stepped, &mut made] {
                    c.put(0, p, &kv(p), &kv(p));
                    c.put(1, p, &kv(p), &kv(p));
                }
            }
            made.make_room(positions);
            for p in have..positions.min(100) {
                stepped.put(0, p, &kv(p), &kv(p));
                stepped.put(1, p, &kv(p), &kv(p));
            }
            for l in 0..2 {
                assert_eq!(made.layers[l].slots, stepped.layers[l].slots, "{have} then {positions}");
                let (HeadView::F32(k, _), HeadView::F32(k2, _)) = (made.head(l, 1), stepped.head(l, 1)) else {
                    panic!("f32 cache")
                };
                assert_eq!(&k[..2 * have], &k2[..2 * have], "rows kept");
            }
        }
    }

    #[test]
    fn growth_keeps_each_heads_rows() {
        // Grown step by step, and reserved first (less than, then more than, is used; past
        // the capacity it stops there).
        for reserve in [None, Some(20), Some(1000)] {
            let mut c = KvCache::new(1, 3, 2, None, 100, KvType::F32);
            if let Some(n) = reserve {
                c.reserve(n);
                assert_eq!(c.layers[0].slots, n.min(100));
            }
            let row = |p: usize, h: usize| [(10 * p + h) as f32, -((10 * p + h) as f32)];
            for p in 0..37 {
                let k: Vec<f32> = (0..3).flat_map(|h| row(p, h)).collect();
                let v: Vec<f32> = k.iter().map(|x| x * 2.0).collect();
                c.put(0, p, &k, &v);
                if p == 10 {
                    // Reserving what is there already changes nothing.
                    c.reserve(5);
                }
            }
            for h in 0..3 {
                let HeadView::F32(k, v) = c.head(0, h) else { panic!("f32 cache") };
                for p in 0..37 {
                    assert_eq!(&k[2 * p..2 * p + 2], row(p, h), "reserve {reserve:?}");
                    assert_eq!(v[2 * p], 2.0 * row(p, h)[0]);
                }
            }
        }
    }

    #[test]
    fn slot_runs_follow_the_ring() {
        let mut c = KvCache::new(1, 1, 2, Some(4), 100, KvType::F32);
        for p in 0..6 {
            c.put(0, p, &[p as f32, 0.0], &[0.0, p as f32]);
        }
        // Positions 2..=5 sit in slots 2, 3, 0, 1.
        assert_eq!(c.slot_runs(2, 5), [(2, 2), (0, 2)]);
        assert_eq!(c.slot_runs(4, 5), [(0, 2), (0, 0)]);
        let (k, _) = c.head_f32(0, 0);
        let keys: Vec<f32> = c.slot_runs(2, 5).iter().flat_map(|&(s, n)| (s..s + n).map(|i| k[i * 2])).collect();
        assert_eq!(keys, [2.0, 3.0, 4.0, 5.0]);
        let full = KvCache::new(1, 1, 2, None, 10, KvType::F16);
        assert_eq!(full.slot_runs(3, 7), [(3, 5), (0, 0)]);
    }
}
