"""llama.cpp's quantizations of a GGUF, made once by llama.cpp's own quantizer (through
llama-cpp-python) and kept in a work folder, the race's 128-token prompt, and how fast each side
prefills it and decodes after it: shared by the race and the quality table."""

import ctypes
import os
import subprocess
import time

import llama_cpp


def quantize(gguf, work, ftype, name):
    """`work/name`, made from `gguf` with llama.cpp's ftype `ftype` unless it is there already."""
    out = os.path.join(work, name)
    if not os.path.exists(out):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = 2
        rc = llama_cpp.llama_model_quantize(gguf.encode(), out.encode(), ctypes.byref(params))
        assert rc == 0, f"quantize {name} failed: {rc}"
    return out


def prompt_128(gguf_file, text_path, work):
    """The longest start of the text that is 128 tokens (both engines use the same tokenizer
    ids; tested in lowbit), written to `work/race_prompt.txt`; returns (text, path)."""
    probe = llama_cpp.Llama(model_path=gguf_file, n_ctx=512, verbose=False)
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
    path = os.path.join(work, "race_prompt.txt")
    open(path, "w", encoding="utf-8").write(prompt)
    return prompt, path


def llamacpp_speed(model, prompt, threads):
    """llama.cpp's (prefill, decode) tokens/s: the prompt in one batch, then 64 greedy tokens."""
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


def lowbit_speed(lowbit, model, prompt_file, threads):
    """lowbit's (prefill, decode) tokens/s from `lowbit run`'s summary line, 64 decoded tokens
    after the first."""
    r = subprocess.run(
        [lowbit, "--threads", str(threads), "run", "--raw", "-m", model, "-f", prompt_file, "-n", "65", "--ignore-eos"],
        capture_output=True,
        text=True,
        check=True,
    )
    line = r.stderr.strip().splitlines()[-1]
    prefill = float(line.split("prefill ")[1].split(" tok, ")[1].split(" tok/s")[0])
    decode = float(line.split("decode ")[1].split(" tok, ")[1].split(" tok/s")[0])
    return prefill, decode
