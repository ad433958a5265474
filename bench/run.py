"""Run every benchmark under bench/, print their results and write var/bench/results.json.

    .venv/bin/python bench/run.py [--quick]

A benchmark is a module bench/<name>.py defining ``run(quick: bool) -> list[dict]``; each
row is {name, value, unit, goal, baseline, ratio}; devkit/bench_results.py says how goals
are read, prints the table and writes the file.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from the repo root: make `bench` and the app importable

from bench.common import OUT, console  # noqa: E402
from devkit import bench_results  # noqa: E402

HELPERS = {"run", "common", "noop_server", "__init__"}


def names() -> list[str]:
    return [
        path.stem
        for path in sorted(Path(__file__).parent.glob("*.py"))
        if path.stem not in HELPERS and not path.stem.startswith("_")
    ]


def _terminate(signum, frame):
    # Treat SIGTERM like Ctrl-C (which asyncio.run turns into a clean cancellation): everything
    # unwinds, so benchmarks stop their servers and drop their databases.
    signal.raise_signal(signal.SIGINT)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (all benchmarks in about 6 minutes)")
    args = parser.parse_args()

    rows, failed = [], []
    started = time.monotonic()
    for name in names():
        console.rule(f"[bold]{name}[/]")
        # One broken benchmark (even one that fails to import) must not hide the others' results.
        try:
            module = importlib.import_module(f"bench.{name}")
            if callable(getattr(module, "run", None)):
                rows += module.run(args.quick)
        except Exception:  # noqa: BLE001
            failed.append(name)
            console.print(f"[red]{name} failed:[/]\n{traceback.format_exc()}")

    mode = "quick" if args.quick else "full"
    console.print(bench_results.table(rows, f"benchmarks ({mode}, {time.monotonic() - started:.0f}s)"))
    bench_results.write(rows, OUT / "results.json")
    console.print(f"wrote {OUT / 'results.json'}")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
