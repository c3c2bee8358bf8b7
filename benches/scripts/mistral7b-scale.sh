#!/usr/bin/env bash
# Scale bench (not part of CI): a synthetic Mistral-7B-v0.1 (exact names and shapes, random bf16
# weights) converted to nf4 and int8 — wall time, peak RSS and MB/s of conversion; open time; RSS
# after opening; prefill (128 tokens) and decode speed with RSS while decoding; and the bandwidth
# bound (file bytes ÷ memory bandwidth measured in the same run). Then Qwen2.5-0.5B: time to
# generate 50 tokens. Needs ~40 GB of disk under $LOWBIT_CACHE (default .cache).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release --quiet -p lowbit-cli
bin="$root/target/release/lowbit"
work="${LOWBIT_CACHE:-$root/.cache}/scale"
mkdir -p "$work"
threads=2
rss() { awk '/VmRSS/{print $2/1024 " MiB"}' "/proc/$1/status" 2>/dev/null || true; }

bw=$($bin --threads $threads cpu --bandwidth 4096 | awk '/bandwidth/{print $2}')
echo "memory bandwidth ($threads threads): $bw GB/s"

[ -f "$work/mistral-7b/config.json" ] || $bin --threads $threads synth --preset mistral-7b-v0.1 -o "$work/mistral-7b"
# 128 prompt tokens: the synthetic tokenizer is byte-level, so 127 bytes + BOS.
head -c 127 data/genesis-kjv.txt > "$work/prompt.txt"

# What merely reading the input costs, for comparison with the conversion's MB/s (the shards are
# larger than the page cache can keep next to everything else, so this is a disk read).
start=$(date +%s.%N)
cat "$work"/mistral-7b/*.safetensors > /dev/null
end=$(date +%s.%N)
bytes=$(cat "$work"/mistral-7b/*.safetensors | wc -c)
python3 -c "print(f'reading the input alone: {$bytes / 1e6 / ($end - $start):.0f} MB/s')"

for q in nf4 int8; do
  out="$work/mistral-7b.$q.lowbit"
  echo "== $q =="
  /usr/bin/time -f "convert: %e s wall, peak RSS %M KiB" $bin --threads $threads convert "$work/mistral-7b" -o "$out" --quant $q -q
  $bin inspect "$out" | grep -E "opened|total"
  size=$(stat -c %s "$out")
  # Run in the background and sample RSS every second; the last sample is taken while decoding.
  $bin --threads $threads run --raw -m "$out" -f "$work/prompt.txt" -n 48 --ignore-eos > /dev/null 2> "$work/run.$q.log" &
  pid=$!
  last=""
  while kill -0 $pid 2>/dev/null; do
    r=$(rss $pid); [ -n "$r" ] && last=$r
    sleep 1
  done
  wait $pid
  echo "RSS while decoding (last sample): $last"
  tail -1 "$work/run.$q.log"
  # The host's bandwidth moves between runs: probe again right after decoding and give both bounds.
  bw2=$($bin --threads $threads cpu --bandwidth 4096 | awk '/bandwidth/{print $2}')
  python3 -c "s=$size; print(f'file {s/1e9:.2f} GB; bandwidth bound {$bw*1e9/s:.2f} tok/s at the first probe ($bw GB/s), {$bw2*1e9/s:.2f} at the one after decoding ($bw2 GB/s)')"
done

echo "== Qwen2.5-0.5B, 50 tokens =="
[ -f "$work/qwen2.5-0.5b/config.json" ] || $bin synth --preset qwen2.5-0.5b -o "$work/qwen2.5-0.5b"
$bin convert "$work/qwen2.5-0.5b" -o "$work/qwen.nf4.lowbit" --quant nf4 -q
/usr/bin/time -f "50 tokens: %e s wall (including load)" $bin --threads $threads run --raw -m "$work/qwen.nf4.lowbit" -p "Hello" -n 50 --ignore-eos > /dev/null
