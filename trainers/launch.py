"""Driver side of a training run: resolve the snapshot, check its file, run the job on Ray,
and write lineage.json beside the model.

Launchers:
- ``train`` (default): Ray Train's TorchTrainer, ``num_workers`` processes with a torch
  process group (DDP through TRL/accelerate), GPUs with ``use_gpu``.
- ``task``: one Ray task. No controller, placement group or process group to start (about
  10 s per job here), and task workers are reused with TRL already imported; for one-process
  runs of small models (tests, the pipeline's quick loop).
- ``local``: in this process, without Ray (the benchmark's baseline).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from infra.version import code_version
from trainers.jobs import KINDS, SUMMARY, TRAINER_CLASS, TrainSpec, run_job, spec_settings
from trainers.snapshots import FILES, Snapshot, open_snapshot

LAUNCHERS = ("train", "task", "local")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray once per process."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)


def _model_ref(path: str | None) -> dict | None:
    """A model we start from: its path and, when we trained it, where it came from."""
    if not path:
        return None
    ref: dict = {"path": str(path)}
    lineage = Path(path) / "lineage.json"
    if lineage.is_file():
        parent = json.loads(lineage.read_text())
        ref.update({k: parent.get(k) for k in ("snapshot_id", "manifest_sha256", "trainer")})
    return ref


def _train_loop(config: dict) -> None:
    """Ray Train worker entry (module level, so Ray can pickle it by reference)."""
    run_job(config)


def _run(spec: TrainSpec, launcher: str, num_workers: int, cpus_per_worker: float) -> None:
    if launcher == "local":
        run_job(asdict(spec))
        return
    import ray

    if launcher == "task":
        if num_workers != 1:
            raise ValueError("the task launcher runs one process: use --launcher train for --num-workers > 1")
        task = ray.remote(run_job).options(num_cpus=cpus_per_worker, num_gpus=1 if spec.use_gpu else 0)
        ray.get(task.remote(asdict(spec)))
        return
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = tempfile.mkdtemp(prefix="oasst-ray-train-")  # Ray Train's run state; the model goes to spec.out
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config=asdict(spec),
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=spec.use_gpu, resources_per_worker={"CPU": cpus_per_worker}
            ),
            run_config=RunConfig(storage_path=storage, name=f"{spec.kind}-{Path(spec.out).name}"),
        )
        trainer.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def train(
    kind: str,
    snapshot: str | Path | Snapshot,
    model: str | Path,
    out: str | Path,
    *,
    launcher: str = "train",
    num_workers: int = 1,
    cpus_per_worker: float = 1,
    use_gpu: bool = False,
    seed: int = 0,
    data_dir: str | Path | None = None,
    ray_address: str | None = None,
    **options,
) -> dict:
    """Train ``kind`` on a snapshot, starting from ``model``; write the model, metrics.jsonl and
    lineage.json to ``out`` and return the lineage."""
    if kind not in KINDS:
        raise ValueError(f"unknown trainer {kind!r}; one of {KINDS}")
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; one of {LAUNCHERS}")
    snap = snapshot if isinstance(snapshot, Snapshot) else open_snapshot(snapshot, data_dir)
    data_file = snap.verified_file(FILES[kind])
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    reward_model = options.pop("reward_model", None)
    if reward_model and not (Path(reward_model) / "config.json").is_file():
        raise FileNotFoundError(f"no reward model in {reward_model} (train one with `oasst train rm`)")
    spec = TrainSpec(
        kind=kind,
        data_file=str(data_file),
        model=str(model),
        out=str(out),
        seed=seed,
        use_gpu=use_gpu,
        reward_model=str(reward_model) if reward_model else None,
        **options,
    )
    if launcher != "local":
        ensure_ray(ray_address)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    _run(spec, launcher, num_workers, cpus_per_worker)
    wall = time.perf_counter() - started
    summary = json.loads((out / SUMMARY).read_text())
    (out / SUMMARY).unlink()
    summary["wall_seconds"] = wall
    summary["launch_overhead_seconds"] = wall - summary["job_seconds"]  # Ray scheduling, worker start, imports

    import pyarrow.parquet as pq
    import ray
    import torch
    import transformers
    import trl

    lineage = {
        "snapshot_id": snap.id,
        "manifest_sha256": snap.manifest_sha256,
        "snapshot_position": snap.position,
        "policy": snap.manifest.get("policy"),
        "data_file": {
            "name": data_file.name,
            **((snap.manifest.get("files") or {}).get(data_file.name) or {}),
            "rows": pq.ParquetFile(data_file).metadata.num_rows,
        },  # metrics.rows: those used (fit max_length)
        "base_model": _model_ref(str(model)),
        "reward_model": _model_ref(spec.reward_model),
        "trainer": {
            "kind": kind,
            "class": TRAINER_CLASS[kind]
            if not (kind == "rm" and spec.rm_loss == "oa")
            else "OARankTrainer(RewardTrainer)",
            "trl": trl.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "launcher": {
            "kind": {"train": "ray.train.torch.TorchTrainer", "task": "ray task", "local": "local"}[launcher],
            "num_workers": num_workers,
            "use_gpu": use_gpu,
            "ray": ray.__version__,
        },
        "settings": {**spec_settings(spec), "resolved": summary.pop("resolved", {})},
        "trl_config_file": "trl_config.json",
        "seed": seed,
        "code_version": code_version(),
        "started_at": started_at.isoformat(),
        "metrics": summary,
        "metrics_file": "metrics.jsonl",
    }
    (out / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n")
    return lineage


def train_follow(
    kind: str,
    model: str | Path,
    out: str | Path,
    *,
    start: str | None = None,
    data_dir: str | Path | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    group: str | None = None,
    poll: float = 2.0,
    max_snapshots: int | None = None,
    on_trained=None,
    **train_options,
) -> list[dict]:
    """Train ``kind`` on every snapshot as it appears, each into ``out/<snapshot id>``.

    Snapshots already trained there (a lineage.json) are skipped, so a restarted follower
    resumes; ``start`` (an id or ``latest``) skips snapshots taken at earlier log positions.
    Stops after ``max_snapshots`` trained (None: never)."""
    from trainers.snapshots import follow

    floor = open_snapshot(start, data_dir).position or 0 if start else 0
    done: list[dict] = []
    stop = lambda: max_snapshots is not None and len(done) >= max_snapshots  # noqa: E731
    for snap in follow(
        data_dir,
        names=[FILES[kind]],
        api_url=api_url,
        api_key=api_key,
        group=group or f"oasst-train-{kind}",
        poll=poll,
        stop=stop,
    ):
        target = Path(out) / snap.id
        if (snap.position or 0) < floor or (target / "lineage.json").is_file():
            continue
        lineage = train(kind, snap, model, target, data_dir=data_dir, **train_options)
        done.append(lineage)
        if on_trained:
            on_trained(lineage)
        if stop():
            break
    return done
