#!/usr/bin/env python3
"""Reference dequantization of random ggml blocks (converter/tests/gguf_dequant.rs).

For each type the GGUF source decodes, draws a few random blocks (seeded; f16 scale fields are
replaced by finite values in a sane range so the reference has no inf/NaN) and decodes them with
gguf-py's `gguf.quants.dequantize` — the numpy decoder transformers uses for GGUF files. The Rust
test must produce the same float32 bit patterns.

    .cache/pyenv/bin/python scripts/make_gguf_dequant_ref.py --out converter/tests/data/gguf/dequant_ref.json
"""

import argparse
import json
import os

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

# (type, byte offsets of f16 scale fields inside a block)
TYPES = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q8_0": [0],
    "Q4_K": [0, 2],
    "Q6_K": [208],
}
BLOCKS = 4


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(20241122)

    cases = []
    for name, scale_offsets in TYPES.items():
        qtype = GGMLQuantizationType[name]
        block_len, block_bytes = GGML_QUANT_SIZES[qtype]
        raw = bytearray(rng.integers(0, 256, size=BLOCKS * block_bytes, dtype=np.uint8).tobytes())
        for b in range(BLOCKS):
            for off in scale_offsets:
                scale = np.float16(rng.uniform(-2.0, 2.0) * 10.0 ** rng.integers(-4, 1))
                raw[b * block_bytes + off : b * block_bytes + off + 2] = scale.tobytes()
        values = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), qtype).astype(np.float32)
        assert values.size == BLOCKS * block_len
        cases.append(
            {
                "type": name,
                "blocks_hex": bytes(raw).hex(),
                "f32_bits": [int(x) for x in values.reshape(-1).view(np.uint32)],
            }
        )

    out = {
        "generator": "scripts/make_gguf_dequant_ref.py",
        "how": "gguf.quants.dequantize(random blocks with finite f16 scales), float32 bit patterns",
        "gguf_py": "gguf 0.19.0 (scripts/requirements.txt)",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
