"""Quality table: llama.cpp's quantizations against lowbit's, same source, same text, same scoring.

llama.cpp's side is scored here through llama-cpp-python as llama.cpp's perplexity tool scores:
the text (tokenized without BOS) is cut into chunks of 256 tokens, each chunk's first token is
replaced by BOS and evaluated in a fresh context, and the second half of each chunk is scored.
KL divergence and top-1 agreement are against llama.cpp's own F16 file, evaluated chunk by chunk
beside the quantized one. lowbit's side comes from `lowbit perplexity` (the same scoring; its
output files are read from WORK). Then each file's speed at two threads as the race measures it
(`race_llamacpp.py`: a 128-token prompt, 64 decoded tokens; medians of SPEED_REPS runs, default
3, the files alternated). Prints one markdown table. Run: benches/scripts/quality-table.sh
"""

import os
import re
import statistics
import sys

import llama_cpp
import llamacpp_files
import numpy as np

gguf, work, text_path, lowbit = sys.argv[1:5]
CTX = 256


def quantize(ftype, name):
    return llamacpp_files.quantize(gguf, work, ftype, name)


files = {
    "F16": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "smollm2.F16.gguf"),
    "Q4_0": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "smollm2.Q4_0.gguf"),
    "IQ4_NL": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL, "smollm2.IQ4_NL.gguf"),
    "Q4_K_M": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "smollm2.Q4_K_M.gguf"),
    "Q8_0": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "smollm2.Q8_0.gguf"),
}


def load(path):
    return llama_cpp.Llama(model_path=path, n_ctx=CTX, n_batch=CTX, n_threads=2, logits_all=True, verbose=False)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def chunk_logprobs(llm, chunk):
    llm.reset()
    llm.eval(chunk)
    logits = np.array(llm.scores[: len(chunk)], dtype=np.float32)
    first = CTX // 2
    return log_softmax(logits[first : CTX - 1])


text = open(text_path, encoding="utf-8").read()
base = load(files["F16"])
tokens = base.tokenize(text.encode(), add_bos=False)
bos = base.token_bos()
chunks = []
for c in range(len(tokens) // CTX):
    ch = list(tokens[c * CTX : (c + 1) * CTX])
    ch[0] = bos
    chunks.append(ch)
targets = [np.array(ch[CTX // 2 + 1 :]) for ch in chunks]
base_lp = [chunk_logprobs(base, ch) for ch in chunks]
del base


def score(lps, with_kl):
    nll, n, kl, same = 0.0, 0, 0.0, 0
    for lp, t, b in zip(lps, targets, base_lp):
        nll -= lp[np.arange(len(t)), t].sum()
        n += len(t)
        if with_kl:
            kl += (np.exp(b) * (b - lp)).sum()
            same += (lp.argmax(-1) == b.argmax(-1)).sum()
    return float(np.exp(nll / n)), kl / n, same / n, n


rows = []
ppl_f16, _, _, n = score(base_lp, False)
rows.append(("llama.cpp F16", files["F16"], ppl_f16, 1.0, None, None))
# IQ4_NL with llama.cpp's own importance matrix on lowbit's calibration text, when
# quality-table.sh could make it (it needs llama.cpp's tools, built by serve-race.sh).
with_imatrix = os.path.join(work, "smollm2.IQ4_NL-imatrix.gguf")
if os.path.exists(with_imatrix):
    files["IQ4_NL --imatrix"] = with_imatrix
for name in [n for n in ["Q4_0", "IQ4_NL", "IQ4_NL --imatrix", "Q4_K_M", "Q8_0"] if n in files]:
    llm = load(files[name])
    lps = [chunk_logprobs(llm, ch) for ch in chunks]
    del llm
    ppl, kl, top1, _ = score(lps, True)
    rows.append((f"llama.cpp {name}", files[name], ppl, ppl / ppl_f16, kl, top1))


def lowbit_row(name, label):
    out = open(os.path.join(work, f"{name}.txt")).read()
    ppl = float(re.search(r"perplexity: ([0-9.]+)", out).group(1))
    kl = re.search(r"KL divergence vs base: ([0-9.]+) nats/token; top-1 agreement ([0-9.]+)%", out)
    return label, os.path.join(work, f"{name}.lowbit"), ppl, kl


_, path, ppl_f32, _ = lowbit_row("f32", "lowbit f32")
rows.append(("lowbit f32", path, ppl_f32, 1.0, None, None))
for name, label in [
    ("nf4", "lowbit nf4 (default)"),
    ("nf4-imatrix", "lowbit nf4 --imatrix"),
    ("nf4-small", "lowbit nf4-small"),
    ("nf4-bnb-exact", "lowbit nf4 --bnb-exact"),
    ("nf4-mix", "lowbit nf4-mix"),
    ("nf4-mix-imatrix", "lowbit nf4-mix --imatrix"),
    ("nf4-plus", "lowbit nf4-plus"),
    ("nf4-plus-imatrix", "lowbit nf4-plus --imatrix"),
    ("q5", "lowbit q5"),
    ("q5-mix", "lowbit q5-mix"),
    ("q5-mix-imatrix", "lowbit q5-mix --imatrix"),
    ("int8", "lowbit int8"),
    ("q8", "lowbit q8"),
]:
    _, path, ppl, kl = lowbit_row(name, label)
    rows.append((label, path, ppl, ppl / ppl_f32, float(kl.group(1)), float(kl.group(2)) / 100))

# Speed at two threads, every file alternated with the others, medians.
prompt, prompt_file = llamacpp_files.prompt_128(files["Q8_0"], text_path, work)
speeds = {}
for _ in range(int(os.environ.get("SPEED_REPS", "3"))):
    for _, path, *_ in rows:
        if path.endswith(".gguf"):
            s = llamacpp_files.llamacpp_speed(path, prompt, 2)
        else:
            s = llamacpp_files.lowbit_speed(lowbit, path, prompt_file, 2)
        speeds.setdefault(path, []).append(s)

print(f"{n} scored tokens per file ({len(chunks)} chunks of {CTX})")
# Bits per weight of the whole file (metadata and tokenizer included), over the model's parameters.
params = int(os.environ["QUALITY_PARAMS"])
print("| file | size (MB) | bits/weight | perplexity | ratio to own float | KL to own float | top-1 vs own float | prefill / decode tok/s (2 threads) |")
print("|---|---|---|---|---|---|---|---|")
for label, path, ppl, ratio, kl, top1 in rows:
    size = os.path.getsize(path)
    kls = "-" if kl is None else f"{kl:.4g}"
    t1 = "-" if top1 is None else f"{100 * top1:.2f} %"
    pre = statistics.median(x[0] for x in speeds[path])
    dec = statistics.median(x[1] for x in speeds[path])
    print(f"| {label} | {size / 1e6:.1f} | {size * 8 / params:.2f} | {ppl:.4f} | {ratio:.3f} | {kls} | {t1} | {pre:.0f} / {dec:.1f} |")
