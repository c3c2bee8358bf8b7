#!/usr/bin/env bash
# The Python package against llama-cpp-python 0.3.36 on SmolLM2-135M (lowbit nf4 against
# llama.cpp's Q4_0 of the same GGUF), 2 threads, alternated over three rounds (medians):
# single-stream greedy tokens/s (whole and streamed: the stream's Python overhead), a loop of 16
# single calls, and lowbit's generate_batch of the same 16.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
gguf="$(scripts/fetch-smollm2.sh)"
work="$cache/python-race"
mkdir -p "$work"
# lowbit's wheel in a venv of its own.
builder="$cache/venv-maturin"
[ -x "$builder/bin/maturin" ] || { python3 -m venv "$builder" && "$builder/bin/pip" install --quiet "maturin==1.16.0"; }
CARGO_TARGET_DIR="$root/target" "$builder/bin/maturin" build --quiet --release --strip -m python/Cargo.toml -i python3 -o "$work/dist" >&2
[ -x "$work/venv/bin/python" ] || python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --force-reinstall --no-deps "$work"/dist/lowbit-*.whl
cargo build --release --quiet -p lowbit-cli
./target/release/lowbit convert "$gguf" -o "$work/smollm2.nf4.lowbit" --quant nf4 -q
# llama-cpp-python (compiled from source by pip: minutes the first time) and its Q4_0.
. benches/scripts/llamacpp-level.sh
llamacpp_level native
venv="$(llamacpp_venv "$cache")"
q4="$("$venv/bin/python" -c "
import sys; sys.path.insert(0, 'benches/scripts')
from llamacpp_files import quantize
print(quantize('$gguf', '$work', 2, 'smollm2.Q4_0.gguf'))")"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') | lowbit $(./target/release/lowbit cpu | grep 'in use')"
echo "commit: $(git rev-parse --short HEAD) | date: $(date -u +%F)"
out="$work/results.jsonl"
: > "$out"
for round in 1 2 3; do
  for what in single loop; do
    "$work/venv/bin/python" benches/scripts/python_race.py lowbit "$work/smollm2.nf4.lowbit" "$what" >> "$out"
    "$venv/bin/python" benches/scripts/python_race.py llama_cpp "$q4" "$what" >> "$out"
  done
  "$work/venv/bin/python" benches/scripts/python_race.py lowbit "$work/smollm2.nf4.lowbit" batch >> "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(side, what, key="tok_s"):
    return statistics.median(r[key] for r in rows if r["side"] == side and r["what"] == what)
lw, lc = med("lowbit", "single"), med("llama_cpp", "single")
ls, cs = med("lowbit", "single", "stream_tok_s"), med("llama_cpp", "single", "stream_tok_s")
print("| measure | lowbit | llama-cpp-python | ratio |\n|---|---|---|---|")
print(f"| single stream, whole (tok/s) | {lw:.1f} | {lc:.1f} | {lw / lc:.2f} |")
print(f"| single stream, streamed (tok/s) | {ls:.1f} | {cs:.1f} | {ls / cs:.2f} |")
print(f"| loop of 16 calls (tok/s) | {med('lowbit', 'loop'):.1f} | {med('llama_cpp', 'loop'):.1f} | {med('lowbit', 'loop') / med('llama_cpp', 'loop'):.2f} |")
print(f"| generate_batch of the 16 (tok/s) | {med('lowbit', 'batch'):.1f} | — | {med('lowbit', 'batch') / med('lowbit', 'loop'):.2f}× lowbit's loop |")
print(f"\nlowbit stream overhead: {100 * (1 - ls / lw):.1f} % of whole-call tokens/s")
PY
