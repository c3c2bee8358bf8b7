#!/usr/bin/env python3
"""Reference weights for the GGUF source (converter/tests/gguf_smollm2.rs).

Loads SmolLM2's GGUF through transformers (`AutoModelForCausalLM.from_pretrained(dir,
gguf_file=...)`), which dequantizes each tensor with gguf-py and un-permutes attn_q / attn_k into
the Hugging Face layout, and records a few rows of a few tensors as float32 bit patterns. The Rust
test must reproduce every recorded value bit for bit, which checks dequantization, the
GGUF -> HF name map and the un-permutation against an independent implementation.

    .cache/pyenv/bin/python scripts/make_gguf_tensor_ref.py \
        --gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out converter/tests/data/gguf/smollm2_tensor_ref.json
"""

import argparse
import hashlib
import json
import os

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

# Rows chosen to straddle head boundaries (head_dim 64) and the two halves of a head.
ROWS = [0, 1, 31, 32, 33, 63, 64, 95, 96, 127, 191]
TENSORS = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.17.self_attn.q_proj.weight",
    "model.layers.17.mlp.down_proj.weight",
    "model.layers.29.post_attention_layernorm.weight",
    "model.embed_tokens.weight",
    "model.norm.weight",
]
COLS = 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    folder, name = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = model.state_dict()
    with open(args.gguf, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    tensors = {}
    for tname in TENSORS:
        w = state[tname].detach().cpu().numpy().astype(np.float32)
        rows = {}
        if w.ndim == 1:
            rows["0"] = [int(x) for x in w[:COLS].view(np.uint32)]
        else:
            for r in ROWS:
                if r < w.shape[0]:
                    rows[str(r)] = [int(x) for x in w[r, :COLS].view(np.uint32)]
        tensors[tname] = {"shape": list(w.shape), "first_cols_f32_bits": rows}

    out = {
        "generator": "scripts/make_gguf_tensor_ref.py",
        "how": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32).state_dict(); "
        f"first {COLS} values of the listed rows as float32 bit patterns",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "gguf": {"file": name, "sha256": sha},
        "tensors": tensors,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
