"""Many clients at once on one tree (issue #9): whatever the interleaving, the children
limit, the depth limit, one reply per user per parent and task ownership hold."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.config import SMALL_TREE
from tests.frontend import answer_for, do_task, events, request, user

USERS = [user(f"u{i}") for i in range(24)]


async def grab_and_answer(client, who: dict, kind: str) -> int:
    """Request, ack and answer one task; the status of the answer (or of the request)."""
    r = await request(client, who, kind)
    if r.status_code != 200:
        return r.status_code
    task = r.json()
    fe = f"fe-{who['id']}-{task['id'][:8]}"
    r = await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": fe})
    if r.status_code != 204:
        return r.status_code
    r = await client.post("/api/v1/tasks/interaction", json=answer_for(task, who, fe))
    return r.status_code


async def test_concurrent_replies_keep_the_tree_limits(client):
    await do_task(client, USERS[0], "initial_prompt")
    for who in USERS[1:3]:
        await do_task(client, who, "label_initial_prompt")
    for _ in range(6):  # everybody at once, repeatedly, on whatever the tree offers
        statuses = await asyncio.gather(*(grab_and_answer(client, who, "random") for who in USERS))
        assert all(s < 500 for s in statuses), statuses

    log = [e for e in await events(client)]
    replies = [e["event"] for e in log if e["type"] == "reply_submitted"]
    assert len(replies) >= 2
    deleted = {e["event"]["message_id"] for e in log if e["type"] == "message_deleted"}
    rejected = {e["event"]["message_id"] for e in log if e["type"] == "message_reviewed" and not e["event"]["accepted"]}
    live = Counter(r["parent_id"] for r in replies if r["message_id"] not in deleted | rejected)
    assert max(live.values()) <= SMALL_TREE.max_children_count
    assert max(r["depth"] for r in replies) <= SMALL_TREE.max_tree_depth
    per_user_parent = Counter((r["parent_id"], r["user_id"]) for r in replies)
    assert max(per_user_parent.values()) == 1
    completed = Counter(e["event"]["task_id"] for e in log if e["type"] == "task_completed")
    assert max(completed.values()) == 1


async def test_one_task_answered_by_many_at_once(client):
    owner, thieves = USERS[0], USERS[1:9]
    r = await request(client, owner, "initial_prompt")
    task = r.json()
    assert (await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": "fe-own"})).status_code == 204

    async def answer(who: dict, text: str):
        body = answer_for(task, who, "fe-own") | {"text": text}
        return await client.post("/api/v1/tasks/interaction", json=body)

    results = await asyncio.gather(
        answer(owner, "the owner's prompt"),
        answer(owner, "the owner again, other text"),
        *(answer(t, f"not yours {t['id']}") for t in thieves),
    )
    codes = [r.status_code for r in results]
    assert codes.count(200) == 1, codes
    assert all(c in (400, 403, 404) for c in codes if c != 200), codes
    prompts = [e for e in await events(client) if e["type"] == "initial_prompt_submitted"]
    assert len(prompts) == 1 and prompts[0]["event"]["text"] in ("the owner's prompt", "the owner again, other text")
