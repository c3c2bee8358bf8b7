#!/usr/bin/env bash
# Races lowbit against llama.cpp on SmolLM2-135M (see race_llamacpp.py). Installs
# llama-cpp-python from PyPI into a cached venv the first time (it compiles llama.cpp: minutes).
#
#   benches/scripts/race-llamacpp.sh          both at this CPU's best level
#   benches/scripts/race-llamacpp.sh avx2     both limited to AVX2 + FMA (lowbit through
#                                             LOWBIT_ISA=avx2, llama.cpp built without AVX-512
#                                             or AVX-VNNI in a venv of its own): how an AVX2-only
#                                             CPU fares, measured on any AVX-512 machine too
#   benches/scripts/race-llamacpp.sh avxvnni  both at AVX2 + AVX-VNNI, no AVX-512 (Alder Lake and
#                                             later client cores): needs a CPU with AVX-VNNI
set -euo pipefail
level="${1:-native}"
case "$level" in
  native | avx2 | avxvnni) ;;
  *)
    echo "usage: $0 [avx2 | avxvnni]" >&2
    exit 2
    ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
. benches/scripts/llamacpp-level.sh
llamacpp_level "$level"
[ "$level" = native ] || export LOWBIT_ISA="$level"
venv="$(llamacpp_venv "$cache")"
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
work="$cache/race"
mkdir -p "$work"
for q in nf4 int8 q5-mix; do
  # Converted every run (under a second each), so the files reflect the current converter.
  ./target/release/lowbit convert "$gguf" -o "$work/smollm2.$q.lowbit" --quant $q -q
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "lowbit: $(./target/release/lowbit cpu | grep 'in use')"
echo "llama.cpp: $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())')"
"$venv/bin/python" benches/scripts/race_llamacpp.py "$gguf" "$work" "$root/target/release/lowbit" data/genesis-kjv.txt
