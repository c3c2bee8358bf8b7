#!/usr/bin/env python3
"""Tiny random Mistral checkpoints with reference logits from Hugging Face transformers.

Writes runtime/tests/data/tiny/<variant>/{config.json, model.safetensors, generation_config.json,
reference.safetensors} for the variants below, plus runtime/tests/data/tiny/summary.json.
Run once with the pinned environment (scripts/setup-venv.sh); Python never runs in the Rust tests:

    .cache/pyenv/bin/python scripts/make_tiny_mistral.py [--out runtime/tests/data/tiny] [--only swa,tied]

How the reference is made, per variant:
  1. build MistralForCausalLM(config) in float32 with a fixed seed and a deliberately large init
     (linear weights ~ N(0, 0.15^2), embeddings ~ N(0, 0.5^2), norm weights ~ U(0.6, 1.4)), so logits
     vary meaningfully;
  2. save_pretrained in the variant's storage dtype (float16, or bfloat16 for `bf16`);
  3. reload the *saved* folder with dtype=torch.float32, attn_implementation="eager" (i.e. weights
     upcast exactly from their 16-bit values, all compute in float32);
  4. logits: one forward over the whole prompt (every position); greedy_ids: model.generate(
     max_new_tokens=16, do_sample=False, use_cache=True) with EOS stopping disabled; the script
     asserts the greedy tokens equal the argmax of full (cache-free) forwards over the growing sequence.

reference.safetensors: input_ids int64 [T], logits float32 [T, vocab], greedy_ids int64 [16],
and full_logits float32 [T+16, vocab]: one cache-free forward over prompt + greedy continuation
(logits at every position; rows T-1..T+14 are the distributions the greedy tokens were taken from).
"""

import argparse
import json
import os
import shutil

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch
import transformers
from safetensors.torch import save_file
from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

VOCAB = 256
T = 12
NEW = 16

BASE = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)

VARIANTS = {
    # window shorter than the prompt (12) and the continuation (16 more)
    "swa": dict(cfg=dict(sliding_window=5), dtype=torch.float16, seed=11),
    "gqa1": dict(cfg=dict(num_key_value_heads=1), dtype=torch.float16, seed=12),
    # hidden 96 (not a multiple of 64), 4 heads of 24
    "h96": dict(cfg=dict(hidden_size=96, num_attention_heads=4, head_dim=24, intermediate_size=128),
                dtype=torch.float16, seed=13),
    # stored in bfloat16; window 4096 (longer than any sequence here, like Mistral-7B v0.1's config)
    "bf16": dict(cfg=dict(sliding_window=4096), dtype=torch.bfloat16, seed=14),
    "tied": dict(cfg=dict(tie_word_embeddings=True), dtype=torch.float16, seed=45),
    "theta1e6": dict(cfg=dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
                     dtype=torch.float16, seed=16),
}


def make_config(over):
    kw = dict(BASE)
    kw.update(over)
    return MistralConfig(**kw)


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.6, 1.4, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    model.tie_weights()


def load_f32(path):
    m = MistralForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


@torch.no_grad()
def greedy_reference(model, ids):
    gen_cfg = GenerationConfig(max_new_tokens=NEW, do_sample=False, use_cache=True,
                               eos_token_id=None, pad_token_id=0, bos_token_id=1)
    model.generation_config.eos_token_id = None  # else generate() falls back to it (eos 2) and may stop early
    out = model.generate(ids[None], generation_config=gen_cfg, attention_mask=torch.ones(1, ids.numel(), dtype=torch.long))
    greedy = out[0, ids.numel():]
    assert greedy.numel() == NEW, greedy
    # cache-free cross-check: argmax of a full forward over the growing sequence
    seq = ids.clone()
    for _ in range(NEW):
        nxt = model(seq[None], use_cache=False).logits[0, -1].argmax()
        seq = torch.cat([seq, nxt[None]])
    assert torch.equal(seq[ids.numel():], greedy), (seq[ids.numel():], greedy)
    full = model(seq[None], use_cache=False).logits[0].float()
    return greedy, full


