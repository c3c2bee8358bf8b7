"""Load generator for serve-race.sh: the same streamed /v1/completions requests against
`lowbit serve` and `llama-server`, alternating, at several concurrencies.

    python serve_race.py LOWBIT_BIN LOWBIT_MODEL LLAMA_SERVER_BIN LLAMA_GGUF TEXT THREADS

For each concurrency c in (1, 4, 8) and each round, each server gets 2·c requests (prompts of
60–200 words cut from TEXT, 64 tokens each with ignore_eos so both generate the same count),
c at a time. Per request: time to first token, and time per output token after it. Per run:
aggregate generated tokens per second over the wall time, and the server's peak RSS (VmHWM).
Medians over rounds. Standard library only.
"""

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

lowbit_bin, lowbit_model, llama_bin, llama_gguf, text_path, threads = sys.argv[1:7]
PARALLEL, TOKENS, ROUNDS, CTX = 8, 64, 2, 1024
words = open(text_path, encoding="utf-8").read().split()


def prompt(i):
    start = (i * 997) % (len(words) - 300)
    return " ".join(words[start : start + 60 + (i * 37) % 140])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(port, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become healthy")


def start(name):
    port = free_port()
    if name == "lowbit":
        cmd = [lowbit_bin, "-t", threads, "serve", "-m", lowbit_model, "--port", str(port),
               "--parallel", str(PARALLEL), "-c", str(CTX)] + os.environ.get("LOWBIT_SERVE_ARGS", "").split()
    else:
        # llama-server splits -c over its slots: the same context per slot as lowbit.
        cmd = [llama_bin, "-m", llama_gguf, "--port", str(port), "-np", str(PARALLEL), "-t", threads,
               "-c", str(CTX * PARALLEL), "--no-webui", "-lv", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_health(port, proc)
    return proc, port


def one(port, i, out):
    body = {"prompt": prompt(i), "max_tokens": TOKENS, "temperature": 0, "stream": True, "ignore_eos": True}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    stamps = []
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            stamps.append(time.perf_counter())
    c.close()
    ttft = stamps[0] - t0
    tpot = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else 0.0
    out.append((ttft, tpot, len(stamps)))


def load(port, conc, base):
    results, lock_free = [], []
    todo = list(range(base, base + 2 * conc))
    t0 = time.perf_counter()

    def worker():
        while True:
            try:
                i = todo.pop(0)
            except IndexError:
                return
            one(port, i, results)

    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return results, wall


def peak_rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


rows = []
for conc in (1, 4, 8):
    per = {"lowbit": [], "llama-server": []}
    for rnd in range(ROUNDS):
        for name in ("lowbit", "llama-server") if rnd % 2 == 0 else ("llama-server", "lowbit"):
            proc, port = start(name)
            try:
                load(port, 1, 10_000)  # warm-up
                res, wall = load(port, conc, 100 * conc + 1000 * rnd)
                rss = peak_rss(proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            toks = sum(n for _, _, n in res)
            per[name].append({
                "tps": toks / wall,
                "ttft50": pct([r[0] for r in res], 50), "ttft95": pct([r[0] for r in res], 95),
                "tpot50": pct([r[1] for r in res], 50), "tpot95": pct([r[1] for r in res], 95),
                "rss": rss,
            })
    for name, runs in per.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((conc, name, med))
        print(f"c={conc} {name:12} {med['tps']:7.1f} tok/s | TTFT p50 {med['ttft50']*1e3:6.0f} ms p95 {med['ttft95']*1e3:6.0f} ms"
              f" | TPOT p50 {med['tpot50']*1e3:6.1f} ms p95 {med['tpot95']*1e3:6.1f} ms | peak RSS {med['rss']:6.0f} MiB", flush=True)

print("\n| concurrency | server | generated tok/s | TTFT p50 / p95 (ms) | TPOT p50 / p95 (ms) | peak RSS (MiB) |")
print("|---|---|---|---|---|---|")
for conc, name, m in rows:
    print(f"| {conc} | {name} | {m['tps']:.1f} | {m['ttft50']*1e3:.0f} / {m['ttft95']*1e3:.0f} | "
          f"{m['tpot50']*1e3:.1f} / {m['tpot95']*1e3:.1f} | {m['rss']:.0f} |")
by = {(c, n): m for c, n, m in rows}
one_stream = by[(1, "lowbit")]["tps"]
print(f"\nlowbit at concurrency 8 / its own single stream: {by[(8, 'lowbit')]['tps'] / one_stream:.2f}x")
print(f"lowbit / llama-server at concurrency 8: {by[(8, 'lowbit')]['tps'] / by[(8, 'llama-server')]['tps']:.2f}x")
