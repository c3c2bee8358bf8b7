"""One side of python-race.sh: `python python_race.py lowbit|llama_cpp MODEL WHAT` prints one
JSON line of measurements. WHAT is `single` (one 128-token greedy completion, not streamed and
streamed: generated tokens per second), `loop` (16 prompts one call at a time) or `batch`
(the same 16 through `generate_batch`, lowbit only)."""

import json
import sys
import time

side, model, what = sys.argv[1:4]
# Raw text an instruct model goes on with (instructions without the chat template end at once).
OPENINGS = ["Once upon a time, in a village by the sea,", "The history of the printing press begins",
            "In the year 1850, a young engineer named", "The recipe for a good bread starts with"]
PROMPTS = [f"{OPENINGS[i % 4]} {'and' if i % 2 else 'while'} number {i}" for i in range(16)]

if side == "lowbit":
    import lowbit

    llm = lowbit.Llama(model_path=model, n_ctx=1024, n_threads=2, n_parallel=16)
else:
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=1024, n_threads=2, n_threads_batch=2, verbose=False)

args = dict(temperature=0.0, top_k=1)
llm("Warm up.", max_tokens=4, **args)


def single():
    t0 = time.perf_counter()
    r = llm("The history of the printing press", max_tokens=128, **args)
    whole = r["usage"]["completion_tokens"] / (time.perf_counter() - t0)
    t0, n = time.perf_counter(), 0
    for chunk in llm("The history of the printing press", max_tokens=128, stream=True, **args):
        n += 1
    streamed = n / (time.perf_counter() - t0)
    return {"tok_s": whole, "stream_tok_s": streamed}


def loop():
    t0, toks = time.perf_counter(), 0
    for p in PROMPTS:
        toks += llm(p, max_tokens=48, **args)["usage"]["completion_tokens"]
    return {"tok_s": toks / (time.perf_counter() - t0), "tokens": toks}


def batch():
    t0 = time.perf_counter()
    rs = llm.generate_batch(PROMPTS, max_tokens=48, **args)
    toks = sum(r["usage"]["completion_tokens"] for r in rs)
    return {"tok_s": toks / (time.perf_counter() - t0), "tokens": toks}


print(json.dumps({"side": side, "what": what, **{"single": single, "loop": loop, "batch": batch}[what]()}))
