#!/usr/bin/env bash
# The test command (what .ci/run calls): fetches the small real model the end-to-end tests use
# and makes the Python environment with the `openai` client the server test drives, then runs
# every test of the workspace in release mode (the model tests run real forward passes), checks
# that the kernels' intrinsics are inlined (scripts/check-inlined-intrinsics.sh), runs the
# Python package's tests (scripts/test-python.sh), then the kernels' tests for aarch64 under
# qemu (scripts/test-neon.sh; LOWBIT_SKIP_NEON=1 skips them).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
LOWBIT_SMOLLM2="$(scripts/fetch-smollm2.sh)"
export LOWBIT_SMOLLM2
# The official `openai` client, for the server's end-to-end test.
LOWBIT_TEST_PYTHON="$(scripts/test-venv.sh)"
export LOWBIT_TEST_PYTHON
cargo test --workspace --release "$@"
# No kernel calls an x86 intrinsic as a function (a closure around one can be compiled without
# the kernel's target features): read from the release binary the tests just built.
if [ $# -eq 0 ]; then
  scripts/check-inlined-intrinsics.sh
fi
# The Python package: its wheel built and installed into a fresh venv, then pytest (only on a
# full run, like the aarch64 stage).
if [ $# -eq 0 ]; then
  scripts/test-python.sh
fi
# (Only on a full run: arguments are a filter for the workspace tests.)
neon=0
if [ $# -eq 0 ] && [ "${LOWBIT_SKIP_NEON:-0}" != 1 ]; then
  scripts/test-neon.sh
  neon=1
fi
# The kernel tests run every instruction-set level this CPU has; say which ones they could not.
cargo run --release -q -p lowbit-cli -- cpu | while read -r line; do
  case "$line" in
    "not available: neon "*) [ "$neon" = 1 ] && continue ;;
  esac
  case "$line" in
    "not available: "*) echo "SKIPPED: the kernels of level ${line#not available: }: not run on this CPU" ;;
  esac
done
