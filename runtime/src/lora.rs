//! LoRA adapters applied at run time, beside the weights they change: `y = W x + s · B (A x)`,
//! in f32 — what PEFT computes for an unmerged adapter, and for a QLoRA model (a bitsandbytes
//! NF4 base plus its adapter) with `--exact`, which gives the base bitsandbytes' dequantized
//! weights. The base stays untouched, so one file serves with or without the adapter.

use crate::error::{Result, RuntimeError};
use half::{bf16, f16};
use lowbit_format::{AdapterValues, ModelFile, Scheme};
use lowbit_kernels::team;
use std::sync::Arc;

/// Output columns per parallel piece of one token's B product.
const B_PIECE: usize = 2048;

/// One low-rank update: `y += scale · B (A x)` beside the weight named `target`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraDelta {
    /// The weight it goes beside (`model.layers.N.self_attn.q_proj.weight`, …).
    pub target: String,
    /// `r × in`, row-major.
    pub a: AdapterValues,
    /// `out × r`, row-major.
    pub b: AdapterValues,
    /// Rank.
    pub r: usize,
    /// The whole scaling (user scale · alpha / r, or / √r for rsLoRA).
    pub scale: f32,
}

/// An adapter: its name and its updates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraAdapter {
    /// Shown in messages.
    pub name: String,
    /// The updates, any order.
    pub deltas: Vec<LoraDelta>,
}

/// Rows of B one call of the row kernel takes while adding `B (A x)` to a piece of output.
const B_ROWS: usize = 64;

/// An update as the forward pass uses it: A (`r × in`) and B (`out × r`) as PEFT stores them,
/// and the scaling. `B (A x)` for a piece of output rows (what one task of a product finishes)
/// is then one stretch of B's memory, each row a dot product with `A x` whose bits do not depend
/// on the piece.
#[derive(Debug, Clone)]
struct Placed {
    a: Store,
    b: Store,
    r: usize,
    scale: f32,
}

impl Placed {
    /// `out[i] += (B · ax)[c0 + i]`.
    fn add_b(&self, ax: &[f32], c0: usize, out: &mut [f32]) {
        let mut bax = [0f32; B_ROWS];
        for (k, piece) in out.chunks_mut(B_ROWS).enumerate() {
            let c = c0 + k * B_ROWS;
            let bax = &mut bax[..piece.len()];
            self.b.prefetch((c + B_ROWS) * self.r, B_ROWS * self.r);
            self.b.dot_rows(bax, ax, c * self.r, self.r);
            piece.iter_mut().zip(bax.iter()).for_each(|(o, v)| *o += v);
        }
    }
}

/// An adapter matrix: in bfloat16 when that holds every value exactly (adapters are mostly
/// saved in bf16), which halves its memory and the bytes each token reads, else in f32; or a
/// tensor of an adapter file, read in place from the mapping. The kernels widen bf16 and f16
/// on load, so every form gives the bits of its f32 values.
#[derive(Debug, Clone)]
enum Store {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Mapped(Arc<Mapped>),
}

/// A matrix's values, wherever they are.
#[derive(Debug, Clone, Copy)]
enum View<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

self_cell::self_cell!(
    /// An adapter file's tensor, viewed in place (the file stays mapped while any view lives).
    struct Mapped {
        owner: Arc<ModelFile>,
        #[covariant]
        dependent: View,
    }

    impl {Debug}
);

impl Store {
    /// The store of `values`; an adapter file's tensor that is not f32, f16 or bf16 data is
    /// an error (its loader has checked shapes and values).
    fn of(values: &AdapterValues) -> std::result::Result<Store, String> {
        match values {
            AdapterValues::F32(v) => Ok(Store::new(v.clone())),
            AdapterValues::InFile { file, tensor } => {
                let mapped = Mapped::try_new(file.clone(), |file| {
                    let t = file.tensor(tensor).ok_or_else(|| format!("the adapter file has no tensor {tensor}"))?;
                    let e = |e: lowbit_format::FormatError| e.to_string();
                    Ok(match &t.info.scheme {
                        Scheme::F32 => View::F32(t.part_f32("data").map_err(e)?),
                        Scheme::Bf16 => View::Bf16(bytemuck::cast_slice(t.part_u16("data").map_err(e)?)),
                        Scheme::F16 => View::F16(bytemuck::cast_slice(t.part_u16("data").map_err(e)?)),
                        s => return Err(format!("{tensor} is stored as {}, not as floats", s.label())),
                    })
                })?;
                Ok(Store::Mapped(Arc::new(mapped)))
            }
        }
    }

