"""Rebuilds and the history index under generations (projections/rebuild.py, storage.py), on
both stores: a rebuilt history switched live answers as the old one did and leaves no rows of the
old one behind; a store whose history rows were written before generations existed keeps
answering; a rebuild that writes history entries on the way and rows once at the end (the SQL
tables from the rebuilt view in memory) gives what the live views hold."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from psycopg.sql import SQL

from infra.app import create_app
from infra.store import EventStore
from projections import rebuild as rebuild_module
from projections.runner import ProjectionRunner, all_views
from projections.sql import live_query
from projections.storage import OWN_ROWS, OWN_TABLE, ViewStorage
from tests.config import API_KEY, make_settings
from tests.histories import BOB
from tests.test_sql_views import history, invoke

LIVE = "history@v1"


def all_rows(storage: ViewStorage) -> Counter:
    """Every stored history row by generation: PostgreSQL's in a table per generation (the
    tables named ``history_g…``), SQLite's in the shared table."""
    with storage.datastore.transaction(commit=False) as c:
        if not storage.pg:
            c.execute(storage._sql("SELECT view, entity, position FROM {history}"))
            return Counter((r["view"], str(r["entity"]), r["position"]) for r in c.fetchall())
        c.execute(storage._sql("SELECT count(*) AS n FROM {history}"))
        assert c.fetchone()["n"] == 0  # the shared table is SQLite's only
        c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
            (storage.datastore.schema, OWN_TABLE + "%"),
        )
        rows = Counter()
        for table in [r["tablename"] for r in c.fetchall()]:
            c.execute(SQL("SELECT entity, position FROM {}").format(storage._own(table)))
            rows.update((table, str(r["entity"]), r["position"]) for r in c.fetchall())
        return rows


def caught_up(url: str) -> ViewStorage:
    store = EventStore(url)
    runner = ProjectionRunner(store)
    runner.restore()
    runner.catch_up()
    return runner.storage


async def test_a_rebuilt_history_switches_live_and_the_old_rows_go(store_url, tmp_path):
    h = await history(store_url, tmp_path)
    storage = caught_up(store_url)
    before = Counter(storage.history_entries(LIVE))
    tree = storage.history(LIVE, h["P"])
    assert len(before) > 50 and len(tree) > 10

    result = invoke(store_url, tmp_path, "project", "rebuild", "history")
    assert result.exit_code == 0, result.output
    assert Counter(storage.history_entries(LIVE)) == before
    assert storage.history(LIVE, h["P"]) == tree
    # the table holds the live generation's rows only: the switched-out ones were deleted
    rows = all_rows(storage)
    assert sum(rows.values()) == sum(before.values()) and len({view for view, _, _ in rows}) == 1
    assert storage.history_entries(f"{LIVE}~rebuild") == []


async def test_history_rows_from_before_generations_keep_answering(store_url, tmp_path):
    h = await history(store_url, tmp_path)
    storage = caught_up(store_url)
    tree = storage.history(LIVE, h["P"])
    with storage.datastore.transaction(commit=True) as c:  # as a store from before generations
        generation = storage._generation(c, LIVE)
        if storage.pg:  # its rows back in the shared table
            c.execute(
                SQL("INSERT INTO {} SELECT %s, entity, position FROM {}").format(
                    storage.history_table, storage._own(generation)
                ),
                (LIVE,),
            )
            storage._drop_generation(c, generation)
        else:
            c.execute(storage._sql("UPDATE {history} SET view = ? WHERE view = ?"), (LIVE, generation))
        c.execute(storage._sql("DROP TABLE {generations}"))
    reopened = ViewStorage(EventStore(store_url))
    assert reopened.history(LIVE, h["P"]) == tree
    assert len({generation for generation, _, _ in all_rows(reopened)}) == 1  # moved to a table of its own
    runner = ProjectionRunner(reopened.store)  # and it goes on writing under the same name
    runner.restore()
    runner.catch_up()
    assert reopened.history(LIVE, h["P"]) == tree


