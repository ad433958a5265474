"""OA's write-side routes and fields added after April 2023 (issue #14), on both stores:
edits and revision history, deleting and purging a user's messages, the flagged-message
queue, merging users, renaming, message search. Every answer is checked against OA's head
contract (tests/data/oa_backend_openapi_head.json); every change is an event in the log,
and the views and the write model follow it as a fresh fold of the log would."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain import events as ev
from projections.runner import all_views
from tests.config import ROOT_TOKEN
from tests.frontend import do_task, events, user
from tests.histories import scripted_history
from tests.models import fold, summary
from tests.oa_contract import conforms

ALICE, BOB, CAROL, DAVE, MOD = (user(n) for n in ("alice", "bob", "carol", "dave", "mod"))


# --- helpers -------------------------------------------------------------------------------------


async def position(client) -> int:
    r = await client.get("/api/v1/events", params={"after": 0, "limit": 10000})
    return r.json()["last_position"]


async def read(client, path: str, status: int = 200, headers: dict | None = None, **params):
    """A read once the views have folded the whole log."""
    r = await client.get(path, params={"min_position": await position(client), **params}, headers=headers)
    assert r.status_code == status, (path, r.status_code, r.text)
    return r.json()


async def untrusted_key(client) -> dict:
    spec = {"description": "web", "frontend_type": "web", "trusted": False}
    r = await client.post("/api/v1/admin/api_client", json=spec, headers={"Authorization": f"Bearer {ROOT_TOKEN}"})
    assert r.status_code == 200, r.text
    return {"X-API-Key": r.json()}


async def refused(client, method: str, url: str, status: int, code: int, **kw) -> None:
    """Refused with OA's error body, and nothing appended."""
    before = await position(client)
    r = await client.request(method, url, **kw)
    assert (r.status_code, r.json()["error_code"]) == (status, code), (method, url, r.text)
    assert await position(client) == before


async def new_events(client, after: int, kind: str) -> list[dict]:
    return [e for e in await events(client, after) if e["type"] == kind]


async def follows_a_fresh_fold(client) -> None:
    """The live write model and views equal the ones a fold of the whole log makes."""
    app = client.app
    await read(client, "/api/v1/messages/cursor")  # the views have folded everything
    settings = app.state.settings
    assert summary(app.state.service.model) == summary(fold(settings.database_url, settings))
    store = app.state.service.store
    fresh, after = all_views(), 0
    while page := store.read_stored(after, 10_000):
        for n in page:
            for view in fresh:
                view.apply(n.id, ev.decode_summary(n.state))
        after = page[-1].id
    enc = msgspec.msgpack.Encoder(uuid_format="bytes")  # as views store rows
    for live, new in zip(app.state.runner.views, fresh, strict=True):
        rows = {name: {str(k): enc.encode(r) for k, r in t.rows.items()} for name, t in live.tables.items()}
        assert rows == {name: {str(k): enc.encode(r) for k, r in t.rows.items()} for name, t in new.tables.items()}, (
            live.name
        )


# --- edits and revision history ------------------------------------------------------------------


