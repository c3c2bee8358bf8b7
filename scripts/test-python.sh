#!/usr/bin/env bash
# The Python package's tests: builds the wheel with maturin (from the cached test venv), installs
# it into a fresh venv with pytest, and runs python/tests against the lowbit binary and SmolLM2.
# Called by scripts/test.sh; needs LOWBIT_SMOLLM2 (the GGUF) or fetches it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${LOWBIT_CACHE:-$root/.cache}"
gguf="${LOWBIT_SMOLLM2:-$(scripts/fetch-smollm2.sh)}"
builder="$cache/venv-maturin"
if ! [ -x "$builder/bin/maturin" ]; then
  python3 -m venv "$builder" >&2
  "$builder/bin/pip" install --quiet --disable-pip-version-check "maturin==1.16.0" >&2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The wheel shares the workspace's build directory: the crates it links are compiled once.
CARGO_TARGET_DIR="$root/target" "$builder/bin/maturin" build --quiet --release --strip \
  -m python/Cargo.toml -i python3 -o "$work/dist" >&2
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "pytest==8.3.5" "$work"/dist/lowbit-*.whl
cargo build --release --quiet -p lowbit-cli
LOWBIT_BIN="$root/target/release/lowbit"
"$LOWBIT_BIN" convert "$gguf" -o "$work/smollm2.nf4.lowbit" --quant nf4 -q
# The installed wheel, not the source tree: run from elsewhere.
cd "$work"
LOWBIT_TEST_MODEL="$work/smollm2.nf4.lowbit" LOWBIT_TEST_GGUF="$gguf" LOWBIT_BIN="$LOWBIT_BIN" LOWBIT_CACHE="$work/cache" \
  "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests"
