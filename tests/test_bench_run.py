"""bench/run.py's table and results file (their logic lives in devkit/bench_results.py) on
made-up rows: optional keys missing, goals on the value and on the ratio, NaN written as null."""

from __future__ import annotations

import json

from rich.console import Console

from devkit.bench_results import met, table, write

ROWS = [
    {"name": "only.value", "value": 3},  # no unit, goal, baseline or ratio
    {
        "name": "rate",
        "value": 720.0,
        "unit": "interactions/s (goal on ratio to noop)",
        "goal": ">= 0.5",
        "baseline": 3080.0,
        "ratio": 720.0 / 3080.0,
    },
    {"name": "p99", "value": 42.0, "unit": "ms", "goal": "<= 50"},
    {"name": "lost", "value": 0, "unit": "commands", "goal": "0"},
    {"name": "gone", "value": float("nan"), "unit": "ms", "goal": "<= 50", "ratio": float("nan")},
    {"name": "no.ratio", "value": 9, "unit": "x (goal on ratio)", "goal": ">= 1"},
]


def test_goals_apply_to_the_value_or_the_ratio():
    assert [met(r) for r in ROWS] == [None, False, True, True, False, False]
    assert met({"name": "fast", "value": 1, "unit": "ratio (goal on ratio)", "goal": ">= 0.7", "ratio": 0.9})


def test_the_table_shows_every_row_and_whether_it_met_its_goal():
    console = Console(width=200, record=True)
    console.print(table(ROWS, "benchmarks (quick, 1s)"))
    text = console.export_text()
    assert all(r["name"] in text for r in ROWS)
    assert text.count("yes") == 2 and text.count("NO") == 3


def test_the_results_file_has_every_key_and_no_nan(tmp_path):
    path = tmp_path / "bench" / "results.json"
    write(ROWS, path)
    results = json.loads(path.read_text())
    assert [r["name"] for r in results] == [r["name"] for r in ROWS]
    assert all(set(r) == {"name", "value", "unit", "goal", "baseline", "ratio"} for r in results)
    assert results[0] == {"name": "only.value", "value": 3, "unit": None, "goal": None, "baseline": None, "ratio": None}
    assert results[4]["value"] is None and results[4]["ratio"] is None
