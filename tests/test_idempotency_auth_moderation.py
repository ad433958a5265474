"""Retries append once; auth as OA; moderators halt, delete and undelete (both backends)."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from infra.app import create_app
from tests.config import API_KEY, ROOT_TOKEN, make_settings
from tests.frontend import acked_task, answer_for, do_task, events, log_position, request, user

ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")


async def test_resubmitting_an_interaction_returns_the_first_answer(client):
    task, fid = await acked_task(client, ALICE, "initial_prompt")
    body = answer_for(task, ALICE, fid)
    first = await client.post("/api/v1/tasks/interaction", json=body)
    position = await log_position(client)
    again = await client.post("/api/v1/tasks/interaction", json=body)
    assert again.status_code == first.status_code == 200 and again.json() == first.json()
    assert await log_position(client) == position
    assert sum(e["type"] == "initial_prompt_submitted" for e in await events(client)) == 1


async def test_idempotency_key_answers_once_even_after_a_restart(store_url, tmp_path):
    settings = make_settings(store_url, tmp_path)
    body = {"type": "initial_prompt", "user": ALICE, "lang": "en"}
    headers = {"X-API-Key": API_KEY, "Idempotency-Key": "req-1"}
    async with AsyncTestClient(create_app(settings)) as c:
        first = await c.post("/api/v1/tasks/", json=body, headers=headers)
        second = await c.post("/api/v1/tasks/", json=body, headers=headers)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert first.headers["X-Log-Position"] == second.headers["X-Log-Position"]
        other = await c.post("/api/v1/tasks/", json=body, headers=headers | {"Idempotency-Key": "req-2"})
        assert other.json()["id"] != first.json()["id"]
    async with AsyncTestClient(create_app(settings)) as c:
        third = await c.post("/api/v1/tasks/", json=body, headers=headers)
        assert third.json() == first.json()
        c.headers["X-API-Key"] = API_KEY
        assert sum(e["type"] == "task_assigned" for e in await events(c)) == 2


async def test_every_response_carries_the_log_position(client):
    r = await request(client, ALICE, "initial_prompt")
    position = int(r.headers["X-Log-Position"])
    log = await events(client)
    assert log[-1]["position"] == position and log[-1]["type"] == "task_assigned"
    assert log[-1]["event"]["payload"] == r.json()  # the full task payload is in the log


async def test_auth(client):
    body = {"type": "random", "user": ALICE}
    for headers in ({"X-API-Key": ""}, {"X-API-Key": "wrong"}):
        r = await client.post("/api/v1/tasks/", json=body, headers=headers)
        assert r.status_code == 403 and r.json()["error_code"] == 2
    # API clients need the root token
    spec = {"description": "web", "frontend_type": "web", "trusted": False}
    r = await client.post("/api/v1/admin/api_client", json=spec)
    assert r.status_code == 403 and r.json()["error_code"] == 3
    r = await client.post("/api/v1/admin/api_client", json=spec, headers={"Authorization": f"Bearer {ROOT_TOKEN}"})
    assert r.status_code == 200
    untrusted = {"X-API-Key": r.json()}
    assert (
        await client.post("/api/v1/tasks/", json={"type": "initial_prompt", "user": ALICE}, headers=untrusted)
    ).status_code == 200
    # untrusted clients reach no moderation, admin or log route
    task = await do_task(client, ALICE, "initial_prompt")
    mid = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    uid = next(e["event"]["subject_id"] for e in await events(client) if e["type"] == "user_seen")
    for method, url in [
        ("DELETE", f"/api/v1/messages/{mid}"),
        ("PUT", f"/api/v1/messages/{mid}/undelete"),
        ("PUT", f"/api/v1/messages/{mid}/tree/state?halt=true"),
        ("PUT", f"/api/v1/users/{uid}?enabled=false"),
        ("DELETE", f"/api/v1/users/{uid}"),
        ("POST", f"/api/v1/admin/purge_user/{uid}"),
        ("POST", f"/api/v1/admin/users/{uid}/spammer"),
        ("DELETE", f"/api/v1/admin/users/{uid}/spammer"),
        ("GET", "/api/v1/events"),
    ]:
        before = await log_position(client)
        r = await client.request(method, url, headers=untrusted)
        assert r.status_code == 403, (method, url, r.text)
        assert await log_position(client) == before
    # another client cannot see or answer this client's tasks
    r = await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": "x"}, headers=untrusted)
    assert r.status_code == 404


async def test_users_of_different_clients_are_different_users(client):
    r = await client.post(
        "/api/v1/admin/api_client",
        json={"description": "b", "frontend_type": "discord"},
        headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
    )
    other = {"X-API-Key": r.json()}
    await do_task(client, ALICE, "initial_prompt")
    r = await client.post("/api/v1/frontend_users/", json=ALICE, headers=other)
    mine = next(u for u in (await client.get("/api/v1/frontend_users/")).json() if u["id"] == "alice")
    assert r.json()["user_id"] != mine["user_id"]


async def test_halt_and_resume_a_tree(client):
    await do_task(client, ALICE, "initial_prompt")
    mid = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    r = await client.put(f"/api/v1/messages/{mid}/tree/state", params={"halt": "true"})
    assert r.status_code == 200 and r.json()["state"] == "halted_by_moderator" and not r.json()["active"]
    assert (await request(client, BOB, "label_initial_prompt")).status_code == 503
    r = await client.put(f"/api/v1/messages/{mid}/tree/state", params={"halt": "false"})
    assert r.json()["state"] == "initial_prompt_review"
    assert (await request(client, BOB, "label_initial_prompt")).status_code == 200


async def test_delete_hides_a_subtree_and_undelete_restores_it(client):
    await do_task(client, ALICE, "initial_prompt")
    for who in (BOB, CAROL):
        await do_task(client, who, "label_initial_prompt")
    await do_task(client, BOB, "assistant_reply")
    reply = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "reply_submitted")
    assert (await request(client, CAROL, "label_assistant_reply")).status_code == 200
    assert (await client.delete(f"/api/v1/messages/{reply}")).status_code == 204
    assert (await request(client, ALICE, "label_assistant_reply")).status_code == 503
    assert (await client.put(f"/api/v1/messages/{reply}/undelete")).status_code == 202
    assert (await request(client, ALICE, "label_assistant_reply")).status_code == 200
    r = await client.delete("/api/v1/messages/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["error_code"] == 2001


async def test_deleting_the_prompt_halts_its_tree(client):
    await do_task(client, ALICE, "initial_prompt")
    mid = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    assert (await client.delete(f"/api/v1/messages/{mid}")).status_code == 204
    states = [e["event"]["new_state"] for e in await events(client) if e["type"] == "tree_state_changed"]
    assert states == ["halted_by_moderator"]


async def test_skipped_task_is_not_offered_again(client):
    await do_task(client, ALICE, "initial_prompt")
    r = await request(client, BOB, "label_initial_prompt")
    task = r.json()
    assert (await client.post(f"/api/v1/tasks/{task['id']}/nack", json={"reason": "skip"})).status_code == 204
    assert (await request(client, BOB, "label_initial_prompt")).status_code == 503
    assert any(e["type"] == "emoji_added" and e["event"]["emoji"] == "_skip_labeling" for e in await events(client))


async def test_emoji_toggle_and_thumb_exclusion(client):
    await do_task(client, ALICE, "initial_prompt")
    mid = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    url = f"/api/v1/messages/{mid}/emoji"
    r = await client.post(url, json={"user": BOB, "emoji": "+1"})
    assert r.status_code == 202 and r.json()["emojis"] == {"+1": 1}
    r = await client.post(url, json={"user": BOB, "emoji": "-1", "op": "add"})
    assert r.json()["emojis"] == {"-1": 1} and r.json()["user_emojis"] == ["-1"]
    r = await client.post(url, json={"user": BOB, "emoji": "-1"})  # toggle off
    assert r.json()["emojis"] == {}
    r = await client.post(url, json={"user": ALICE, "emoji": "+1"})  # one's own message: ignored (OA)
    assert r.status_code == 202 and r.json()["emojis"] == {} and r.json()["user_is_author"] is True


async def test_reports_auto_moderate_the_prompt(client):
    await do_task(client, ALICE, "initial_prompt")
    mid = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    for i in range(4):
        r = await client.post(
            "/api/v1/text_labels/",
            json={
                "type": "text_labels",
                "user": user(f"rep{i}"),
                "message_id": mid,
                "text": "bad",
                "labels": {"spam": 1.0},
                "is_report": True,
            },
        )
        assert r.status_code == 204
    states = [e["event"] for e in await events(client) if e["type"] == "tree_state_changed"]
    assert [(s["new_state"], s["reason"]) for s in states] == [("aborted_low_grade", "auto_mod_red_flags")]


async def test_purge_user_preview_changes_nothing_and_confirm_marks_spammer(client):
    await do_task(client, ALICE, "initial_prompt")
    uid = next(e["event"]["subject_id"] for e in await events(client) if e["type"] == "user_seen")
    before = await log_position(client)
    r = await client.post(f"/api/v1/admin/purge_user/{uid}", params={"preview": "true"})
    assert r.status_code == 200 and r.json()["preview"] is True
    assert r.json()["before"]["all"] == 1 and r.json()["after"]["all"] == 0
    assert await log_position(client) == before
    r = await client.post(f"/api/v1/admin/purge_user/{uid}", params={"preview": "false"})
    assert r.status_code == 200
    log = await events(client)
    marks = [e for e in log if e["type"] == "user_marked_spammer"]
    assert len(marks) == 1 and marks[0]["event"]["subject_id"] == uid
    # the spammer's prompt stops being worked on ...
    halted = log[-1]["event"]
    assert (halted["new_state"], halted["reason"]) == ("halted_by_moderator", "author_marked_spammer")
    assert (await request(client, BOB, "label_initial_prompt")).status_code == 503
    # ... and unmarking restores it
    assert (await client.delete(f"/api/v1/admin/users/{uid}/spammer")).status_code == 204
    log = await events(client)
    assert [e["type"] for e in log][-2:] == ["user_unmarked_spammer", "tree_state_changed"]
    assert log[-1]["event"]["new_state"] == "initial_prompt_review"
    assert (await request(client, BOB, "label_initial_prompt")).status_code == 200
