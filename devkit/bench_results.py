"""The results of bench/run.py: whether a row meets its goal, the printed table and
var/bench/results.json. Apart from run.py so that tests can check it without the benchmarks.

A row is {name, value, unit, goal, baseline, ratio}; only name and value are sure to be there.
``goal`` is a comparison such as ">= 0.5" or "<= 50" (a bare "0" means "== 0", or null); it
applies to ``ratio`` when the unit says "goal on ratio", else to ``value``.
"""

from __future__ import annotations

import json
import math
import operator
from pathlib import Path

from rich.table import Table

KEYS = ("name", "value", "unit", "goal", "baseline", "ratio")
COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def met(row: dict) -> bool | None:
    """Whether the row meets its goal (None: no goal; False when there is nothing to compare)."""
    if not row.get("goal"):
        return None
    parts = row["goal"].split()
    op, target = parts if len(parts) == 2 else ("==", parts[0])
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


def table(rows: list[dict], title: str) -> Table:
    out = Table(*KEYS, "ok", title=title)
    for row in rows:
        ok = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[met(row)]
        out.add_row(
            row["name"],
            fmt(row.get("value")),
            row.get("unit") or "",
            row.get("goal") or "",
            fmt(row.get("baseline")),
            fmt(row.get("ratio")),
            ok,
        )
    return out


def write(rows: list[dict], path: Path) -> None:
    """Every row with all of KEYS (null where missing or NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = [{k: clean(row.get(k)) for k in KEYS} for row in rows]
    path.write_text(json.dumps(results, indent=2) + "\n")