async def test_an_edit_is_a_revision_and_the_history_lists_them(client):
    await do_task(client, ALICE, "initial_prompt")
    log = await events(client)
    prompt = next(e for e in log if e["type"] == "initial_prompt_submitted")
    mid, original = prompt["event"]["message_id"], prompt["event"]["text"]
    alice_id = prompt["event"]["user_id"]
    url = f"/api/v1/messages/{mid}"
    m = conforms(await read(client, url), "/api/v1/messages/{message_id}", "get")
    assert m["edited"] is False
    assert await read(client, url + "/history") == []  # OA: no revision before the first edit

    await refused(
        client,
        "POST",
        url + "/edit",
        403,
        2,
        json={"user": MOD, "new_content": "x"},
        headers=await untrusted_key(client),
    )
    await refused(client, "POST", url + "/edit", 400, 1010, json={"user": MOD, "new_content": "  "})
    await refused(client, "POST", url + "/edit", 400, 1008, json={"user": MOD, "new_content": "x" * 2001})
    await refused(
        client,
        "POST",
        "/api/v1/messages/00000000-0000-4000-8000-000000000000/edit",
        404,
        2001,
        json={"user": MOD, "new_content": "x"},
    )

    before = await position(client)
    r = await client.post(url + "/edit", json={"user": MOD, "new_content": "better wording"})
    assert r.status_code == 200, r.text
    r = await client.post(url + "/edit", json={"user": ALICE, "new_content": "best wording"})
    assert r.status_code == 200, r.text
    edits = await new_events(client, before, "message_edited")
    mod_id = next(
        e["event"]["subject_id"]
        for e in await events(client)
        if e["type"] == "user_seen" and e["event"]["username"] == "mod"
    )
    assert [(e["event"]["message_id"], e["event"]["text"], e["event"]["user_id"]) for e in edits] == [
        (mid, "better wording", mod_id),
        (mid, "best wording", alice_id),
    ]

    m = conforms(await read(client, url), "/api/v1/messages/{message_id}", "get")
    assert (m["text"], m["edited"]) == ("best wording", True)
    history = conforms(
        await read(client, url + "/history", headers={"x-oasst-user": "local:mod"}),
        "/api/v1/messages/{message_id}/history",
        "get",
    )
    assert [(h["text"], h["user_id"], h["message_id"], h["user_is_author"]) for h in history] == [
        (original, alice_id, mid, False),
        ("better wording", mod_id, mid, True),
        ("best wording", alice_id, mid, False),
    ]
    assert history[0]["created_date"] == m["created_date"]  # the original keeps its date
    assert [h["id"] for h in history[1:]] == [e["event"]["id"] for e in edits]
    # every OA Message answer says whether it was edited
    page = conforms(await read(client, "/api/v1/messages/cursor"), "/api/v1/messages/cursor", "get")
    assert [x["edited"] for x in page["items"]] == [True]
    tree = conforms(await read(client, url + "/tree"), "/api/v1/messages/{message_id}/tree", "get")
    assert tree["messages"][0]["edited"] is True
    await follows_a_fresh_fold(client)


# --- a user's messages ----------------------------------------------------------------------------


async def test_deleting_all_of_a_users_messages(client):
    h = await scripted_history(client)
    bob, dave = h["uid"]["bob"], h["uid"]["dave"]
    await refused(client, "DELETE", f"/api/v1/users/{bob}/messages", 403, 2, headers=await untrusted_key(client))
    await refused(client, "DELETE", "/api/v1/users/00000000-0000-4000-8000-000000000000/messages", 404, 4002)
    await refused(client, "DELETE", "/api/v1/frontend_users/local/nobody/messages", 404, 4002)

    before = await position(client)
    r = await client.delete(f"/api/v1/users/{bob}/messages")
    assert r.status_code == 204 and not r.content
    deleted = await new_events(client, before, "message_deleted")
    assert [(e["event"]["message_id"], e["event"]["reason"]) for e in deleted] == [(h["RB"], "user_messages_deleted")]
    assert (await read(client, f"/api/v1/messages/{h['RB']}"))["deleted"] is True
    assert await read(client, f"/api/v1/users/{bob}/messages") == []
    assert [m["id"] for m in await read(client, f"/api/v1/users/{bob}/messages", include_deleted="true")] == [h["RB"]]
    again = await position(client)
    assert (await client.delete(f"/api/v1/users/{bob}/messages")).status_code == 204
    assert await position(client) == again  # already deleted: nothing appended

    r = await client.delete("/api/v1/frontend_users/local/dave/messages")
    assert r.status_code == 204
    assert [e["event"]["message_id"] for e in await new_events(client, again, "message_deleted")] == [h["RD"]]
    assert await read(client, f"/api/v1/users/{dave}/messages") == []
    await follows_a_fresh_fold(client)


