"""Training on CPU (issue #8): steps/s of each trainer with the tiny Llama on a toy snapshot,
and what Ray adds per job beside pure training: the same run in this process without Ray,
as one Ray task, and through Ray Train's TorchTrainer (and, in the full run, with 2 DDP workers).

    .venv/bin/python bench/training.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import console  # noqa: E402
from devkit.tiny_lm import build_tiny_lm  # noqa: E402
from trainers.launch import train  # noqa: E402
from trainers.toy import toy_texts, write_toy_snapshot  # noqa: E402

# name, trainer, options; steps (quick, full)
JOBS = [
    ("sft", "sft", {}, (10, 30)),
    ("rm", "rm", {}, (20, 60)),
    ("rm (oa loss)", "rm", {"rm_loss": "oa"}, (20, 60)),
    ("dpo", "dpo", {}, (10, 30)),
    ("grpo", "grpo", {"num_generations": 4, "max_completion_length": 16}, (4, 10)),
    ("rloo", "rloo", {"num_generations": 4, "max_completion_length": 16}, (4, 10)),
]


def _import_trl() -> float:
    """Seconds to import the trainers (TRL's modules load lazily: touch each one)."""
    t = time.perf_counter()
    from trl import DPOTrainer, GRPOTrainer, RewardTrainer, RLOOTrainer, SFTTrainer  # noqa: F401

    return time.perf_counter() - t


def measure(quick: bool) -> dict:
    import ray
    import torch

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)  # as a Ray worker with one CPU (OMP_NUM_THREADS=1)
    _import_trl()
    results: dict = {"jobs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_toy_snapshot(root / "snapshots", n=64, seed=0, snapshot_id="toy")
        lm = build_tiny_lm(root / "lm", toy_texts())

        def run(name, kind, options, steps, launcher, **more):
            extra = {"reward_model": root / "local-rm-1"} if kind in ("grpo", "rloo") else {}
            out = root / f"{launcher}-{name.replace(' ', '_')}-{more.get('num_workers', 1)}"
            return train(
                kind,
                "toy",
                lm,
                out,
                data_dir=root,
                launcher=launcher,
                max_steps=steps,
                lr=1e-3,
                seed=0,
                **extra,
                **options,
                **more,
            )["metrics"]

        for name, kind, options, steps in JOBS:
            results["jobs"][name] = {
                "steps": steps[not quick],
                "local": run(name, kind, options, steps[not quick], "local"),
            }
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
        results["ray_init_s"] = time.perf_counter() - t
        try:
            results["task_worker_import_s"] = ray.get(ray.remote(_import_trl).options(num_cpus=1).remote())
            for name, kind, options, steps in JOBS:
                job = results["jobs"][name]
                job["task"] = run(name, kind, options, steps[not quick], "task")
                if not quick or kind == "sft":
                    job["train"] = run(name, kind, options, steps[not quick], "train")
            if not quick:
                results["ddp"] = run("sft", "sft", {}, JOBS[0][3][1], "train", num_workers=2)
        finally:
            ray.shutdown()
    return results


def _overhead(job: dict, launcher: str) -> float | None:
    """Seconds a launcher adds to the same run in this process (start, scheduling, imports)."""
    return job[launcher]["wall_seconds"] - job["local"]["wall_seconds"] if launcher in job else None


def table(m: dict, title: str) -> Table:
    t = Table(
        "trainer",
        "steps",
        "steps/s",
        "train s",
        "local wall s",
        "ray task wall s",
        "task overhead s",
        "TorchTrainer wall s",
        "TorchTrainer overhead s",
        title=title,
    )
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for name, job in m["jobs"].items():
        local = job["local"]
        t.add_row(
            name,
            str(job["steps"]),
            fmt(local["train_steps_per_second"]),
            fmt(local["train_seconds"]),
            fmt(local["wall_seconds"]),
            fmt(job["task"]["wall_seconds"]),
            fmt(_overhead(job, "task")),
            fmt(job.get("train", {}).get("wall_seconds")),
            fmt(_overhead(job, "train")),
        )
    if "ddp" in m:
        d = m["ddp"]
        t.add_row(
            "sft, 2 DDP workers",
            str(d["steps"]),
            fmt(d["train_steps_per_second"]),
            fmt(d["train_seconds"]),
            "",
            "",
            "",
            fmt(d["wall_seconds"]),
            "",
        )
    t.caption = (
        f"ray.init {m['ray_init_s']:.1f} s once; a fresh task worker imports TRL in "
        f"{m['task_worker_import_s']:.1f} s (paid once, workers are reused; every TorchTrainer run "
        "starts new workers and pays it again). Local runs use one torch thread, as a one-CPU worker."
    )
    if "ddp" in m:  # a DDP step takes one batch per worker: compare examples/s
        t.caption += (
            f" SFT examples/s: {m['ddp']['train_steps_per_second'] * 16:.0f} with 2 DDP workers, "
            f"{m['jobs']['sft']['train']['train_steps_per_second'] * 8:.0f} with one (TorchTrainer)."
        )
    return t


def rows(m: dict) -> list[dict]:
    out = [
        {
            "name": "training.ray_init_s",
            "value": round(m["ray_init_s"], 2),
            "unit": "s",
            "goal": None,
            "baseline": None,
            "ratio": None,
        }
    ]
    for name, job in m["jobs"].items():
        key = name.split(" ")[0] + ("_oa" if "oa" in name else "")
        out.append(
            {
                "name": f"training.{key}.steps_per_s",
                "value": round(job["local"]["train_steps_per_second"], 2),
                "unit": "steps/s (CPU, tiny Llama, batch 8)",
                "goal": None,
                "baseline": None,
                "ratio": None,
            }
        )
        for launcher, label in (("task", "ray_task"), ("train", "torch_trainer")):
            extra = _overhead(job, launcher)
            if extra is not None:
                out.append(
                    {
                        "name": f"training.{key}.{label}_overhead_s",
                        "value": round(extra, 2),
                        "unit": "s per job beside the same run without Ray",
                        "goal": None,
                        "baseline": round(job["local"]["wall_seconds"], 2),
                        "ratio": None,
                    }
                )
    return out


def run(quick: bool) -> list[dict]:
    """For bench/run.py."""
    m = measure(quick)
    console.print(table(m, f"training on CPU: tiny Llama, toy snapshot of 64 prompts ({'quick' if quick else 'full'})"))
    return rows(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps; TorchTrainer for SFT only")
    args = ap.parse_args()
    run(args.quick)


if __name__ == "__main__":
    main()
