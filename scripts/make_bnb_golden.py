#!/usr/bin/env python3
"""Golden files for the kernels crate: bitsandbytes NF4/FP4 (+ double quant) and LLM.int8.

Writes kernels/tests/data/bnb/{fourbit,int8}.safetensors and cases.json (the index a Rust
test loops over) from fixed seeds, by calling bitsandbytes on the CPU. Python never runs in
the Rust tests; run this once with the pinned environment (scripts/setup-venv.sh):

    .cache/pyenv/bin/python scripts/make_bnb_golden.py [--out kernels/tests/data/bnb]

What "the two nested-code rules" means (FORMATS.md section I): in bitsandbytes 0.50 the
8-bit blockwise quantizer used for double quantization has a CPU C++ kernel (a 65,536-entry
lookup table) and a pure-PyTorch "default" kernel (nearest dynamic-map value, like CUDA).
`quantize_4bit(compress_statistics=True)` on CPU goes through the C++ one; we also call the
default kernel directly (dispatch key CompositeExplicitAutograd) and store both results.
"""

import argparse
import json
import os
import sys

# bitsandbytes wraps some default kernels in torch.compile; run them eagerly (same results, no
# compiler workers on a shared 2-core machine).
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import torch

import bitsandbytes
import bitsandbytes.functional as F
from safetensors.torch import save_file

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

# Cases for the 4-bit golden data. Blocks are over the flat row-major array.
#   id, shape, dtypes, configs ("std" = {nf4,fp4} x bs{64,128} x dq{0,1}), what is planted
FOURBIT_CASES = [
    dict(shape=(64,), plant="outliers"),
    dict(shape=(1, 63), plant="outliers"),                  # odd n: padded with one code
    dict(shape=(3, 100), plant="outliers+midpoints"),       # n=300, short last block (64 and 128)
    dict(shape=(7, 130), plant="outliers+zero_block", bs32=True),  # n=910, odd rows of even length
    dict(shape=(16, 256), plant="outliers+zero_block+huge"),  # 1e4-scale values
    dict(shape=(33, 64), plant="outliers+zero_block"),      # n=2112: not a multiple of 128
    dict(shape=(2, 96), plant="outliers+exact_codes"),      # n=192: 1.5 blocks of 128
    # big enough for more than one nested block (nb=277 > 256 at blocksize 64); bf16 only
    dict(shape=(130, 136), plant="outliers", dtypes=("bf16",), blocksizes=(64,)),
]

DEFAULT_KEYSET = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


def default_kernel(op, *args):
    """Run bitsandbytes' pure-PyTorch ("default") kernel for `op`, bypassing the CPU C++ one."""
    return op.redispatch(DEFAULT_KEYSET, *args)


