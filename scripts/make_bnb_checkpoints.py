#!/usr/bin/env python3
"""bitsandbytes-quantized tiny Mistral checkpoints, saved by transformers, with reference logits.

Writes converter/tests/data/bnb/{source,nf4_dq,nf4,fp4_dq,int8}/ and converter/tests/data/bnb/summary.json.
Run once with the pinned environment (scripts/setup-venv.sh); Python never runs in the Rust tests:

    .cache/pyenv/bin/python scripts/make_bnb_checkpoints.py [--out converter/tests/data/bnb]

source/: a dedicated random MistralForCausalLM (hidden 128 so every row is a whole number of
64-blocks; intermediate 192 so gate/up/down have 384 blocks = two nested 256-blocks, the last one
short), saved in float16 with save_pretrained, plus reference.safetensors (float32 logits of the
unquantized model, weights upcast from float16).

Each quantized variant: AutoModelForCausalLM.from_pretrained(source, quantization_config=
BitsAndBytesConfig(...), dtype=torch.float16) -> save_pretrained (no device_map: that needs
`accelerate`, which is not installed; the model loads and quantizes on the CPU). That is a
realistic checkpoint (quant_state dtype "float16", unquantized tensors float16). The reference
logits come from reloading the *saved* quantized folder with dtype=torch.float32 (bnb compute
dtype float32 for 4-bit), i.e. dequantize to the recorded dtype, all other compute in float32.

reference.safetensors (each folder): input_ids int64 [T], logits float32 [T, vocab] (one forward
over the prompt, every position).
"""

import argparse
import json
import os
import shutil

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch
import transformers
import bitsandbytes
import bitsandbytes.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GenerationConfig, MistralConfig, MistralForCausalLM

VOCAB = 256
T = 12
DEFAULT_KEYSET = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)

SOURCE_CFG = dict(
    vocab_size=VOCAB, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
    rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, sliding_window=None,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)

VARIANTS = {
    "nf4_dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                   bnb_4bit_compute_dtype=torch.float32),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                bnb_4bit_compute_dtype=torch.float32),
    "fp4_dq": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                   bnb_4bit_compute_dtype=torch.float32),
    "int8": dict(load_in_8bit=True, llm_int8_threshold=6.0),
}


