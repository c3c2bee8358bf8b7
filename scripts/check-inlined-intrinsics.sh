#!/usr/bin/env bash
# Fails if a lowbit kernel calls an x86 intrinsic as a function. An intrinsic inside a closure
# (`array::from_fn(|j| _mm256_…)`) can be compiled on its own, without the enclosing function's
# target features, and then every use is a call: silently several times slower (it once cost a
# tenth of AVX2's batched decode). Reads the disassembly of the release `lowbit` binary.
#
#   scripts/check-inlined-intrinsics.sh [BINARY]     (default target/release/lowbit)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$root/target/release/lowbit}"
[ "$(uname -m)" = x86_64 ] || { echo "check-inlined-intrinsics: not x86-64, nothing to check"; exit 0; }
command -v objdump >/dev/null || { echo "check-inlined-intrinsics: objdump (binutils) is missing" >&2; exit 1; }
[ -x "$bin" ] || cargo build --release -q -p lowbit-cli
found="$(mktemp)"
trap 'rm -f "$found"' EXIT
# The functions that call a core::arch intrinsic; reported when they are lowbit's own or a helper
# (like `core::array::try_from_fn`) that lowbit code calls.
objdump -d --no-show-raw-insn -C "$bin" | awk '
  />:$/ { fn = $0; sub(/^[0-9a-f]+ </, "", fn); sub(/>:$/, "", fn); next }
  /call/ && /core::core_arch::x86/ { bad[fn] = 1 }
  /call +[0-9a-f]+ </ { callee = $0; sub(/^.*call +[0-9a-f]+ </, "", callee); sub(/>$/, "", callee); calls[fn] = calls[fn] "\n" callee }
  END {
    for (f in calls) {
      m = split(calls[f], cs, "\n")
      for (i = 1; i <= m; i++) if (cs[i] in bad && f ~ /lowbit/) print f " -> " cs[i]
    }
    for (f in bad) if (f ~ /lowbit/) print f " (direct)"
  }' | sort -u > "$found"
if [ -s "$found" ]; then
  echo "check-inlined-intrinsics: lowbit code calls x86 intrinsics as functions:" >&2
  cat "$found" >&2
  exit 1
fi
echo "check-inlined-intrinsics: every x86 intrinsic in lowbit's kernels is inlined"
