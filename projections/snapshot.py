"""Reproducible dataset snapshots: a pure function of (log up to P, policy, selection,
exclusions) into files under ``$OASST_DATA_DIR/snapshots/<id>/``.

The id is a content hash of the manifest (which holds the sha256 of every file), so the
same inputs give the same id and byte-identical files, however many events or spam
marks came after P. Nothing time- or machine-dependent is written: gzip without a
timestamp, rows in a fixed order, parquet with a fixed schema. A ``SnapshotCreated``
event records each new snapshot (Kafka consumers and training jobs follow those).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from eventsourcing.persistence import IntegrityError

from domain import events as ev
from domain.model import snapshot_stream
from infra.oasst_format import dumps, open_text
from infra.settings import Settings
from infra.store import EventStore, Pending
from infra.version import package_version
from projections.dataset import POLICIES, Dataset, Selection, fold_at, latest_marks, policy_versions
from projections.training_sets import training_frames

FORMAT_VERSION = 1  # bump when the files' layout changes (the id changes with it)


class SnapshotError(ValueError):
    pass


class NoRoom(SnapshotError):
    """The disk (or a quota, or a file-size limit) left no room for the snapshot's files; the
    half-written folder is gone, so nothing partial is ever listed or announced."""


ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # full disk, quota, file-size limit


def no_room(exc: OSError, where: Path) -> NoRoom:
    return NoRoom(f"no room to write under {where} ({exc.strerror}); nothing was kept: free some space and retry")


@dataclass(frozen=True)
class SnapshotSpec:
    position: int | None = None  # None: the log's last position now
    policy: str = "oa"
    selection: Selection = field(default_factory=Selection)
    policy_version: str | None = None  # None: the policy's current version; a re-derive keeps the recorded one
    exclusions: str = "as_of_position"  # or "latest": today's spammers (re-derive)
    sft_max_rank: int | None = None  # keep SFT conversations whose last reply ranked < k
    parent: str | None = None


def snapshot_code_version() -> str:
    """What a snapshot's bytes depend on (package, snapshot format, polars): its ``code_version``."""
    return f"oasst-data-engine {package_version()}; snapshot format {FORMAT_VERSION}; polars {pl.__version__}"


def snapshots_dir(data_dir: str | Path | None = None) -> Path:
    """``<data dir>/snapshots`` (the data dir of OASST_DATA_DIR when none is given)."""
    if data_dir is None:
        data_dir = Settings.from_env().data_dir
    return Path(data_dir) / "snapshots"


def load_manifest(data_dir: Path, snapshot_id: str) -> dict:
    # ids are hex digests (or hand-made names): no path separators, dots or long names reach the disk
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", snapshot_id):
        raise SnapshotError(f"snapshot {snapshot_id} not found")
    path = snapshots_dir(data_dir) / snapshot_id / "manifest.json"
    if not path.is_file():
        raise SnapshotError(f"snapshot {snapshot_id} not found")
    return json.loads(path.read_text())


# --- reading, as sampling and training jobs do ------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A snapshot folder: its manifest, and its files checked against the manifest."""

    id: str
    dir: Path
    manifest: dict
    manifest_sha256: str  # of manifest.json's bytes: names the exact file set a job read

    def file(self, name: str) -> Path:
        return self.dir / name

    @property
    def position(self) -> int | None:
        return self.manifest.get("position")

    def verified_file(self, name: str) -> Path:
        """The file, if it still has the sha256 the manifest recorded (a model or a sample
        must not claim a snapshot whose file changed since)."""
        path = self.file(name)
        if not path.is_file():
            raise FileNotFoundError(f"snapshot {self.id} has no {name}")
        want = (self.manifest.get("files") or {}).get(name, {}).get("sha256")
        if want and _sha256(path) != want:
            raise ValueError(f"{path} does not match its sha256 in the manifest of snapshot {self.id}")
        return path


