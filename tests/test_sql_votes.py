"""The SQL read models of agreement and activity (projections/relational.py), on both stores:
label_votes and rankings hold every submission the log holds, their latest labels and rankings
are what the consensus view holds, label_aggregates and a GROUP BY give its counts and means,
daily_activity adds up the submissions; all follow a rebuild and fill on an older store."""

from __future__ import annotations

import json
from collections import Counter
from uuid import UUID

import pytest
from litestar.testing import AsyncTestClient

from domain import events as ev
from infra.app import create_app
from infra.store import EventStore
from projections.consensus import ConsensusView
from projections.relational import VOTE_TOPICS
from projections.runner import ProjectionRunner
from projections.sql import live_query
from projections.storage import ViewStorage
from tests import test_sql_views as views
from tests.config import API_KEY, make_settings
from tests.histories import ALICE, BOB, ERIN, scripted_history


async def label(client, who: dict, message_id: str, labels: dict, report: bool = False) -> None:
    body = {"type": "text_labels", "user": who, "message_id": message_id, "text": "", "labels": labels}
    r = await client.post("/api/v1/text_labels/", json={**body, "is_report": report})
    assert r.status_code == 204, r.text


async def history(store_url, tmp_path) -> dict:
    """The scripted tree; free labels (alice twice over her review of RB: the last counts), erin's
    (then marked a spammer), a report by bob; bob (a reviewer) deleted."""
    async with AsyncTestClient(create_app(make_settings(store_url, tmp_path))) as client:
        client.headers["X-API-Key"] = API_KEY
        h = await scripted_history(client)
        await label(client, ALICE, h["RB"], {"spam": 0.0, "quality": 0.25})
        await label(client, ALICE, h["RB"], {"quality": 0.75})
        await label(client, ERIN, h["RB"], {"spam": 1.0, "quality": 0.0})
        await label(client, BOB, h["RD"], {"spam": 1.0}, report=True)
        assert (await client.delete(f"/api/v1/users/{h['uid']['bob']}")).status_code == 204
        r = await client.post(f"/api/v1/admin/users/{h['uid']['erin']}/spammer")
        assert r.status_code in (200, 204), r.text
    return h


def consensus(url: str) -> ConsensusView:
    store = EventStore(url)
    view = ConsensusView()
    runner = ProjectionRunner(store, [view])
    runner.restore()
    runner.catch_up()
    store.close()
    return view


def submissions(url: str) -> list[tuple[int, ev.Event]]:
    store = EventStore(url)
    page = store.read_topics(0, store.max_position(), VOTE_TOPICS)
    store.close()
    return [(n.id, ev.decode(n.state)) for n in page]


def rows(url: str, query: str) -> list[dict]:
    return live_query(url, query).to_dicts()


@pytest.fixture
async def made(store_url, tmp_path) -> dict:
    h = await history(store_url, tmp_path)
    views.caught_up(store_url)
    return h


async def test_votes_and_rankings_hold_every_submission(store_url, made):
    names, deleted = views.pseudonyms(store_url), UUID(made["uid"]["bob"])
    log = submissions(store_url)

    def annotator(user):
        return None if user == deleted else names.pseudonym(user)

    expected = {
        (p, name, str(e.message_id), value, annotator(e.user_id), e.kind)
        for p, e in log
        if isinstance(e, ev.LabelsSubmitted)
        for name, value in e.labels.items()
    }
    got = rows(store_url, "SELECT * FROM label_votes")
    assert {
        (r["position"], r["label"], r["message_id"], r["value"], r["annotator"], r["kind"]) for r in got
    } == expected
    assert {r["kind"] for r in got} == {"task", "free", "report"}
    assert any(r["annotator"] is None for r in got)  # bob reviewed and reported before he was deleted
    ranked = [(p, e) for p, e in log if isinstance(e, ev.RankingSubmitted)]
    got = rows(store_url, "SELECT * FROM rankings ORDER BY position")
    assert [(r["position"], r["parent_id"], r["annotator"], json.loads(r["ranked"])) for r in got] == [
        (p, str(e.parent_id), annotator(e.user_id), [str(m) for m in e.ranked_message_ids]) for p, e in ranked
    ]
    assert len(got) == 2


