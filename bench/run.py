"""Run every benchmark under bench/, print their results and write var/bench/results.json.

    .venv/bin/python bench/run.py [--quick]

A benchmark is a module bench/<name>.py defining ``run(quick: bool) -> list[dict]``; each
row is {name, value, unit, goal, baseline, ratio}. ``goal`` is a comparison such as
">= 0.5" or "<= 50" (or null); it applies to ``ratio`` when the unit says "goal on ratio",
else to ``value``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import operator
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from the repo root: make `bench` and the app importable

from rich.table import Table  # noqa: E402

from bench.common import OUT, console  # noqa: E402

HELPERS = {"run", "common", "noop_server", "__init__"}
COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def modules() -> list:
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem in HELPERS or path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{path.stem}")
        if callable(getattr(module, "run", None)):
            found.append(module)
    return found


def met(row: dict) -> bool | None:
    """Whether the row meets its goal (None: no goal, or nothing to compare)."""
    if not row.get("goal"):
        return None
    parts = row["goal"].split()
    op, target = parts if len(parts) == 2 else ("==", parts[0])  # a bare "0" (crash.py, fuzz.py) means "== 0"
    subject = row.get("ratio") if "goal on ratio" in (row.get("unit") or "") else row.get("value")
    if subject is None or (isinstance(subject, float) and math.isnan(subject)):
        return False
    return COMPARE[op](subject, float(target))


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def clean(x):
    """JSON has no NaN: write null instead."""
    return None if isinstance(x, float) and math.isnan(x) else x


def _terminate(signum, frame):
    # Treat SIGTERM like Ctrl-C (which asyncio.run turns into a clean cancellation): everything
    # unwinds, so benchmarks stop their servers and drop their databases.
    signal.raise_signal(signal.SIGINT)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (all benchmarks in under 3 minutes)")
    args = parser.parse_args()

    rows, failed = [], []
    started = time.monotonic()
    for module in modules():
        name = module.__name__.split(".")[-1]
        console.rule(f"[bold]{name}[/]")
        try:
            rows += module.run(args.quick)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' results
            failed.append(name)
            console.print(f"[red]{name} failed:[/]\n{traceback.format_exc()}")

    table = Table("name", "value", "unit", "goal", "baseline", "ratio", "ok",
                  title=f"benchmarks ({'quick' if args.quick else 'full'}, {time.monotonic() - started:.0f}s)")
    for row in rows:
        ok = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[met(row)]
        # Only name and value are sure to be there: the other keys are optional.
        table.add_row(row["name"], fmt(row.get("value")), row.get("unit") or "", row.get("goal") or "",
                      fmt(row.get("baseline")), fmt(row.get("ratio")), ok)
    console.print(table)

    OUT.mkdir(parents=True, exist_ok=True)
    keys = ("name", "value", "unit", "goal", "baseline", "ratio")
    results = [{k: clean(row.get(k)) for k in keys} for row in rows]
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {OUT / 'results.json'}")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