async def test_a_rebuild_writing_history_on_the_way_and_rows_at_the_end_equals_the_live_views(
    store_url, tmp_path, monkeypatch
):
    await history(store_url, tmp_path)
    storage = caught_up(store_url)
    views = ProjectionRunner(storage.store)
    views.restore()
    rows = {v.key: normalized(v) for v in views.views}
    entries = Counter(storage.history_entries(LIVE))
    tables = {t: live_query(store_url, f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("messages", "label_votes")}

    monkeypatch.setattr(rebuild_module, "FLUSH_EVERY", 7)  # many history flushes on the way
    done = rebuild_module.rebuild(storage.store, rebuild_module.view_names())
    assert done["events"] == storage.store.max_position() and set(done["switch_seconds"]) == set(rows)
    rebuilt = ProjectionRunner(storage.store)
    rebuilt.restore()
    assert {v.key: normalized(v) for v in rebuilt.views} == rows
    assert Counter(storage.history_entries(LIVE)) == entries
    for table, before in tables.items():  # the SQL tables, reloaded from the rebuilt view in memory
        assert live_query(store_url, f"SELECT * FROM {table} ORDER BY 1, 2").equals(before), table


def normalized(view) -> dict:
    enc = msgspec.msgpack.Encoder(uuid_format="bytes")  # as views store rows
    return {(t.name, str(k)): enc.encode(r) for t in view.tables.values() for k, r in t.rows.items()}


async def test_a_history_query_racing_a_switch_asks_again(pg_url, tmp_path):
    """PostgreSQL: the generation a query looked up was switched out and its table dropped before
    the query read it; the query asks again and answers from the live generation."""
    h = await history(pg_url, tmp_path)
    storage = caught_up(pg_url)
    tree = storage.history(LIVE, h["P"])
    real, asked = storage._generation, []

    def switched_out_first(c, view, create=False):
        asked.append(view)
        return OWN_TABLE + "dropped" if len(asked) == 1 else real(c, view, create)

    storage._generation = switched_out_first
    assert storage.history(LIVE, h["P"]) == tree and len(asked) == 2


def own_row_tables(storage: ViewStorage) -> dict[str, int]:
    """PostgreSQL: every table of rebuilt view rows and its row count."""
    with storage.datastore.transaction(commit=False) as c:
        c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
            (storage.datastore.schema, OWN_ROWS + "%"),
        )
        tables = [r["tablename"] for r in c.fetchall()]
        counts = {}
        for table in tables:
            c.execute(SQL("SELECT count(*) AS n FROM {}").format(storage._own(table)))
            counts[table] = c.fetchone()["n"]
        return counts


async def test_rebuilt_view_rows_switch_live_and_keep_taking_writes(store_url, tmp_path):
    """A rebuilt view's rows become the live view's (on PostgreSQL by mapping the name to the
    table they were loaded into, the replaced rows dropped); the live views go on writing into
    them, a restore reads them, and a second rebuild leaves one table per view."""
    h = await history(store_url, tmp_path)
    storage = caught_up(store_url)
    for _ in range(2):
        rebuild_module.rebuild(storage.store, rebuild_module.view_names())
        if storage.pg:
            tables = own_row_tables(storage)
            assert len(tables) == len(rebuild_module.view_names()) and all(tables.values())
            with storage.datastore.transaction(commit=False) as c:
                c.execute(storage._sql("SELECT count(*) AS n FROM {rows}"))
                assert c.fetchone()["n"] == 0  # nothing left under the shared table
    async with AsyncTestClient(create_app(make_settings(store_url, tmp_path))) as client:
        client.headers["X-API-Key"] = API_KEY  # more events, whose rows the app's runner writes
        r = await client.post(f"/api/v1/messages/{h['P']}/emoji", json={"user": BOB, "emoji": "-1"})
        assert r.status_code == 202, r.text
    restored = ProjectionRunner(storage.store)
    restored.restore()
    restored.catch_up()  # (the app may stop a little behind the log's end)
    views = all_views()
    for view in views:  # a fold of the whole log, not stored
        view.suffix = "~check"
    fresh = ProjectionRunner(EventStore(store_url), views)
    fresh.fold([n for page in storage.store.pages(0) for n in page])
    assert {v.name: normalized(v) for v in restored.views} == {v.name: normalized(v) for v in fresh.views}
    assert storage.history(LIVE, h["P"])


async def test_a_history_write_failing_in_the_writer_thread_fails_the_rebuild(pg_url, tmp_path, monkeypatch):
    """PostgreSQL writes a rebuild's history entries in a thread while the fold goes on: a write
    that fails there fails the rebuild, and the live views stay as they were."""
    await history(pg_url, tmp_path)
    storage = caught_up(pg_url)
    entries = Counter(storage.history_entries(LIVE))
    real, calls = ViewStorage.write_history, []

    def fails_the_second_time(self, c, history):
        calls.append(len(history[1]) if history else 0)
        if len(calls) == 2:
            raise RuntimeError("disk gone")
        return real(self, c, history)

    monkeypatch.setattr(ViewStorage, "write_history", fails_the_second_time)
    monkeypatch.setattr(rebuild_module, "FLUSH_EVERY", 7)
    with pytest.raises(RuntimeError, match="disk gone"):
        rebuild_module.rebuild(storage.store, rebuild_module.view_names())
    monkeypatch.undo()
    assert len(calls) >= 2 and Counter(storage.history_entries(LIVE)) == entries
