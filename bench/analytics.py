"""Analysts' numbers (issue #16), on PostgreSQL.

1. Catch-up of all views with the SQL read models on, against the same catch-up with their
   writes switched off, on two copies of one log in the same run. Goal: >= 0.8x.
2. Two analysts' questions over the live tables of a seeded store (``--scale oa/4``; quick:
   ``oa/100``; the cached store of bench/scale.py): label means by language, and the
   tree-state funnel. Best of three, read-only through ``oasst sql``'s path. Goal: <= 1 s each.
3. ``oasst report`` over the same store (in-process, as the command runs it): the page written,
   with the time split into the SQL aggregates, trust (the stored consensus view loaded and
   scored) and drawing the page. Goal: <= 30 s.
"""

from __future__ import annotations

import time
from unittest import mock

from bench import common, scale
from bench.common import row
from bench.projections import big_log
from infra.store import EventStore
from projections import report, report_data
from projections.relational import RelationalTables
from projections.runner import ProjectionRunner
from projections.sql import live_query

LABEL_MEANS_BY_LANG = """
    SELECT m.lang, v.label, avg(v.value) AS mean, count(*) AS votes
    FROM label_votes v JOIN messages m ON m.id = v.message_id
    WHERE v.latest AND v.kind <> 'report'
    GROUP BY m.lang, v.label ORDER BY m.lang, v.label"""
FUNNEL = "SELECT state, count(*) AS trees FROM trees GROUP BY state ORDER BY trees DESC"


def catch_up_rate(url: str, tables: bool) -> float:
    """Events/s of a catch-up of every view from an empty start (the tables' writes stubbed when off)."""
    store = EventStore(url)
    try:
        runner = ProjectionRunner(store)
        started = time.perf_counter()
        if tables:
            runner.catch_up()
        else:
            with mock.patch.object(RelationalTables, "write", lambda self, c, changes: None):
                runner.catch_up()
        return store.max_position() / (time.perf_counter() - started)
    finally:
        store.close()


def catch_up_pair(quick: bool) -> tuple[float, float]:
    with common.postgres_database("oasst_bench_analytics") as url:
        big_log(url, 100_000 if quick else 400_000, quick).close()
        template = url.rsplit("/", 1)[1]
        with common.database_copy(template) as off_url, common.database_copy(template) as on_url:
            off = catch_up_rate(off_url, tables=False)
            on = catch_up_rate(on_url, tables=True)
    return on, off


def best_of_three(url: str, query: str) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(3):
        started = time.perf_counter()
        rows = live_query(url, query).height
        times.append(time.perf_counter() - started)
    return min(times), rows


def report_time(url: str) -> dict[str, float]:
    """``oasst report`` of the live tables, timed as a whole and by part (trust timed on its own)."""
    out = common.OUT / "report.html"
    started = time.perf_counter()
    report.write_report(out, database_url=url)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    report_data.live_trust(url, set())
    trust = time.perf_counter() - started
    return {"whole": whole, "trust": trust, "mb": out.stat().st_size / 1e6}


def run(quick: bool) -> list[dict]:
    on, off = catch_up_pair(quick)
    common.console.print(f"catch-up with the SQL tables {on:,.0f} events/s, without {off:,.0f}: {on / off:.2f}x")
    size = "oa/100" if quick else "oa/4"
    name, record = scale.cached(size)
    url = common.database_url(name)
    means, mean_rows = best_of_three(url, LABEL_MEANS_BY_LANG)
    funnel, funnel_rows = best_of_three(url, FUNNEL)
    common.console.print(
        f"{size} ({record['events']:,} events): label means by language {means * 1000:.0f} ms ({mean_rows} rows), "
        f"tree-state funnel {funnel * 1000:.0f} ms ({funnel_rows} states)"
    )
    page = report_time(url)
    common.console.print(
        f"oasst report {page['whole']:.1f} s ({page['trust']:.1f} s of it trust), a {page['mb']:.1f} MB page"
    )
    return [
        row("analytics.catch_up_with_tables_events_per_s", round(on), "events/s (goal on ratio)", ">= 0.8", off),
        row("analytics.label_means_by_lang_s", round(means, 3), f"s on {size}", "<= 1"),
        row("analytics.tree_state_funnel_s", round(funnel, 3), f"s on {size}", "<= 1"),
        row("analytics.report_s", round(page["whole"], 2), f"s on {size}", "<= 30"),
        row("analytics.report_trust_part_s", round(page["trust"], 2), f"s on {size}"),
    ]
