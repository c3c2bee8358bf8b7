#!/usr/bin/env bash
# Creates the Python environment the reference-data scripts run in:
#   ${LOWBIT_CACHE:-<repo>/.cache}/pyenv  with scripts/requirements.txt installed.
# Idempotent: reuses the venv and skips pip when every pin is already installed at its version.
# The default torch wheel brings CUDA libraries: expect ~6 GB and a few minutes.
# Prints the interpreter's path on stdout (everything else goes to stderr), e.g.
#   py="$(scripts/setup-venv.sh)" && "$py" scripts/make_bnb_golden.py
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOWBIT_CACHE:-$root/.cache}/pyenv"
req="$root/scripts/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating venv at $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "${PYTHON:-python3}" -m venv "$venv"
fi

# Are all pins satisfied? (torch reports e.g. 2.15.0+cu132: compare without the local part.)
if ! "$venv/bin/python" - "$req" >&2 <<'PY'
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
    if have is None or have.split("+")[0] != want:
        ok = False
        print(f"setup-venv: {name} is {have}, want {want}")
sys.exit(0 if ok else 1)
PY
then
  echo "installing $req into $venv" >&2
  "$venv/bin/python" -m pip install --quiet -r "$req" >&2
fi
echo "$venv/bin/python"
