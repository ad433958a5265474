"""How fast ``oasst seed`` generates a history, on SQLite and PostgreSQL, and what
``--scale oa`` (~5M events) would take at that rate.

    .venv/bin/python bench/seed_bench.py --trees 300 --users 100 [--seed 0] [--backend sqlite|postgresql|both]
    .venv/bin/python bench/seed_bench.py --scale oa/10 --backend sqlite   # a tenth of Open-Assistant's size
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MACHINE_PG, console  # noqa: E402
from devkit.simulator import seed_history  # noqa: E402

OA_EVENTS = 5_000_000


def generate(backend: str, trees: int, users: int, seed: int, scale: str | None = None) -> dict:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            return seed_history(f"sqlite:///{tmp}/seed.sqlite3", trees=trees, users=users, seed=seed, scale=scale)
    name = f"oasst_seed_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(MACHINE_PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = urlunparse(urlparse(MACHINE_PG)._replace(path=f"/{name}"))
        return seed_history(url, trees=trees, users=users, seed=seed, scale=scale)
    finally:
        with psycopg.connect(MACHINE_PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(quick: bool) -> list[dict]:
    """For bench/run.py: generation speed on PostgreSQL, and the --scale oa extrapolation."""
    trees, users = (100, 40) if quick else (300, 100)
    s = generate("postgresql", trees, users, seed=0)
    rate = s["events_per_second"]
    console.print(f"oasst seed --trees {trees} --users {users}: {s['events']:,} events in {s['seconds']:.1f} s")
    return [
        {
            "name": "seed.events_per_s",
            "value": round(rate),
            "unit": "events/s (PostgreSQL)",
            "goal": None,
            "baseline": None,
            "ratio": None,
        },
        {
            "name": "seed.oa_scale_minutes_estimated",
            "value": round(OA_EVENTS / rate / 60, 1),
            "unit": "min",
            "goal": None,
            "baseline": None,
            "ratio": None,
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--scale", default=None, help="'oa' or 'oa/N' (overrides --trees and --users)")
    args = ap.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    table = Table(
        "store",
        "events",
        "trees",
        "messages",
        "labels",
        "rankings",
        "tasks",
        "commands",
        "s",
        "events/s",
        "5M events at this rate",
        title=f"oasst seed --trees {args.trees} --users {args.users} --seed {args.seed}"
        + (f" --scale {args.scale}" if args.scale else ""),
    )
    for backend in backends:
        s = generate(backend, args.trees, args.users, args.seed, args.scale)
        rate = s["events_per_second"]
        table.add_row(
            backend,
            f"{s['events']:,}",
            f"{s['trees']:,}",
            f"{s['messages']:,}",
            f"{s['labels']:,}",
            f"{s['rankings']:,}",
            f"{s['tasks']:,}",
            f"{s['commands']:,}",
            f"{s['seconds']:.1f}",
            f"{rate:,.0f}",
            f"~{OA_EVENTS / rate / 60:,.0f} min" if rate else "-",
        )
        console.print(f"{backend}: trees by state {s['trees_by_state']}")
    console.print(table)


if __name__ == "__main__":
    main()
