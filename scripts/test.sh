#!/usr/bin/env bash
# The test command (what .ci/run calls): fetches the small real model the end-to-end tests use,
# then runs every test of the workspace in release mode (the model tests run real forward passes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
LOWBIT_SMOLLM2="$(scripts/fetch-smollm2.sh)"
export LOWBIT_SMOLLM2
cargo test --workspace --release "$@"
