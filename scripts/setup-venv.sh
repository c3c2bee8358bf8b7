#!/usr/bin/env bash
# Create (or update) the Python environment used to generate reference data.
#   ${LOWBIT_CACHE:-<repo>/.cache}/pyenv   with scripts/requirements.txt installed.
# Idempotent: reuses an existing venv and skips pip when the pins are already satisfied.
# Python never runs in the Rust tests; this is only for regenerating committed test data.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LOWBIT_CACHE:-$repo/.cache}"
venv="$cache/pyenv"
req="$repo/scripts/requirements.txt"
python="${PYTHON:-python3}"

mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating venv at $venv"
    "$python" -m venv "$venv"
fi

# Fast path: every pinned requirement already installed at the pinned version.
if "$venv/bin/python" - "$req" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    # torch reports e.g. 2.15.0+cu132
    if have is None or have.split("+")[0] != want:
        ok = False
        print(f"  {name}: have {have}, want {want}")
sys.exit(0 if ok else 1)
PY
then
    echo "venv at $venv already satisfies $req"
else
    echo "installing $req into $venv (several GB: torch pulls its CUDA libraries)"
    "$venv/bin/python" -m pip install --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install -r "$req"
fi

echo "use: $venv/bin/python scripts/make_bnb_golden.py   (etc.)"
