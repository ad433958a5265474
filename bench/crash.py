"""The crash test (issue #9; what it kills and what it checks: devkit/crash.py), run longer
and reported as benchmark rows.

    .venv/bin/python bench/crash.py [--seconds 60] [--users 16] [--no-relay]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from devkit.crash import storm  # noqa: E402


def report(result: dict) -> None:
    from rich.table import Table

    table = Table("measure", "value", "goal", title="crash test: SIGKILL under load")
    table.add_row("commands answered under load", f"{result['commands']:,}", "")
    table.add_row("kills survived", ", ".join(f"{k} {v}" for k, v in result["kills"].items()), "")
    table.add_row("acknowledged (2xx) commands checked", f"{result['acknowledged']:,}", "")
    table.add_row("acknowledged commands lost", str(result["lost"]), "0")
    table.add_row("duplicate events", str(result["duplicates"]), "0")
    table.add_row("views differing from a clean fold", str(len(result["view_mismatches"])), "0")
    table.add_row("relay topic gaps", "n/a" if result["topic_gaps"] is None else str(result["topic_gaps"]), "0")
    table.add_row("client retries (same Idempotency-Key)", f"{result['retries']:,}", "")
    common.console.print(table)


def measure(seconds: float, users: int, relay: bool) -> dict:
    import tempfile

    from devkit.brokers import tansu

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(common.postgres_database("oasst_crash"))
        bootstrap = stack.enter_context(tansu(log_path=str(tmp / "tansu.log"))) if relay else None
        result = storm(url, tmp, seconds, users, bootstrap)
    report(result)
    return result


def run(quick: bool) -> list[dict]:
    r = measure(20 if quick else 90, 16, relay=True)
    return [
        {"name": "crash.commands", "value": r["commands"], "unit": "commands under load", "goal": None},
        {"name": "crash.kills", "value": sum(r["kills"].values()), "unit": "SIGKILLs survived", "goal": None},
        {"name": "crash.lost", "value": r["lost"], "unit": "acknowledged commands lost", "goal": "0"},
        {"name": "crash.duplicates", "value": r["duplicates"], "unit": "duplicate events", "goal": "0"},
        {
            "name": "crash.view_mismatches",
            "value": len(r["view_mismatches"]),
            "unit": "views != clean fold",
            "goal": "0",
        },
        {"name": "crash.topic_gaps", "value": r["topic_gaps"], "unit": "positions missing from the topic", "goal": "0"},
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--no-relay", action="store_true")
    args = parser.parse_args()
    measure(args.seconds, args.users, relay=not args.no_relay)