async def test_purging_a_users_messages(client):
    h = await scripted_history(client)
    alice, bob = h["uid"]["alice"], h["uid"]["bob"]
    msgs = h["msgs"]
    under_rb = [m for m, e in msgs.items() if m == h["RB"] or e.get("parent_id") == h["RB"]]
    url = f"/api/v1/admin/purge_user/{bob}/messages"
    await refused(client, "POST", url, 403, 2, headers=await untrusted_key(client))
    await refused(client, "POST", "/api/v1/admin/purge_user/00000000-0000-4000-8000-000000000000/messages", 404, 4002)

    before = await position(client)
    preview = conforms((await client.post(url)).json(), "/api/v1/admin/purge_user/{user_id}/messages", "post")
    assert await position(client) == before  # a preview appends nothing
    assert preview["preview"] is True
    assert (preview["before"]["all"], preview["before"]["message_trees"]) == (4, 1)
    assert preview["after"]["all"] == 4 - len(under_rb)  # OA removes the replies and what is below them

    r = await client.post(url, params={"preview": "false"})
    assert r.status_code == 200, r.text
    done = conforms(r.json(), "/api/v1/admin/purge_user/{user_id}/messages", "post")
    assert done["preview"] is False and done["after"] == preview["after"]
    assert [
        (e["event"]["message_id"], e["event"]["reason"]) for e in await new_events(client, before, "message_deleted")
    ] == [(h["RB"], "user_messages_purged")]
    assert (await read(client, f"/api/v1/messages/{h['RB']}"))["deleted"] is True

    # the prompt stays unless purge_initial_prompts; dates narrow what is picked
    url = f"/api/v1/admin/purge_user/{alice}/messages"
    kept = await position(client)
    for params in (
        {"preview": "false"},
        {"preview": "false", "purge_initial_prompts": "true", "max_date": "2000-01-01T00:00:00"},
    ):
        r = await client.post(url, params=params)
        assert r.status_code == 200 and r.json()["after"]["all"] == r.json()["before"]["all"], r.text
    assert await position(client) == kept
    r = await client.post(
        url, params={"preview": "false", "purge_initial_prompts": "true", "min_date": "2000-01-01T00:00:00Z"}
    )
    assert r.status_code == 200 and (r.json()["after"]["all"], r.json()["after"]["message_trees"]) == (0, 0)
    assert [e["event"]["message_id"] for e in await new_events(client, kept, "message_deleted")] == [h["P"]]
    assert (await read(client, f"/api/v1/messages/{h['RD']}"))["deleted"] is True  # below the deleted prompt
    await follows_a_fresh_fold(client)


# --- the flagged-message queue ----------------------------------------------------------------------


