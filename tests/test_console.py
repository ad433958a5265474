"""The moderators' console (issue #17) through Litestar's test client, on SQLite and PostgreSQL:
who may sign in, the session cookie, CSRF, the spam-mark preview (the command side's dry run and
its effect on the board), and that every action is an event with the moderator's client as actor."""

from __future__ import annotations

import re
from uuid import UUID

import pytest
from litestar.testing import AsyncTestClient

from console.pages import NOTICES
from devkit.simulator import seed_history_async, seed_tree_config
from infra.app import create_app
from tests.config import API_KEY, ROOT_TOKEN, make_settings

SEED = {"trees": 12, "users": 16, "seed": 3}


@pytest.fixture
async def app_client(store_url, tmp_path):
    """A seeded store (trees in every state, a spammer, reports) served in-process."""
    await seed_history_async(store_url, **SEED, api_key=API_KEY)
    settings = make_settings(store_url, tmp_path, tree=seed_tree_config(SEED["users"]))
    app = create_app(settings)
    async with AsyncTestClient(app) as c:
        position = app.state.service.model.position
        for _ in range(10):  # the views catch up with the seeded log
            r = await c.get("/api/v1/stats/", params={"min_position": position}, headers={"X-API-Key": API_KEY})
            if r.status_code == 200:
                break
        yield app, c


async def sign_in(c, key: str = API_KEY):
    return await c.post("/console/sign-in", data={"api_key": key, "next": "/console/"}, follow_redirects=False)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


async def head(c) -> int:
    r = await c.get("/api/v1/events", params={"after": 0, "limit": 10_000}, headers={"X-API-Key": API_KEY})
    return r.json()["last_position"]


