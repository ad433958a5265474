"""The SQL read models (projections/relational.py) and ``oasst sql``, on both stores: after a
history made over HTTP the tables hold what the message-tree view holds, users under stable
pseudonyms; they follow a rebuild; ``oasst sql`` answers read-only, live or over a snapshot."""

from __future__ import annotations

import json
import re
from uuid import UUID

import msgspec
import polars as pl
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from infra.app import create_app
from infra.cli import app as cli
from infra.store import EventStore
from projections.message_tree import MessageTreeView
from projections.relational import Message, Tree, User
from projections.runner import ProjectionRunner
from projections.snapshot import create_snapshot
from projections.sql import live_query
from projections.storage import ViewStorage
from tests.config import API_KEY, make_settings
from tests.histories import BOB, scripted_history

GROUP_BY_LANG = "SELECT lang, count(*) AS n FROM messages GROUP BY lang ORDER BY lang"


async def history(store_url, tmp_path) -> dict:
    """The scripted tree, a +1, dave deleted and erin marked a spammer; leaving the app flushes the views."""
    async with AsyncTestClient(create_app(make_settings(store_url, tmp_path))) as client:
        client.headers["X-API-Key"] = API_KEY
        h = await scripted_history(client)
        r = await client.post(f"/api/v1/messages/{h['P']}/emoji", json={"user": BOB, "emoji": "+1"})
        assert r.status_code == 202, r.text
        assert (await client.delete(f"/api/v1/users/{h['uid']['dave']}")).status_code == 204
        r = await client.post(f"/api/v1/admin/users/{h['uid']['erin']}/spammer")
        assert r.status_code in (200, 204), r.text
    return h


def caught_up(url: str) -> MessageTreeView:
    """The stored message-tree view, caught up with the log's end (the app may stop a little behind)."""
    store = EventStore(url)
    view = MessageTreeView()
    runner = ProjectionRunner(store, [view])
    runner.restore()
    runner.catch_up()
    assert view.position == store.max_position()
    store.close()
    return view


def pseudonyms(url: str) -> ViewStorage:
    return ViewStorage(EventStore(url)).relational


def table(url: str, name: str, row_type) -> dict:
    """A live table's rows as typed structs by id (SQLite's 0/1, ISO text and JSON text converted)."""
    rows = live_query(url, f"SELECT * FROM {name}").to_dicts()
    rows = [{k: json.loads(v) if k == "emojis" else v for k, v in r.items()} for r in rows]
    typed = [msgspec.convert(r, row_type, strict=False) for r in rows]
    return {r.id: r for r in typed}


