"""Batch generation over a file of prompts with Ray Data, for when one process is not enough.

Every Ray worker holds one `lowbit.Llama` (an actor), and each batch Ray hands it goes through
`generate_batch`, which decodes the batch's prompts together. All workers map the same model
file, so the operating system's page cache keeps one copy of the weights however many workers
run on a machine; on a cluster, put the file where every node can read it.

    python examples/ray_batch.py MODEL PROMPTS.jsonl OUT.jsonl [--workers 2] [--threads 1]
        [--batch-size 8] [--max-tokens 32] [--temperature 0] [--address auto]

MODEL is a .lowbit file (or a GGUF file / Hugging Face folder, converted once into the cache).
PROMPTS.jsonl has one {"id": ..., "prompt": "..."} per line; OUT.jsonl gets one
{"id", "prompt", "text", "finish_reason"} per prompt, in the input's order. Without --address a
local Ray instance is started for the run.
"""

import argparse
import json

import numpy as np
import ray


class Generator:
    """One model per Ray worker process; called once per batch."""

    def __init__(self, model: str, threads: int, max_tokens: int, temperature: float):
        import lowbit

        self.llm = lowbit.Llama(model_path=model, n_threads=threads, verbose=False)
        self.sampling = {"max_tokens": max_tokens, "temperature": temperature}

    def __call__(self, batch):
        results = self.llm.generate_batch([str(p) for p in batch["prompt"]], **self.sampling)
        batch["text"] = np.array([r["choices"][0]["text"] for r in results], dtype=object)
        batch["finish_reason"] = np.array([r["choices"][0]["finish_reason"] for r in results], dtype=object)
        return batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("out")
    ap.add_argument("--workers", type=int, default=2, help="model actors (worker processes)")
    ap.add_argument("--threads", type=int, default=1, help="decode threads per worker")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per generate_batch call")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: start one here)")
    a = ap.parse_args()

    rows = []
    with open(a.prompts, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                r = json.loads(line)
                rows.append({"order": i, "id": str(r.get("id", i)), "prompt": r["prompt"]})

    ray.init(address=a.address, num_cpus=None if a.address else a.workers * a.threads, log_to_driver=False)
    try:
        ds = ray.data.from_items(rows).map_batches(
            Generator,
            fn_constructor_kwargs={
                "model": a.model,
                "threads": a.threads,
                "max_tokens": a.max_tokens,
                "temperature": a.temperature,
            },
            batch_size=a.batch_size,
            concurrency=a.workers,
            num_cpus=a.threads,
            batch_format="numpy",
        )
        out = sorted(ds.take_all(), key=lambda r: r["order"])
    finally:
        ray.shutdown()

    with open(a.out, "w", encoding="utf-8") as f:
        for r in out:
            f.write(json.dumps({k: str(r[k]) for k in ("id", "prompt", "text", "finish_reason")}, ensure_ascii=False) + "\n")
    print(f"{len(out)} completions written to {a.out}")


if __name__ == "__main__":
    main()
