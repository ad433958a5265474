"""The sampling job: a snapshot's threads → Ray Data ``map_batches`` over an actor pool of
generators → completions.parquet (with lineage) → the import route, as ranking-only trees.

Reads the snapshot's files only (prompts.parquet, checked against manifest.json), never
the live database.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from projections.snapshot import open_snapshot
from samplers.backends import (
    Request,
    check_backend,
    clean_text,
    encode_thread,
    make_backend,
    request_seed,
    special_tokens,
)
from samplers.configs import model_name, samples_for
from samplers.trees import MAX_REPLIES, build_trees, post_trees, reply_id, select_replies, thread_ids, tree_id_for

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SAMPLES = pa.list_(
    pa.struct([("config", pa.string()), ("sample", pa.int32()), ("text", pa.string()), ("tokens", pa.int32())])
)
# what an actor gives back per thread
GENERATED = pa.schema(
    [
        ("row", pa.int64()),
        ("message_id", pa.string()),
        ("samples", SAMPLES),
        ("generate_s", pa.float64()),
        ("actor", pa.string()),
        ("load_s", pa.float64()),
    ]
)
# completions.parquet: one row per kept reply, with its lineage
COMPLETIONS = pa.schema(
    [
        ("snapshot_id", pa.string()),
        ("run_id", pa.string()),
        ("message_tree_id", pa.string()),
        ("message_id", pa.string()),
        ("lang", pa.string()),
        ("messages", MESSAGES),
        ("tree_id", pa.string()),
        ("parent_id", pa.string()),
        ("reply_id", pa.string()),
        ("text", pa.string()),
        ("model", pa.string()),
        ("model_name", pa.string()),
        ("backend", pa.string()),
        ("config", pa.string()),
        ("sample", pa.int32()),
        ("seed", pa.int64()),
        ("request_seed", pa.int64()),
        ("n", pa.int32()),
        ("max_new_tokens", pa.int32()),
        ("tokens", pa.int32()),
    ]
)


def _default_data_dir() -> Path:
    from infra.settings import Settings

    return Settings.from_env().data_dir


class ThreadSampler:
    """Generates the samples of snapshot rows. Ray Data builds one per actor (the model is
    loaded once per actor) and calls it with pyarrow batches; the bench calls it directly."""

    def __init__(
        self,
        backend: str,
        model: str,
        configs: list[str],
        n: int,
        seed: int,
        max_new_tokens: int,
        backend_options: dict | None = None,
    ):
        started = time.perf_counter()
        self.backend = make_backend(backend, model, seed=seed, **(backend_options or {}))
        self.load_s = time.perf_counter() - started
        self.specials = special_tokens(self.backend.tokenizer)
        self.configs, self.n, self.seed, self.max_new_tokens = configs, n, seed, max_new_tokens
        self.actor = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        requests = [
            Request(
                encode_thread(self.backend.tokenizer, row["messages"], self.max_new_tokens),
                config,
                samples_for(config, self.n),
                request_seed(self.seed, row["message_id"], config),
                self.max_new_tokens,
            )
            for row in rows
            for config in self.configs
        ]
        started = time.perf_counter()
        generated = iter(self.backend.generate(requests))
        seconds = (time.perf_counter() - started) / max(1, len(rows))
        out = []
        for row in rows:
            samples = [
                {"config": config, "sample": i, "text": clean_text(s.text, self.specials), "tokens": s.tokens}
                for config in self.configs
                for i, s in enumerate(next(generated))
            ]
            out.append(
                {
                    "row": row["row"],
                    "message_id": row["message_id"],
                    "samples": samples,
                    "generate_s": seconds,
                    "actor": self.actor,
                    "load_s": self.load_s,
                }
            )
        return pa.Table.from_pylist(out, schema=GENERATED)


def run_key(
    snapshot_id: str, model: str, backend: str, configs: list[str], n: int, seed: int, max_new_tokens: int
) -> str:
    """What names a sampling run: the same run gives the same ids (and posts nothing new)."""
    return f"{snapshot_id}|{model}|{backend}|{','.join(configs)}|n={n}|seed={seed}|max_new_tokens={max_new_tokens}"


def _ensure_ray(address: str | None) -> float:
    """Connect to ``address``, or start Ray locally; reuse a running session (one started here
    stays up for later jobs of this process, and stops at exit). Seconds spent."""
    import ray

    if ray.is_initialized():
        return 0.0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    if address:
        ray.init(address=address, logging_level="warning")
    else:
        ray.init(include_dashboard=False, logging_level="warning")
    return time.perf_counter() - started


def generate_on_ray(
    prompts: pa.Table,
    sampler_args: dict,
    *,
    actors: int = 1,
    batch_size: int = 8,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
) -> list[dict]:
    """Every thread's samples, in the order of ``prompts`` (which needs a ``row`` column)."""
    import ray

    # one block per batch, so that every actor of the pool gets work
    blocks = [prompts.slice(i, batch_size) for i in range(0, prompts.num_rows, batch_size)]
    ds = ray.data.from_arrow(blocks).map_batches(
        ThreadSampler,
        fn_constructor_kwargs=sampler_args,
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    tables = ray.get(ds.to_arrow_refs())
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return sorted(rows, key=lambda r: r["row"])


def sample_completions(
    snapshot: str | Path,
    model: str | Path,
    *,
    backend: str = "transformers",
    n: int = 4,
    configs: tuple[str, ...] | list[str] = ("top_k_50",),
    seed: int = 0,
    max_new_tokens: int = 32,
    out: str | Path | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    ray_address: str | None = None,
    data_dir: str | Path | None = None,
    actors: int = 1,
    batch_size: int = 8,
    client=None,
    post_batch_size: int = 50,
    max_replies: int = MAX_REPLIES,
    backend_options: dict | None = None,
) -> dict:
    """Sample ``n`` completions per thread of a snapshot under each named config, keep the
    unique ones, write ``completions.parquet`` and, given ``api_url`` (or an httpx-compatible
    ``client``), post them as ranking-only trees. Returns a summary: counts, timings, paths."""
    started = time.perf_counter()
    configs = list(configs)
    check_backend(backend, configs, n, max_new_tokens)
    snap = open_snapshot(snapshot, data_dir)  # prompts.parquet is checked against the manifest below
    label = Path(str(model).rstrip("/")).name
    key = run_key(snap.id, label, backend, configs, n, seed, max_new_tokens)
    run_id = hashlib.sha256(key.encode()).hexdigest()[:12]
    out = Path(out) if out else Path(data_dir or _default_data_dir()) / "samples" / f"{snap.id}-{run_id}"

    prompts = pq.read_table(
        snap.verified_file("prompts.parquet"), columns=["message_id", "message_tree_id", "lang", "messages"]
    )
    prompts = prompts.append_column("row", pa.array(range(prompts.num_rows), pa.int64()))
    ray_init_s = _ensure_ray(ray_address)
    job_started = time.perf_counter()
    sampler_args = {
        "backend": backend,
        "model": str(model),
        "configs": configs,
        "n": n,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "backend_options": backend_options,
    }
    if backend == "transformers":
        sampler_args["backend_options"] = {"threads": 1, **(backend_options or {})}
    generated = (
        generate_on_ray(
            prompts, sampler_args, actors=actors, batch_size=batch_size, gpus_per_actor=1 if backend == "vllm" else 0
        )
        if prompts.num_rows
        else []
    )
    job_s = time.perf_counter() - job_started

    rows, counts = _completion_rows(
        prompts.to_pylist(), generated, snap.id, run_id, key, label, backend, n, seed, max_new_tokens, max_replies
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "completions.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=COMPLETIONS), path)

    tokens = sum(s["tokens"] for g in generated for s in g["samples"])
    generate_s = sum(g["generate_s"] for g in generated)
    load_s = sum({g["actor"]: g["load_s"] for g in generated}.values())
    summary = {
        "snapshot_id": snap.id,
        "run_id": run_id,
        "model": label,
        "backend": backend,
        "configs": configs,
        "n": n,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        **counts,
        "tokens": tokens,
        "completions": str(path),
        "actors": len({g["actor"] for g in generated}),
        "seconds": {
            "ray_init": ray_init_s,
            "job": job_s,
            "model_load": load_s,
            "generate": generate_s,
            # what Ray adds around loading and generating: scheduling, actor processes, moving data
            "ray_overhead": max(0.0, job_s - (load_s + generate_s) / max(1, actors)),
        },
        "tokens_per_s": tokens / generate_s if generate_s else 0.0,
    }
    if api_url or client is not None:
        summary["posted"] = post_completions(
            path, api_url=api_url, api_key=api_key, client=client, batch_size=post_batch_size
        )
    summary["seconds"]["total"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _completion_rows(
    prompts: list[dict],
    generated: list[dict],
    snapshot_id: str,
    run_id: str,
    key: str,
    label: str,
    backend: str,
    n: int,
    seed: int,
    max_new_tokens: int,
    max_replies: int,
) -> tuple[list[dict], dict]:
    counts = {
        "threads": len(prompts),
        "samples": 0,
        "empty": 0,
        "duplicates": 0,
        "threads_dropped": 0,
        "threads_kept": 0,
        "replies": 0,
    }
    rows = []
    for thread, gen in zip(prompts, generated, strict=True):
        counts["samples"] += len(gen["samples"])
        kept, stats = select_replies(gen["samples"], seed=seed, key=thread["message_id"], limit=max_replies)
        counts["empty"] += stats["empty"]
        counts["duplicates"] += stats["duplicates"]
        if not kept:
            counts["threads_dropped"] += 1
            continue
        counts["threads_kept"] += 1
        counts["replies"] += len(kept)
        tree_id = tree_id_for(key, thread["message_id"])
        parent_id = thread_ids(tree_id, len(thread["messages"]))[-1]
        for s in kept:
            name = model_name(label, s["config"], max_new_tokens)
            rows.append(
                {
                    "snapshot_id": snapshot_id,
                    "run_id": run_id,
                    "message_tree_id": thread["message_tree_id"],
                    "message_id": thread["message_id"],
                    "lang": thread["lang"],
                    "messages": thread["messages"],
                    "tree_id": tree_id,
                    "parent_id": parent_id,
                    "reply_id": reply_id(parent_id, name, s["text"]),
                    "text": s["text"],
                    "model": label,
                    "model_name": name,
                    "backend": backend,
                    "config": s["config"],
                    "sample": s["sample"],
                    "seed": seed,
                    "request_seed": request_seed(seed, thread["message_id"], s["config"]),
                    "n": n,
                    "max_new_tokens": max_new_tokens,
                    "tokens": s["tokens"],
                }
            )
    return rows, counts


def post_completions(
    path: str | Path, *, api_url: str | None = None, api_key: str | None = None, client=None, batch_size: int = 50
) -> dict:
    """Post a completions.parquet through the import route, as ranking-only trees.
    Idempotent: trees already there are skipped (ids come from the file's content)."""
    rows = pq.read_table(path).to_pylist()
    trees = build_trees(rows)
    origin = f"oasst sample {rows[0]['run_id']} of snapshot {rows[0]['snapshot_id']}" if rows else "oasst sample"
    return {
        "trees": len(trees),
        **post_trees(trees, origin=origin, api_url=api_url, api_key=api_key, client=client, batch_size=batch_size),
    }