def open_snapshot(ref: str | Path, data_dir: str | Path | None = None) -> Snapshot:
    """A snapshot by folder path, by id under the data dir, or ``latest`` (highest log position)."""
    if str(ref) == "latest":
        found = list_snapshots(data_dir)
        if not found:
            raise FileNotFoundError(f"no snapshot under {snapshots_dir(data_dir)}")
        return found[-1]
    path = Path(ref)
    if not (path / "manifest.json").is_file():
        path = snapshots_dir(data_dir) / str(ref)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no snapshot {ref!r} (looked for {manifest_path})")
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    return Snapshot(str(manifest.get("id") or path.name), path, manifest, hashlib.sha256(raw).hexdigest())


def list_snapshots(data_dir: str | Path | None = None) -> list[Snapshot]:
    """Complete snapshots on disk, oldest first (by log position, then id)."""
    root = snapshots_dir(data_dir)
    found = []
    for path in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
        if path.parent.name.startswith("."):
            continue  # a snapshot being built
        try:
            found.append(open_snapshot(path.parent))
        except (OSError, ValueError):
            continue  # being written (manifest.json is written last) or broken: not ours to judge
    return sorted(found, key=lambda s: (s.position or 0, s.id))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- creating --------------------------------------------------------------------------


def _exclusions(store: EventStore, state, spec: SnapshotSpec) -> tuple[frozenset, frozenset]:
    """(spammers left out, deleted users whose ids are left out), as of P or as of now."""
    if spec.exclusions == "as_of_position":
        return state.spammers, state.deleted_users
    if spec.exclusions == "latest":
        spammers, deleted = latest_marks(store)
        return spammers, state.deleted_users | deleted
    raise SnapshotError(f"exclusions must be 'as_of_position' or 'latest', not {spec.exclusions!r}")


def snapshot_spec(data_dir: Path, from_id: str | None, exclusions: str, **fields) -> SnapshotSpec:
    """A new snapshot's spec, or with ``from_id`` that snapshot's inputs again under other
    exclusions (what the CLI and the API ask for)."""
    if from_id:
        return spec_from_manifest(load_manifest(data_dir, from_id), exclusions)
    return SnapshotSpec(exclusions=exclusions, **fields)


def spec_from_manifest(manifest: dict, exclusions: str) -> SnapshotSpec:
    """Snapshot ``manifest``'s inputs again (same P, policy, selection), with other exclusions."""
    sel = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["filters"].items()}
    return SnapshotSpec(
        position=manifest["position"],
        policy=manifest["policy"]["name"],
        policy_version=manifest["policy"]["version"],
        selection=Selection(**sel),
        exclusions=exclusions,
        sft_max_rank=manifest.get("sft_max_rank"),
        parent=manifest["id"],
    )


def create_snapshot(
    settings: Settings, spec: SnapshotSpec = SnapshotSpec(), *, store: EventStore | None = None, record: bool = True
) -> dict:
    """Build (or find) the snapshot; returns its manifest with ``timings`` added (seconds
    and rows/s of each stage, not part of the manifest on disk)."""
    if spec.policy not in POLICIES:
        raise SnapshotError(f"unknown policy {spec.policy!r} (one of {sorted(POLICIES)})")
    if spec.policy_version not in (None, *policy_versions(spec.policy)):
        raise SnapshotError(f"unknown version {spec.policy_version!r} of policy {spec.policy!r}")
    own_store = store is None
    store = store or EventStore(settings.database_url)
    try:
        return _create(settings, spec, store, record)
    finally:
        if own_store:
            store.close()


