"""Side-by-side speed race: llama.cpp (through llama-cpp-python, compiled locally by pip) against
lowbit on SmolLM2-135M-Instruct, same prompt of 128 tokens, 64 decoded tokens, 1 and 2 threads,
runs alternated three times (RACE_REPS), medians. llama.cpp's Q4_0, IQ4_NL, Q8_0 and Q4_K_M files are made from the shipped Q4_1 GGUF by
llama.cpp's own quantizer; lowbit's nf4, int8 and q5-mix files by `lowbit convert`. Prints tokens/s and
the ratios lowbit / llama.cpp. Not part of CI.

Run: benches/scripts/race-llamacpp.sh
"""

import os
import statistics
import sys

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

prompt, prompt_file = llamacpp_files.prompt_128(models["Q8_0"], text_path, work)


def llamacpp(model, threads):
    return llamacpp_files.llamacpp_speed(model, prompt, threads)


def ours(model, threads):
    return llamacpp_files.lowbit_speed(lowbit, model, prompt_file, threads)


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
