#!/usr/bin/env bash
# Makes the Python environment the end-to-end tests drive lowbit with — the official `openai`
# client, pinned — and prints its interpreter's path. Kept in the cache and reused while its
# pinned packages are installed:
#
#   ${LOWBIT_CACHE:-<repo>/.cache}/venv-test
#
# Only the path goes to stdout; pip's messages go to stderr.
set -euo pipefail
readonly packages=("openai==3.63.0")
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOWBIT_CACHE:-$root/.cache}/venv-test"
py="$venv/bin/python"
if ! [ -x "$py" ] || ! "$py" - "${packages[@]}" <<'PY' >/dev/null 2>&1; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    assert version(name) == want, spec
PY
  echo "test-venv: installing ${packages[*]} into $venv" >&2
  python3 -m venv "$venv" >&2
  "$py" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
fi
echo "$py"
