//! Key/value cache. With a sliding window W it is a ring of W slots indexed by position mod W,
//! so memory stays flat however long generation runs; without one it grows up to the context
//! length and a longer sequence is an error.

/// Cached keys and values of one layer: slots × kv_heads × head_dim each.
#[derive(Debug, Clone)]
pub struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
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
    /// Positions processed so far.
    pub len: usize,
}

impl KvCache {
    /// An empty cache. `context` caps the sequence for full attention; with a window the ring has
    /// `window` slots and sequences may run on indefinitely.
    pub fn new(num_layers: usize, width: usize, window: Option<usize>, context: usize) -> KvCache {
        KvCache {
            layers: vec![LayerCache { k: Vec::new(), v: Vec::new() }; num_layers],
            width,
            window,
            context,
            len: 0,
        }
    }

    /// Slots the cache can hold (what is allocated at most).
    pub fn capacity(&self) -> usize {
        self.window.unwrap_or(self.context)
    }

    /// Whether `n` more positions fit.
    pub fn fits(&self, n: usize) -> bool {
        self.window.is_some() || self.len + n <= self.context
    }

    fn slot(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => pos % w,
            None => pos,
        }
    }

    /// The key and value of `pos` in `layer` (must be cached and still inside the window).
    pub fn get(&self, layer: usize, pos: usize) -> (&[f32], &[f32]) {
        let s = self.slot(pos) * self.width;
        let l = &self.layers[layer];
        (&l.k[s..s + self.width], &l.v[s..s + self.width])
    }

    /// The keys and values of `layer` as slot-major slices (`slots × width` each, as many slots
    /// as have been written so far).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        let l = &self.layers[layer];
        (&l.k, &l.v)
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
            l.k.resize(grow, 0.0);
            l.v.resize(grow, 0.0);
        }
        l.k[slot * width..need].copy_from_slice(k);
        l.v[slot * width..need].copy_from_slice(v);
    }

    /// Bytes currently allocated.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * 4).sum()
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

    #[test]
    fn slot_runs_follow_the_ring() {
        let mut c = KvCache::new(1, 2, Some(4), 100);
        for p in 0..6 {
            c.put(0, p, &[p as f32, 0.0], &[0.0, p as f32]);
        }
        // Positions 2..=5 sit in slots 2, 3, 0, 1.
        assert_eq!(c.slot_runs(2, 5), [(2, 2), (0, 2)]);
        assert_eq!(c.slot_runs(4, 5), [(0, 2), (0, 0)]);
        let (k, _) = c.layer(0);
        let keys: Vec<f32> = c.slot_runs(2, 5).iter().flat_map(|&(s, n)| (s..s + n).map(|i| k[i * 2])).collect();
        assert_eq!(keys, [2.0, 3.0, 4.0, 5.0]);
        let full = KvCache::new(1, 2, None, 10);
        assert_eq!(full.slot_runs(3, 7), [(3, 5), (0, 0)]);
    }
}