def make_variant(name, spec, out_dir):
    d = os.path.join(out_dir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    cfg = make_config(spec["cfg"])
    torch.manual_seed(spec["seed"])
    model = MistralForCausalLM(cfg).eval()
    init_weights(model, spec["seed"])
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.to(spec["dtype"]).save_pretrained(d, safe_serialization=True)

    model = load_f32(d)
    g = torch.Generator().manual_seed(100 + spec["seed"])
    ids = torch.randint(3, VOCAB, (T,), generator=g, dtype=torch.int64)
    with torch.no_grad():
        logits = model(ids[None], use_cache=False).logits[0].float().contiguous()
    greedy, full = greedy_reference(model, ids)
    assert torch.allclose(full[:T], logits, atol=1e-5, rtol=1e-5)
    save_file({"input_ids": ids.contiguous(), "logits": logits, "greedy_ids": greedy.contiguous(),
               "full_logits": full.contiguous()},
              os.path.join(d, "reference.safetensors"),
              metadata={"generator": f"scripts/make_tiny_mistral.py {name} (transformers {transformers.__version__}, "
                                     f"torch {torch.__version__}, eager attention, float32 compute)"})
    # top-1 minus top-2 logit along the greedy path: how robust the greedy tokens are to rounding
    rows = full[T - 1:T - 1 + NEW]
    top2 = rows.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1])
    prompt_top2 = logits.topk(2, dim=-1).values
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    c = model.config
    return dict(
        variant=name, storage_dtype=str(spec["dtype"]).replace("torch.", ""), seed=spec["seed"],
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim, sliding_window=c.sliding_window,
        rope_theta=c.rope_parameters["rope_theta"], tie_word_embeddings=c.tie_word_embeddings,
        logits_std=round(float(logits.std()), 3), input_ids=ids.tolist(), greedy_ids=greedy.tolist(),
        min_greedy_margin=round(float(margins.min()), 5),
        min_prompt_argmax_margin=round(float((prompt_top2[:, 0] - prompt_top2[:, 1]).min()), 5),
        distinct_greedy_tokens=len(set(greedy.tolist())),
        folder_bytes=size, files=sorted(os.listdir(d)),
    )


@torch.no_grad()
def window_semantics(window=5, seed=21):
    """Empirical check with a 1-layer model: which keys does query position q see?"""
    cfg = make_config(dict(num_hidden_layers=1, sliding_window=window))
    torch.manual_seed(seed)
    m = MistralForCausalLM(cfg)
    m.config._attn_implementation = "eager"
    init_weights(m, seed)
    m.eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (T,), generator=g)
    base = m(ids[None], use_cache=False).logits[0]
    q = T - 1
    seen = []
    for k in range(T):
        pert = ids.clone()
        pert[k] = (pert[k] + 1 - 3) % (VOCAB - 3) + 3
        if not torch.equal(m(pert[None], use_cache=False).logits[0, q], base[q]):
            seen.append(k)
    return dict(window=window, query=q, keys_that_influence_query=seen,
                conclusion=f"query {q} sees keys {seen[0]}..{seen[-1]}: {len(seen)} keys including itself "
                           f"(kv > q - W)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(repo, "runtime", "tests", "data", "tiny"))
    ap.add_argument("--only", default="", help="comma-separated subset of variants")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    only = [v for v in args.only.split(",") if v] or list(VARIANTS)
    summary = {"generator": "scripts/make_tiny_mistral.py",
               "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
               "sliding_window_semantics": window_semantics(), "variants": []}
    for name in only:
        info = make_variant(name, VARIANTS[name], args.out)
        summary["variants"].append(info)
        print(json.dumps(info))
    print(json.dumps(summary["sliding_window_semantics"]))
    if not args.only:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
