#!/usr/bin/env bash
# Races lowbit against llama.cpp on SmolLM2-135M (see race_llamacpp.py). Installs
# llama-cpp-python from PyPI into a cached venv the first time (it compiles llama.cpp: minutes).
#
#   benches/scripts/race-llamacpp.sh          both at this CPU's best level
#   benches/scripts/race-llamacpp.sh avx2     both limited to AVX2 + FMA (lowbit through
#                                             LOWBIT_ISA=avx2, llama.cpp built without AVX-512
#                                             or AVX-VNNI in a venv of its own): how an AVX2-only
#                                             CPU fares, measured on any AVX-512 machine too
set -euo pipefail
level="${1:-native}"
case "$level" in
  native | avx2) ;;
  *)
    echo "usage: $0 [avx2]" >&2
    exit 2
    ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
venv="$cache/llamacpp"
# On CPUs with AMX, pip's default build (-march=native) turns on ggml's AMX matmul, which
# crashed with SIGSEGV (in ggml_backend_amx_mul_mat) on the first prompt on our 2-core VM; there
# llama.cpp is built for the same AVX-512/VNNI level with AMX left out, in its own venv.
if grep -q amx_int8 /proc/cpuinfo 2>/dev/null; then
  venv="$cache/llamacpp-noamx"
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"
fi
if [ "$level" = avx2 ]; then
  venv="$cache/llamacpp-avx2"
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF"
  export LOWBIT_ISA=avx2
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import llama_cpp" 2>/dev/null || "$venv/bin/pip" install --quiet --no-cache-dir "llama-cpp-python==0.3.36"
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
work="$cache/race"
mkdir -p "$work"
for q in nf4 int8; do
  # Converted every run (under a second each), so the files reflect the current converter.
  ./target/release/lowbit convert "$gguf" -o "$work/smollm2.$q.lowbit" --quant $q -q
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "lowbit: $(./target/release/lowbit cpu | grep 'in use')"
echo "llama.cpp: $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())')"
"$venv/bin/python" benches/scripts/race_llamacpp.py "$gguf" "$work" "$root/target/release/lowbit" data/genesis-kjv.txt