async def test_reports_and_red_flags_fill_the_moderation_queue(client):
    h = await scripted_history(client)
    untrusted = await untrusted_key(client)
    for url in ("/api/v1/admin/flagged_messages?max_count=10", "/api/v1/admin/flagged_messages/cursor"):
        await refused(client, "GET", url, 403, 2, headers=untrusted)
    await refused(client, "POST", f"/api/v1/admin/flagged_messages/{h['RB']}/processed", 403, 2, headers=untrusted)
    assert await read(client, "/api/v1/admin/flagged_messages", max_count=10) == []

    report = {
        "type": "text_labels",
        "user": CAROL,
        "message_id": h["RB"],
        "text": "rude",
        "labels": {"spam": 1.0},
        "is_report": True,
    }
    assert (await client.post("/api/v1/text_labels/", json=report)).status_code == 204
    r = await client.post(f"/api/v1/messages/{h['RD']}/emoji", json={"user": ALICE, "emoji": "red_flag", "op": "add"})
    assert r.status_code == 202, r.text
    listed = conforms(
        await read(client, "/api/v1/admin/flagged_messages", max_count=10), "/api/v1/admin/flagged_messages", "get"
    )
    assert [(f["message_id"], f["processed"]) for f in listed] == [(h["RB"], False), (h["RD"], False)]
    assert [f["message_id"] for f in await read(client, "/api/v1/admin/flagged_messages", max_count=1)] == [h["RB"]]

    cursor = "/api/v1/admin/flagged_messages/cursor"
    first = conforms(await read(client, cursor, max_count=1), cursor, "get")
    assert ([f["message_id"] for f in first["items"]], first["prev"], first["order"]) == ([h["RB"]], None, "asc")
    second = conforms(await read(client, cursor, max_count=1, after=first["next"]), cursor, "get")
    assert [f["message_id"] for f in second["items"]] == [h["RD"]] and second["prev"] == h["RD"]
    newest = await read(client, cursor, max_count=1, desc="true")
    assert [f["message_id"] for f in newest["items"]] == [h["RD"]]

    await refused(client, "POST", f"/api/v1/admin/flagged_messages/{h['P']}/processed", 404, 2001)
    before = await position(client)
    r = await client.post(f"/api/v1/admin/flagged_messages/{h['RB']}/processed")
    assert r.status_code == 200, r.text
    done = conforms(r.json(), "/api/v1/admin/flagged_messages/{message_id}/processed", "post")
    assert (done["message_id"], done["processed"], done["created_date"]) == (h["RB"], True, listed[0]["created_date"])
    assert [e["event"]["message_id"] for e in await new_events(client, before, "flagged_message_processed")] == [
        h["RB"]
    ]
    again = await position(client)
    assert (await client.post(f"/api/v1/admin/flagged_messages/{h['RB']}/processed")).json() == done
    assert await position(client) == again  # processed once
    assert [f["processed"] for f in await read(client, "/api/v1/admin/flagged_messages", max_count=10)] == [True, False]

    # a new report puts it back, unprocessed, with its date
    report["user"] = DAVE
    assert (await client.post("/api/v1/text_labels/", json=report)).status_code == 204
    listed = await read(client, "/api/v1/admin/flagged_messages", max_count=10)
    assert [(f["message_id"], f["processed"]) for f in listed] == [(h["RD"], False), (h["RB"], False)]
    await follows_a_fresh_fold(client)


# --- merging users ---------------------------------------------------------------------------------


async def test_merging_users_moves_their_messages_and_scores(client):
    h = await scripted_history(client)
    bob, dave, carol = h["uid"]["bob"], h["uid"]["dave"], h["uid"]["carol"]
    url = "/api/v1/admin/merge_users"
    body = {"destination_user_id": bob, "source_user_ids": [dave, bob]}
    await refused(client, "POST", url, 403, 2, json=body, headers=await untrusted_key(client))
    await refused(
        client, "POST", url, 404, 4002, json={**body, "source_user_ids": ["00000000-0000-4000-8000-000000000000"]}
    )
    await refused(client, "POST", url, 422, 102, json={**body, "destination_user_id": "not-an-id"})
    board = await read(client, "/api/v1/leaderboards/total")
    score = {r["user_id"]: r for r in board["leaderboard"]}

    before = await position(client)
    r = await client.post(url, json=body)
    assert r.status_code == 204 and not r.content, r.text
    merged = await new_events(client, before, "users_merged")
    assert [(e["event"]["subject_id"], e["event"]["source_user_ids"]) for e in merged] == [(bob, [dave])]

    assert (await read(client, f"/api/v1/messages/{h['RD']}"))["user_id"] == bob
    assert sorted(m["id"] for m in await read(client, f"/api/v1/users/{bob}/messages")) == sorted([h["RB"], h["RD"]])
    await read(client, f"/api/v1/users/{dave}", status=404)
    board = await read(client, "/api/v1/leaderboards/total")
    rows = {r["user_id"]: r for r in board["leaderboard"]}
    assert dave not in rows
    for stat in ("replies_assistant", "accepted_replies_assistant", "reply_ranked_1", "reply_ranked_2", "leader_score"):
        assert rows[bob][stat] == score[bob][stat] + score[dave][stat], stat
    stats = await read(client, f"/api/v1/users/{bob}/stats/total")
    assert stats["replies_assistant"] == 2
    await follows_a_fresh_fold(client)

    # dave's login comes back as a new user; a spammer is not merged
    assert (await client.post("/api/v1/frontend_users/", json={**DAVE, "auth_method": "local"})).status_code == 200
    new_dave = (await read(client, "/api/v1/frontend_users/local/dave"))["user_id"]
    assert (await client.post(f"/api/v1/admin/users/{carol}/spammer")).status_code == 204
    await refused(client, "POST", url, 400, 0, json={"destination_user_id": new_dave, "source_user_ids": [carol]})
    await follows_a_fresh_fold(client)


