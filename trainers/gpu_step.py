"""A TRL step on a CUDA machine, without Ray: the job a Ray worker runs (trainers.jobs.run_job)
for SFT, a reward model and DPO on a toy snapshot, on the GPU in bf16 and, for comparison,
on the CPU, with steps/s. For a lent GPU machine whose Python has torch and transformers but
none of this project's other dependencies (it needs trl and datasets, nothing else of ours).

    python -m trainers.gpu_step SNAPSHOT_DIR [--steps 30]    # SNAPSHOT_DIR: trainers.toy.write_toy_snapshot
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("sft", "rm", "dpo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("snapshot", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cpu-steps", type=int, default=5, help="the same jobs on the CPU, for a ratio")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check needs an NVIDIA GPU", file=sys.stderr)
        return 1
    from devkit.tiny_lm import build_tiny_lm
    from trainers.jobs import run_job

    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="oasst-gpu-step-") as tmp:
        model = build_tiny_lm(Path(tmp) / "model", hidden_size=256, layers=4, heads=4)
        results = {}
        for kind in KINDS:
            for where, steps in (("cuda_bf16", args.steps), ("cpu", args.cpu_steps)):
                started = time.perf_counter()
                summary = run_job(
                    {
                        "kind": kind,
                        "data_file": str(args.snapshot / f"{kind}.parquet"),
                        "model": str(model),
                        "out": f"{tmp}/{kind}-{where}",
                        "max_steps": steps,
                        "batch_size": 8,
                        "max_length": 256,
                        "use_gpu": where != "cpu",
                        "bf16": where != "cpu",
                        "seed": 0,
                    }
                )
                summary["wall_seconds"] = time.perf_counter() - started
                results[f"{kind}/{where}"] = {k: v for k, v in summary.items() if k != "resolved"}
                print(
                    f"{kind:4s} {where:9s} steps {summary['steps']:3d}  loss {summary['first_loss']:.3f} -> "
                    f"{summary['final_loss']:.3f}  {summary['train_steps_per_second']:.1f} steps/s  "
                    f"(setup {summary['setup_seconds']:.1f} s)",
                    flush=True,
                )
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