async def test_pages_need_a_session_and_only_trusted_keys_open_one(app_client):
    _, c = app_client
    r = await c.get("/console/users", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in?next=/console/users")
    assert (await sign_in(c, "unknown-key")).status_code == 403
    r = await c.post(
        "/api/v1/admin/api_client",
        json={"description": "web", "frontend_type": "web"},
        headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
    )
    untrusted = r.json()
    r = await sign_in(c, untrusted)
    assert r.status_code == 403 and "not a trusted API client" in r.text and "set-cookie" not in r.headers
    r = await sign_in(c)
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and API_KEY not in cookie
    r = await c.get("/console/")
    assert r.status_code == 200 and "Tree-state funnel" in r.text
    await c.post("/console/sign-out")
    assert (await c.get("/console/", follow_redirects=False)).status_code == 303


async def test_every_page_reads(app_client):
    app, c = app_client
    await sign_in(c)
    view = app.state.runner.by_name["message_tree"]
    tree_id = next(t.id for t in view.trees.values() if t.state == "ready_for_export")
    user_id = next(u.id for u in view.users.values() if not u.spammer)
    pages = [
        "/console/",
        f"/console/trees/{tree_id}",
        f"/console/trees/{tree_id}?step=0",
        f"/console/trees/{tree_id}?at=1",
        f"/console/users/{user_id}",
        f"/console/messages/{tree_id}",
        "/console/users?q=a",
        "/console/flagged?show=all",
        "/console/boards?frame=week",
        "/console/snapshots",
        "/console/log?at=5",
    ]
    for path in pages:
        r = await c.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert "<script" not in r.text or path.startswith("/console/trees/")  # the slider's only
    r = await c.get("/console/users/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and "not found" in r.text


async def test_an_action_without_the_csrf_token_is_refused_and_appends_nothing(app_client):
    app, c = app_client
    await sign_in(c)
    flagged = (await c.get("/console/flagged")).text
    message_id = re.search(r'action="/console/flagged/([0-9a-f-]{36})/processed"', flagged).group(1)
    before = await head(c)
    for data in ({}, {"csrf_token": "forged"}):
        r = await c.post(f"/console/flagged/{message_id}/processed", data=data, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
    assert await head(c) == before
    r = await c.post(
        f"/console/flagged/{message_id}/processed", data={"csrf_token": csrf_of(flagged)}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/flagged?done=processed"
    assert await head(c) == before + 1
    r = await c.get("/api/v1/events", params={"after": before}, headers={"X-API-Key": API_KEY})
    (event,) = r.json()["events"]
    moderator = app.state.service.client_for_key(API_KEY)
    assert event["type"] == "flagged_message_processed" and event["event"]["api_client_id"] == str(moderator.id)


def _key(d: dict) -> tuple:
    return d["type"], d.get("message_id") or d.get("parent_id") or d.get("tree_id"), d.get("accepted")


async def _busiest_annotator(app) -> UUID:
    """A user (not a spammer) whose mark would re-decide the most."""
    service = app.state.service
    candidates = [u for u in service.model.users.values() if not u.spammer and u.exists]
    return max(candidates, key=lambda u: len(service.spam_mark_preview(str(u.id))["decisions"])).id


async def test_the_spam_mark_preview_is_what_the_mark_then_decides(app_client):
    app, c = app_client
    user_id = await _busiest_annotator(app)
    auth = {"X-API-Key": API_KEY}
    before = await head(c)
    r = await c.get(f"/api/v1/admin/users/{user_id}/spammer/preview", headers=auth)
    assert r.status_code == 200
    preview = r.json()
    assert preview["decisions"] and preview["spammer"] is True and preview["position"] == before
    assert await head(c) == before  # a dry run appends nothing
    await sign_in(c)
    page = (await c.get(f"/console/users/{user_id}?preview_mark=mark")).text
    assert 'id="preview"' in page and 'id="board-effect"' in page
    effect = re.findall(
        r'<a href="/console/users/([0-9a-f-]{36})">[^<]*</a></td><td class="num">[^<]*</td><td class="num">([^<]*)</td>',
        page,
    )
    r = await c.post(f"/console/users/{user_id}/spammer", data={"csrf_token": csrf_of(page)}, follow_redirects=False)
    assert r.status_code == 303
    marked = (await c.get(f"/console/users/{user_id}")).text  # waits for the views (read-your-writes)
    assert 'id="spammer"' in marked
    r = await c.get("/api/v1/events", params={"after": before}, headers=auth)
    emitted = [{"type": e["type"], **e["event"]} for e in r.json()["events"]]
    assert emitted[0]["type"] == "user_marked_spammer"
    decided = {_key(e) for e in emitted if e["type"] in ("message_reviewed", "ranks_computed")}
    assert {_key(d) for d in preview["decisions"] if d["type"] != "tree_state_changed"} == decided
    board = (await c.get("/api/v1/leaderboards/total", params={"max_count": 10_000}, headers=auth)).json()
    scores = {row["user_id"]: str(row["leader_score"]) for row in board["leaderboard"]}
    for uid, after in effect:  # the preview's "after" column is what the board now says
        assert scores.get(uid, "off the board") == after
    # undo
    r = await c.post(
        f"/console/users/{user_id}/unspammer", data={"csrf_token": csrf_of(marked)}, follow_redirects=False
    )
    assert r.status_code == 303
    assert 'id="spammer"' not in (await c.get(f"/console/users/{user_id}")).text
    after_undo = (await c.get(f"/api/v1/admin/users/{user_id}/spammer/preview", headers=auth)).json()
    assert {_key(d) for d in after_undo["decisions"]} == {_key(d) for d in preview["decisions"]}


async def test_the_preview_route_needs_a_trusted_client_and_a_known_user(app_client):
    _, c = app_client
    r = await c.get(
        "/api/v1/admin/users/00000000-0000-0000-0000-000000000000/spammer/preview", headers={"X-API-Key": API_KEY}
    )
    assert r.status_code == 404
    r = await c.get("/api/v1/admin/users/x/spammer/preview")
    assert r.status_code == 403


async def test_moderation_actions_are_events_of_the_moderator(app_client):
    app, c = app_client
    await sign_in(c)
    view = app.state.runner.by_name["message_tree"]
    tree_id = next(t.id for t in view.trees.values() if t.state == "growing")
    reply = next(m for m in view.messages.values() if m.parent_id and not m.deleted and m.tree_id == tree_id)
    page = (await c.get(f"/console/trees/{tree_id}")).text
    token = csrf_of(page)
    before = await head(c)
    steps = [
        (f"/console/trees/{tree_id}/halt", "halted", "tree_halted"),
        (f"/console/trees/{tree_id}/resume", "resumed", "tree_resumed"),
        (f"/console/messages/{reply.id}/delete", "deleted", "message_deleted"),
        (f"/console/messages/{reply.id}/undelete", "undeleted", "message_undeleted"),
    ]
    for path, notice, _ in steps:
        r = await c.post(path, data={"csrf_token": token})  # followed to the page, which says what happened
        assert r.status_code == 200 and NOTICES[notice] in r.text, (path, r.text[:300])
    r = await c.get("/api/v1/events", params={"after": before}, headers={"X-API-Key": API_KEY})
    types = [e["type"] for e in r.json()["events"]]
    assert [t for t in types if t in {s[2] for s in steps}] == [s[2] for s in steps]


async def test_snapshots_list_manifest_and_download(app_client):
    _, c = app_client
    r = await c.post("/api/v1/snapshots", json={}, headers={"X-API-Key": API_KEY})
    assert r.status_code == 201, r.text
    manifest = r.json()
    await sign_in(c)
    listing = (await c.get("/console/snapshots")).text
    assert f'href="/console/snapshots/{manifest["id"]}"' in listing
    page = (await c.get(f"/console/snapshots/{manifest['id']}")).text
    for name in manifest["files"]:
        assert f'href="/console/snapshots/{manifest["id"]}/files/{name}"' in page
    r = await c.get(f"/console/snapshots/{manifest['id']}/files/messages.parquet")
    assert r.status_code == 200 and len(r.content) == manifest["files"]["messages.parquet"]["bytes"]
    assert (await c.get(f"/console/snapshots/{manifest['id']}/files/nope")).status_code == 404


async def test_a_users_page_shows_the_trust_the_api_gives_with_its_reasons(app_client):
    app, c = app_client
    await sign_in(c)
    r = await c.get("/api/v1/trust", params={"max_count": 1000}, headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text
    scores = r.json()
    scores = scores["items"] if isinstance(scores, dict) else scores
    assert len(scores) > 5
    for s in scores:
        page = (await c.get(f"/console/users/{s['user_id']}")).text
        assert f'id="trust">{s["score"]}<' in page and s["policy"] in page
        assert all(reason in page for reason in s["reasons"]) and ('id="reasons"' in page) == bool(s["reasons"])