def invoke(store_url, tmp_path, *args):
    env = {"OASST_DATABASE_URL": store_url, "OASST_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env)


async def test_tables_hold_what_the_view_holds(store_url, tmp_path):
    h = await history(store_url, tmp_path)
    view, names = caught_up(store_url), pseudonyms(store_url)
    dave, erin = (view.users[UUID(h["uid"][n])] for n in ("dave", "erin"))
    messages = table(store_url, "messages", Message)
    assert set(messages) == set(view.messages.rows) and len(messages) == 4
    for m in view.messages.values():
        row = messages[m.id]
        author = None if m.user_id == dave.id else names.pseudonym(m.user_id)
        assert (row.tree_id, row.parent_id, row.role, row.lang, row.depth, row.author) == (
            m.tree_id,
            m.parent_id,
            m.role,
            m.lang,
            m.depth,
            author,
        )
        assert (row.created, row.deleted, row.synthetic, row.review_count, row.review_result, row.rank) == (
            m.created_date,
            m.deleted,
            m.synthetic,
            m.review_count,
            m.review_result,
            m.rank,
        )
        assert row.plus_one == len(m.emojis.get("+1", ())) and row.emojis.get("+1", 0) == row.plus_one
    assert messages[UUID(h["P"])].plus_one == 1

    trees = table(store_url, "trees", Tree)
    assert {(t.id, t.state, t.lang, t.size, t.created) for t in trees.values()} == {
        (t.id, t.state, t.lang, len(t.message_ids), t.created_date) for t in view.trees.values()
    }
    assert [t.state for t in trees.values()] == ["ready_for_export"]

    users = table(store_url, "users", User)
    assert set(users) == {names.pseudonym(u.id) for u in view.users.values()}
    for u in view.users.values():
        row = users[names.pseudonym(u.id)]
        authored = 0 if u.deleted else sum(m.user_id == u.id for m in view.messages.values())
        assert (row.created, row.messages, row.enabled, row.deleted, row.spammer) == (
            u.created_date,
            authored,
            u.enabled,
            u.deleted,
            u.spammer,
        )
    # a deleted user is anonymised: the row says so, their message lost its author; a spammer is flagged, not gone
    assert users[names.pseudonym(dave.id)].deleted and users[names.pseudonym(dave.id)].messages == 0
    assert users[names.pseudonym(erin.id)].spammer and users[names.pseudonym(erin.id)].messages == 1
    # pseudonyms: 16 hex chars, not the ids, the same for another reader of this store
    assert all(re.fullmatch("[0-9a-f]{16}", p) for p in users)
    assert not {p for p in users} & {u.id.hex[:16] for u in view.users.values()}
    assert pseudonyms(store_url).pseudonym(dave.id) == names.pseudonym(dave.id)
    columns = (
        live_query(store_url, "SELECT * FROM users LIMIT 0").columns
        + live_query(store_url, "SELECT * FROM messages LIMIT 0").columns
    )
    assert not {"username", "display_name", "text", "user_id"} & set(columns)


async def test_tables_follow_a_rebuild_and_fill_on_an_older_store(store_url, tmp_path):
    await history(store_url, tmp_path)
    caught_up(store_url)
    before = {
        name: live_query(store_url, f"SELECT * FROM {name} ORDER BY id") for name in ("messages", "trees", "users")
    }
    storage = ViewStorage(EventStore(store_url))
    with storage.datastore.transaction(commit=True) as c:  # the tables drift: a rebuild must set them right
        c.execute(storage.relational._sql("DELETE FROM {m} WHERE depth > 0", m="messages"))
        c.execute(storage.relational._sql("UPDATE {t} SET state = 'aborted_low_grade'", t="trees"))
    result = invoke(store_url, tmp_path, "project", "rebuild", "message_tree")
    assert result.exit_code == 0, result.output
    for name, frame in before.items():
        assert live_query(store_url, f"SELECT * FROM {name} ORDER BY id").equals(frame), name

    # a store whose view was stored before the tables existed gets them filled from its rows
    with storage.datastore.transaction(commit=True) as c:
        for name in ("messages", "trees", "users"):
            c.execute(storage.relational._sql("DROP TABLE {t}" + (" CASCADE" if storage.pg else ""), t=name))
    ViewStorage(EventStore(store_url))
    for name, frame in before.items():
        assert live_query(store_url, f"SELECT * FROM {name} ORDER BY id").equals(frame), name


async def test_oasst_sql_answers_read_only(store_url, tmp_path):
    await history(store_url, tmp_path)
    caught_up(store_url)
    result = invoke(store_url, tmp_path, "sql", GROUP_BY_LANG)
    assert result.exit_code == 0, result.output
    assert re.search(r"en\s*│\s*4", result.output), result.output

    for suffix, read in ((".csv", pl.read_csv), (".parquet", pl.read_parquet)):
        out = tmp_path / f"answer{suffix}"
        result = invoke(store_url, tmp_path, "sql", GROUP_BY_LANG, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert read(out).to_dicts() == [{"lang": "en", "n": 4}]

    for write in (
        "INSERT INTO trees (id, state, lang, size, created) SELECT id, state, lang, 0, created FROM trees",
        "DELETE FROM messages",
        "UPDATE users SET spammer = true",
    ):
        result = invoke(store_url, tmp_path, "sql", write)
        assert result.exit_code == 1 and "query failed" in result.output, (write, result.output)
        assert re.search("read-only transaction|readonly database|is a view", result.output), result.output
    assert live_query(store_url, "SELECT count(*) AS n FROM messages").item() == 4
    assert live_query(store_url, "SELECT count(*) AS n FROM users WHERE spammer").item() == 1


async def test_oasst_sql_over_a_snapshot(store_url, tmp_path):
    await history(store_url, tmp_path)
    manifest = create_snapshot(make_settings(store_url, tmp_path))
    out = tmp_path / "pinned.parquet"
    result = invoke(store_url, tmp_path, "sql", GROUP_BY_LANG, "--snapshot", manifest["id"], "--out", str(out))
    assert result.exit_code == 0, result.output
    messages = pl.read_parquet(tmp_path / "snapshots" / manifest["id"] / "messages.parquet")
    expected = messages.group_by("lang").agg(pl.len().alias("n")).sort("lang")
    assert pl.read_parquet(out).cast(expected.schema).equals(expected) and len(messages) > 0
    result = invoke(store_url, tmp_path, "sql", "SELECT count(*) FROM sft", "--snapshot", manifest["id"])
    assert result.exit_code == 0, result.output
