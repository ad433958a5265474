"""A minimal Open-Assistant frontend for tests: request, ack and answer tasks over HTTP."""

from __future__ import annotations

import itertools

from devkit.frontend import answer_for, user  # noqa: F401 - the tests take them from here

_ids = itertools.count()
USERS = [user(f"user{i}") for i in range(6)]  # enough people to grow a small tree


async def request(client, who: dict, kind: str = "random", lang: str = "en"):
    return await client.post("/api/v1/tasks/", json={"type": kind, "user": who, "lang": lang})


async def do_task(client, who: dict, kind: str = "random", **answer_kw) -> dict | None:
    """One interaction (request, ack, submit). Returns the task, or None if none available."""
    r = await request(client, who, kind)
    if r.status_code == 503:
        return None
    assert r.status_code == 200, r.text
    task = r.json()
    frontend_id = f"fe-{next(_ids)}"
    r = await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": frontend_id})
    assert r.status_code == 204, r.text
    r = await client.post("/api/v1/tasks/interaction", json=answer_for(task, who, frontend_id, **answer_kw))
    assert r.status_code == 200, r.text
    assert r.json() == {"type": "task_done", "id": task["id"]}
    return task


async def acked_task(client, who: dict, kind: str) -> tuple[dict, str]:
    r = await request(client, who, kind)
    assert r.status_code == 200, r.text
    task = r.json()
    frontend_id = f"fe-{next(_ids)}"
    r = await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": frontend_id})
    assert r.status_code == 204, r.text
    return task, frontend_id


async def events(client, after: int = 0) -> list[dict]:
    r = await client.get("/api/v1/events", params={"after": after, "limit": 10000})
    assert r.status_code == 200, r.text
    return r.json()["events"]


async def log_position(client) -> int:
    r = await client.get("/api/v1/events", params={"after": 0, "limit": 10000})
    return r.json()["last_position"]
