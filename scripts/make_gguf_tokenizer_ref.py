#!/usr/bin/env python3
"""Reference token ids for the GGUF tokenizer rebuild (converter/tests/gguf_smollm2.rs).

Loads the tokenizer transformers builds from the SmolLM2 GGUF file's metadata
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) and records, for a fixed set of strings,
the ids it produces without adding special tokens, plus the chat template rendered for a short
conversation and its ids. The Rust test rebuilds tokenizer.json from the same file on its own
and must reproduce these ids exactly.

Run with the pinned venv (scripts/setup-venv.sh; versions in scripts/requirements.txt):

    .cache/pyenv/bin/python scripts/make_gguf_tokenizer_ref.py \
        --gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out converter/tests/data/gguf/smollm2_tokenizer_ref.json
"""

import argparse
import hashlib
import json
import os

import tokenizers
import transformers
from transformers import AutoTokenizer

STRINGS = [
    "Hello, world! How are you?",
    "hello world",
    "héllo 日本語 🙂",
    "  two leading spaces and trailing  ",
    "tabs\tand\nnew\n\nlines",
    "In 2024 it cost $3.50 (about 12345 yen).",
    "don't you'll I'M we've",
    'fn main() { println!("hi"); }',
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b",
    "Ünïcödé — “quotes” … ∑ ≠ ∞",
]

MESSAGES = [
    {"role": "user", "content": "What is the capital of France?"},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with open(args.gguf, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    strings = []
    for text in STRINGS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        strings.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})

    chat_text = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    chat_ids = tok(chat_text, add_special_tokens=False)["input_ids"]

    out = {
        "generator": "scripts/make_gguf_tokenizer_ref.py",
        "how": "AutoTokenizer.from_pretrained(dir, gguf_file=...); ids = tok(text, add_special_tokens=False)",
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        "gguf": {"file": name, "sha256": sha},
        "strings": strings,
        "chat": {"messages": MESSAGES, "text": chat_text, "ids": chat_ids},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
