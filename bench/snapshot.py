"""Snapshots at Open-Assistant's size (issue #18), on the cached PostgreSQL store of
bench/scale.py (full: ``oa``; quick: ``oa/100``): each policy twice, each time in a fresh child
process (its peak RSS reported), stage by stage; the rerun must give byte-identical files.
Goals at OA's size: <= 15 s with ``oa``, <= 20 s with ``trust``.

    .venv/bin/python bench/snapshot.py [--scale oa/20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, scale  # noqa: E402

GOALS = {"oa": 15.0, "trust": 20.0}


def snapshot_child(url: str, policy: str, data_dir: str) -> dict:
    """One snapshot, not recorded in the log (the cached store stays as it is); run in a child."""
    from infra.settings import Settings
    from projections.snapshot import SnapshotSpec, create_snapshot

    started = time.perf_counter()
    settings = Settings(database_url=url, data_dir=Path(data_dir))
    manifest = create_snapshot(settings, SnapshotSpec(policy=policy), record=False)
    seconds = time.perf_counter() - started
    timings = {stage: round(t["seconds"], 2) for stage, t in manifest["timings"].items()}
    return {"seconds": seconds, "id": manifest["id"], "files": manifest["files"], "timings": timings}


def measure(size: str) -> list[dict]:
    name, record = scale.cached(size)
    url = common.database_url(name)
    rows = []
    for policy in GOALS:
        runs = []
        for _ in range(2):
            with tempfile.TemporaryDirectory() as data_dir:
                runs.append(common.in_child("bench.snapshot:snapshot_child", url, policy, data_dir))
        first, second = runs
        identical = first["id"] == second["id"] and first["files"] == second["files"]
        table = Table("stage", "seconds", title=f"snapshot ({policy}) of {size}: {record['events']:,} events")
        for stage, seconds in first["timings"].items():
            table.add_row(stage, f"{seconds:.2f}")
        table.add_row("whole (first / rerun)", f"{first['seconds']:.2f} / {second['seconds']:.2f}")
        table.add_row("peak RSS", f"{max(r['peak_rss_mb'] for r in runs):,.0f} MB")
        table.add_row("rerun byte-identical", "yes" if identical else "NO")
        common.console.print(table)
        best = min(r["seconds"] for r in runs)
        goal = f"<= {GOALS[policy]:.0f}" if size == "oa" else None
        rows += [
            {"name": f"snapshot.{policy}.seconds", "value": round(best, 2), "unit": f"s on {size}", "goal": goal},
            {
                "name": f"snapshot.{policy}.peak_rss_mb",
                "value": round(max(r["peak_rss_mb"] for r in runs)),
                "unit": "MB",
            },
            {"name": f"snapshot.{policy}.rerun_identical", "value": int(identical), "unit": "1 = yes", "goal": ">= 1"},
        ]
    return rows


def run(quick: bool) -> list[dict]:
    return measure("oa/100" if quick else "oa")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="oa")
    args = parser.parse_args()
    for row in measure(args.scale):
        common.console.print(row)
