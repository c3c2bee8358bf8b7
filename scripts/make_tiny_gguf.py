"""A tiny Llama-architecture GGUF (written by the pinned gguf-py) for the converter's GGUF tests
and the fuzzer's seed corpus: 2 layers, hidden 64, vocab 300, tensors in F32, F16, Q8_0 and Q4_0,
a gpt2-style byte-level vocabulary with a few merges, and a ChatML template.

Run: $(scripts/setup-venv.sh) scripts/make_tiny_gguf.py  → converter/tests/data/gguf/tiny.gguf
"""

import pathlib

import gguf
import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "converter/tests/data/gguf/tiny.gguf"
rng = np.random.default_rng(7)
H, I, L, V, NH, NKV = 64, 128, 2, 300, 4, 2
w = gguf.GGUFWriter(str(OUT), "llama")
w.add_name("tiny-llama")
w.add_context_length(256)
w.add_embedding_length(H)
w.add_block_count(L)
w.add_feed_forward_length(I)
w.add_head_count(NH)
w.add_head_count_kv(NKV)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_dimension_count(H // NH)
# Byte-level vocabulary: GPT-2's printable spelling of the 256 bytes, then merges, then specials.
bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
byte_tokens = [chr(c) for _, c in sorted(zip(bs, cs))]
merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
merged = ["Ġt", "he", "Ġthe", "in", "an"]
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tokens = specials + byte_tokens + merged
tokens += [f"<extra_{i}>" for i in range(V - len(tokens))]
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("default")
w.add_token_list(tokens)
w.add_token_types([3, 3, 3] + [1] * (V - 3))
w.add_token_merges(merges)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def t(*shape, scale=0.1):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def q8_0(x):
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    q = np.round(blocks / np.where(d == 0, 1, d)).astype(np.int8)
    out = np.zeros((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(x.shape[0], -1)


w.add_tensor("token_embd.weight", t(V, H))
w.add_tensor("output_norm.weight", 1 + t(H))
w.add_tensor("output.weight", t(V, H).astype(np.float16))
for l in range(L):
    w.add_tensor(f"blk.{l}.attn_norm.weight", 1 + t(H))
    w.add_tensor(f"blk.{l}.ffn_norm.weight", 1 + t(H))
    w.add_tensor(f"blk.{l}.attn_q.weight", q8_0(t(H, H)), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor(f"blk.{l}.attn_k.weight", q8_0(t(H // 2, H)), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor(f"blk.{l}.attn_v.weight", t(H // 2, H).astype(np.float16))
    w.add_tensor(f"blk.{l}.attn_output.weight", t(H, H))
    w.add_tensor(f"blk.{l}.ffn_gate.weight", q8_0(t(I, H)), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor(f"blk.{l}.ffn_up.weight", t(I, H))
    w.add_tensor(f"blk.{l}.ffn_down.weight", t(H, I).astype(np.float16))
OUT.parent.mkdir(parents=True, exist_ok=True)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(OUT, OUT.stat().st_size)
