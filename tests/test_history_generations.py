"""The history index under generations (projections/storage.py), on both stores: a rebuilt
history switched live answers as the old one did and leaves no rows of the old one behind, and
a store whose history rows were written before generations existed keeps answering."""

from __future__ import annotations

from collections import Counter

from infra.store import EventStore
from projections.runner import ProjectionRunner
from projections.storage import ViewStorage
from tests.test_sql_views import history, invoke

LIVE = "history@v1"


def all_rows(storage: ViewStorage) -> Counter:
    with storage.datastore.transaction(commit=False) as c:
        c.execute(storage._sql("SELECT view, entity, position FROM {history}"))
        return Counter((r["view"], str(r["entity"]), r["position"]) for r in c.fetchall())


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
        c.execute(storage._sql("UPDATE {history} SET view = ? WHERE view = ?"), (LIVE, generation))
        c.execute(storage._sql("DROP TABLE {generations}"))
    reopened = ViewStorage(EventStore(store_url))
    assert reopened.history(LIVE, h["P"]) == tree
    runner = ProjectionRunner(reopened.store)  # and it goes on writing under the same name
    runner.restore()
    runner.catch_up()
    assert reopened.history(LIVE, h["P"]) == tree
