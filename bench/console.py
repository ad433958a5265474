"""The moderators' console (issue #17): page times on a seeded store.

The cached store of bench/scale.py (``--scale oa/4``; quick: ``oa/100``), on a throwaway copy
(the server appends its bootstrap client), with the checkpoint its seeding left and the views it
stored. The app runs in-process under Litestar's test client, signed in to the console; for each
page kind a warm-up request, then timed requests over a seeded sample of trees (each at its
latest position and at a random one, as the slider asks) and users (their timeline, trust and
score), and the overview. Goal (issue): p95 <= 200 ms for the tree, user and overview pages.

    .venv/bin/python -c "from bench import console; console.run(quick=True)"
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path

from litestar.testing import AsyncTestClient

from bench import common, scale
from bench.common import row
from bench.ingest import API_KEY
from devkit.simulator import oa_scale
from infra.app import create_app
from infra.settings import Settings

SAMPLE = {True: 30, False: 100}  # trees and users timed per page kind (quick, full)
OVERVIEWS = {True: 30, False: 100}


async def _timed(c: AsyncTestClient, path: str) -> float:
    started = time.perf_counter()
    r = await c.get(path)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return elapsed


async def _pages(app, quick: bool) -> dict[str, list[float]]:
    async with AsyncTestClient(app) as c:
        position = app.state.service.model.position
        for _ in range(60):  # the stored views are restored in the background
            r = await c.get("/api/v1/stats/", params={"min_position": position}, headers={"X-API-Key": API_KEY})
            if r.status_code == 200:
                break
        r = await c.post("/console/sign-in", data={"api_key": API_KEY}, follow_redirects=False)
        assert r.status_code == 303, r.text
        view = app.state.runner.by_name["message_tree"]
        rng = random.Random(0)
        trees = rng.sample(sorted(view.trees.rows, key=str), SAMPLE[quick])
        users = rng.sample(sorted(view.users.rows, key=str), SAMPLE[quick])
        for warm in ("/console/", f"/console/trees/{trees[0]}", f"/console/users/{users[0]}"):
            await c.get(warm)  # first requests: trust scores computed, board cached
        times: dict[str, list[float]] = {"tree": [], "user": [], "overview": []}
        for tree in trees:
            times["tree"].append(await _timed(c, f"/console/trees/{tree}"))
            times["tree"].append(await _timed(c, f"/console/trees/{tree}?step={rng.randrange(40)}"))
        for user in users:
            times["user"].append(await _timed(c, f"/console/users/{user}"))
        for _ in range(OVERVIEWS[quick]):
            times["overview"].append(await _timed(c, "/console/"))
        return times


def measure(size: str, quick: bool) -> tuple[dict, dict[str, list[float]]]:
    name, record = scale.cached(size)
    return record, measure_database(name, quick)


def measure_database(name: str, quick: bool) -> dict[str, list[float]]:
    """Page times on a copy of the cached database ``name``."""
    with common.database_copy(name) as url, tempfile.TemporaryDirectory() as tmp:
        checkpoints = Path(tmp) / "checkpoints"
        seeded = scale.CHECKPOINTS / name
        if seeded.exists():
            shutil.copytree(seeded, checkpoints)  # a copy: this server must not write into the cache
        settings = Settings(
            database_url=url,
            data_dir=Path(tmp),
            bootstrap_api_key=API_KEY,
            tree=oa_scale()[2],
            rate_limits=False,
            checkpoint_dir=checkpoints,
        )
        return asyncio.run(_pages(create_app(settings), quick))


def run(quick: bool) -> list[dict]:
    size = "oa/100" if quick else "oa/4"
    record, times = measure(size, quick)
    rows = []
    for page, values in times.items():
        values.sort()
        p50, p95 = common.percentile(values, 50) * 1000, common.percentile(values, 95) * 1000
        common.console.print(
            f"{size} ({record['events']:,} events) {page} page: p50 {p50:.1f} ms, p95 {p95:.1f} ms, n={len(values)}"
        )
        rows.append(row(f"console.{page}_page_p95_ms", round(p95, 1), f"ms on {size}", "<= 200"))
        rows.append(row(f"console.{page}_page_p50_ms", round(p50, 1), f"ms on {size}"))
    return rows
