"""A full disk while a snapshot or an export is written (issue #19, item 3), on a PostgreSQL
store: the files are limited by RLIMIT_FSIZE in the writing process (what a quota or a full
disk does to a write: it fails; no root needed, unlike a small tmpfs). No partial snapshot is
listed, announced or left behind, the error says what happened, and the service goes on
accepting commands."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from devkit.simulator import seed_history_async
from tests.frontend import user
from tests.servers import oasst_serve

KEY = "disk-full-key"
LIMIT = 2048  # bytes a process may write to one file: every snapshot file is larger


def small_files() -> None:
    """In the child: files may not grow past LIMIT, and a write past it fails (EFBIG) instead
    of killing the process (SIGXFSZ ignored)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def leftovers(data_dir: Path) -> list[str]:
    snapshots = data_dir / "snapshots"
    return sorted(p.name for p in snapshots.iterdir()) if snapshots.exists() else []


def oasst(data_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OASST_DATABASE_URL": url, "OASST_DATA_DIR": str(data_dir), "OASST_CHECKPOINT_EVERY": "0"}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )


async def test_a_full_disk_keeps_no_partial_snapshot_and_the_service_goes_on(pg_url, tmp_path):
    await seed_history_async(pg_url, trees=12, users=10, seed=3, api_key=KEY)
    env = {"OASST_CHECKPOINT_EVERY": "0"}  # the server's own files stay out of it
    with oasst_serve(tmp_path, KEY, database_url=pg_url, env=env, preexec_fn=small_files) as api:
        async with httpx.AsyncClient(base_url=api, headers={"X-API-Key": KEY}, timeout=30) as c:
            last = (await c.get("/events", params={"limit": 10_000})).json()["last_position"]
            r = await c.post("/snapshots", json={})
            assert r.status_code == 507, r.text  # Insufficient Storage
            assert r.json()["error_code"] == 0 and "no room" in r.json()["message"]
            assert leftovers(tmp_path) == []  # no half-written folder
            assert (await c.get("/snapshots")).json() == []  # nothing listed
            events = (await c.get("/events", params={"after": last})).json()["events"]
            assert not [e for e in events if e["type"] == "snapshot_created"]  # nothing announced
            # the service goes on: a command is answered and stored
            r = await c.post("/tasks/", json={"type": "random", "user": user("after-the-disk-filled"), "lang": "en"})
            assert r.status_code == 200, r.text
            assert int(r.headers["X-Log-Position"]) > last

    # the CLI says so and keeps nothing either
    done = oasst(tmp_path, pg_url, "snapshot", "create")
    assert done.returncode == 1 and "no room" in done.stderr, done.stdout + done.stderr
    assert leftovers(tmp_path) == []
    # an export leaves no half file under its name
    out = tmp_path / "export.jsonl.gz"
    done = oasst(tmp_path, pg_url, "export", str(out), "--state", "ready_for_export")
    assert done.returncode == 1 and "no room" in done.stderr, done.stdout + done.stderr
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))

    # with room again, the same snapshot is written whole
    env = {**os.environ, "OASST_DATABASE_URL": pg_url, "OASST_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "infra.cli", "snapshot", "create"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert len(leftovers(tmp_path)) == 1 and not leftovers(tmp_path)[0].startswith(".")
