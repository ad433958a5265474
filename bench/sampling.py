"""Completion sampling on CPU (issue #7): tokens/s of the transformers backend with the tiny
Llama, and what Ray adds per job (start, scheduling, actor start) beside pure generation:
the same prompts generated in this process without Ray, then as an ``oasst sample`` job.

    .venv/bin/python bench/sampling.py [--threads 64] [--n 4] [--max-new-tokens 32] [--actors 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import console  # noqa: E402
from devkit.tiny_lm import build_tiny_lm  # noqa: E402
from samplers.job import ThreadSampler, sample_completions  # noqa: E402
from samplers.testing import write_snapshot  # noqa: E402

CONFIG = "top_k_50"


def measure(threads: int, n: int, max_new_tokens: int, actors: int = 1) -> dict:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_lm(Path(tmp) / "model"))
        snapshot = write_snapshot(tmp, threads=threads)
        prompts = pq.read_table(snapshot / "prompts.parquet")
        prompts = prompts.append_column("row", pa.array(range(prompts.num_rows), pa.int64()))

        # the same work without Ray: one torch thread, as one actor has
        t = time.perf_counter()
        sampler = ThreadSampler("transformers", model, [CONFIG], n, 0, max_new_tokens, {"threads": 1})
        load = time.perf_counter() - t
        t = time.perf_counter()
        generated = sampler(prompts).to_pylist()
        local = {
            "load_s": load,
            "generate_s": time.perf_counter() - t,
            "tokens": sum(s["tokens"] for g in generated for s in g["samples"]),
        }
        del sampler

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning")
        ray_init = time.perf_counter() - t
        try:
            job = sample_completions(
                snapshot,
                model,
                n=n,
                configs=(CONFIG,),
                seed=0,
                max_new_tokens=max_new_tokens,
                out=Path(tmp) / "out",
                actors=actors,
            )
        finally:
            ray.shutdown()
    job["seconds"]["ray_init"] = ray_init
    return {"local": local, "job": job}


def table(m: dict, title: str) -> Table:
    local, job = m["local"], m["job"]
    s = job["seconds"]
    out = Table(
        "",
        "model load s",
        "generate s",
        "tokens",
        "tokens/s (generation)",
        "ray.init s",
        "job s (Ray Data)",
        "Ray overhead s",
        "tokens/s (whole job)",
        title=title,
    )
    out.add_row(
        "in process, no Ray",
        f"{local['load_s']:.1f}",
        f"{local['generate_s']:.2f}",
        f"{local['tokens']:,}",
        f"{local['tokens'] / local['generate_s']:,.0f}",
        "-",
        "-",
        "-",
        f"{local['tokens'] / (local['load_s'] + local['generate_s']):,.0f}",
    )
    out.add_row(
        f"Ray job, {job['actors']} actor(s)",
        f"{s['model_load']:.1f}",
        f"{s['generate']:.2f}",
        f"{job['tokens']:,}",
        f"{job['tokens_per_s']:,.0f}",
        f"{s['ray_init']:.1f}",
        f"{s['job']:.1f}",
        f"{s['ray_overhead']:.1f}",
        f"{job['tokens'] / (s['ray_init'] + s['job']):,.0f}",
    )
    return out


def rows(m: dict) -> list[dict]:
    local, job = m["local"], m["job"]
    s = job["seconds"]

    def row(name, value, unit):
        return {"name": f"sampling.{name}", "value": value, "unit": unit, "goal": None, "baseline": None, "ratio": None}

    return [
        row("tokens_per_s_no_ray", round(local["tokens"] / local["generate_s"]), "tokens/s (tiny Llama, 1 CPU thread)"),
        row("tokens_per_s_in_actor", round(job["tokens_per_s"]), "tokens/s (same prompts, in a Ray actor)"),
        row("ray_init_s", round(s["ray_init"], 2), "s"),
        row("ray_job_overhead_s", round(s["ray_overhead"], 2), "s per job (scheduling, actor start, data)"),
        row("actor_model_load_s", round(s["model_load"], 2), "s (imports + from_pretrained in the actor)"),
        row("job_s", round(s["job"], 2), "s (Ray Data job end to end)"),
    ]


def run(quick: bool) -> list[dict]:
    """For bench/run.py."""
    threads, n, max_new_tokens = (16, 4, 32) if quick else (64, 4, 32)
    m = measure(threads, n, max_new_tokens)
    console.print(table(m, f"sampling: {threads} threads x {n} samples ({CONFIG}), max {max_new_tokens} new tokens"))
    return rows(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--actors", type=int, default=1)
    args = ap.parse_args()
    m = measure(args.threads, args.n, args.max_new_tokens, args.actors)
    console.print(
        table(
            m,
            f"sampling: {args.threads} threads x {args.n} samples ({CONFIG}), "
            f"max {args.max_new_tokens} new tokens, {args.actors} actor(s)",
        )
    )


if __name__ == "__main__":
    main()
