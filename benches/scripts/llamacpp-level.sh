# Sourced by the bench scripts that build llama.cpp (race-llamacpp.sh, python-race.sh,
# serve-race.sh, quality-table.sh): `llamacpp_level LEVEL` sets, for LEVEL native | avx2 | avxvnni,
#   LLAMACPP_TAG    a name for the build (venv and build directories carry it),
#   LLAMACPP_FLAGS  ggml's CMake flags for that level (empty: pip's and CMake's defaults,
#                   which build for the machine it runs on),
# and exports CMAKE_ARGS (what llama-cpp-python's pip build reads) when LLAMACPP_FLAGS is set.
#
# On CPUs with AMX the native build turns on ggml's AMX matmul, which crashed with SIGSEGV (in
# ggml_backend_amx_mul_mat) on the first prompt on a 2-core VM; there the native level is
# built with the same AVX-512/VNNI instructions and AMX left out.
llamacpp_level() {
  local base="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  case "$1" in
    native)
      if grep -q amx_int8 /proc/cpuinfo 2>/dev/null; then
        LLAMACPP_TAG=noamx
        LLAMACPP_FLAGS="$base -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"
      else
        LLAMACPP_TAG=native
        LLAMACPP_FLAGS=""
      fi
      ;;
    avx2)
      LLAMACPP_TAG=avx2
      LLAMACPP_FLAGS="$base -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF"
      ;;
    avxvnni)
      if ! grep -qw avx_vnni /proc/cpuinfo; then
        echo "this CPU has no AVX-VNNI" >&2
        return 2
      fi
      LLAMACPP_TAG=avxvnni
      LLAMACPP_FLAGS="$base -DGGML_AVX512=OFF -DGGML_AVX_VNNI=ON"
      ;;
    *)
      echo "unknown llama.cpp level $1" >&2
      return 2
      ;;
  esac
  if [ -n "$LLAMACPP_FLAGS" ]; then
    export CMAKE_ARGS="$LLAMACPP_FLAGS"
  fi
}

# The venv with llama-cpp-python 0.3.36 built for `llamacpp_level`'s level (pip compiles
# llama.cpp the first time: minutes): `llamacpp_venv CACHE` prints its path.
llamacpp_venv() {
  local venv="$1/llamacpp"
  [ "$LLAMACPP_TAG" = native ] || venv="$1/llamacpp-$LLAMACPP_TAG"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  "$venv/bin/python" -c "import llama_cpp" 2>/dev/null || "$venv/bin/pip" install --quiet --no-cache-dir "llama-cpp-python==0.3.36" >&2
  echo "$venv"
}
