#!/usr/bin/env bash
# The README's accuracy and speed table for SmolLM2-135M-Instruct: for f32, f16, int8 and nf4
# conversions of the GGUF — file size, bits per weight, perplexity on data/genesis-kjv.txt
# (chunks of 256, llama.cpp's scoring), KL divergence and top-1 agreement against f32, and
# prefill (≈128 tokens) / decode (64 tokens) speed at 2 threads. "-f16head" rows use
# `--head source` (the tied embedding/head kept as in the GGUF, dequantized to f16) instead of
# the default int8 head; "nf4-exact" is the nf4 file on the exact float path (`--exact`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
bin=./target/release/lowbit
work="${LOWBIT_CACHE:-$root/.cache}/table"
mkdir -p "$work"
text=data/genesis-kjv.txt
head -c 600 "$text" > "$work/prompt.txt"
printf "| scheme | file | bits/weight | perplexity | KL vs f32 | top-1 vs f32 | prefill tok/s | decode tok/s |\n|---|---|---|---|---|---|---|---|\n"
for q in f32 f16 int8 int8-f16head nf4 nf4-f16head nf4-exact; do
  m="$work/smollm2-$q.lowbit"
  exact=()
  # Converted every run (about a second each), so the table reflects the current converter.
  case $q in
    *-f16head) $bin convert "$gguf" -o "$m" --quant "${q%-f16head}" --head source -q > /dev/null ;;
    nf4-exact) m="$work/smollm2-nf4.lowbit"; exact=(--exact) ;;
    *) $bin convert "$gguf" -o "$m" --quant "$q" -q > /dev/null ;;
  esac
  size=$(du -m "$m" | cut -f1)
  bpw=$($bin inspect "$m" | awk '$1=="total"{print $NF}')
  if [ "$q" = f32 ]; then
    ppl=$($bin --threads 2 perplexity -m "$m" -f "$text" -c 256 --save-logits "$work/base.npy" 2>/dev/null | awk '/^perplexity/{print $2}')
    kl="-"; top="-"
  else
    out=$($bin --threads 2 perplexity -m "$m" -f "$text" -c 256 --kl-base "$work/base.npy" "${exact[@]}" 2>/dev/null)
    ppl=$(echo "$out" | awk '/^perplexity/{print $2}')
    kl=$(echo "$out" | awk '/^KL/{print $5}')
    top=$(echo "$out" | awk '/^KL/{print $(NF)}')
  fi
  speed=$($bin --threads 2 run --raw -m "$m" -f "$work/prompt.txt" -n 64 "${exact[@]}" 2>&1 >/dev/null | tail -1)
  pre=$(echo "$speed" | sed -E 's/.*prefill [0-9]+ tok, ([0-9.]+) tok\/s.*/\1/')
  dec=$(echo "$speed" | sed -E 's/.*decode [0-9]+ tok, ([0-9.]+) tok\/s.*/\1/')
  echo "| $q | ${size} MB | $bpw | $ppl | $kl | $top | $pre | $dec |"
done
