"""Rebuilding views from the whole log beside the live ones, then switching them live
(``oasst project rebuild``; bench/projections.py times the same function)."""

from __future__ import annotations

import time
from collections.abc import Callable

from infra.store import EventStore
from projections.message_tree import MessageTreeView
from projections.runner import ProjectionRunner, all_views
from projections.storage import REBUILD_SUFFIX

SUFFIX = REBUILD_SUFFIX
# an interrupted rebuild starts over, so its rows are written once, at the end (a row is rewritten
# whole at every flush that finds it changed); only the history entries are written on the way,
# every FLUSH_EVERY events, so that they do not pile up in memory
FLUSH_EVERY = 250_000  # events


def view_names() -> list[str]:
    return [v.name for v in all_views()]


def rebuild(store: EventStore, names: list[str], progress: Callable[[int], None] | None = None) -> dict:
    """Build the named views anew beside the live ones, then switch each live atomically.
    Returns the events folded and the seconds of the fold and of the switches."""
    views = [v for v in all_views() if v.name in names]
    for view in views:
        view.suffix = SUFFIX
        for table in view.tables.values():
            table.every_row = True  # its rows are written whole, once, at the end
    runner = ProjectionRunner(store, views, flush_every=FLUSH_EVERY)
    runner.rows_at_end = True
    tree = runner.by_name.get(MessageTreeView.name)
    runner.submissions_of = tree  # the SQL tables are reloaded from memory when it switches live
    for view in views:
        runner.storage.drop(view.key)  # an earlier, interrupted rebuild
    started = time.perf_counter()
    events = runner.catch_up(progress=progress)
    folded = time.perf_counter() - started
    switched = {}
    for view in views:
        started = time.perf_counter()
        live = view.key.removesuffix(SUFFIX)
        tables = runner.storage.relational.whole_view(view, runner.take_submissions()) if view is tree else None
        runner.storage.rename(view.key, live, tables)
        switched[live] = time.perf_counter() - started
    return {"events": events, "fold_seconds": folded, "switch_seconds": switched}
