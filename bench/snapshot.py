"""How long a snapshot takes, stage by stage, on a generated history (SQLite), and what
that means at Open-Assistant's scale (the goal: all files of the OA-scale history in
<= 15 s on 2 cores).

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

from bench.common import console  # noqa: E402
from devkit.simulator import seed_history  # noqa: E402
from infra.settings import Settings  # noqa: E402
from projections.snapshot import SnapshotSpec, create_snapshot  # noqa: E402

OA_EVENTS = 5_000_000  # docs/design.md, "Scale to keep in view": a full OA history with tasks and reactions
GOAL_SECONDS = 15.0


def measure(scale: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/snap.sqlite3"
        t = time.perf_counter()
        summary = seed_history(url, trees=0, users=0, seed=0, scale=scale)
        console.print(
            f"history --scale {scale}: {summary['events']:,} events, {summary['messages']:,} messages "
            f"(generated in {time.perf_counter() - t:.0f} s)"
        )
        settings = Settings(database_url=url, data_dir=Path(tmp))
        rows = []
        for policy in ("oa", "trust"):
            t = time.perf_counter()
            manifest = create_snapshot(settings, SnapshotSpec(policy=policy))
            total = time.perf_counter() - t
            table = Table("stage", "rows", "seconds", "rows/s", title=f"snapshot ({policy}) {manifest['id']}")
            for stage, s in manifest["timings"].items():
                table.add_row(stage, f"{s['rows']:,}", f"{s['seconds']:.2f}", f"{s['rows_per_second'] or 0:,}")
            table.add_row("total", f"{summary['events']:,} events", f"{total:.2f}", f"{summary['events'] / total:,.0f}")
            console.print(table)
            at_oa = total * OA_EVENTS / summary["events"]
            rows += [
                {
                    "name": f"snapshot.{policy}.seconds",
                    "value": round(total, 2),
                    "unit": f"s for {summary['events']:,} events",
                    "goal": None,
                },
                {
                    "name": f"snapshot.{policy}.events_per_s",
                    "value": round(summary["events"] / total),
                    "unit": "events/s (whole snapshot)",
                    "goal": None,
                },
                {
                    "name": f"snapshot.{policy}.fold_events_per_s",
                    "value": manifest["timings"]["fold"]["rows_per_second"],
                    "unit": "events/s folded",
                    "goal": None,
                },
                {
                    "name": f"snapshot.{policy}.oa_scale_seconds",
                    "value": round(at_oa, 1),
                    "unit": f"s extrapolated to {OA_EVENTS:,} events",
                    "goal": f"<= {GOAL_SECONDS:.0f}",
                },
            ]
        return rows


def run(quick: bool) -> list[dict]:
    return measure("oa/200" if quick else "oa/20")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="oa/20")
    args = parser.parse_args()
    for row in measure(args.scale):
        console.print(row)
