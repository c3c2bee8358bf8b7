#!/usr/bin/env bash
# The kernels' tests for aarch64 — the NEON paths against the scalar oracle and bitsandbytes'
# golden files — run under qemu user-mode emulation on an x86-64 machine (on an aarch64 machine
# the workspace tests already run them natively). Installs what it needs: the Rust target with
# rustup, and Debian's cross linker and qemu with apt-get (as root) when they are missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target=aarch64-unknown-linux-gnu
if [ "$(uname -m)" != x86_64 ]; then
  echo "test-neon: not an x86-64 host; the workspace tests cover this machine's own SIMD paths"
  exit 0
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc > /dev/null || ! command -v qemu-aarch64 > /dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "test-neon: needs aarch64-linux-gnu-gcc and qemu-aarch64 (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)" >&2
    exit 1
  fi
  pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have no package lists yet.
  apt-get install -y -q "${pkgs[@]}" > /dev/null 2>&1 || { apt-get update -q > /dev/null && apt-get install -y -q "${pkgs[@]}" > /dev/null; }
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# qemu's default CPU has NEON, so the tests run both levels there, scalar and NEON
# (`Kernels::variants()`; `lowbit cpu` under qemu prints `supported: [Scalar, Neon]`).
cargo test --release --target "$target" -p lowbit-kernels "$@"
