//! Our quantizers against bitsandbytes 0.50.2 itself (golden files made on CPU by
//! scripts/make_bnb_golden.py; see kernels/tests/data/bnb/README.md): NF4/FP4 codes and block
//! scales bit for bit, double-quant statistics under both of bitsandbytes' nested-code rules,
//! dequantized values to the last bit in the original dtype, LLM.int8 CB/SCB and activation
//! quantization bit for bit, and Linear8bitLt outputs within float tolerance.

use half::{bf16, f16};
use lowbit_kernels::{
    fourbit, int8, matmul_with, quantize_4bit, quantize_int8, Absmax, FourBitKind, FourBitOptions, FourBitTensor,
    Int8Ref, Kernels, MatmulOptions, NestedRule, Weight,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bnb");

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn open(file: &str) -> Golden {
        Golden { bytes: std::fs::read(format!("{DIR}/{file}")).expect("golden file") }
    }

    /// (dtype, raw bytes) of a tensor.
    fn raw(&self, name: &str) -> (Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("parses");
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        (t.dtype(), t.data().to_vec())
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let (d, b) = self.raw(name);
        match d {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => panic!("{name}: {other:?} is not a float"),
        }
    }

    fn u8(&self, name: &str) -> Vec<u8> {
        self.raw(name).1
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        let (d, b) = self.raw(name);
        assert_eq!(d, Dtype::I64, "{name}");
        b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/cases.json")).unwrap()).unwrap()
}

/// Our float32 result rounded to the case's dtype, as bits — bitsandbytes returns the
/// dequantized tensor in the original dtype.
fn in_dtype(v: f32, dtype: &str) -> u32 {
    match dtype {
        "float16" => f16::from_f32(v).to_bits() as u32,
        "bfloat16" => bf16::from_f32(v).to_bits() as u32,
        _ => v.to_bits(),
    }
}

fn golden_bits(g: &Golden, name: &str) -> Vec<u32> {
    let (d, b) = g.raw(name);
    match d {
        Dtype::F32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
        _ => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
    }
}

#[test]
fn fourbit_matches_bitsandbytes() {
    let g = Golden::open("fourbit.safetensors");
    let all = cases();
    let list = all["fourbit"].as_array().unwrap();
    assert!(list.len() > 100);
    let (mut offsets_exact, mut offsets_total) = (0, 0);
    for c in list {
        let id = c["id"].as_str().unwrap();
        let t = &c["tensors"];
        let kind = if c["quant_type"] == "nf4" { FourBitKind::Nf4 } else { FourBitKind::Fp4 };
        let blocksize = c["blocksize"].as_u64().unwrap() as usize;
        let dtype = c["dtype"].as_str().unwrap();
        let x = g.f32(t["input"].as_str().unwrap());
        let q = quantize_4bit(
            &x,
            &FourBitOptions {
                kind,
                blocksize,
                double_quant: false,
                nested_rule: NestedRule::Nearest,
                scale_search: false,
            },
        )
        .unwrap();
        // First level: codes and scales bit for bit (bitsandbytes' CPU path is its PyTorch kernel).
        assert_eq!(q.codes, g.u8(t["codes"].as_str().unwrap()), "{id}: codes");
        let absmax_name =
            if c["double_quant"] == true { t["absmax_f32"].as_str().unwrap() } else { t["absmax"].as_str().unwrap() };
        let want_absmax = g.f32(absmax_name);
        let Absmax::F32(ours) = &q.absmax else { unreachable!() };
        assert_eq!(
            ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want_absmax.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{id}: absmax"
        );

        let stored = if c["double_quant"] == true {
            let nbs = c["nested_blocksize"].as_u64().unwrap() as usize;
            let want_offset = g.f32(t["nested_offset"].as_str().unwrap())[0];
            let mut last = None;
            for (rule, codes_name, nabs_name) in [
                (NestedRule::CpuLut, "nested_codes_cpu", "nested_absmax"),
                (NestedRule::Nearest, "nested_codes_nearest", "nested_absmax_nearest"),
            ] {
                let Absmax::Nested { codes, nested_absmax, offset, .. } = fourbit::nest_absmax(ours, nbs, rule) else {
                    unreachable!()
                };
                // The offset is torch's float32 mean; ours is the correctly rounded mean. They
                // may differ in the last bit; the codes are then compared against bitsandbytes'
                // own offset so one last-bit difference cannot hide a real one.
                offsets_total += 1;
                if offset.to_bits() == want_offset.to_bits() {
                    offsets_exact += 1;
                }
                assert!(
                    (offset - want_offset).abs() <= want_offset.abs() * 2.4e-7,
                    "{id}: offset {offset} vs {want_offset}"
                );
                let centered: Vec<f32> = ours.iter().map(|&a| a - want_offset).collect();
                let (codes_b, nabs_b) = fourbit::quantize_blockwise_8bit(&centered, nbs, rule);
                assert_eq!(codes_b, g.u8(t[codes_name].as_str().unwrap()), "{id}: nested codes ({rule:?})");
                // The nearest rule's nested scales are listed only where they differ.
                let nabs = t.get(nabs_name).unwrap_or(&t["nested_absmax"]);
                let want_nabs = g.f32(nabs.as_str().unwrap());
                assert_eq!(
                    nabs_b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want_nabs.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{id}: nested absmax"
                );
                // Our own double quantization (with its own mean) agrees with the above except
                // where the mean's last bit moved a code; the codes above are the strict check.
                assert_eq!(codes.len(), codes_b.len());
                assert_eq!(nested_absmax.len(), nabs_b.len());
                last.get_or_insert(Absmax::Nested {
                    codes: codes_b,
                    nested_absmax: nabs_b,
                    nested_blocksize: nbs,
                    offset: want_offset,
                });
            }
            last.unwrap()
        } else {
            q.absmax.clone()
        };
        // Dequantize (with the CPU rule's nested codes for double quant, as the golden has).
        let t4 = FourBitTensor { kind, blocksize, len: x.len(), codes: q.codes.clone(), absmax: stored };
        let mut out = vec![0f32; x.len()];
        t4.dequantize(&mut out).unwrap();
        let want = golden_bits(&g, t["dequant"].as_str().unwrap());
        for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
            let ours = in_dtype(o, dtype);
            // ±0 differ only in the sign bit of FP4's code 8; values are equal.
            let zero = |b: u32| b & 0x7FFF_FFFF == 0 || (dtype != "float32" && b & 0x7FFF == 0);
            assert!(ours == w || (zero(ours) && zero(w)), "{id}: dequant element {i}: {ours:#x} vs {w:#x}");
        }
    }
    eprintln!("nested offsets bit-identical to torch's mean: {offsets_exact}/{offsets_total}");
}