    fn new(v: Vec<f32>) -> Store {
        if v.iter().all(|&x| bf16::from_f32(x).to_f32().to_bits() == x.to_bits()) {
            Store::Bf16(v.iter().map(|&x| bf16::from_f32(x)).collect())
        } else {
            Store::F32(v)
        }
    }

    fn view(&self) -> View<'_> {
        match self {
            Store::F32(v) => View::F32(v),
            Store::Bf16(v) => View::Bf16(v),
            Store::Mapped(m) => *m.borrow_dependent(),
        }
    }

    fn len(&self) -> usize {
        match self.view() {
            View::F32(v) => v.len(),
            View::Bf16(v) => v.len(),
            View::F16(v) => v.len(),
        }
    }

    /// `out[j] = q · row j` over rows `stride` apart from element `from`.
    fn dot_rows(&self, out: &mut [f32], q: &[f32], from: usize, stride: usize) {
        if out.is_empty() {
            return;
        }
        // Just the rows read (the scalar kernels widen what they are given).
        let span = from..from + (out.len() - 1) * stride + q.len();
        let k = lowbit_kernels::kernels();
        match self.view() {
            View::F32(v) => k.dot_f32_rows(out, q, &v[span], stride),
            View::Bf16(v) => k.dot_bf16_rows(out, q, &v[span], stride),
            View::F16(v) => k.dot_f16_rows(out, q, &v[span], stride),
        }
    }

    /// Hints that elements `from .. from + len` will be read soon.
    fn prefetch(&self, from: usize, len: usize) {
        match self.view() {
            View::F32(v) => lowbit_kernels::prefetch(v, from, len),
            View::Bf16(v) => lowbit_kernels::prefetch(v, from, len),
            View::F16(v) => lowbit_kernels::prefetch(v, from, len),
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        match self.view() {
            View::F32(v) => v.len() * 4,
            View::Bf16(v) => v.len() * 2,
            View::F16(v) => v.len() * 2,
        }
    }
}

/// The linear layers of a decoder layer an adapter may change, in the order of [`PROJECTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// Name parts, by [`Proj`].
const PROJECTIONS: [(&str, Proj); 7] = [
    ("self_attn.q_proj", Proj::Q),
    ("self_attn.k_proj", Proj::K),
    ("self_attn.v_proj", Proj::V),
    ("self_attn.o_proj", Proj::O),
    ("mlp.gate_proj", Proj::Gate),
    ("mlp.up_proj", Proj::Up),
    ("mlp.down_proj", Proj::Down),
];

/// One token's scaled `A x` for the updates of a group of projections of one layer
/// ([`LoraTable::prepare`]): per projection, per update, `None` where the token does not take it.
pub(crate) struct LoraAx {
    layer: usize,
    projs: Vec<Proj>,
    per: Vec<Vec<Option<Vec<f32>>>>,
}

/// Every adapter's updates, by layer and projection, each tagged with its adapter. Adapters
/// are applied to every sequence, or — the named ones — only to the sequences that pick them
/// ([`crate::KvCache::set_adapter`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct LoraTable {
    by_layer: Vec<[Vec<(usize, Placed)>; 7]>,
    /// Adapter names, by index: the ones applied to every sequence first, then the named ones.
    names: Vec<String>,
    /// How many of `names` (the first ones) are applied to every sequence.
    always: usize,
}