def build_source(d, seed=31):
    cfg = MistralConfig(**SOURCE_CFG)
    torch.manual_seed(seed)
    m = MistralForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.6, 1.4, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                w = torch.randn(p.shape, generator=g) * 0.12
                # a few large weights so int8 rows and 4-bit blocks see outliers
                idx = torch.randint(0, w.numel(), (max(1, w.numel() // 500),), generator=g)
                w.view(-1)[idx] *= 6.0
                p.copy_(w)
    m.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    m.to(torch.float16).save_pretrained(d, safe_serialization=True)


def no_cpu_repacking(model):
    """bitsandbytes 0.50.2 on a CPU with AVX512-BF16: the first Linear4bit forward repacks the weight
    for its gemv kernel and stores the (dequantized) absmax as bfloat16 -- lossy. Saving afterwards
    converts back badly: without double quant the saved absmax is the transposed bfloat16 matrix
    [in/blocksize, out]; with double quant it is re-quantized from the bfloat16-rounded values.
    Reference logits must reflect the checkpoint exactly, so turn that path off (the forward then
    dequantizes with dequantize_4bit and runs a float32 matmul)."""
    import bitsandbytes.nn as bnn
    n = 0
    for m in model.modules():
        if isinstance(m, bnn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def upcast_unquantized(model):
    """transformers 5.23 keeps a pre-quantized checkpoint's float16 tensors as float16 even with
    dtype=torch.float32; upcast them (exactly) so the whole forward runs in float32."""
    n = 0
    for p in model.parameters():
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
            n += 1
    return n


@torch.no_grad()
def logits_of(model, ids):
    return model(ids[None].to(model.device), use_cache=False).logits[0].float().contiguous()


def nested_rule_check(variant_dir, source_dir, quant_type):
    """Compare the saved nested codes with bnb's two 8-bit rules re-run on the source weights."""
    src = safe_open(os.path.join(source_dir, "model.safetensors"), "pt")
    q = safe_open(os.path.join(variant_dir, "model.safetensors"), "pt")
    res = {"tensors": 0, "packed_codes_equal": 0, "nested_codes": 0, "equal_cpu_rule": 0, "equal_nearest_rule": 0,
           "cpu_vs_nearest_differ": 0}
    for k in q.keys():
        if not k.endswith(f".weight.quant_state.bitsandbytes__{quant_type}"):
            continue
        prefix = k[: -len(f".quant_state.bitsandbytes__{quant_type}")]
        state = json.loads(bytes(q.get_tensor(k).tolist()).decode())
        w = src.get_tensor(prefix)  # float16 source weight
        packed, am = torch.ops.bitsandbytes.quantize_4bit.default(w, state["blocksize"], quant_type, torch.uint8)
        res["tensors"] += 1
        res["packed_codes_equal"] += int(torch.equal(packed.reshape(-1), q.get_tensor(prefix).reshape(-1)))
        centered = am - am.mean()
        code = q.get_tensor(prefix + ".nested_quant_map")
        cpu, _ = torch.ops.bitsandbytes.quantize_blockwise.default(centered, code, 256)
        near, _ = torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(DEFAULT_KEYSET, centered, code, 256)
        saved = q.get_tensor(prefix + ".absmax")
        res["nested_codes"] += saved.numel()
        res["equal_cpu_rule"] += int((saved == cpu).sum())
        res["equal_nearest_rule"] += int((saved == near).sum())
        res["cpu_vs_nearest_differ"] += int((cpu != near).sum())
    return res


def describe(dirpath):
    f = safe_open(os.path.join(dirpath, "model.safetensors"), "pt")
    out = {}
    for k in sorted(f.keys()):
        sl = f.get_slice(k)
        out[k] = [sl.get_dtype(), list(sl.get_shape())]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(repo, "converter", "tests", "data", "bnb"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(77)
    ids = torch.randint(3, VOCAB, (T,), generator=g, dtype=torch.int64)
    meta_tail = f"(transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__})"

    src = os.path.join(args.out, "source")
    if os.path.isdir(src):
        shutil.rmtree(src)
    build_source(src)
    m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()
    src_logits = logits_of(m, ids)
    save_file({"input_ids": ids, "logits": src_logits}, os.path.join(src, "reference.safetensors"),
              metadata={"generator": f"scripts/make_bnb_checkpoints.py source {meta_tail}"})
    summary = {"generator": "scripts/make_bnb_checkpoints.py",
               "versions": {"transformers": transformers.__version__, "bitsandbytes": bitsandbytes.__version__,
                            "torch": torch.__version__},
               "input_ids": ids.tolist(), "variants": {}}
    summary["variants"]["source"] = {"tensors": describe(src)}

    for name, qkw in VARIANTS.items():
        d = os.path.join(args.out, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        info = {"quantization_config": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in qkw.items()}}
        try:
            qm = AutoModelForCausalLM.from_pretrained(
                src, quantization_config=BitsAndBytesConfig(**qkw), dtype=torch.float16,
                attn_implementation="eager").eval()
            # save BEFORE any forward pass: see no_cpu_repacking()
            qm.save_pretrained(d, safe_serialization=True)
            no_cpu_repacking(qm)
            in_memory = logits_of(qm, ids)
            del qm
            rm = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
            upcast = upcast_unquantized(rm)
            no_cpu_repacking(rm)
            lg = logits_of(rm, ids)
            save_file({"input_ids": ids, "logits": lg}, os.path.join(d, "reference.safetensors"),
                      metadata={"generator": f"scripts/make_bnb_checkpoints.py {name} {meta_tail}"})
            info.update(
                ok=True,
                tensors=describe(d),
                max_abs_logit_diff_vs_source=float((lg - src_logits).abs().max()),
                argmax_agreement_vs_source=int((lg.argmax(-1) == src_logits.argmax(-1)).sum()),
                max_abs_logit_diff_vs_float16_in_memory_model=float((lg - in_memory).abs().max()),
                params_upcast_to_float32_on_reload=upcast,
            )
            if name.endswith("_dq"):
                info["nested_rule"] = nested_rule_check(d, src, qkw["bnb_4bit_quant_type"])
        except Exception as e:  # record exactly how it failed
            import traceback
            info.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        summary["variants"][name] = info
        print(name, json.dumps({k: v for k, v in info.items() if k != "tensors"}, indent=1))

    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