#[test]
fn blockwise8_both_rules() {
    let g = Golden::open("fourbit.safetensors");
    for c in cases()["blockwise8"].as_array().unwrap() {
        let t = &c["tensors"];
        let x = g.f32(t["input"].as_str().unwrap());
        let bs = c["blocksize"].as_u64().unwrap() as usize;
        for (rule, name) in [(NestedRule::CpuLut, "codes_cpu"), (NestedRule::Nearest, "codes_nearest")] {
            let (codes, absmax) = fourbit::quantize_blockwise_8bit(&x, bs, rule);
            assert_eq!(codes, g.u8(t[name].as_str().unwrap()), "{} {rule:?}", c["id"]);
            assert_eq!(absmax, g.f32(t["absmax"].as_str().unwrap()));
        }
    }
}

#[test]
fn code_tables_match() {
    let g = Golden::open("fourbit.safetensors");
    let m = &cases()["maps"];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&g.f32(m["dynamic"].as_str().unwrap())), bits(lowbit_kernels::codebook::dynamic_map()));
    assert_eq!(bits(&g.f32(m["nf4"].as_str().unwrap())), bits(FourBitKind::Nf4.levels()));
    let fp4 = g.f32(m["fp4"].as_str().unwrap());
    for (a, b) in fp4.iter().zip(FourBitKind::Fp4.levels()) {
        assert_eq!(a, b, "fp4 table (±0 compare equal)");
    }
}

#[test]
fn int8_matches_bitsandbytes() {
    let g = Golden::open("int8.safetensors");
    let mut worst = 0f32;
    for c in cases()["int8"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        let t = &c["tensors"];
        let (rows, cols) = (c["shape"][0].as_u64().unwrap() as usize, c["shape"][1].as_u64().unwrap() as usize);
        let w = g.f32(t["W"].as_str().unwrap());
        let q = quantize_int8(&w, rows, cols).unwrap();
        let cb: Vec<i8> = g.u8(t["CB"].as_str().unwrap()).iter().map(|&b| b as i8).collect();
        assert_eq!(q.cb, cb, "{id}: CB");
        assert_eq!(q.scb, g.f32(t["SCB"].as_str().unwrap()), "{id}: SCB");
        let bias = t.get("bias").map(|b| g.f32(b.as_str().unwrap()));
        for f in c["forwards"].as_array().unwrap() {
            let ft = &f["tensors"];
            let threshold = f["threshold"].as_f64().unwrap() as f32;
            let x = g.f32(ft["X"].as_str().unwrap());
            let m = x.len() / cols;
            let xd = f["x_dtype"].as_str().unwrap();
            let mut act = int8::Int8Activations::default();
            int8::quantize_activations(&x, m, cols, threshold, &mut act);
            let ca: Vec<i8> = g.u8(ft["CA"].as_str().unwrap()).iter().map(|&b| b as i8).collect();
            assert_eq!(act.ca, ca, "{id} x {xd} t={threshold}: CA");
            assert_eq!(act.sca, g.f32(ft["SCA"].as_str().unwrap()), "{id} t={threshold}: SCA");
            if let Some(oc) = ft.get("outlier_cols") {
                let want: Vec<usize> = g.i64(oc.as_str().unwrap()).iter().map(|&v| v as usize).collect();
                assert_eq!(act.outlier_cols, want, "{id}: outlier columns");
            }
            let want = g.f32(ft["out_f32"].as_str().unwrap());
            let weight = Weight::Int8(Int8Ref { rows, cols, cb: &q.cb, scb: &q.scb });
            for k in Kernels::variants() {
                let mut out = vec![0f32; m * rows];
                matmul_with(
                    &k,
                    &mut out,
                    &weight,
                    &x,
                    m,
                    &MatmulOptions { int8_threshold: threshold, fourbit_exact: true },
                )
                .unwrap();
                if let Some(b) = &bias {
                    out.chunks_mut(rows).for_each(|r| r.iter_mut().zip(b).for_each(|(o, &bv)| *o += bv));
                }
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-3);
                for (i, (&o, &wv)) in out.iter().zip(&want).enumerate() {
                    // bitsandbytes returns the activation dtype (fp16/bf16 rounding: 2^-8 relative
                    // for bf16) and computes the outlier part in that dtype too.
                    let err = (o - wv).abs() / scale;
                    worst = worst.max(err);
                    assert!(err <= 1e-2, "{id} t={threshold} {} element {i}: {o} vs {wv}", k.label());
                }
            }
        }
    }
    eprintln!("int8 forward: worst error relative to output scale {worst:.2e}");
}
