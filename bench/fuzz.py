"""Hostile input (issue #9): schemathesis generates requests from our own OpenAPI schema
(valid ones and ones that break it) against a real ``oasst serve``; no answer may be a
5xx, and a rejected request (4xx) must leave the log as it was.

    .venv/bin/python bench/fuzz.py [--examples 160]   # ~10,000+ requests over every operation
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from devkit.fuzz import FuzzStats, fuzz_api, fuzz_server  # noqa: E402


def report(stats: FuzzStats) -> None:
    from rich.table import Table

    table = Table("measure", "value", "goal", title="schemathesis against oasst serve")
    table.add_row("generated requests", f"{stats.requests:,}", ">= 10,000 (benchmark)")
    table.add_row("4xx (rejected)", f"{stats.rejected:,}", "")
    table.add_row("2xx", f"{sum(n for s, n in stats.by_status.items() if s < 300):,}", "")
    table.add_row("503 as OA's contract defines (no task of that type / views behind)", str(stats.documented_503), "")
    table.add_row("5xx (other)", str(len(stats.server_errors)), "0")
    table.add_row("events appended by rejected requests", str(len(stats.appended_by_rejected)), "0")
    common.console.print(table)
    common.console.print("statuses:", dict(sorted(stats.by_status.items())))
    for error in stats.server_errors[:10]:
        common.console.print("5xx:", error)


def measure(examples: int) -> FuzzStats:
    with tempfile.TemporaryDirectory() as tmp, fuzz_server(Path(tmp)) as (base, store_url):
        stats = fuzz_api(base, store_url, examples)
    report(stats)
    return stats


def run(quick: bool) -> list[dict]:
    stats = measure(10 if quick else 160)
    return [
        {"name": "fuzz.requests", "value": stats.requests, "unit": "generated requests", "goal": ">= 10000"},
        {"name": "fuzz.server_errors", "value": len(stats.server_errors), "unit": "5xx", "goal": "0"},
        {
            "name": "fuzz.appended_by_rejected",
            "value": len(stats.appended_by_rejected),
            "unit": "events appended by 4xx requests",
            "goal": "0",
        },
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=160, help="cases per operation and mode")
    measure(parser.parse_args().examples)
