"""llama.cpp's quantizations of a GGUF, made once by llama.cpp's own quantizer (through
llama-cpp-python) and kept in a work folder: shared by the race and the quality table."""

import ctypes
import os

import llama_cpp


def quantize(gguf, work, ftype, name):
    """`work/name`, made from `gguf` with llama.cpp's ftype `ftype` unless it is there already."""
    out = os.path.join(work, name)
    if not os.path.exists(out):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = 2
        rc = llama_cpp.llama_model_quantize(gguf.encode(), out.encode(), ctypes.byref(params))
        assert rc == 0, f"quantize {name} failed: {rc}"
    return out
