"""The leaderboards as SQL (projections/relational_boards.py), on both stores: the SQL view
``leaderboards`` gives every frame's scores and stats as ``GET /leaderboards/{frame}`` does, a
spammer leaves it, and ``user_hours`` follows a rebuild of the leaderboard view and fills on an
older store."""

from __future__ import annotations

from uuid import UUID

from litestar.testing import AsyncTestClient

from infra.app import create_app
from infra.store import EventStore
from projections.leaderboard import STATS, TIME_FRAMES
from projections.runner import ProjectionRunner
from projections.sql import live_query
from projections.storage import ViewStorage
from tests.config import API_KEY, make_settings
from tests.histories import scripted_history
from tests.test_sql_views import invoke

BOARD = "SELECT * FROM leaderboards WHERE frame = '{}' ORDER BY user_id"


async def http_boards(client, pseudonym) -> dict[str, dict[str, dict]]:
    """Every frame's board over HTTP: frame -> pseudonym -> score, rank and stats."""
    boards = {}
    for frame in TIME_FRAMES:
        r = await client.get(f"/api/v1/leaderboards/{frame}", params={"max_count": 1000})
        assert r.status_code == 200, r.text
        rows = r.json()["leaderboard"]
        boards[frame] = {pseudonym(UUID(row["user_id"])): row for row in rows}
    return boards


def check_board(url: str, frame: str, http: dict[str, dict]) -> None:
    rows = live_query(url, BOARD.format(frame)).to_dicts()
    assert {r["user_id"] for r in rows} == set(http), frame
    for r in rows:
        want = http[r["user_id"]]
        assert r["score"] == want["leader_score"], (frame, r)
        assert {s: r[s] for s in STATS} == {s: want[s] for s in STATS}, (frame, r)
        # rank(): 1 + how many score more (HTTP numbers ties in id order, so compare the scores only)
        assert r["rank"] == 1 + sum(1 for o in rows if o["score"] > r["score"])


def caught_up(url: str) -> None:
    """Every stored view (and so the tables) folded to the log's end: an app may stop a little behind."""
    store = EventStore(url)
    runner = ProjectionRunner(store)
    runner.restore()
    runner.catch_up()
    store.close()


async def test_leaderboards_in_sql_are_the_http_boards(store_url, tmp_path):
    settings = make_settings(store_url, tmp_path)
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = API_KEY
        await scripted_history(client)  # made now: inside every frame
    pseudonym = ViewStorage(EventStore(store_url)).relational.pseudonym
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = API_KEY
        before = await http_boards(client, pseudonym)
    caught_up(store_url)
    scores = {frame: {u: row["leader_score"] for u, row in board.items()} for frame, board in before.items()}
    assert len(scores["day"]) >= 3 and scores["day"] == scores["total"]
    for frame in TIME_FRAMES:
        check_board(store_url, frame, before[frame])

    # a spammer leaves the board, in SQL as over HTTP
    spammer = max(before["total"].values(), key=lambda row: row["leader_score"])
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = API_KEY
        r = await client.post(f"/api/v1/admin/users/{spammer['user_id']}/spammer")
        assert r.status_code == 204, r.text
        after = await http_boards(client, pseudonym)
    caught_up(store_url)
    assert pseudonym(UUID(spammer["user_id"])) not in after["total"]
    for frame in TIME_FRAMES:
        check_board(store_url, frame, after[frame])


async def test_user_hours_follow_a_rebuild_and_fill_on_an_older_store(store_url, tmp_path):
    async with AsyncTestClient(create_app(make_settings(store_url, tmp_path))) as client:
        client.headers["X-API-Key"] = API_KEY
        await scripted_history(client)
    caught_up(store_url)
    hours = "SELECT * FROM user_hours ORDER BY user_id, hour"
    before = live_query(store_url, hours)
    assert before.height >= 3 and before["hour"].n_unique() >= 1
    storage = ViewStorage(EventStore(store_url))
    with storage.datastore.transaction(commit=True) as c:  # drift: a rebuild must set it right
        c.execute(storage.relational._sql("DELETE FROM {h} WHERE labels_full > 0", h="user_hours"))
    assert live_query(store_url, hours).height < before.height
    result = invoke(store_url, tmp_path, "project", "rebuild", "leaderboard")
    assert result.exit_code == 0, result.output
    assert live_query(store_url, hours).equals(before)

    # a rebuild of the message-tree view leaves user_hours alone (each table follows one view)
    result = invoke(store_url, tmp_path, "project", "rebuild", "message_tree")
    assert result.exit_code == 0, result.output
    assert live_query(store_url, hours).equals(before)

    # a store whose leaderboard view was stored before the table existed gets it filled
    with storage.datastore.transaction(commit=True) as c:
        c.execute(storage.relational._sql("DROP TABLE {h}" + (" CASCADE" if storage.pg else ""), h="user_hours"))
    ViewStorage(EventStore(store_url))
    assert live_query(store_url, hours).equals(before)
