"""Checkpoints of the write model, so that start-up folds only the log's tail.

A checkpoint is the pickled ``WriteModel`` at a log position, in a file under
``$OASST_CHECKPOINT_DIR`` (default ``$OASST_DATA_DIR/checkpoints/``) named by the store
(the id of its first event: a copy of a database shares its checkpoints), the model's
version and the position. The version hashes the source of everything the model's
shape and contents depend on (the fold, the event contract, the shared rules): a
checkpoint of another version is ignored, and a fresh one is written. A checkpoint made
under another tree configuration is used, re-derived for this one
(``WriteModel.reconfigure``), so ``oasst seed`` leaves one that ``oasst serve`` can use. The file also records the id of the last event it
folded; at load that event must be the one the store has at that position (a store
or a copy that went another way is not mistaken for another: the next older checkpoint is
tried). Anything unreadable is logged and ignored: the log is the truth, a checkpoint
only saves time.

Writing one must not stall requests: the service pauses deciding until every decided
command is committed (so the model holds exactly the log up to its position), forks,
and resumes at once; the child process pickles its copy-on-write image of the model
and exits. Pickle is used deliberately (rather than a schema'd format): the model is a
private, versioned cache of plain dataclasses, and pickle restores it several times
faster than any decoder we could write for it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import pickle
from pathlib import Path
from uuid import UUID

import domain
from domain.config import TreeConfig
from domain.model import WriteModel

log = logging.getLogger("oasst.checkpoints")

FORMAT = 1
MODEL_SOURCES = ("model.py", "events.py", "rules.py", "labels.py", "config.py")


def model_version() -> str:
    digest = hashlib.sha256(f"checkpoint format {FORMAT}\n".encode())
    for name in MODEL_SOURCES:
        digest.update((Path(domain.__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


VERSION = model_version()  # of the code this process imported (files changed later are not its code)


class Checkpoints:
    KEEP = 3  # a store's newest checkpoints kept (older ones are deleted when one is written)
    TRIES = 3  # checkpoints tried at load, newest first

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.version = VERSION

    def _files(self, store_id: UUID, version: str | None = None) -> list[Path]:
        pattern = f"write-model-{store_id.hex[:16]}-{version or '*'}-*.pickle"
        return sorted(self.folder.glob(pattern), key=lambda p: int(p.stem.rsplit("-", 1)[1]))

    def load(self, store_id: UUID, event_id_at, cfg: TreeConfig) -> WriteModel | None:
        """The newest usable checkpoint's model under ``cfg``, or None. ``store_id`` is the id
        of the store's first event; ``event_id_at(position)`` gives the id of the store's
        event at a position (None if there is none)."""
        for path in reversed(self._files(store_id, self.version)[-self.TRIES :]):
            model = self._load(path, event_id_at, cfg)
            if model is not None:
                return model
        return None

    def _load(self, path: Path, event_id_at, cfg: TreeConfig) -> WriteModel | None:
        try:
            with open(path, "rb") as f, _no_gc():
                header = pickle.load(f)
                if header.get("version") != self.version:
                    raise ValueError(f"version {header.get('version')} in a file named {self.version}")
                model = pickle.load(f)
            if not isinstance(model, WriteModel) or model.position != header["position"]:
                raise ValueError("not a write model at the position it names")
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: fold the log instead
            log.warning("ignoring the unreadable checkpoint %s (%s): folding the log", path.name, exc)
            return None
        if header["position"] and event_id_at(header["position"]) != header["last_event_id"]:
            log.info("skipping checkpoint %s: the store's event at %d is another one", path.name, header["position"])
            return None
        try:
            model.reconfigure(cfg)
        except Exception as exc:  # noqa: BLE001 - e.g. a model pickled by other code under the same version
            log.warning(
                "ignoring the checkpoint %s, which does not fit this code (%s): folding the log", path.name, exc
            )
            return None
        return model

    def save(self, model: WriteModel, store_id: UUID) -> Path:
        """Write ``model`` (whose state is exactly the log up to its position), then remove
        this store's checkpoints of other versions and all but its newest few."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for trees in model.trees_by_state.values():
            for tree in trees.values():
                tree.work = None  # the tree manager's caches are not part of the state
        path = self.folder / f"write-model-{store_id.hex[:16]}-{self.version}-{model.position}.pickle"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        header = {"version": self.version, "position": model.position, "last_event_id": model.last_event_id}
        with open(tmp, "wb") as f, _no_gc():
            pickle.dump(header, f, protocol=5)
            pickle.dump(model, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        mine = self._files(store_id, self.version)
        for old in [p for p in self._files(store_id) if p not in mine] + mine[: -self.KEEP]:
            with contextlib.suppress(OSError):
                old.unlink()
        return path

    def discard_before(self, store_id: UUID, position: int) -> None:
        """Delete this store's checkpoints taken before ``position`` (an erasure: they may
        hold the erased user's text, which the log itself holds only sealed)."""
        for path in self._files(store_id):
            if int(path.stem.rsplit("-", 1)[1]) < position:
                with contextlib.suppress(OSError):
                    path.unlink()

    def save_in_child(self, model: WriteModel, store_id: UUID) -> int | None:
        """Fork; the child saves its copy-on-write image of ``model`` and exits. Returns the
        child's pid (None where fork is not available: then it saves here and now)."""
        if not hasattr(os, "fork"):
            self.save(model, store_id)
            return None
        pid = os.fork()
        if pid == 0:  # the child: touch nothing of the parent's (event loop, connections)
            code = 1
            try:
                self.save(model, store_id)
                code = 0
            finally:
                os._exit(code)
        return pid


@contextlib.contextmanager
def _no_gc():
    """Millions of objects are created or walked: the cyclic collector would only slow it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def wait_for(pid: int) -> bool:
    """Wait for a checkpoint child; True if it saved."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
