"""Every guard refuses with OA's error code and appends nothing (both backends)."""

from __future__ import annotations

import pytest

from tests.frontend import acked_task, answer_for, do_task, log_position, request, user

ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")


async def refused(client, method: str, url: str, status: int, code: int, **kw) -> dict:
    before = await log_position(client)
    r = await client.request(method, url, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error_code"] == code and body["message"]
    assert await log_position(client) == before  # bad input changes nothing
    return body


async def prompt_in_review(client) -> tuple[dict, dict]:
    """Alice's prompt; returns Bob's acked label task for it."""
    await do_task(client, ALICE, "initial_prompt")
    return await acked_task(client, BOB, "label_initial_prompt")


async def test_text_guards(client):
    task, fid = await acked_task(client, ALICE, "initial_prompt")

    def reply(text: str, umid: str = "m-new") -> dict:
        return {
            "type": "text_reply_to_message",
            "user": ALICE,
            "message_id": fid,
            "user_message_id": umid,
            "text": text,
            "lang": "en",
        }

    await refused(client, "POST", "/api/v1/tasks/interaction", 400, 1010, json=reply("   "))
    await refused(client, "POST", "/api/v1/tasks/interaction", 400, 1008, json=reply("x" * 2001))
    r = await client.post("/api/v1/tasks/interaction", json=reply("What is a monad?", "m1"))
    assert r.status_code == 200
    task2, fid2 = await acked_task(client, ALICE, "initial_prompt")
    dup = reply("What is a monad?", "m2") | {"message_id": fid2}
    await refused(client, "POST", "/api/v1/tasks/interaction", 400, 1009, json=dup)
    taken = reply("Another question", "m1") | {"message_id": fid2}
    await refused(client, "POST", "/api/v1/tasks/interaction", 400, 2000, json=taken)


async def test_task_state_guards(client):
    r = await request(client, ALICE, "initial_prompt")
    task = r.json()
    unacked = answer_for(task, ALICE, "never-acked")
    await refused(client, "POST", "/api/v1/tasks/interaction", 400, 2100, json=unacked)  # OA: 404 only for an ack
    await refused(
        client, "POST", "/api/v1/tasks/00000000-0000-0000-0000-000000000000/ack", 404, 2100, json={"message_id": "x"}
    )
    await refused(client, "POST", "/api/v1/tasks/not-a-uuid/ack", 404, 2100, json={"message_id": "x"})
    r = await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": "fe-a"})
    assert r.status_code == 204
    # somebody else answering Alice's task
    await refused(client, "POST", "/api/v1/tasks/interaction", 400, 2106, json=answer_for(task, BOB, "fe-a"))
    # a label answer to a prompt task
    wrong = {
        "type": "text_labels",
        "user": ALICE,
        "message_id": "x",
        "task_id": task["id"],
        "text": "",
        "labels": {"spam": 0},
    }
    await refused(client, "POST", "/api/v1/tasks/interaction", 400, 2102, json=wrong)
    r = await client.post("/api/v1/tasks/interaction", json=answer_for(task, ALICE, "fe-a"))
    assert r.status_code == 200
    # a different answer to a done task
    await refused(
        client,
        "POST",
        "/api/v1/tasks/interaction",
        400,
        2105,
        json=answer_for(task, ALICE, "fe-a") | {"text": "changed my mind"},
    )
    await refused(client, "POST", f"/api/v1/tasks/{task['id']}/ack", 400, 2103, json={"message_id": "fe-b"})


async def test_label_guards(client):
    task, _ = await prompt_in_review(client)
    base = {"type": "text_labels", "user": BOB, "message_id": task["message_id"], "task_id": task["id"], "text": ""}
    url = "/api/v1/tasks/interaction"
    await refused(client, "POST", url, 400, 2051, json=base | {"labels": {"spam": 1.5}})
    await refused(client, "POST", url, 400, 2051, json=base | {"labels": {"spam": -0.1}})
    await refused(client, "POST", url, 400, 2051, json=base | {"labels": {"spam": 0, "no_such_label": 1}})
    await refused(client, "POST", url, 400, 2052, json=base | {"labels": {"quality": 0.5}})
    await refused(
        client,
        "POST",
        url,
        400,
        2050,
        json=base | {"labels": {"spam": 0}, "message_id": "00000000-0000-0000-0000-000000000000"},
    )
    # nobody may review their own prompt: Alice gets no label task for it (free labels are OA's
    # exception: tests/test_oa_statuses.py)
    r = await request(client, ALICE, "label_initial_prompt")
    assert r.status_code == 503 and r.json()["error_code"] == 1006


async def test_ranking_must_be_a_permutation(client):
    from tests.frontend import USERS

    # grow until a ranking task is available for someone
    await do_task(client, USERS[0], "initial_prompt")
    for _ in range(100):
        for who in USERS[:4]:
            await do_task(client, who)
        r = await request(client, CAROL, "rank_assistant_replies")
        if r.status_code == 200:
            break
    else:
        pytest.fail("no ranking task appeared")
    task = r.json()
    await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": "fe-rank"})
    n = len(task["reply_messages"])
    for bad in ([0] * n, list(range(n + 1)), list(range(1, n + 1)), []):
        body = {"type": "message_ranking", "user": CAROL, "message_id": "fe-rank", "ranking": bad}
        await refused(client, "POST", "/api/v1/tasks/interaction", 400, 2003, json=body)
    ok = {"type": "message_ranking", "user": CAROL, "message_id": "fe-rank", "ranking": list(range(n))[::-1]}
    assert (await client.post("/api/v1/tasks/interaction", json=ok)).status_code == 200


async def test_one_reply_per_user_per_parent_and_pending_limit(client):
    # two reply tasks for the same parent can be handed out only one at a time (recent-task span)
    await do_task(client, ALICE, "initial_prompt")
    for who in (BOB, CAROL):
        await do_task(client, who, "label_initial_prompt")
    t1, f1 = await acked_task(client, BOB, "assistant_reply")
    r = await request(client, CAROL, "assistant_reply")
    assert r.status_code == 503
    assert (await client.post("/api/v1/tasks/interaction", json=answer_for(t1, BOB, f1))).status_code == 200
    # Bob already replied to this parent: no second reply task for him
    r = await request(client, BOB, "assistant_reply")
    assert r.status_code == 503 and r.json()["error_code"] == 1006


async def test_too_many_pending_tasks(client):
    for _ in range(8):
        assert (await request(client, CAROL, "initial_prompt")).status_code == 200
    await refused(
        client,
        "POST",
        "/api/v1/tasks/",
        400,
        1012,  # OA's status: 400, not 429
        json={"type": "initial_prompt", "user": CAROL, "lang": "en"},
    )


async def test_validation_errors_are_422_with_error_body(client):
    for body in ({"type": "nonsense", "user": ALICE}, {"type": "random", "user": {"id": "x"}}, ["not", "an", "object"]):
        await refused(client, "POST", "/api/v1/tasks/", 422, 102, json=body)
    await refused(
        client, "POST", "/api/v1/tasks/", 400, 102, content=b"{not json", headers={"content-type": "application/json"}
    )
    await refused(
        client, "POST", "/api/v1/tasks/interaction", 422, 102, json={"type": "text_reply_to_message", "user": ALICE}
    )
    await refused(client, "POST", "/api/v1/tasks/", 503, 1006, json={"type": "summarize_story", "user": ALICE})


async def test_disabled_user_is_refused(client):
    await do_task(client, ALICE, "initial_prompt")
    uid = next(u for u in (await client.get("/api/v1/frontend_users/")).json() if u["id"] == "alice")["user_id"]
    assert (await client.put(f"/api/v1/users/{uid}", params={"enabled": "false"})).status_code == 204
    await refused(client, "POST", "/api/v1/tasks/", 403, 4001, json={"type": "random", "user": ALICE})
    assert (await client.put(f"/api/v1/users/{uid}", params={"enabled": "true"})).status_code == 204
    assert (await request(client, ALICE, "initial_prompt")).status_code == 200