def make_input(case_id, shape, plant):
    g = torch.Generator().manual_seed(1000 + case_id)
    torch.manual_seed(1000 + case_id)
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    flat = x.view(-1)
    n = flat.numel()
    # a few planted outliers (x8..x20)
    k = max(1, n // 97)
    idx = torch.randint(0, n, (k,), generator=g)
    flat[idx] *= torch.empty(k).uniform_(8.0, 20.0, generator=g)
    if "zero_block" in plant:
        # zero a 128-aligned run of 128: all-zero blocks at blocksize 32, 64 and 128
        start = 128 if n >= 384 else 0
        flat[start:start + 128] = 0.0
        # and an isolated exact zero / negative zero elsewhere
        flat[n - 3] = 0.0
        flat[n - 5] = -0.0
    if "huge" in plant:
        flat[7] = 1.0e4
        flat[300] = -3.0e4
        flat[1000:1064] *= 1.0e3          # a run of 64 large values (straddles two 64-blocks)
        flat[2048] = 6.0e4                # still finite in f16
    if "midpoints" in plant:
        # elements equal to (absmax * NF4 midpoint) in the first block: tie-breaking tests
        nf4 = F.get_4bit_type("nf4", device="cpu").float()
        mids = (nf4[:-1] + nf4[1:]) / 2
        # absmax of the first block: a power of two >= everything else in it, so the scaled
        # values land exactly on the midpoints (x * (1/absmax) is exact)
        a = float(2.0 ** np.ceil(np.log2(float(flat[17:64].abs().max()))))
        flat[0] = a
        flat[1:16] = mids * a
        flat[16] = -a
    if "exact_codes" in plant:
        nf4 = F.get_4bit_type("nf4", device="cpu").float()
        flat[0:16] = nf4 * 2.0
        fp4 = F.get_4bit_type("fp4", device="cpu").float()
        flat[64:80] = fp4 * 3.0
    return x


# ---------------------------------------------------------------------------- emulations
# Independent re-implementations used only to *report* which rule bitsandbytes followed.

def dequant4_default(packed, absmax_f32, blocksize, quant_type, shape, dtype):
    out = default_kernel(torch.ops.bitsandbytes.dequantize_4bit.default, packed, absmax_f32, blocksize,
                         quant_type, list(shape), dtype)
    return out.reshape(shape).contiguous()


def emulate_first_level(x_f32, blocksize, quant_type, rule):
    """Unpacked 4-bit codes (n rounded up to even; the pad element is the value 0.0 in the
    last block). rule 'default': FORMATS.md section I (bnb's pure-PyTorch kernel);
    rule 'cuda': an emulation of csrc/kernels.cu kQuantizeBlockwise (multiply by 1/absmax,
    no clamp, strict '>' decision trees, dQuantizeFP4's decimal thresholds)."""
    code = F.get_4bit_type(quant_type, device="cpu").float().numpy()
    a = x_f32.reshape(-1).astype(np.float32)
    n = a.size
    nb = -(-n // blocksize)
    out = np.zeros(n + (n % 2), dtype=np.uint8)
    # bnb's own sorted order of the table (torch.argsort; matters for fp4's two zeros)
    order = torch.argsort(torch.tensor(code)).numpy()
    srt = code[order]
    bounds = ((srt[:-1] + srt[1:]) / np.float32(2)).astype(np.float32)
    for b in range(nb):
        blk = a[b * blocksize:(b + 1) * blocksize]
        am = np.float32(np.abs(blk).max())
        short = blk.size < blocksize
        if rule == "default":
            amc = np.float32(max(am, np.float32(1e-38)))
            if short:
                sc = np.clip(blk / amc, -1, 1).astype(np.float32)
            else:
                sc = np.clip(blk * (np.float32(1.0) / amc), -1, 1).astype(np.float32)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                sc = (blk * (np.float32(1.0) / am)).astype(np.float32)
        if b == nb - 1 and n % 2:
            sc = np.append(sc, np.float32(0.0))
        if rule == "default":
            q = order[np.searchsorted(bounds, sc, side="left")]  # == torch.bucketize(right=False)
        elif quant_type == "nf4":
            mids = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
            q = np.array([0 if np.isnan(v) else int((v > mids).sum()) for v in sc])
        else:
            q = np.array([cuda_fp4(v) for v in sc])
        out[b * blocksize:b * blocksize + sc.size] = q
    return out


def unpack(codes):
    c = codes.astype(np.uint8)
    out = np.empty(c.size * 2, dtype=np.uint8)
    out[0::2] = c >> 4
    out[1::2] = c & 0x0F
    return out


def cuda_fp4(x):
    sign = 0b1000 if x < 0 else 0
    x = abs(x)
    f = np.float32
    if x > f(0.29166667):
        if x > f(0.583333):
            return (0b0011 if x > f(0.8333333) else 0b0010) + sign
        return (0b101 if x > f(0.4166667) else 0b100) + sign
    if x > f(0.0859375):
        return (0b0111 if x > f(0.20833333) else 0b0110) + sign
    return (0b0001 if x > f(0.00260417) else 0b0000) + sign


def emulate_nested_lut(centered, nested_absmax, code, blocksize=256):
    """FORMATS.md section I: CPU C++ rule (65,536-entry LUT), in f32 arithmetic."""
    code = code.astype(np.float32)
    mids = ((code[:-1] + code[1:]) / np.float32(2)).astype(np.float32)
    i = np.arange(65536, dtype=np.float32)
    pts = (np.float32(-1.0) + np.float32(2.0) * i / np.float32(65535)).astype(np.float32)
    lut = np.searchsorted(mids, pts, side="left")  # number of midpoints < pt
    out = np.empty(centered.size, dtype=np.uint8)
    for j in range(centered.size):
        am = nested_absmax[j // blocksize]
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.float32(np.clip(np.float32(centered[j]) / np.float32(am), -1, 1))
        if np.isnan(v):  # 0/0 (all-zero nested block): bnb's C++ kernel yields code 0 here
            out[j] = 0
            continue
        u = int(np.float32(np.float32((v + np.float32(1)) * np.float32(0.5)) * np.float32(65535)) + np.float32(0.5))
        out[j] = lut[u]
    return out


def compare_first_level(stats, p, xf, bs, qt, got, zero_blocks):
    for rule in ("default", "cuda"):
        em = emulate_first_level(xf, bs, qt, rule)
        diff = np.nonzero(em != got)[0]
        st = stats.setdefault(f"first_level_cpu_vs_{rule}_rule", {
            "codes_compared": 0, "differing_in_all_zero_blocks": 0,
            "differing_fp4_signed_zero": 0, "differing_other_nf4": 0, "differing_other_fp4": 0,
            "examples_other": []})
        st["codes_compared"] += int(got.size)
        for d in diff:
            if int(d) // bs in zero_blocks:
                st["differing_in_all_zero_blocks"] += 1
            elif qt == "fp4" and {int(em[d]), int(got[d])} <= {0, 8}:
                st["differing_fp4_signed_zero"] += 1
            else:
                st[f"differing_other_{qt}"] += 1
                if len(st["examples_other"]) < 6:
                    st["examples_other"].append(
                        f"{p} element {int(d)} x={float(xf.reshape(-1)[d]) if d < xf.size else 0.0!r} "
                        f"bnb code {int(got[d])} {rule} code {int(em[d])}")


# ---------------------------------------------------------------------------- 4-bit
def fourbit(tensors, cases, stats):
    for cid, spec in enumerate(FOURBIT_CASES):
        shape = spec["shape"]
        x32 = make_input(cid, shape, spec["plant"])
        n = x32.numel()
        for dk in spec.get("dtypes", ("f32", "f16", "bf16")):
            dt = DTYPES[dk]
            x = x32.to(dt)
            iname = f"input/case{cid}/{dk}"
            tensors[iname] = x.clone()
            xf = x.float().numpy()
            bss = list(spec.get("blocksizes", (64, 128))) + ([32] if spec.get("bs32") else [])
            for qt in ("nf4", "fp4"):
                for bs in bss:
                    nb = -(-n // bs)
                    zero_blocks = [b for b in range(nb) if not np.any(xf.reshape(-1)[b * bs:(b + 1) * bs])]
                    for dq in (False, True):
                        p = f"{qt}/bs{bs}/dq{int(dq)}/case{cid}/{dk}"
                        packed, qs = F.quantize_4bit(x, blocksize=bs, compress_statistics=dq, quant_type=qt)
                        deq_cpu = F.dequantize_4bit(packed, qs)
                        # quirk: the CPU C++ dequant returns (1, n) for a 1-D shape
                        bnb_deq_shape = list(deq_cpu.shape)
                        assert deq_cpu.dtype == dt and deq_cpu.numel() == n
                        deq_cpu = deq_cpu.reshape(shape)
                        # bug in bnb 0.50.2: the CPU C++ dequantize_4bit applies the wrong absmax when blocks
                        # straddle rows (observed: >1 row, last dim a multiple of 16 but not of the
                        # blocksize, e.g. (33,64) at blocksize 128 or (2,96) at 64). The stored `dequant`
                        # is therefore the default (pure-PyTorch) kernel's output, which equals CUDA's and
                        # FORMATS.md A.4; we record whether the CPU kernel agreed.
                        absmax_for_deq = qs.absmax
                        if dq:
                            absmax_for_deq = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
                        deq = dequant4_default(packed, absmax_for_deq.float(), bs, qt, shape, dt)
                        cpu_agrees = torch.equal(deq.float().abs(), deq_cpu.float().abs())
                        s = stats.setdefault("bnb_cpu_dequantize_4bit_vs_default", {"cases": 0, "agree": 0, "disagree": []})
                        s["cases"] += 1
                        if cpu_agrees:
                            s["agree"] += 1
                        else:
                            s["disagree"].append(p)
                        codes = packed.reshape(-1).contiguous()
                        assert codes.dtype == torch.uint8 and codes.numel() == (n + 1) // 2
                        # first-level absmax straight from the quantize_4bit op (identical for dq0/dq1)
                        _p2, absmax_f32 = torch.ops.bitsandbytes.quantize_4bit.default(x, bs, qt, torch.uint8)
                        assert torch.equal(_p2.reshape(-1), codes)

                        # which first-level rule did bnb's CPU path follow? (codes do not depend on dq)
                        if not dq:
                            compare_first_level(stats, p, xf, bs, qt, unpack(codes.numpy()), zero_blocks)

                        entry = dict(
                            id=p, case=cid, shape=list(shape), numel=n, dtype=DTYPE_NAMES[dk],
                            quant_type=qt, blocksize=bs, double_quant=dq, n_blocks=nb,
                            all_zero_blocks=zero_blocks, plant=spec["plant"], bnb_dequant_shape=bnb_deq_shape,
                            bnb_cpu_dequant_agrees=cpu_agrees,
                            tensors=dict(input=iname, codes=f"{p}/codes", dequant=f"{p}/dequant"),
                        )
                        tensors[f"{p}/codes"] = codes
                        tensors[f"{p}/dequant"] = deq.contiguous()
                        if not dq:
                            assert torch.equal(qs.absmax, absmax_f32)
                            tensors[f"{p}/absmax"] = qs.absmax.float().contiguous()
                            entry["tensors"]["absmax"] = f"{p}/absmax"
                        else:
                            st2 = qs.state2
                            offset = qs.offset.reshape(1).float()
                            centered = absmax_f32 - qs.offset
                            # nested codes under the two rules
                            cpu_codes, cpu_nabs = torch.ops.bitsandbytes.quantize_blockwise.default(centered, st2.code, 256)
                            near_codes, near_nabs = default_kernel(torch.ops.bitsandbytes.quantize_blockwise.default, centered, st2.code, 256)
                            assert torch.equal(cpu_codes, qs.absmax), "quantize_4bit(CPU) nested codes != C++ kernel"
                            assert torch.equal(cpu_nabs, st2.absmax)
                            # The default kernel clamps a short last block's absmax to 1e-38 (so an all-zero
                            # centered vector, e.g. a single first-level block, gets 1e-38 instead of 0).
                            nabs_differ = not torch.equal(near_nabs, st2.absmax)
                            assert st2.blocksize == 256
                            # reconstructed (dequantized) absmax under both rules, as bnb computes it
                            deq_abs_cpu = F.dequantize_blockwise(cpu_codes, st2) + qs.offset
                            st2n = F.QuantState(absmax=near_nabs, code=st2.code, blocksize=256, dtype=torch.float32)
                            deq_abs_near = F.dequantize_blockwise(near_codes, st2n) + qs.offset
                            qsn = F.QuantState(absmax=near_codes, shape=qs.shape, code=qs.code, blocksize=bs,
                                               quant_type=qt, dtype=qs.dtype, offset=qs.offset, state2=st2n)
                            deq_near = dequant4_default(packed, deq_abs_near.float(), bs, qt, shape, dt)
                            ndiff = int((cpu_codes != near_codes).sum())
                            s = stats.setdefault("nested_cpu_vs_nearest_in_golden", {
                                "codes": 0, "differing": 0, "differing_in_degenerate_single_block_cases": 0})
                            s["codes"] += nb
                            s["differing"] += ndiff
                            if nb == 1:
                                # one first-level block: centered absmax is exactly 0, nested absmax 0
                                # (C++: 0/0 -> code 0; default kernel: code 127 with absmax 1e-38)
                                s["differing_in_degenerate_single_block_cases"] += ndiff
                            lut = emulate_nested_lut(centered.numpy(), st2.absmax.numpy(), st2.code.float().numpy())
                            s = stats.setdefault("nested_cpu_vs_lut_emulation", {"codes": 0, "differing": 0})
                            s["codes"] += nb
                            s["differing"] += int((lut != cpu_codes.numpy()).sum())
                            names = dict(
                                absmax=f"{p}/nested_codes_cpu",          # what quantize_4bit on CPU stored
                                nested_codes_cpu=f"{p}/nested_codes_cpu",
                                nested_codes_nearest=f"{p}/nested_codes_nearest",
                                absmax_f32=f"{p}/absmax_f32",
                                nested_absmax=f"{p}/nested_absmax",
                                nested_offset=f"{p}/nested_offset",
                                absmax_deq_cpu=f"{p}/absmax_deq_cpu",
                                absmax_deq_nearest=f"{p}/absmax_deq_nearest",
                                dequant_nearest=f"{p}/dequant_nearest",
                            )
                            tensors[names["nested_codes_cpu"]] = cpu_codes.contiguous()
                            tensors[names["nested_codes_nearest"]] = near_codes.contiguous()
                            tensors[names["absmax_f32"]] = absmax_f32.contiguous()
                            tensors[names["nested_absmax"]] = st2.absmax.float().contiguous()
                            tensors[names["nested_offset"]] = offset.contiguous()
                            tensors[names["absmax_deq_cpu"]] = deq_abs_cpu.float().contiguous()
                            tensors[names["absmax_deq_nearest"]] = deq_abs_near.float().contiguous()
                            tensors[names["dequant_nearest"]] = deq_near.contiguous()
                            if nabs_differ:
                                names["nested_absmax_nearest"] = f"{p}/nested_absmax_nearest"
                                tensors[names["nested_absmax_nearest"]] = near_nabs.float().contiguous()
                            entry["tensors"].update(names)
                            entry["nested_blocksize"] = 256
                            entry["nested_codes_differing"] = ndiff
                        cases.append(entry)


def blockwise8(tensors, cases, stats, code):
    """Direct tests of the nested 8-bit step: quantize_blockwise(blocksize=256) on f32 vectors."""
    for cid, n in enumerate((256, 1000, 4096)):
        g = torch.Generator().manual_seed(2000 + cid)
        v = torch.randn(n, generator=g)
        if cid == 2:
            # absmax-like: positive, heavy-tailed, then centered by the mean (as double quant does)
            v = v.abs() * torch.empty(n).exponential_(1.0, generator=g) + 0.01
            v = v - v.mean()
        if cid == 1:
            # values exactly at dynamic-map midpoints (scaled by a power-of-two absmax)
            mids = (code[:-1] + code[1:]) / 2
            v[0] = 2.0
            v[1:256] = mids * 2.0
            v[256] = -2.0
            v[257:512] = mids.flip(0) * 2.0
        cpu_codes, cpu_abs = torch.ops.bitsandbytes.quantize_blockwise.default(v, code, 256)
        near_codes, near_abs = default_kernel(torch.ops.bitsandbytes.quantize_blockwise.default, v, code, 256)
        assert torch.equal(cpu_abs, near_abs)  # no zero short block here
        p = f"blockwise8/case{cid}"
        st = F.QuantState(absmax=cpu_abs, code=code, blocksize=256, dtype=torch.float32)
        tensors[f"{p}/input"] = v.contiguous()
        tensors[f"{p}/absmax"] = cpu_abs.contiguous()
        tensors[f"{p}/codes_cpu"] = cpu_codes.contiguous()
        tensors[f"{p}/codes_nearest"] = near_codes.contiguous()
        tensors[f"{p}/dequant_cpu"] = F.dequantize_blockwise(cpu_codes, st).contiguous()
        tensors[f"{p}/dequant_nearest"] = F.dequantize_blockwise(near_codes, st).contiguous()
        nd = int((cpu_codes != near_codes).sum())
        lut = emulate_nested_lut(v.numpy(), cpu_abs.numpy(), code.numpy())
        cases.append(dict(id=p, numel=n, blocksize=256, codes_differing=nd,
                          lut_emulation_differing=int((lut != cpu_codes.numpy()).sum()),
                          tensors={k: f"{p}/{k}" for k in ("input", "absmax", "codes_cpu", "codes_nearest", "dequant_cpu", "dequant_nearest")}))


def nested_rule_statistics(code):
    """Not stored: how often the two nested rules differ on realistic absmax vectors."""
    g = torch.Generator().manual_seed(3000)
    w = torch.randn(1 << 20, generator=g) * 0.02
    _, absmax = torch.ops.bitsandbytes.quantize_4bit.default(w, 64, "nf4", torch.uint8)
    c = absmax - absmax.mean()
    a, _ = torch.ops.bitsandbytes.quantize_blockwise.default(c, code, 256)
    b, _ = default_kernel(torch.ops.bitsandbytes.quantize_blockwise.default, c, code, 256)
    d = (a.int() - b.int())
    return dict(source="randn(2^20)*0.02 -> nf4 bs64 absmax (16384 values), centered, nested bs256",
                codes=int(a.numel()), differing=int((d != 0).sum()), max_abs_code_step=int(d.abs().max()))


# ---------------------------------------------------------------------------- int8
INT8_WEIGHTS = [
    dict(shape=(8, 64), wdtype="f32", bias=False),
    dict(shape=(8, 64), wdtype="bf16", bias=False),
    dict(shape=(8, 64), wdtype="f16", bias=False),
    dict(shape=(5, 100), wdtype="f32", bias=False),
    dict(shape=(5, 100), wdtype="bf16", bias=False),
    dict(shape=(5, 100), wdtype="f16", bias=False),
    dict(shape=(32, 128), wdtype="f32", bias=False),
    dict(shape=(32, 128), wdtype="bf16", bias=False),
    dict(shape=(32, 128), wdtype="f16", bias=False),
    dict(shape=(5, 100), wdtype="bf16", bias=True),
]


def make_activation(in_f, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, in_f, generator=g) * 1.5
    # outlier columns: |x| >= 6.0 somewhere in the column
    x[0, 3] = 7.25
    x[2, 3] = -1.0
    x[1, 10] = -6.0          # exactly at the threshold (>= counts)
    x[3, in_f - 1] = 12.5
    x[2, 20] = 5.99          # just below: not an outlier column (unless randn says otherwise)
    return x


def int8(tensors, cases):
    from bitsandbytes.nn import Int8Params, Linear8bitLt

    for wid, spec in enumerate(INT8_WEIGHTS):
        out_f, in_f = spec["shape"]
        g = torch.Generator().manual_seed(4000 + wid)
        W32 = torch.randn(out_f, in_f, generator=g) * 0.05
        W32[0, 5] = 0.9                    # a row with an outlier weight
        W32[out_f - 1] *= 10.0             # a row with a large scale
        wdt = DTYPES[spec["wdtype"]]
        W = W32.to(wdt)
        bias = (torch.randn(out_f, generator=g) * 0.1).to(wdt) if spec["bias"] else None
        p = f"int8/w{wid}/{spec['wdtype']}"
        tensors[f"{p}/W"] = W.clone()
        if bias is not None:
            tensors[f"{p}/bias"] = bias.clone()
        CB = SCB = None
        entry = dict(id=p, shape=[out_f, in_f], weight_dtype=DTYPE_NAMES[spec["wdtype"]], bias=spec["bias"],
                     tensors=dict(W=f"{p}/W", CB=f"{p}/CB", SCB=f"{p}/SCB"), forwards=[])
        if bias is not None:
            entry["tensors"]["bias"] = f"{p}/bias"
        X32 = make_activation(in_f, 5000 + wid)
        for xk in ("f32", "f16", "bf16"):
            X = X32.to(DTYPES[xk])
            tensors[f"{p}/x/{xk}/X"] = X.clone()
            for thr in (6.0, 0.0):
                layer = Linear8bitLt(in_f, out_f, bias=bias is not None, has_fp16_weights=False, threshold=thr)
                layer.weight = Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False)
                if bias is not None:
                    layer.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
                layer = layer.to("cpu").eval()
                assert layer.weight.dtype == torch.int8, layer.weight.dtype
                if CB is None:
                    CB, SCB = layer.weight.CB.clone(), layer.weight.SCB.clone()
                    tensors[f"{p}/CB"] = CB.contiguous()
                    tensors[f"{p}/SCB"] = SCB.float().contiguous()
                else:
                    assert torch.equal(CB, layer.weight.CB) and torch.equal(SCB, layer.weight.SCB)
                with torch.no_grad():
                    y = layer(X.clone())
                assert y.dtype == X.dtype
                CA, SCA, cols = F.int8_vectorwise_quant(X.clone().to(torch.float16), threshold=thr)
                q = f"{p}/x/{xk}/t{int(thr)}"
                tensors[f"{q}/out"] = y.contiguous()
                if y.dtype != torch.float32:
                    tensors[f"{q}/out_f32"] = y.float().contiguous()
                tensors[f"{q}/CA"] = CA.contiguous()
                tensors[f"{q}/SCA"] = SCA.float().contiguous()
                fw = dict(x_dtype=DTYPE_NAMES[xk], threshold=thr,
                          tensors=dict(X=f"{p}/x/{xk}/X", out=f"{q}/out",
                                       out_f32=f"{q}/out_f32" if y.dtype != torch.float32 else f"{q}/out",
                                       CA=f"{q}/CA", SCA=f"{q}/SCA"))
                if cols is not None:
                    tensors[f"{q}/outlier_cols"] = cols.to(torch.int64).contiguous()
                    fw["tensors"]["outlier_cols"] = f"{q}/outlier_cols"
                    fw["outlier_cols"] = [int(c) for c in cols]
                entry["forwards"].append(fw)
        cases.append(entry)


def compact_json(doc):
    """Top level indented, one line per case (keeps the file small and diffs readable)."""
    parts = []
    for k, v in doc.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            inner = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in v)
            parts.append(f"{json.dumps(k)}: [\n  {inner}\n ]")
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v, indent=1).replace(chr(10), chr(10) + ' ')}")
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def selfcheck(t, cases):
    """Recompute every dequantized output from the stored tensors with numpy (FORMATS.md A.4/B.3)."""
    maps = {"nf4": t["maps/nf4"].numpy(), "fp4": t["maps/fp4"].numpy()}
    dyn = t["maps/dynamic"].numpy()
    for e in cases:
        tn = e["tensors"]
        n, bs = e["numel"], e["blocksize"]
        nib = unpack(t[tn["codes"]].numpy())[:n]
        variants = [("dequant", None)]
        if e["double_quant"]:
            variants = [("dequant", "nested_codes_cpu"), ("dequant_nearest", "nested_codes_nearest")]
        for out_name, codes_name in variants:
            if codes_name is None:
                absmax = t[tn["absmax"]].numpy()
            else:
                nabs_name = "nested_absmax_nearest" if (out_name == "dequant_nearest" and "nested_absmax_nearest" in tn) else "nested_absmax"
                c = t[tn[codes_name]].numpy()
                nabs = t[tn[nabs_name]].numpy()
                absmax = (dyn[c] * nabs[np.arange(c.size) // 256]).astype(np.float32)
                absmax = (absmax + t[tn["nested_offset"]].numpy()[0]).astype(np.float32)
                ref_abs = t[tn["absmax_deq_cpu" if codes_name == "nested_codes_cpu" else "absmax_deq_nearest"]].numpy()
                assert np.array_equal(absmax, ref_abs), e["id"]
            w = (maps[e["quant_type"]][nib] * absmax[np.arange(n) // bs]).astype(np.float32)
            ref = t[tn[out_name]].reshape(-1)
            mine = torch.from_numpy(w).to(ref.dtype)
            assert torch.equal(mine.float().abs(), ref.float().abs()), (e["id"], out_name)  # +-0 may differ
    print(f"selfcheck: {len(cases)} 4-bit cases re-derived exactly from the stored tensors")


def selfcheck_int8(t, cases):
    """Recompute CB/SCB, CA/SCA and every forward output from FORMATS.md section I's formula."""
    for e in cases:
        tn = e["tensors"]
        CB, SCB, W = t[tn["CB"]], t[tn["SCB"]], t[tn["W"]]
        Wh = W.to(torch.float16).float()
        scb = Wh.abs().max(1).values
        assert torch.equal(scb, SCB) and torch.equal(torch.round(Wh * (127.0 / scb[:, None])).to(torch.int8), CB)
        bias = t[tn["bias"]] if "bias" in tn else None
        for f in e["forwards"]:
            ft = f["tensors"]
            X, out = t[ft["X"]], t[ft["out"]]
            A = X.to(torch.float16).clone()
            cols = torch.empty(0, dtype=torch.long)
            if f["threshold"] > 0:
                m = A.abs() >= f["threshold"]
                cols = torch.argwhere(m.any(0)).view(-1)
                A[m] = 0
            sca = A.abs().max(1).values.float()
            ca = torch.round(A * (127.0 / sca[:, None])).to(torch.int8)
            ca[:, cols] = 0
            assert torch.equal(ca, t[ft["CA"]]) and torch.equal(sca, t[ft["SCA"]]), (e["id"], f)
            y = (ca.int() @ CB.int().t()).float() * (sca[:, None] * SCB[None, :]) * 6.200124e-05
            if bias is not None:
                y = y + bias.to(X.dtype)
            y = y.to(X.dtype)
            if cols.numel():
                y = y.addmm(X[:, cols], (CB[:, cols].float() * SCB[:, None] * 7.874015718698502e-3).to(X.dtype).t())
            assert torch.equal(y, out), (e["id"], f["x_dtype"], f["threshold"])
    print(f"selfcheck: {len(cases)} int8 weights, all forwards re-derived exactly from the formula")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(repo, "kernels", "tests", "data", "bnb"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    t4, c4, stats = {}, [], {}
    dyn = F.create_dynamic_map().float()
    t4["maps/dynamic"] = dyn.contiguous()
    t4["maps/nf4"] = F.get_4bit_type("nf4", device="cpu").float().contiguous()
    t4["maps/fp4"] = F.get_4bit_type("fp4", device="cpu").float().contiguous()
    fourbit(t4, c4, stats)
    cb8 = []
    blockwise8(t4, cb8, stats, dyn)
    stats["nested_rule_large_sample"] = nested_rule_statistics(dyn)

    t8, c8 = {}, []
    int8(t8, c8)

    # one metadata key only: safetensors writes the metadata map in hash order, so several keys
    # would make the file bytes differ from run to run
    meta = {"generator": f"scripts/make_bnb_golden.py (bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__})"}
    save_file(t4, os.path.join(args.out, "fourbit.safetensors"), metadata=meta)
    save_file(t8, os.path.join(args.out, "int8.safetensors"), metadata=meta)

    doc = {
        "generator": "scripts/make_bnb_golden.py",
        "versions": {"torch": torch.__version__, "bitsandbytes": bitsandbytes.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "notes": [
            "All 4-bit tensors come from bitsandbytes.functional.quantize_4bit / dequantize_4bit on CPU.",
            "codes: packed uint8 flattened, ceil(n/2) bytes, first element in the high nibble.",
            "dq0: absmax is float32 [n_blocks]. dq1: tensors.absmax points at nested_codes_cpu (uint8 [n_blocks]), "
            "which is what quantize_4bit(compress_statistics=True) produced on CPU (C++ 65,536-entry LUT rule).",
            "nested_codes_nearest: the same centered absmax quantized by bitsandbytes' default pure-PyTorch kernel "
            "(nearest dynamic-map value, the CUDA rule). nested_absmax/nested_offset are identical under both rules, except when the centered absmax vector is "
            "all zero in a short last nested block (here: the single-first-level-block cases): the default kernel then "
            "stores 1e-38, given as nested_absmax_nearest.",
            "absmax_f32: first-level float absmax before double quantization; absmax_deq_*: reconstructed absmax "
            "(dequantize_blockwise + offset) under each rule; dequant: dequantize_4bit output (original dtype) for the "
            "CPU-rule quant state; dequant_nearest: the same with nested_codes_nearest.",
            "dequant/dequant_nearest are computed by bitsandbytes' default (pure-PyTorch) dequantize_4bit kernel, because "
            "the CPU C++ kernel of bnb 0.50.2 applies the wrong absmax when blocks straddle rows (observed: more than one "
            "row and a last dimension that is a multiple of 16 but not of the blocksize, e.g. (33,64) at blocksize 128, "
            "(2,96) at 64 and 128); bnb_cpu_dequant_agrees says whether the C++ kernel gave the same values "
            "(ignoring the sign of zero: the C++ FP4 table has -0.0 for code 8, Python +0.0).",
            "First-level 4-bit quantization on CPU is bitsandbytes' default (PyTorch) kernel (no C++ CPU kernel is registered): see stats.first_level_cpu_vs_*_rule.",
            "maps/dynamic: create_dynamic_map() float32[256]; maps/nf4, maps/fp4: get_4bit_type() float32[16].",
            "blockwise8: direct quantize_blockwise(blocksize=256) on f32 vectors under both rules.",
            "int8: Linear8bitLt(has_fp16_weights=False, threshold) quantized by .to('cpu'), eval mode (MatMul8bitLt). "
            "out is in the activation dtype, out_f32 = out.float(). CA/SCA/outlier_cols from "
            "int8_vectorwise_quant(X.to(float16), threshold) (outlier_cols absent when threshold == 0).",
        ],
        "files": {"fourbit": "fourbit.safetensors", "int8": "int8.safetensors"},
        "maps": {"dynamic": "maps/dynamic", "nf4": "maps/nf4", "fp4": "maps/fp4"},
        "stats": stats,
        "fourbit": c4,
        "blockwise8": cb8,
        "int8": c8,
    }
    selfcheck(t4, c4)
    selfcheck_int8(t8, c8)
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        f.write(compact_json(doc))
    print(json.dumps(stats, indent=1))
    for fn in ("fourbit.safetensors", "int8.safetensors", "cases.json"):
        print(fn, os.path.getsize(os.path.join(args.out, fn)))


if __name__ == "__main__":
    main()
