"""The crash test (issue #9; what it kills and what it checks: devkit/crash.py), run longer
and reported as benchmark rows; then the outages of what the service depends on (issue #19,
devkit/faults.py): PostgreSQL stopped and started, the Kafka broker SIGKILLed and restarted,
the disk full during snapshots; per fault: commands answered, acknowledged commands lost,
5xx other than 503, time to recover once the dependency is back.

    .venv/bin/python bench/crash.py [--seconds 60] [--users 16] [--no-relay] [--down 5] [--only-faults]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from devkit import faults  # noqa: E402
from devkit.crash import storm  # noqa: E402

FAULTS = ("postgres", "kafka", "disk")


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


def measure_faults(users: int, down_s: float) -> dict[str, dict]:
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["postgres"] = faults.postgres_away(Path(tmp), users, down_s)
        for name, fault in (("kafka", faults.kafka_away), ("disk", faults.disk_full)):
            with common.postgres_database(f"oasst_faults_{name}") as url:
                results[name] = fault(Path(tmp), url, users, down_s)
    report_faults(results, users, down_s)
    return results


def report_faults(results: dict[str, dict], users: int, down_s: float) -> None:
    from rich.table import Table

    def secs(x) -> str:
        return "none" if x is None else f"{x:.2f} s"

    table = Table("measure", *FAULTS, "goal", title=f"dependencies away for {down_s:g} s under load ({users} users)")
    table.add_row("commands answered", *(f"{results[f]['commands']:,}" for f in FAULTS), "")
    table.add_row("of which 503", *(f"{results[f]['answers'].get(503, 0):,}" for f in FAULTS), "")
    table.add_row("acknowledged commands lost", *(str(results[f]["lost"]) for f in FAULTS), "0")
    table.add_row("5xx other than 503 (dropped connections)", *_other_5xx(results), "0")
    table.add_row("time to recover after it is back", *(secs(results[f]["recovery_s"]) for f in FAULTS), "<= 5 s")
    kafka, disk = results["kafka"], results["disk"]
    table.add_row("commands answered 2xx while it was away", "-", f"{kafka['answered_2xx_while_away']:,}", "-", "")
    table.add_row("topic: duplicates / gaps", "-", f"{kafka['topic_duplicates']} / {kafka['topic_gaps']}", "-", "0 / 0")
    refused = ", ".join(f"{n}× {s}" for s, n in disk["snapshots_refused"].items())
    table.add_row(
        "snapshots while full: answers / partial left", "-", "-", f"{refused} / {disk['partial_snapshots_left']}", ""
    )
    common.console.print(table)


def _other_5xx(results: dict[str, dict]) -> list[str]:
    return [f"{results[f]['other_5xx']} ({results[f]['dropped']})" for f in FAULTS]


def fault_rows(results: dict[str, dict]) -> list[dict]:
    rows = []
    for f in FAULTS:
        r = results[f]
        recovery = float("nan") if r["recovery_s"] is None else round(r["recovery_s"], 3)
        rows += [
            common.row(f"crash.{f}.commands", r["commands"], "commands answered"),
            common.row(f"crash.{f}.lost", r["lost"], "acknowledged commands lost", "0"),
            common.row(f"crash.{f}.other_5xx", r["other_5xx"] + r["dropped"], "5xx other than 503, or no answer", "0"),
            common.row(f"crash.{f}.recovery_s", recovery, "s to recover after it is back", "<= 5"),
        ]
    rows.append(
        common.row("crash.kafka.topic_duplicates", results["kafka"]["topic_duplicates"], "copies in the topic", "0")
    )
    rows.append(common.row("crash.kafka.topic_gaps", results["kafka"]["topic_gaps"], "positions missing", "0"))
    return rows


def run(quick: bool) -> list[dict]:
    rows = fault_rows(measure_faults(8 if quick else 16, 3 if quick else 8))
    r = measure(20 if quick else 90, 16, relay=True)
    return rows + [
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
    parser.add_argument("--down", type=float, default=5, help="seconds each dependency stays away")
    parser.add_argument("--only-faults", action="store_true", help="skip the SIGKILL storm")
    args = parser.parse_args()
    measure_faults(args.users, args.down)
    if not args.only_faults:
        measure(args.seconds, args.users, relay=not args.no_relay)
