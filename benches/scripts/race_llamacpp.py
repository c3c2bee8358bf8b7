"""Side-by-side speed race: llama.cpp (through llama-cpp-python, compiled locally by pip) against
lowbit on SmolLM2-135M-Instruct, same prompt of 128 tokens, 64 decoded tokens, 1 and 2 threads,
runs alternated three times (RACE_REPS), medians. llama.cpp's Q4_0, IQ4_NL, Q8_0 and Q4_K_M files are made from the shipped Q4_1 GGUF by
llama.cpp's own quantizer; lowbit's nf4, int8 and q5-mix files by `lowbit convert`. Prints tokens/s and
the ratios lowbit / llama.cpp. Not part of CI.

Run: benches/scripts/race-llamacpp.sh
"""

import os
import statistics
import subprocess
import sys
import time

import llama_cpp
import llamacpp_files

gguf, work, lowbit, text_path = sys.argv[1:5]
reps = int(os.environ.get("RACE_REPS", "3"))


def quantize(ftype, name):
    return llamacpp_files.quantize(gguf, work, ftype, name)


models = {
    "Q4_0": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "smollm2.Q4_0.gguf"),
    "IQ4_NL": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL, "smollm2.IQ4_NL.gguf"),
    "Q8_0": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "smollm2.Q8_0.gguf"),
    "Q4_K_M": quantize(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "smollm2.Q4_K_M.gguf"),
}

# A prompt of exactly 128 tokens (both engines use the same tokenizer ids; tested in lowbit).
probe = llama_cpp.Llama(model_path=models["Q8_0"], n_ctx=512, verbose=False)
text = open(text_path, encoding="utf-8").read()
lo, hi = 1, len(text)
while lo < hi:
    mid = (lo + hi + 1) // 2
    if len(probe.tokenize(text[:mid].encode(), add_bos=False)) <= 128:
        lo = mid
    else:
        hi = mid - 1
prompt = text[:lo]
assert len(probe.tokenize(prompt.encode(), add_bos=False)) == 128
prompt_file = os.path.join(work, "race_prompt.txt")
open(prompt_file, "w", encoding="utf-8").write(prompt)
del probe


def llamacpp(model, threads):
    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
    toks = llm.tokenize(prompt.encode(), add_bos=False)
    t = time.perf_counter()
    llm.eval(toks)
    prefill = len(toks) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(64):
        nxt = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([nxt])
    decode = 64 / (time.perf_counter() - t)
    return prefill, decode


def ours(model, threads):
    r = subprocess.run([lowbit, "--threads", str(threads), "run", "--raw", "-m", model, "-f", prompt_file, "-n", "65", "--ignore-eos"],
                       capture_output=True, text=True, check=True)
    line = r.stderr.strip().splitlines()[-1]
    prefill = float(line.split("prefill ")[1].split(" tok, ")[1].split(" tok/s")[0])
    decode = float(line.split("decode ")[1].split(" tok, ")[1].split(" tok/s")[0])
    return prefill, decode


pairs = [
    ("nf4", os.path.join(work, "smollm2.nf4.lowbit"), "Q4_0"),
    ("nf4", os.path.join(work, "smollm2.nf4.lowbit"), "IQ4_NL"),
    ("int8", os.path.join(work, "smollm2.int8.lowbit"), "Q8_0"),
    ("q5-mix", os.path.join(work, "smollm2.q5-mix.lowbit"), "Q4_K_M"),
]
print("| threads | lowbit | llama.cpp | prefill lowbit / llama.cpp (tok/s) | ratio | decode lowbit / llama.cpp (tok/s) | ratio |")
print("|---|---|---|---|---|---|---|")
for threads in (1, 2):
    for ours_name, ours_model, theirs in pairs:
        a, b = [], []
        for _ in range(reps):  # alternate, keep the median of each
            a.append(ours(ours_model, threads))
            b.append(llamacpp(models[theirs], threads))
        op, od = statistics.median(x[0] for x in a), statistics.median(x[1] for x in a)
        lp, ld = statistics.median(x[0] for x in b), statistics.median(x[1] for x in b)
        print(f"| {threads} | {ours_name} | {theirs} | {op:.0f} / {lp:.0f} | {op / lp:.2f} | {od:.1f} / {ld:.1f} | {od / ld:.2f} |")
