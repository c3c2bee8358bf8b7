#!/usr/bin/env bash
# Runs examples/ray_batch.py on a local Ray cluster (two workers) over 12 prompts with SmolLM2,
# and checks every completion equals what `generate_batch` gives in one process for the same
# prompt (greedy). Not part of .ci/run (Ray and its data stack are a large install); the venv is
# cached in $LOWBIT_CACHE/venv-ray.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
gguf="${LOWBIT_SMOLLM2:-$(scripts/fetch-smollm2.sh)}"
venv="$cache/venv-ray"
builder="$cache/venv-maturin"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import ray.data" 2>/dev/null || "$venv/bin/pip" install --quiet --disable-pip-version-check "ray[data]==2.49.2"
if ! [ -x "$builder/bin/maturin" ]; then
  python3 -m venv "$builder"
  "$builder/bin/pip" install --quiet --disable-pip-version-check "maturin==1.16.0"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
CARGO_TARGET_DIR="$root/target" "$builder/bin/maturin" build --quiet --release --strip -m python/Cargo.toml -i python3 -o "$work/dist" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$work"/dist/lowbit-*.whl
cargo build --release --quiet -p lowbit-cli
./target/release/lowbit convert "$gguf" -o "$work/smollm2.nf4.lowbit" --quant nf4 -q
"$venv/bin/python" - "$work/prompts.jsonl" <<'PY'
import json, sys
starts = ["Once upon a time", "The capital of France is", "In the beginning", "My favourite food is",
          "The best way to learn is", "Water boils at", "A good friend", "The moon", "Rain falls",
          "Every morning I", "The old house", "Numbers are"]
with open(sys.argv[1], "w") as f:
    for i, p in enumerate(starts):
        f.write(json.dumps({"id": f"p{i}", "prompt": p}) + "\n")
PY
"$venv/bin/python" examples/ray_batch.py "$work/smollm2.nf4.lowbit" "$work/prompts.jsonl" "$work/out.jsonl" \
  --workers 2 --threads 1 --batch-size 4 --max-tokens 16
"$venv/bin/python" - "$work/smollm2.nf4.lowbit" "$work/prompts.jsonl" "$work/out.jsonl" <<'PY'
import json, sys
import lowbit
model, prompts, out = sys.argv[1:4]
want = [json.loads(l) for l in open(prompts)]
got = [json.loads(l) for l in open(out)]
assert [g["id"] for g in got] == [w["id"] for w in want], "ids in input order"
llm = lowbit.Llama(model_path=model, n_threads=2, verbose=False)
alone = llm.generate_batch([w["prompt"] for w in want], max_tokens=16, temperature=0.0)
for g, a in zip(got, alone):
    assert g["text"] == a["choices"][0]["text"], (g, a["choices"][0]["text"])
    assert g["text"], g
print(f"ray example: {len(got)} completions, each equal to generate_batch in one process")
PY