# --- renaming and searching -------------------------------------------------------------------------


async def test_a_moderator_renames_a_user(client):
    await do_task(client, ALICE, "initial_prompt")
    alice = next(e["event"]["subject_id"] for e in await events(client) if e["type"] == "user_seen")
    await refused(
        client,
        "PUT",
        f"/api/v1/users/{alice}",
        403,
        2,
        params={"display_name": "A."},
        headers=await untrusted_key(client),
    )
    before = await position(client)
    r = await client.put(f"/api/v1/users/{alice}", params={"display_name": "Alice Smith"})
    assert r.status_code == 204, r.text
    renamed = await new_events(client, before, "user_renamed")
    assert [(e["event"]["subject_id"], e["event"]["display_name"]) for e in renamed] == [(alice, "Alice Smith")]
    assert (await read(client, f"/api/v1/users/{alice}"))["display_name"] == "Alice Smith"
    again = await position(client)
    assert (await client.put(f"/api/v1/users/{alice}", params={"display_name": "Alice Smith"})).status_code == 204
    assert await position(client) == again  # unchanged: nothing appended


async def test_message_search_matches_every_word(client):
    h = await scripted_history(client)
    texts = {m: e["text"] for m, e in h["msgs"].items()}  # e.g. "assistant_reply number 7 by bob"
    cursor = "/api/v1/messages/cursor"
    found = conforms(await read(client, cursor, search_query="ASSISTANT_reply BOB"), cursor, "get")
    assert [m["id"] for m in found["items"]] == [h["RB"]]
    found = await read(client, cursor, search_query="number", max_count=10)
    assert sorted(m["id"] for m in found["items"]) == sorted(texts)
    assert (await read(client, cursor, search_query="no such words"))["items"] == []
    assert datetime.fromisoformat(found["items"][0]["created_date"])  # a normal MessagePage otherwise


# --- the write model alone -----------------------------------------------------------------------------


def test_a_merged_authors_prompt_stays_filed_in_the_lottery():
    from domain import commands as c
    from tests.models import CLIENT, Core, person

    alice, bob = person("alice"), person("bob")

    core = Core(max_active_trees=0)  # an accepted prompt waits in the lottery
    core.do(alice, "initial_prompt")
    core.do(bob, "label_initial_prompt")
    m = core.model
    (tree,) = m.trees.values()
    assert tree.state == "prompt_lottery_waiting"
    uid = {u.username: u.id for u in m.users.values()}
    core.run(c.MergeUsers(client_id=CLIENT, destination_user_id=str(uid["bob"]), source_user_ids=[str(uid["alice"])]))
    assert core.emitted == ["UsersMerged"]
    assert uid["alice"] not in m.users and m.messages[tree.id].user_id == uid["bob"]
    assert list(m.lottery["en"]) == [uid["bob"]] and m.lottery_authors["en"] == [uid["bob"]]
    core.run(c.SetTreeHalted(client_id=CLIENT, message_id=str(tree.id), halt=True))  # leaves the lottery
    assert tree.state == "halted_by_moderator" and not m.lottery["en"] and not m.lottery_authors["en"]
    core.task(alice, "initial_prompt")  # alice's login comes back as a new user
    assert core.emitted[0] == "UserSeen" and m.users[uid["alice"]].username == "alice"
