#!/usr/bin/env bash
# Quality at equal size, both sides in one run (see quality_table.py): SmolLM2-135M-Instruct's
# Q4_1 GGUF made into llama.cpp's F16, Q4_0, IQ4_NL, Q4_K_M and Q8_0 by its own quantizer and
# into lowbit's f32, nf4 (the default), nf4-small, nf4 --bnb-exact, nf4-mix, nf4-plus, q5, q5-mix, int8 and q8 by `lowbit
# convert`; each scored on a text as llama.cpp's perplexity tool scores (chunks of 256, the second
# half of each), as a ratio to its own float file, with the KL divergence to that float file and
# top-1 agreement, and each file's prefill and decode speed at two threads as the race measures
# it. Uses the llama-cpp-python venv of race-llamacpp.sh (built the first time);
# with llama.cpp's tools from serve-race.sh's build tree, also IQ4_NL made with llama.cpp's own
# importance matrix on the same calibration text.
#
#   benches/scripts/quality-table.sh [TEXT]      (default data/genesis-kjv.txt)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
. benches/scripts/llamacpp-level.sh
llamacpp_level native
venv="$(llamacpp_venv "$cache")"
gguf="$(scripts/fetch-smollm2.sh)"
cargo build --release --quiet -p lowbit-cli
bin="$root/target/release/lowbit"
work="$cache/quality"
mkdir -p "$work"
text="${1:-data/genesis-kjv.txt}"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); text: $text; commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
# Converted every run, so the files reflect the current converter.
$bin convert "$gguf" -o "$work/f32.lowbit" --quant f32 -q > /dev/null
$bin convert "$gguf" -o "$work/nf4.lowbit" --quant nf4 -q > /dev/null
$bin convert "$gguf" -o "$work/nf4-small.lowbit" --quant nf4-small -q > /dev/null
$bin convert "$gguf" -o "$work/nf4-bnb-exact.lowbit" --quant nf4 --bnb-exact -q > /dev/null
$bin convert "$gguf" -o "$work/int8.lowbit" --quant int8 -q > /dev/null
# Calibration text for --imatrix unlike the scored text: the first 120,000 characters of the
# Python documentation topics that every CPython installation ships (pydoc_data), 40 chunks of
# 512 tokens measured on the f32 conversion.
python3 -c "import pydoc_data.topics as t; print('\n\n'.join(t.topics[k] for k in sorted(t.topics))[:120000])" > "$work/calibration.txt"
$bin --threads 2 imatrix -m "$work/f32.lowbit" -f "$work/calibration.txt" -o "$work/smollm2.imatrix" -c 512 --chunks 40 > /dev/null 2>&1
$bin convert "$gguf" -o "$work/nf4-imatrix.lowbit" --quant nf4 --imatrix "$work/smollm2.imatrix" -q > /dev/null
# llama.cpp's IQ4_NL with its own importance matrix from the same calibration text and settings,
# when its tools can be built from the tree benches/scripts/serve-race.sh configured.
tools="$cache/llama-server-build-$LLAMACPP_TAG/out"
rm -f "$work/smollm2.IQ4_NL-imatrix.gguf"
if [ -f "$tools/build.ninja" ] && PATH="$cache/llama-server-build-$LLAMACPP_TAG/venv/bin:$PATH" cmake --build "$tools" --target llama-imatrix llama-quantize > /dev/null 2>&1; then
  [ -f "$work/smollm2.F16.gguf" ] || "$venv/bin/python" -c "import sys; sys.path.insert(0, 'benches/scripts'); import llama_cpp, llamacpp_files; llamacpp_files.quantize('$gguf', '$work', llama_cpp.LLAMA_FTYPE_MOSTLY_F16, 'smollm2.F16.gguf')"
  LD_LIBRARY_PATH="$tools/bin" "$tools/bin/llama-imatrix" -m "$work/smollm2.F16.gguf" -f "$work/calibration.txt" \
    -o "$work/smollm2.llamacpp.imatrix" -c 512 --chunks 40 -t 2 > /dev/null 2>&1
  LD_LIBRARY_PATH="$tools/bin" "$tools/bin/llama-quantize" --allow-requantize --imatrix "$work/smollm2.llamacpp.imatrix" \
    "$gguf" "$work/smollm2.IQ4_NL-imatrix.gguf" IQ4_NL 2 > /dev/null 2>&1
else
  echo "(no IQ4_NL --imatrix row: run benches/scripts/serve-race.sh once to build llama.cpp's tools)"
fi
$bin convert "$gguf" -o "$work/nf4-mix.lowbit" --quant nf4-mix -q > /dev/null
$bin convert "$gguf" -o "$work/nf4-mix-imatrix.lowbit" --quant nf4-mix --imatrix "$work/smollm2.imatrix" -q > /dev/null
$bin convert "$gguf" -o "$work/q8.lowbit" --quant q8 -q > /dev/null
# Q4_K_M's size class in 5 bits: q5 with v_proj and the head in block int8 of 64.
$bin convert "$gguf" -o "$work/q5.lowbit" --quant q5 -q > /dev/null
$bin convert "$gguf" -o "$work/q5-mix.lowbit" --quant q5-mix -q > /dev/null
$bin convert "$gguf" -o "$work/q5-mix-imatrix.lowbit" --quant q5-mix --imatrix "$work/smollm2.imatrix" -q > /dev/null
# IQ4_NL's size class: nf4 in blocks of 32 with v_proj in block int8.
$bin convert "$gguf" -o "$work/nf4-plus.lowbit" --quant nf4-plus -q > /dev/null
$bin convert "$gguf" -o "$work/nf4-plus-imatrix.lowbit" --quant nf4-plus --imatrix "$work/smollm2.imatrix" -q > /dev/null
base="$work/lowbit-base.npy"
$bin --threads 2 perplexity -m "$work/f32.lowbit" -f "$text" -c 256 --save-logits "$base" > "$work/f32.txt" 2> /dev/null
for m in nf4 nf4-imatrix nf4-small nf4-bnb-exact nf4-mix nf4-mix-imatrix nf4-plus nf4-plus-imatrix q5 q5-mix q5-mix-imatrix int8 q8; do
  $bin --threads 2 perplexity -m "$work/$m.lowbit" -f "$text" -c 256 --kl-base "$base" > "$work/$m.txt" 2> /dev/null
done
QUALITY_PARAMS="$($bin inspect "$work/f32.lowbit" | awk '/^total/ {print $3}')" \
  "$venv/bin/python" benches/scripts/quality_table.py "$gguf" "$work" "$text" "$bin"