impl LoraTable {
    /// Places each update of `always` (applied to every sequence) and `named` (applied where a
    /// sequence picks one) by its target; `shape` gives a projection's `(out, in)`. An update
    /// for anything else, or of the wrong size, is an error; so are two named adapters with one
    /// name.
    pub(crate) fn new(
        always: &[LoraAdapter],
        named: &[LoraAdapter],
        layers: usize,
        shape: impl Fn(usize, Proj) -> (usize, usize),
    ) -> Result<LoraTable> {
        let mut by_layer: Vec<[Vec<(usize, Placed)>; 7]> = (0..layers).map(|_| Default::default()).collect();
        for (ai, a) in always.iter().chain(named).enumerate() {
            let bad = |problem: String| RuntimeError::Options(format!("LoRA adapter {}: {problem}", a.name));
            if ai >= always.len() && named[..ai - always.len()].iter().any(|b| b.name == a.name) {
                return Err(bad("two adapters have this name".into()));
            }
            for d in &a.deltas {
                let place = d.target.strip_prefix("model.layers.").and_then(|rest| {
                    let (layer, proj) = rest.split_once('.')?;
                    let proj = proj.strip_suffix(".weight")?;
                    let p = PROJECTIONS.iter().position(|(n, _)| *n == proj)?;
                    Some((layer.parse::<usize>().ok()?, p))
                });
                let Some((layer, p)) = place.filter(|&(l, _)| l < layers) else {
                    return Err(bad(format!(
                        "it changes {}, which run-time adapters cannot (merge it at conversion: lowbit convert --lora)",
                        d.target
                    )));
                };
                let (rows, cols) = shape(layer, PROJECTIONS[p].1);
                let (a, b) = match (Store::of(&d.a), Store::of(&d.b)) {
                    (Ok(a), Ok(b)) => (a, b),
                    (Err(e), _) | (_, Err(e)) => return Err(bad(e)),
                };
                if d.r == 0 || a.len() != d.r * cols || b.len() != rows * d.r || !d.scale.is_finite() {
                    return Err(bad(format!("its update of {} does not fit the weight [{rows}, {cols}]", d.target)));
                }
                by_layer[layer][p].push((ai, Placed { a, b, r: d.r, scale: d.scale }));
            }
        }
        let names = always.iter().chain(named).map(|a| a.name.clone()).collect();
        Ok(LoraTable { by_layer, names, always: always.len() })
    }