def _create(settings: Settings, spec: SnapshotSpec, store: EventStore, record: bool) -> dict:
    timings: dict[str, dict] = {}
    last = store.max_position()
    position = last if spec.position is None else spec.position
    if not 0 <= position <= last:
        raise SnapshotError(f"position {position} is beyond the log (last position {last})")
    if spec.selection.flat:
        raise SnapshotError("a snapshot holds trees: user and 'only' filters are for `oasst export`")

    t0 = time.perf_counter()
    state = fold_at(store, position)
    exclusions, deleted_users = _exclusions(store, state, spec)
    timings["fold"] = {"seconds": time.perf_counter() - t0, "rows": position}

    t0 = time.perf_counter()
    dataset = Dataset(state, spec.policy, exclusions, deleted_users, settings.tree, policy_version=spec.policy_version)
    items = list(dataset.items(spec.selection))
    timings["resolve"] = {"seconds": time.perf_counter() - t0, "rows": len(items)}

    root = snapshots_dir(settings.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        frames, files = _write_files(work, items, spec.sft_max_rank, timings)
        manifest = {
            "id": None,
            "position": position,
            "policy": {"name": spec.policy, "version": dataset.policy_version},
            "filters": spec.selection.as_dict(),
            "sft_max_rank": spec.sft_max_rank,
            "exclusions": {
                "mode": spec.exclusions,
                "users": sorted(str(u) for u in exclusions),
                "deleted_users": len(deleted_users),
            },
            "counts": {"trees": len(items), **{name: f.height for name, f in frames.items()}},
            "files": files,
            "code_version": snapshot_code_version(),
            "parent": spec.parent,
        }
        if erasures := store.erasure_positions():  # (none: the manifest, and the id, stay as they were)
            manifest["erasures"] = {"count": len(erasures), "positions": erasures}
        manifest["id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:24]
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        final = root / manifest["id"]
        if final.exists():  # the same inputs again: the same files are there already
            shutil.rmtree(work)
        else:
            os.replace(work, final)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        if exc.errno in ROOM_ERRNOS:
            raise no_room(exc, root) from exc
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if record:
        _record(store, manifest)
    return {**manifest, "timings": timings}


def _write_files(work: Path, items: list[dict], sft_max_rank: int | None, timings: dict) -> tuple[dict, dict]:
    """The training frames and every file, with their sha256. The trees file is compressed in a
    thread while the frames are built (zlib lets go of the GIL, so the two overlap)."""
    with ThreadPoolExecutor(1) as pool:
        trees = pool.submit(_write_trees, work / "trees.jsonl.gz", items, timings)
        t0 = time.perf_counter()
        frames = training_frames(items, sft_max_rank)
        timings["frames"] = {"seconds": time.perf_counter() - t0, "rows": frames["messages.parquet"].height}
        for name, frame in frames.items():
            t0 = time.perf_counter()
            _write_parquet(work / name, frame)
            timings[name] = {"seconds": time.perf_counter() - t0, "rows": frame.height}
        trees.result()
    for stage in timings.values():
        stage["rows_per_second"] = round(stage["rows"] / stage["seconds"]) if stage["seconds"] > 0 else None
    return frames, {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(work.iterdir())}


def _write_parquet(path: Path, frame: pl.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd", statistics=False)
    # written by Python, so that a full disk raises OSError with its errno (polars wraps it in its own error)
    path.write_bytes(buffer.getbuffer())


def _write_trees(path: Path, items: list[dict], timings: dict) -> None:
    t0 = time.perf_counter()
    with open_text(path, "wt") as f:
        for item in items:
            f.write(dumps(item) + "\n")
    timings["trees.jsonl.gz"] = {"seconds": time.perf_counter() - t0, "rows": len(items)}


def _record(store: EventStore, manifest: dict) -> None:
    """Append SnapshotCreated once per snapshot id (its stream's first version)."""
    stream = snapshot_stream(manifest["id"])
    event = ev.SnapshotCreated(
        id=ev.new_id(),
        at=datetime.now(UTC),
        snapshot_id=manifest["id"],
        position=manifest["position"],
        policy=manifest["policy"]["name"],
        manifest=manifest,
        parent_id=manifest["parent"],
    )
    try:
        store.append([Pending([(stream, 1, event)])])
    except Exception as exc:  # noqa: BLE001 - the stream exists: this snapshot was recorded before
        if not _is_conflict(exc):
            raise


def _is_conflict(exc: Exception) -> bool:
    return isinstance(exc, IntegrityError)


def snapshot_file(data_dir: Path, snapshot_id: str, name: str) -> Path:
    manifest = load_manifest(data_dir, snapshot_id)
    if name not in manifest["files"] and name != "manifest.json":
        raise SnapshotError(f"snapshot {snapshot_id} has no file {name!r}")
    return snapshots_dir(data_dir) / snapshot_id / name
