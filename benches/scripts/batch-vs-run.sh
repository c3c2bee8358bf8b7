#!/usr/bin/env bash
# `lowbit batch` against a loop of `lowbit run` on the same 64 prompts (SmolLM2-135M nf4, raw
# completion, 64 tokens each with --ignore-eos so both sides generate the same count), and
# batch at --parallel 1, 4 and 8: wall time and generated tokens/s. Prints the CPU first.
#
#   benches/scripts/batch-vs-run.sh [THREADS]      (default 2)
set -euo pipefail
threads="${1:-2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
bin="$root/target/release/lowbit"
work="$cache/batch-bench"
mkdir -p "$work"
model="$work/smollm2.nf4.lowbit"
[ -f "$model" ] || "$bin" convert "$gguf" -o "$model" --quant nf4 -q
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) | $("$bin" cpu | sed -n 2p)"
echo "commit: $(git rev-parse --short HEAD) | date: $(date -u +%F) | threads: $threads"
# 64 prompts of 20-140 words cut from one text, so prefill lengths vary.
python3 - "$work/prompts.jsonl" "$work/prompts" <<'PY'
import json, os, sys
words = open("data/genesis-kjv.txt", encoding="utf-8").read().split()
os.makedirs(sys.argv[2], exist_ok=True)
with open(sys.argv[1], "w") as f:
    for i in range(64):
        n = 20 + (i * 37) % 120
        start = (i * 997) % (len(words) - 200)
        text = " ".join(words[start : start + n])
        f.write(json.dumps({"id": i, "prompt": text}) + "\n")
        open(os.path.join(sys.argv[2], f"{i:02}.txt"), "w").write(text)
PY
secs() { python3 -c "import time; print(f'{time.time():.3f}')"; }
run_loop() {
  local t0 t1
  t0=$(secs)
  for f in "$work"/prompts/*.txt; do
    "$bin" -t "$threads" run -m "$model" -f "$f" --raw -n 64 --ignore-eos --temp 0 >/dev/null 2>&1
  done
  t1=$(secs)
  python3 -c "print(f'loop of lowbit run      : {$t1-$t0:6.1f} s, {64*64/($t1-$t0):6.1f} generated tok/s')"
}
run_batch() {
  local p=$1 t0 t1
  t0=$(secs)
  "$bin" -t "$threads" batch -m "$model" -i "$work/prompts.jsonl" -o "$work/out-$p.jsonl" --parallel "$p" \
    -n 64 --ignore-eos --temp 0 -q 2>/dev/null
  t1=$(secs)
  python3 -c "print(f'lowbit batch --parallel $p: {$t1-$t0:6.1f} s, {64*64/($t1-$t0):6.1f} generated tok/s')"
}
for round in 1 2; do
  echo "round $round"
  run_loop
  for p in 1 4 8 16; do run_batch "$p"; done
done
# Batch invariance on the way: every parallel level wrote the same greedy texts.
python3 - "$work" <<'PY'
import json, sys
texts = {p: [json.loads(l)["choices"][0]["text"] for l in open(f"{sys.argv[1]}/out-{p}.jsonl")] for p in (1, 4, 8, 16)}
assert all(texts[p] == texts[1] for p in texts), "outputs differ between --parallel levels"
print("all --parallel levels produced identical texts")
PY