async def test_latest_labels_and_rankings_are_the_consensus_views(store_url, made):
    view, names = consensus(store_url), views.pseudonyms(store_url)
    deleted = UUID(made["uid"]["bob"])
    latest: dict = {}
    for r in rows(store_url, "SELECT * FROM label_votes WHERE latest"):
        latest.setdefault((UUID(r["message_id"]), r["annotator"]), {})[r["label"]] = r["value"]
    assert latest == {
        (mid, None if user == deleted else names.pseudonym(user)): labels
        for mid, facts in view.labels.rows.items()
        for user, labels in facts.by_user.items()
    }
    assert latest[UUID(made["RB"]), names.pseudonym(UUID(made["uid"]["alice"]))] == {"quality": 0.75}
    got = Counter((r["parent_id"], r["annotator"]) for r in rows(store_url, "SELECT * FROM rankings"))
    assert got == Counter((str(p), names.pseudonym(u)) for p, f in view.rankings.rows.items() for u, _ in f.rankings)


async def test_aggregates_and_a_group_by_give_the_consensus_counts(store_url, made):
    view = consensus(store_url)
    expected = {(mid, name): agg for mid in view.labels.rows for name, agg in view.label_aggregates(mid).items()}
    got = {(UUID(r["message_id"]), r["label"]): r for r in rows(store_url, "SELECT * FROM label_aggregates")}
    assert set(got) == set(expected) and len(got) > 4
    for key, agg in expected.items():
        assert got[key]["count"] == agg["count"] and got[key]["mean"] == pytest.approx(agg["value"]), key
    assert got[UUID(made["RB"]), "quality"]["mean"] != pytest.approx(0.0)  # erin (a spammer) left out

    by_label = Counter()
    for (_, name), agg in expected.items():
        by_label[name] += agg["count"]
    query = (
        "SELECT v.label, count(*) AS n FROM label_votes v LEFT JOIN users u ON u.id = v.annotator "
        "WHERE v.latest AND v.kind <> 'report' AND NOT coalesce(u.spammer, FALSE) GROUP BY v.label"
    )
    assert {r["label"]: r["n"] for r in rows(store_url, query)} == dict(by_label)


async def test_daily_activity_adds_up_the_submissions(store_url, made):
    log = submissions(store_url)
    got = rows(store_url, "SELECT * FROM daily_activity")
    day = made["log"][0]["event"]["at"][:10]  # the history takes well under a day (UTC)
    assert {str(r["day"])[:10] for r in got} == {day}
    assert {(r["lang"], r["role"]) for r in got} == {("en", "prompter"), ("en", "assistant")}
    totals = {k: sum(r[k] for r in got) for k in ("messages", "labels", "rankings")}
    labels = sum(1 for _, e in log if isinstance(e, ev.LabelsSubmitted) and e.labels)
    assert totals == {"messages": 4, "labels": labels, "rankings": 2}


async def test_votes_follow_a_rebuild_and_fill_on_an_older_store(store_url, tmp_path, made):
    tables = ("label_votes", "rankings", "label_aggregates", "daily_activity")
    before = {name: live_query(store_url, f"SELECT * FROM {name} ORDER BY 1, 2, 3") for name in tables}
    storage = ViewStorage(EventStore(store_url))
    with storage.datastore.transaction(commit=True) as c:  # the tables drift: a rebuild must set them right
        c.execute(storage.relational._sql("DELETE FROM {v} WHERE kind = 'task'", v="label_votes"))
        c.execute(storage.relational._sql("UPDATE {r} SET annotator = 'x'", r="rankings"))
    result = views.invoke(store_url, tmp_path, "project", "rebuild", "message_tree")
    assert result.exit_code == 0, result.output
    for name, frame in before.items():
        assert live_query(store_url, f"SELECT * FROM {name} ORDER BY 1, 2, 3").equals(frame), name

    # a store from before these tables (the first step's tables only) gets them filled from the log
    with storage.datastore.transaction(commit=True) as c:
        for name in ("daily_activity", "label_aggregates"):
            c.execute(storage.relational._sql("DROP VIEW {t}", t=name))
        for name in ("label_votes", "rankings"):
            c.execute(storage.relational._sql("DROP TABLE {t}", t=name))
    ViewStorage(EventStore(store_url))
    for name, frame in before.items():
        assert live_query(store_url, f"SELECT * FROM {name} ORDER BY 1, 2, 3").equals(frame), name
