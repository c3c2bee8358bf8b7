#!/usr/bin/env bash
# Races `lowbit serve` (SmolLM2-135M nf4) against llama.cpp's `llama-server` (the same GGUF's
# Q4_0, -np 8) on the same streamed requests at concurrency 1, 4 and 8 (serve_race.py):
# aggregate tokens/s, time to first token and per output token (p50/p95), peak RSS.
#
#   benches/scripts/serve-race.sh [THREADS]     (default 2)
#
# LOWBIT_SERVE_ARGS adds flags to `lowbit serve` (e.g. "--kv-type f16", the cache type
# llama-server uses by default; lowbit's default is f32).
#
# llama-server is built once from the llama.cpp that llama-cpp-python's source package vendors
# (the same release the other races use), with CMake from PyPI in a build venv: minutes.
set -euo pipefail
threads="${1:-2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
. benches/scripts/llamacpp-level.sh
llamacpp_level native
server="$cache/llama-server-$LLAMACPP_TAG/llama-server"
if ! [ -x "$server" ]; then
  build="$cache/llama-server-build-$LLAMACPP_TAG"
  mkdir -p "$build"
  [ -x "$build/venv/bin/cmake" ] || { python3 -m venv "$build/venv" && "$build/venv/bin/pip" install --quiet cmake ninja scikit-build-core; }
  # Without build isolation pip reads the source package's metadata with the backend installed
  # above, instead of building CMake from source for an isolated one.
  "$build/venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation "llama-cpp-python==0.3.36" -d "$build/sdist"
  tar -xzf "$build"/sdist/llama_cpp_python-0.3.36.tar.gz -C "$build"
  src="$build/llama_cpp_python-0.3.36/vendor/llama.cpp"
  PATH="$build/venv/bin:$PATH" cmake -S "$src" -B "$build/out" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON ${LLAMACPP_FLAGS:--DGGML_NATIVE=ON} >&2
  PATH="$build/venv/bin:$PATH" cmake --build "$build/out" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$(dirname "$server")"
  cp "$build/out/bin/llama-server" "$server"
fi
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
work="$cache/serve-race"
mkdir -p "$work"
./target/release/lowbit convert "$gguf" -o "$work/smollm2.nf4.lowbit" --quant nf4 -q
# llama.cpp's own Q4_0 of the same GGUF, through the venv the other races use.
venv="$(llamacpp_venv "$cache")"
q4="$("$venv/bin/python" -c "
import sys; sys.path.insert(0, 'benches/scripts')
from llamacpp_files import quantize
print(quantize('$gguf', '$work', 2, 'smollm2.Q4_0.gguf'))")"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') | lowbit $(./target/release/lowbit cpu | grep 'in use')"
echo "commit: $(git rev-parse --short HEAD) | date: $(date -u +%F) | threads: $threads | lowbit serve extra flags: ${LOWBIT_SERVE_ARGS:-none}"
python3 benches/scripts/serve_race.py ./target/release/lowbit "$work/smollm2.nf4.lowbit" "$server" "$q4" data/genesis-kjv.txt "$threads"
