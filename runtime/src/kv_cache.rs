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

    /// Elements `at .. at + out.len()` as f32 (exact for both types).
    fn read(&self, at: usize, out: &mut [f32]) {
        match self {
            Store::F32(v) => out.copy_from_slice(&v[at..at + out.len()]),
            Store::F16(v) => v[at..at + out.len()].convert_to_f32_slice(out),
        }
    }
}

/// Cached keys and values of one layer: slots × kv_heads × head_dim each.
#[derive(Debug, Clone)]
pub struct LayerCache {
    k: Store,
    v: Store,
}

/// A layer's keys and values as stored.
#[derive(Debug, Clone, Copy)]
pub enum LayerView<'a> {
    /// float32 keys and values.
    F32(&'a [f32], &'a [f32]),
    /// float16 keys and values.
    F16(&'a [f16], &'a [f16]),
}

/// The cache of every layer plus the number of positions already processed.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Width of one slot (kv_heads × head_dim).
    width: usize,
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
    /// An empty cache. `context` caps the sequence for full attention; with a window the ring has
    /// `window` slots and sequences may run on indefinitely.
    pub fn new(num_layers: usize, width: usize, window: Option<usize>, context: usize, kind: KvType) -> KvCache {
        let store = || match kind {
            KvType::F32 => Store::F32(Vec::new()),
            KvType::F16 => Store::F16(Vec::new()),
        };
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache { k: store(), v: store() }).collect(),
            width,
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

    /// The keys and values of `layer` as slot-major slices (`slots × width` each, as many slots
    /// as have been written so far), in their stored type.
    pub fn layer(&self, layer: usize) -> LayerView<'_> {
        match &self.layers[layer] {
            LayerCache { k: Store::F32(k), v: Store::F32(v) } => LayerView::F32(k, v),
            LayerCache { k: Store::F16(k), v: Store::F16(v) } => LayerView::F16(k, v),
            _ => unreachable!("a cache has one element type"),
        }
    }

    /// Columns `col .. col + width` of slots `first .. first + n` of `layer`'s keys (or values),
    /// as f32, contiguous in `out` (`n × width`): one head's rows, for caches that are not f32.
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        &self,
        layer: usize,
        values: bool,
        first: usize,
        n: usize,
        col: usize,
        width: usize,
        out: &mut Vec<f32>,
    ) {
        let l = &self.layers[layer];
        let store = if values { &l.v } else { &l.k };
        out.clear();
        out.resize(n * width, 0.0);
        for (i, row) in out.chunks_mut(width).enumerate() {
            store.read((first + i) * self.width + col, row);
        }
    }

    /// The keys and values of `layer` as f32: borrowed for an f32 cache, converted (exactly)
    /// for an f16 one.
    pub fn layer_f32(&self, layer: usize) -> (Cow<'_, [f32]>, Cow<'_, [f32]>) {
        match self.layer(layer) {
            LayerView::F32(k, v) => (Cow::Borrowed(k), Cow::Borrowed(v)),
            LayerView::F16(k, v) => {
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

    /// Stores the key and value of `pos` in `layer`.
    pub fn put(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let slot = self.slot(pos);
        let width = self.width;
        let l = &mut self.layers[layer];
        let need = (slot + 1) * width;
        if l.k.len() < need {
            // Grow in steps so a long generation does not reallocate at every token.
            let cap = self.window.unwrap_or(self.context) * width;
            let grow = need.max((l.k.len() * 2).min(cap)).max(need);
            l.k.resize(grow);
            l.v.resize(grow);
        }
        l.k.write(slot * width, k);
        l.v.write(slot * width, v);
    }

    /// Bytes currently allocated.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * self.kind.bytes()).sum()
    }

    /// The width of one slot (kv heads × head dim).
    pub fn width(&self) -> usize {
        self.width
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
        let mut c = KvCache::new(2, 4, None, 8, KvType::F16);
        let k = [1.0f32 / 3.0, -70000.5, 1e-8, 2.5];
        let v = [0.1f32, 0.2, 0.3, 0.4];
        c.put(1, 3, &k, &v);
        let rounded = |x: &[f32]| x.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect::<Vec<_>>();
        let (kc, vc) = c.layer_f32(1);
        assert_eq!(&kc[12..16], rounded(&k).as_slice());
        assert_eq!(&vc[12..16], rounded(&v).as_slice());
        let mut out = Vec::new();
        c.gather(1, true, 3, 1, 1, 2, &mut out);
        assert_eq!(out, rounded(&v[1..3]));
        assert_eq!(c.bytes(), 2 * 16 * 2);
        assert!(matches!(c.layer(1), LayerView::F16(..)));
    }

    #[test]
    fn slot_runs_follow_the_ring() {
        let mut c = KvCache::new(1, 2, Some(4), 100, KvType::F32);
        for p in 0..6 {
            c.put(0, p, &[p as f32, 0.0], &[0.0, p as f32]);
        }
        // Positions 2..=5 sit in slots 2, 3, 0, 1.
        assert_eq!(c.slot_runs(2, 5), [(2, 2), (0, 2)]);
        assert_eq!(c.slot_runs(4, 5), [(0, 2), (0, 0)]);
        let (k, _) = c.layer_f32(0);
        let keys: Vec<f32> = c.slot_runs(2, 5).iter().flat_map(|&(s, n)| (s..s + n).map(|i| k[i * 2])).collect();
        assert_eq!(keys, [2.0, 3.0, 4.0, 5.0]);
        let full = KvCache::new(1, 2, None, 10, KvType::F16);
        assert_eq!(full.slot_runs(3, 7), [(3, 5), (0, 0)]);
    }
}