    /// Whether there is nothing to add.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_layer.iter().all(|l| l.iter().all(Vec::is_empty))
    }

    /// The index of the named adapter `name` (what [`crate::KvCache::set_adapter`] takes).
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.names[self.always..].iter().position(|n| n == name).map(|i| i + self.always)
    }

    /// The names of the adapters a sequence may pick, in the order they were given.
    pub(crate) fn named(&self) -> &[String] {
        &self.names[self.always..]
    }

    /// The scaled `A x` of every update of each projection in `projs` (all over the input `x`,
    /// one token) for [`LoraTable::add_rows`]; `None` when no update applies to this token.
    /// What [`LoraTable::apply`] computes first, with its bits.
    pub(crate) fn prepare(
        &self,
        layer: usize,
        projs: &[Proj],
        x: &[f32],
        pick: Option<(usize, f32)>,
    ) -> Option<LoraAx> {
        let l = self.by_layer.get(layer)?;
        // The A matrices the next group will read (after this group's product, attention or
        // the next layer's norm) start coming in now: a few kilobytes each, read once a token,
        // too short a stream for the hardware prefetcher.
        let last = projs.last().map_or(0, |&p| p as usize);
        let (nl, np) = if last + 1 < PROJECTIONS.len() { (layer, last + 1) } else { (layer + 1, 0) };
        if let Some(next) = self.by_layer.get(nl) {
            let group = match PROJECTIONS[np].1 {
                Proj::Q | Proj::K | Proj::V => np..np + 3,
                Proj::Gate | Proj::Up => np..np + 2,
                _ => np..np + 1,
            };
            for (_, d) in group.flat_map(|p| &next[p]) {
                d.a.prefetch(0, usize::MAX);
            }
        }
        let mut any = false;
        let per = projs
            .iter()
            .map(|&p| {
                l[p as usize]
                    .iter()
                    .map(|(ai, d)| {
                        let mult = if *ai < self.always {
                            1.0
                        } else {
                            match pick {
                                Some((i, mult)) if i == *ai => mult,
                                _ => return None,
                            }
                        };
                        any = true;
                        let mut ax = vec![0f32; d.r];
                        d.a.dot_rows(&mut ax, x, 0, x.len());
                        ax.iter_mut().for_each(|v| *v = *v * d.scale * mult);
                        Some(ax)
                    })
                    .collect()
            })
            .collect();
        any.then_some(LoraAx { layer, projs: projs.to_vec(), per })
    }

    /// Adds the updates of projection `which` (an index into the `projs` given to
    /// [`LoraTable::prepare`]) to the piece of its output that starts at row `r0`: the bits
    /// [`LoraTable::apply`] gives those rows (each row of B a dot product whose bits do not depend
    /// on the rows beside it).
    /// Made for [`lowbit_kernels::matmul_rows_many_then`] with one token.
    pub(crate) fn add_rows(&self, ax: &LoraAx, which: usize, r0: usize, piece: &mut [f32]) {
        let Some(&proj) = ax.projs.get(which) else { return };
        let deltas = &self.by_layer[ax.layer][proj as usize];
        for ((_, d), a) in deltas.iter().zip(&ax.per[which]) {
            if let Some(a) = a {
                d.add_b(a, r0, piece);
            }
        }
    }

    /// Adds every update of `proj` in `layer` to `out` (`tokens × out`) for the inputs `x`
    /// (`tokens × in`): the always-applied adapters' to every token, a named adapter's to the
    /// tokens whose entry of `picks` names it (with that entry's multiplier). Token by token in
    /// a fixed order, so a token's result does not depend on which others share the pass; the
    /// tokens (or pieces of one token's output) run in parallel.
    pub(crate) fn apply(
        &self,
        layer: usize,
        proj: Proj,
        x: &[f32],
        out: &mut [f32],
        tokens: usize,
        picks: &[Option<(usize, f32)>],
    ) {
        let Some(deltas) = self.by_layer.get(layer).map(|l| &l[proj as usize]) else { return };
        if deltas.is_empty() || tokens == 0 {
            return;
        }
        let (cols, rows) = (x.len() / tokens, out.len() / tokens);
        for (ai, d) in deltas {
            let mult = |t: usize| {
                if *ai < self.always {
                    return Some(1.0);
                }
                match picks.get(t).copied().flatten() {
                    Some((pick, mult)) if pick == *ai => Some(mult),
                    _ => None,
                }
            };
            let ax = |x: &[f32], mult: f32, ax: &mut Vec<f32>| {
                ax.clear();
                ax.resize(d.r, 0.0);
                d.a.dot_rows(ax, x, 0, cols);
                // A multiplier of 1 leaves the scaled product's bits as they are.
                ax.iter_mut().for_each(|v| *v = *v * d.scale * mult);
            };
            // `out += B ax` over the output columns `c0 ..` that `out` holds.
            if tokens == 1 {
                // One token outside a product (the decode pass adds its updates inside the
                // products instead): A x once, then B's rows in pieces over the team (a row's
                // dot product has the same bits whatever the pieces).
                let Some(m) = mult(0) else { continue };
                let mut a = Vec::new();
                ax(x, m, &mut a);
                let a = &a;
                team::for_each_chunk_mut(out, B_PIECE, || (), |_, i, piece| d.add_b(a, i * B_PIECE, piece));
            } else {
                // The tokens in parallel, each on its own, on the team like the products
                // around them.
                let token = |a: &mut Vec<f32>, t: usize, or: &mut [f32]| {
                    if let Some(m) = mult(t) {
                        ax(&x[t * cols..(t + 1) * cols], m, a);
                        d.add_b(a, 0, or);
                    }
                };
                team::for_each_chunk_mut(out, rows, Vec::new, token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token's updates added piece by piece inside a product (`prepare` + `add_rows`, pieces
    /// of any length at any row) give the bits `apply` gives the whole output.
    #[test]
    fn pieces_give_the_whole_outputs_bits() {
        let (r, cols, rows) = (5usize, 24usize, 150usize);
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let target = "model.layers.0.self_attn.o_proj.weight".to_string();
        let deltas = vec![LoraDelta {
            target,
            a: AdapterValues::F32((0..r * cols).map(|_| next()).collect()),
            b: AdapterValues::F32((0..rows * r).map(|_| next()).collect()),
            r,
            scale: 1.25,
        }];
        let table = LoraTable::new(&[LoraAdapter { name: "t".into(), deltas }], &[], 1, |_, _| (rows, cols)).unwrap();
        let x: Vec<f32> = (0..cols).map(|_| next()).collect();
        let base: Vec<f32> = (0..rows).map(|_| next()).collect();
        let mut want = base.clone();
        table.apply(0, Proj::O, &x, &mut want, 1, &[]);
        let ax = table.prepare(0, &[Proj::O], &x, None).unwrap();
        for piece in [1usize, 7, 32, 33, 150] {
            let mut got = base.clone();
            let mut r0 = 0;
            while r0 < rows {
                let end = (r0 + piece).min(rows);
                table.add_rows(&ax, 0, r0, &mut got[r0..end]);
                r0 = end;
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "pieces of {piece}");
        }
        assert!(table.prepare(0, &[Proj::Q], &x, None).is_none(), "no update of q");
    }

    /// An adapter whose values bf16 holds exactly is kept in bf16 (half the bytes) and gives the
    /// bits its f32 copy gives, for one token and several; both agree with the plain product.
    #[test]
    fn bf16_storage_gives_the_f32_bits() {
        let (r, cols, rows) = (3usize, 40usize, 2100usize);
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            bf16::from_f32(((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5).to_f32()
        };
        let a: Vec<f32> = (0..r * cols).map(|_| next()).collect();
        let b: Vec<f32> = (0..rows * r).map(|_| next()).collect();
        let target = "model.layers.0.mlp.up_proj.weight".to_string();
        let adapter = LoraAdapter {
            name: "t".into(),
            deltas: vec![LoraDelta {
                target,
                a: AdapterValues::F32(a.clone()),
                b: AdapterValues::F32(b.clone()),
                r,
                scale: 0.75,
            }],
        };
        let table = LoraTable::new(std::slice::from_ref(&adapter), &[], 1, |_, _| (rows, cols)).unwrap();
        let mut f32_table = table.clone();
        for (_, p) in f32_table.by_layer.iter_mut().flatten().flatten() {
            for s in [&mut p.a, &mut p.b] {
                if let Store::Bf16(v) = s {
                    *s = Store::F32(v.iter().map(|x| x.to_f32()).collect());
                }
            }
        }
        let bytes = |t: &LoraTable| {
            t.by_layer.iter().flatten().flatten().map(|(_, p)| p.a.bytes() + p.b.bytes()).sum::<usize>()
        };
        assert_eq!(bytes(&table) * 2, bytes(&f32_table));
        for tokens in [1usize, 5] {
            let x: Vec<f32> = (0..tokens * cols).map(|_| next()).collect();
            let base: Vec<f32> = (0..tokens * rows).map(|_| next()).collect();
            let (mut got, mut want) = (base.clone(), base.clone());
            table.apply(0, Proj::Up, &x, &mut got, tokens, &[]);
            f32_table.apply(0, Proj::Up, &x, &mut want, tokens, &[]);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want));
            for t in 0..tokens {
                let xt = &x[t * cols..(t + 1) * cols];
                let ax: Vec<f64> = (0..r)
                    .map(|k| (0..cols).map(|c| a[k * cols + c] as f64 * xt[c] as f64).sum::<f64>() * 0.75)
                    .collect();
                for j in 0..rows {
                    let plain = base[t * rows + j] as f64 + (0..r).map(|k| b[j * r + k] as f64 * ax[k]).sum::<f64>();
                    assert!((got[t * rows + j] as f64 - plain).abs() < 1e-4, "token {t} row {j}");
                }
            }
        }
    }
}
