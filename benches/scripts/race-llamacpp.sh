#!/usr/bin/env bash
# Races lowbit against llama.cpp on SmolLM2-135M (see race_llamacpp.py). Installs
# llama-cpp-python from PyPI into a cached venv the first time (it compiles llama.cpp: minutes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
venv="$cache/llamacpp"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import llama_cpp" 2>/dev/null || "$venv/bin/pip" install --quiet "llama-cpp-python==0.3.36"
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
work="$cache/race"
mkdir -p "$work"
for q in nf4 int8; do
  [ -f "$work/smollm2.$q.lowbit" ] || ./target/release/lowbit convert "$gguf" -o "$work/smollm2.$q.lowbit" --quant $q -q
done
"$venv/bin/python" benches/scripts/race_llamacpp.py "$gguf" "$work" "$root/target/release/lowbit" data/genesis-kjv.txt
