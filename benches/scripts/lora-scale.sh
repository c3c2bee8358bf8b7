#!/usr/bin/env bash
# LoRA at scale (not part of CI). A synthetic Qwen2.5-14B (exact public names and shapes, q/k/v
# biases, random bf16 weights: 29.5 GB) and a synthetic rank-64 PEFT adapter on all seven
# linears of every layer, merged at conversion into nf4: wall time and peak RSS of
# `convert --lora`, the file's size, `inspect` at a 4k context. Then what a rank-16 adapter on
# every linear costs SmolLM2-135M at run time (`--lora`, from the adapter folder and from the
# adapter file `lowbit convert ADAPTER_DIR` makes), alternated with no adapter.
# Needs about 40 GB of disk under $LOWBIT_CACHE (default .cache); `--run-time` skips the 14B part.
#
#   benches/scripts/lora-scale.sh [--run-time]      (LORA_ROUNDS=N alternated rounds, default 3)
set -euo pipefail
only_run_time=false
[ "${1:-}" = "--run-time" ] && only_run_time=true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --quiet -p lowbit-cli
bin="$root/target/release/lowbit"
work="${LOWBIT_CACHE:-$root/.cache}/lora-scale"
mkdir -p "$work"
threads=2
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $($bin cpu | grep 'in use'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

if ! $only_run_time; then
[ -f "$work/qwen2.5-14b/config.json" ] || $bin --threads $threads synth --preset qwen2.5-14b -o "$work/qwen2.5-14b"
[ -f "$work/qwen-r64/adapter_config.json" ] || $bin --threads $threads synth --preset qwen2.5-14b --adapter-rank 64 -o "$work/qwen-r64"
du -sh "$work/qwen-r64/adapter_model.safetensors"
out="$work/qwen2.5-14b.nf4-lora.lowbit"
/usr/bin/time -f "convert --lora: %e s wall, peak RSS %M KiB" \
  $bin --threads $threads convert "$work/qwen2.5-14b" -o "$out" --quant nf4 --lora "$work/qwen-r64" -q
$bin inspect "$out" --ctx 4096 | grep -E "^file|adapter|^total|RAM"
rm -f "$out"
# The rank-64 adapter on its own, as an adapter file.
/usr/bin/time -f "convert ADAPTER_DIR: %e s wall, peak RSS %M KiB" \
  $bin --threads $threads convert "$work/qwen-r64" -o "$work/qwen-r64.lowbit" -q
rm -f "$work/qwen-r64.lowbit"
fi

# Run-time cost on SmolLM2 (one and two threads, three alternated rounds each).
gguf="$(scripts/fetch-smollm2.sh)"
$bin convert "$gguf" -o "$work/smollm2.nf4.lowbit" -q > /dev/null
[ -f "$work/smollm2-r16/adapter_config.json" ] || $bin synth --preset smollm2-135m --adapter-rank 16 -o "$work/smollm2-r16" > /dev/null
$bin convert "$work/smollm2-r16" -o "$work/smollm2-r16.lowbit" -q > /dev/null
head -c 560 data/genesis-kjv.txt > "$work/prompt.txt"
rounds="${LORA_ROUNDS:-3}"
log="$work/run-time.log"
: > "$log"
for t in 1 2; do
  for round in $(seq "$rounds"); do
    for lora in none r16 r16-file; do
      extra=()
      [ "$lora" = r16 ] && extra=(--lora "$work/smollm2-r16")
      [ "$lora" = r16-file ] && extra=(--lora "$work/smollm2-r16.lowbit")
      line=$($bin --threads $t run --raw -m "$work/smollm2.nf4.lowbit" -f "$work/prompt.txt" -n 65 --ignore-eos "${extra[@]}" 2>&1 >/dev/null | tail -1)
      echo "threads $t round $round adapter $lora: $line" | tee -a "$log"
    done
  done
done
# Medians over the rounds, and what the adapter costs against no adapter.
python3 - "$log" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"threads (\d+) round \d+ adapter (\S+): .*decode \d+ tok, ([\d.]+) tok/s", line)
    if m:
        runs.setdefault((int(m[1]), m[2]), []).append(float(m[3]))
for t in sorted({k[0] for k in runs}):
    med = {a: statistics.median(runs[(t, a)]) for a in ("none", "r16", "r16-file")}
    print(f"threads {t}: decode medians none {med['none']:.1f}, folder {med['r16']:.1f} "
          f"({100 * (1 - med['r16'] / med['none']):.1f} % cost), file {med['r16-file']:.1f} "
          f"({100 * (1 - med['r16-file'] / med['none']):.1f} % cost)")
PY
