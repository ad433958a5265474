"""``make gpu-check``: the vLLM path end to end on a CUDA machine, with its throughput.

    .venv/bin/python -m samplers.gpu_check          # a small Llama built here (no download)
    OASST_GPU_CHECK_MODEL=/path/to/model .venv/bin/python -m samplers.gpu_check

Builds a synthetic snapshot, samples it through local Ray with the vLLM backend (twice
with one seed, once with another: same seed, same completions), then the transformers
backend on the same prompts for comparison, and prints tokens/s. Exits 1 with a message
where CUDA or vLLM is missing (the CPU test suite cannot run this path).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

THREADS, N, MAX_NEW_TOKENS = 64, 4, 128
RUNS = [
    ("vllm", "vllm", 0),
    ("vllm_again", "vllm", 0),
    ("vllm_seed_1", "vllm", 1),
    ("transformers_cpu", "transformers", 0),
]


def missing() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed: pip install -e '.[gpu]' (a CUDA machine; vLLM has no CPU wheel)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device: vLLM needs an NVIDIA GPU"
    return None


def main() -> int:
    problem = missing()
    if problem:
        print(f"gpu-check skipped: {problem}", file=sys.stderr)
        return 1
    import ray
    import torch

    from devkit.tiny_lm import build_tiny_lm
    from samplers.job import sample_completions
    from samplers.testing import write_snapshot

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="oasst-gpu-check-") as tmp:
        tmp = Path(tmp)
        model = os.environ.get("OASST_GPU_CHECK_MODEL") or str(
            build_tiny_lm(tmp / "model", hidden_size=256, layers=4, heads=4, max_positions=1024)
        )
        snapshot = write_snapshot(tmp, threads=THREADS)
        print(
            f"device: {torch.cuda.get_device_name(0)}; model: {model}; {THREADS} threads x {N} samples, "
            f"max {MAX_NEW_TOKENS} new tokens",
            flush=True,
        )
        started = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="warning")
        ray_init = time.perf_counter() - started
        runs, texts = {}, {}
        try:
            for name, backend, seed in RUNS:
                runs[name] = sample_completions(
                    snapshot,
                    model,
                    backend=backend,
                    n=N,
                    configs=("top_k_50",),
                    seed=seed,
                    max_new_tokens=MAX_NEW_TOKENS,
                    out=tmp / name,
                )
                texts[name] = [r["text"] for r in pq.read_table(runs[name]["completions"]).to_pylist()]
        finally:
            ray.shutdown()

    print(f"\nray.init: {ray_init:.1f} s")
    print(f"{'run':<14}{'samples':>8}{'tokens':>9}{'generate s':>12}{'tokens/s':>10}{'model load s':>14}{'job s':>8}")
    for name, s in runs.items():
        t = s["seconds"]
        print(
            f"{name:<14}{s['samples']:>8}{s['tokens']:>9}{t['generate']:>12.2f}{s['tokens_per_s']:>10.0f}"
            f"{t['model_load']:>14.1f}{t['job']:>8.1f}"
        )
    same, other = texts["vllm"] == texts["vllm_again"], texts["vllm"] != texts["vllm_seed_1"]
    print(f"\nsame seed, same replies: {same}; another seed, other replies: {other}")
    ok = runs["vllm"]["tokens"] > 0 and same and other
    print("gpu-check " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
