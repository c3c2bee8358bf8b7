//! Key/value cache. With a sliding window W it is a ring of W slots indexed by position mod W,
//! so memory stays flat however long generation runs; without one it grows up to the context
//! length and a longer sequence is an error. Keys and values are kept as f32 (exact) or f16
//! (half the memory; each value rounded once when stored).

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
}

impl KvType {
    /// Bytes per cached element.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

/// One tensor of cached values (keys or values of a layer), slot-major.
#[derive(Debug, Clone)]
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Store {
    fn len(&self) -> usize {
        match self {
            Store::F32(v) => v.len(),
            Store::F16(v) => v.len(),
        }
    }

    fn resize(&mut self, n: usize) {
        match self {
            Store::F32(v) => v.resize(n, 0.0),
            Store::F16(v) => v.resize(n, f16::ZERO),
        }
    }

    fn write(&mut self, at: usize, x: &[f32]) {
        match self {
            Store::F32(v) => v[at..at + x.len()].copy_from_slice(x),
            Store::F16(v) => v[at..at + x.len()].convert_from_f32_slice(x),
        }
    }

    /// Copies `n` elements of `src` (the same type) from `from` to `at`.
    fn copy_from(&mut self, at: usize, src: &Store, from: usize, n: usize) {
        match (self, src) {
            (Store::F32(d), Store::F32(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            (Store::F16(d), Store::F16(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            _ => unreachable!("a cache has one element type"),
        }
    }

    /// Elements `at .. at + out.len()` as f32 (exact for both types).
    fn read(&self, at: usize, out: &mut [f32]) {
        match self {
            Store::F32(v) => out.copy_from_slice(&v[at..at + out.len()]),
            Store::F16(v) => v[at..at + out.len()].convert_to_f32_slice(out),
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
        };
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache { k: store(), v: store(), slots: 0 }).collect(),
            kv_heads,
            head_dim,
            window,
            context,
            kind,
            len: 0,
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
        self.window.is_some() || self.len + n <= self.context
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
            _ => unreachable!("a cache has one element type"),
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
    /// f32 cache, converted (exactly) for an f16 one.
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

    /// Stores the key and value of `pos` in `layer` (`kv_heads × head_dim` each).
    pub fn put(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let slot = self.slot(pos);
        let (nkv, hd, cap) = (self.kv_heads, self.head_dim, self.capacity());
        let l = &mut self.layers[layer];
        if slot >= l.slots {
            // Grow in steps so a long generation does not reallocate at every token; each head's
            // rows move to their place in the larger block.
            let slots = (slot + 1).max((l.slots * 2).min(cap));
            for store in [&mut l.k, &mut l.v] {
                let mut grown = match store {
                    Store::F32(_) => Store::F32(Vec::new()),
                    Store::F16(_) => Store::F16(Vec::new()),
                };
                grown.resize(nkv * slots * hd);
                for h in 0..nkv {
                    grown.copy_from(h * slots * hd, store, h * l.slots * hd, l.slots * hd);
                }
                *store = grown;
            }
            l.slots = slots;
        }
        for h in 0..nkv {
            let at = (h * l.slots + slot) * hd;
            l.k.write(at, &k[h * hd..(h + 1) * hd]);
            l.v.write(at, &v[h * hd..(h + 1) * hd]);
        }
    }

    /// Bytes currently allocated.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * self.kind.bytes()).sum()
    }

    /// The width of one slot (kv heads × head dim).
    pub fn width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.len = 0;
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

    /// Growing keeps every head's rows in place, in order.
    #[test]
    fn growth_keeps_each_heads_rows() {
        let mut c = KvCache::new(1, 3, 2, None, 100, KvType::F32);
        let row = |p: usize, h: usize| [(10 * p + h) as f32, -((10 * p + h) as f32)];
        for p in 0..37 {
            let k: Vec<f32> = (0..3).flat_map(|h| row(p, h)).collect();
            let v: Vec<f32> = k.iter().map(|x| x * 2.0).collect();
            c.put(0, p, &k, &v);
        }
        for h in 0..3 {
            let HeadView::F32(k, v) = c.head(0, h) else { panic!("f32 cache") };
            for p in 0..37 {
                assert_eq!(&k[2 * p..2 * p + 2], row(p, h));
                assert_eq!(v[2 * p], 2.0 * row(p, h)[0]);
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
