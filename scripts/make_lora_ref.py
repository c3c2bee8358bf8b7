#!/usr/bin/env python3
"""PEFT LoRA adapters on a tiny Mistral and PEFT's own merge of each, for converter/tests/lora.rs.

Writes converter/tests/data/lora/<variant>/{adapter_config.json, adapter_model.safetensors,
merged.safetensors}: the adapter exactly as PEFT's save_pretrained writes it, and the tensors
merge_and_unload() changed, in float32. The base is runtime/tests/data/tiny/h96 (float16 weights,
loaded as float32). Run once with the pinned environment (scripts/setup-venv.sh, plus
peft==0.21.2):

    .cache/pyenv/bin/python scripts/make_lora_ref.py

Variants: `plain` (q/v, r 4); `patterns` (all seven linears, rsLoRA, rank_pattern and
alpha_pattern); `dora` (DoRA, target_modules as a regex over layer 0); `save` (k_proj of layer 1
by layers_to_transform, plus modules_to_save lm_head). LoRA B is random (init_lora_weights=False) so every update is non-zero;
DoRA's magnitudes and the saved lm_head are perturbed so they differ from the base.
"""

import json
import os

import peft
import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = os.path.join(ROOT, "runtime", "tests", "data", "tiny", "h96")
OUT = os.path.join(ROOT, "converter", "tests", "data", "lora")
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

VARIANTS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "patterns": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=LINEARS,
        rank_pattern={"down_proj": 2, r"layers\.1\.self_attn\.q_proj": 6},
        alpha_pattern={"o_proj": 3},
    ),
    "dora": dict(r=4, lora_alpha=4, use_dora=True, target_modules=r".*\.0\..*\.(q_proj|up_proj)"),
    "save": dict(r=2, lora_alpha=2, target_modules=["k_proj"], layers_to_transform=[1], modules_to_save=["lm_head"]),
}


def main():
    assert peft.__version__ == "0.21.2", peft.__version__
    for name, kw in VARIANTS.items():
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        pm = get_peft_model(model, LoraConfig(init_lora_weights=False, **kw))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(torch.empty_like(p).uniform_(0.8, 1.2))
                if "modules_to_save" in n:
                    p.add_(torch.randn_like(p) * 0.05)
        out = os.path.join(OUT, name)
        pm.save_pretrained(out, safe_serialization=True)
        # The base's path as the repository names it, not this machine's.
        cfg_path = os.path.join(out, "adapter_config.json")
        cfg = json.load(open(cfg_path))
        cfg["base_model_name_or_path"] = "runtime/tests/data/tiny/h96"
        json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
        merged = pm.merge_and_unload()
        changed = {k: v.contiguous() for k, v in merged.state_dict().items() if not torch.equal(v, before[k])}
        safetensors.torch.save_file(changed, os.path.join(out, "merged.safetensors"))
        keys = safetensors.torch.load_file(os.path.join(out, "adapter_model.safetensors")).keys()
        print(name, "adapter keys:", len(keys), "changed tensors:", sorted(changed))
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(f"Made by scripts/make_lora_ref.py with peft {peft.__version__}, torch {torch.__version__}: {json.dumps(kw)}\n")


if __name__ == "__main__":
    main()
