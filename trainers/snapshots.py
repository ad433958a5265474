"""Finding snapshots for training: by id or path, listing them, and following new ones.

Trainers read snapshot files only (never the live database). A snapshot is a folder
``$OASST_DATA_DIR/snapshots/<id>/`` with ``manifest.json`` and parquet files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from projections.snapshot import Snapshot, list_snapshots, open_snapshot, snapshots_dir

__all__ = ["FILES", "Snapshot", "fetch_snapshot", "follow", "list_snapshots", "open_snapshot", "snapshots_dir"]

# What each trainer reads from a snapshot.
FILES = {
    "sft": "sft.parquet",
    "rm": "rm.parquet",
    "dpo": "dpo.parquet",
    "grpo": "prompts.parquet",
    "rloo": "prompts.parquet",
}


def _api_get(api_url: str, api_key: str | None, path: str):
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    answer = httpx.get(f"{api_url.rstrip('/')}/{path}", headers=headers, timeout=60)
    answer.raise_for_status()
    return answer


def fetch_snapshot(
    snapshot_id: str, names: list[str], api_url: str, api_key: str | None, data_dir: str | Path | None = None
) -> Snapshot:
    """Copy a snapshot's manifest.json and ``names`` from the snapshots API (files need a trusted
    key) into the local snapshots folder, unless they are there already."""
    path = snapshots_dir(data_dir) / snapshot_id
    if "/" in snapshot_id or snapshot_id.startswith("."):
        raise ValueError(f"bad snapshot id {snapshot_id!r}")
    path.mkdir(parents=True, exist_ok=True)
    for name in [*names, "manifest.json"]:  # the manifest last: its presence means complete
        if not (path / name).is_file():
            data = _api_get(api_url, api_key, f"snapshots/{snapshot_id}/files/{name}").content
            (path / f".{name}.part").write_bytes(data)
            (path / f".{name}.part").replace(path / name)
    return open_snapshot(path)


def _kafka_items(group: str) -> Iterator[dict] | None:
    """SnapshotCreated messages from Kafka (infra.kafka), when OASST_KAFKA_BOOTSTRAP is set."""
    if not os.environ.get("OASST_KAFKA_BOOTSTRAP"):
        return None
    from infra.kafka import follow_snapshots
    from infra.settings import KafkaSettings

    return (
        {"id": m["snapshot_id"], "position": m["position"]} for m in follow_snapshots(KafkaSettings.from_env(), group)
    )


def follow(
    data_dir: str | Path | None = None,
    *,
    names: list[str] = (),
    api_url: str | None = None,
    api_key: str | None = None,
    group: str = "oasst-train",
    poll: float = 2.0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[Snapshot]:
    """Yield each snapshot once, oldest first, then each new one as it appears (until ``stop()``).

    Where news come from: Kafka's snapshots topic when OASST_KAFKA_BOOTSTRAP is set (consumer
    ``group``), else the snapshots API (``api_url``: GET /snapshots, polled), else the local
    snapshots folder (polled). Files are read locally; with ``api_url`` missing ones (``names``)
    are downloaded first.
    """

    def resolve(ref: str) -> Snapshot:
        local = snapshots_dir(data_dir) / ref / "manifest.json"
        if api_url and not local.is_file():
            return fetch_snapshot(ref, list(names), api_url, api_key, data_dir)
        return open_snapshot(ref, data_dir)

    kafka = _kafka_items(group)
    refs = (item["id"] for item in kafka) if kafka is not None else _polled_ids(data_dir, api_url, api_key, poll, stop)
    for ref in refs:
        yield resolve(ref)
        if stop():
            return


def _polled_ids(
    data_dir: str | Path | None, api_url: str | None, api_key: str | None, poll: float, stop: Callable[[], bool]
) -> Iterator[str]:
    """Each snapshot id once, oldest first, polling the snapshots API (with ``api_url``) or
    the local snapshots folder every ``poll`` seconds until ``stop()``."""
    seen: set[str] = set()
    while not stop():
        if api_url:
            listed = sorted(_api_get(api_url, api_key, "snapshots").json(), key=lambda m: (m["position"], m["id"]))
            ids = [m["id"] for m in listed]
        else:
            ids = [s.id for s in list_snapshots(data_dir)]
        for ref in ids:
            if ref not in seen:
                seen.add(ref)
                yield ref
        time.sleep(poll)
