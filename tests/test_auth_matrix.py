"""Every route against missing, unknown and untrusted API keys (issue #9): moderation,
admin, history, log and snapshot-file routes refuse all three; every other route refuses
the first two; a refused request appends nothing. API clients need the root token."""

from __future__ import annotations

import re

import pytest
from litestar.testing import AsyncTestClient

from infra.app import create_app
from tests.config import API_KEY, ROOT_TOKEN, make_settings
from tests.frontend import do_task, events, user

ALICE = user("alice")

# (method, path template) that only trusted clients (moderators) may use
TRUSTED = {
    ("DELETE", "/api/v1/messages/{message_id}"),
    ("PUT", "/api/v1/messages/{message_id}/undelete"),
    ("PUT", "/api/v1/messages/{message_id}/tree/state"),
    ("PUT", "/api/v1/users/{user_id}"),
    ("DELETE", "/api/v1/users/{user_id}"),
    ("POST", "/api/v1/admin/purge_user/{user_id}"),
    ("POST", "/api/v1/admin/users/{user_id}/spammer"),
    ("DELETE", "/api/v1/admin/users/{user_id}/spammer"),
    ("GET", "/api/v1/admin/users/{user_id}/spammer/preview"),  # issue #17: the console's dry run
    ("POST", "/api/v1/admin/users/{user_id}/erase"),  # issue #19: erasure by crypto-shredding
    ("POST", "/api/v1/admin/import"),
    ("GET", "/api/v1/trollboards/{time_frame}"),
    ("GET", "/api/v1/admin/suspected_spammers"),
    ("POST", "/api/v1/snapshots"),
    ("GET", "/api/v1/snapshots/{snapshot_id}/files/{name}"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/history"),
    # issue #14: edits, a user's messages, the flagged queue, merging users
    ("POST", "/api/v1/messages/{message_id}/edit"),
    ("DELETE", "/api/v1/users/{user_id}/messages"),
    ("DELETE", "/api/v1/frontend_users/{auth_method}/{username}/messages"),
    ("POST", "/api/v1/admin/purge_user/{user_id}/messages"),
    ("GET", "/api/v1/admin/flagged_messages"),
    ("GET", "/api/v1/admin/flagged_messages/cursor"),
    ("POST", "/api/v1/admin/flagged_messages/{message_id}/processed"),
    ("POST", "/api/v1/admin/merge_users"),
    # issue #14: OA's full settings, and its refresh routes (nothing to refresh: boards and stats are live)
    ("GET", "/api/v1/admin/backend_settings/full"),
    ("POST", "/api/v1/leaderboards/update"),
    ("POST", "/api/v1/leaderboards/update/{time_frame}"),
    ("POST", "/api/v1/stats/cached/update"),
}
ROOT_TOKEN_ROUTES = {("POST", "/api/v1/admin/api_client")}
OPEN = {("GET", "/metrics")}  # as OA's: Prometheus scrapers send no key; counts and latencies only

BODIES = {
    "/api/v1/tasks": {"type": "random", "user": ALICE},
    "/api/v1/tasks/availability": ALICE,
    "/api/v1/tasks/{task_id}/ack": {"message_id": "fe-1"},
    "/api/v1/tasks/{task_id}/nack": {"reason": "x"},
    "/api/v1/tasks/interaction": {
        "type": "text_reply_to_message",
        "user": ALICE,
        "message_id": "fe-1",
        "user_message_id": "u-1",
        "text": "hello there",
        "lang": "en",
    },
    "/api/v1/tasks/close": {"message_id": "fe-1"},
    "/api/v1/text_labels": {
        "type": "text_labels",
        "user": ALICE,
        "text": "",
        "labels": {"spam": 0.0},
        "message_id": "{message_id}",
    },
    "/api/v1/messages/{message_id}/emoji": {"user": ALICE, "emoji": "+1", "op": "add"},
    "/api/v1/admin/api_client": {"description": "x", "frontend_type": "web"},
    "/api/v1/frontend_users": {**ALICE, "id": "alice"},
    "/api/v1/admin/import": {"origin": "x", "items": []},
    "/api/v1/snapshots": {},
    "/api/v1/messages/{message_id}/edit": {"user": ALICE, "new_content": "edited"},
    "/api/v1/admin/merge_users": {"destination_user_id": "{user_id}", "source_user_ids": []},
}
QUERIES = {
    "/api/v1/messages/{message_id}/tree/state": {"halt": "true"},
    "/api/v1/users/by_username": {"username": "alice", "auth_method": "local"},
    "/api/v1/users/by_display_name": {"display_name": "Alice"},
    "/api/v1/history": {"user": "{user_id}"},
    "/api/v1/text_labels/valid_labels": {"message_id": "{message_id}"},
    "/api/v1/admin/flagged_messages": {"max_count": "10"},
}


def operations(app) -> list[tuple[str, str]]:
    paths = app.openapi_schema.to_schema()["paths"]
    return sorted((m.upper(), p) for p, ops in paths.items() for m in ops if m in ("get", "post", "put", "delete"))


@pytest.fixture
async def world(tmp_path):
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'auth.sqlite3'}", tmp_path))
    async with AsyncTestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        task = await do_task(client, ALICE, "initial_prompt")
        log = await events(client)
        r = await client.post(
            "/api/v1/admin/api_client",
            json={"description": "web", "frontend_type": "web"},
            headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
        )
        snapshot = (await client.post("/api/v1/snapshots", json={"states": []})).json()
        ids = {
            "message_id": next(e["event"]["message_id"] for e in log if e["type"] == "initial_prompt_submitted"),
            "user_id": next(e["event"]["subject_id"] for e in log if e["type"] == "user_seen"),
            "task_id": task["id"],
            "time_frame": "day",
            "auth_method": "local",
            "username": "alice",
            "label": "spam",
            "snapshot_id": snapshot["id"],
            "name": "dpo.parquet",
        }
        yield client, ids, r.json()


def fill(template, ids: dict):
    if isinstance(template, dict):
        return {k: fill(v, ids) for k, v in template.items()}
    if isinstance(template, str):
        return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), template)
    return template


async def call(client, method: str, path: str, ids: dict, headers: dict):
    return await client.request(
        method,
        fill(path, ids),
        params=fill(QUERIES.get(path, {}), ids),
        json=fill(BODIES[path], ids) if method in ("POST", "PUT") and path in BODIES else None,
        headers=headers,
    )


async def test_every_route_against_missing_unknown_and_untrusted_keys(world):
    client, ids, untrusted_key = world
    ops = operations(client.app)
    assert TRUSTED <= set(ops) and len(ops) > 60
    store = client.app.state.service.store
    for method, path in ops:
        for who, headers in (
            ("missing", {"X-API-Key": ""}),
            ("unknown", {"X-API-Key": "not-a-key"}),
            ("untrusted", {"X-API-Key": untrusted_key}),
        ):
            before = store.max_position()
            r = await call(client, method, path, ids, headers)
            if (method, path) in OPEN:
                assert r.status_code == 200, (who, method, path, r.text)
                continue
            refused = who != "untrusted" or (method, path) in TRUSTED | ROOT_TOKEN_ROUTES
            if refused:
                assert r.status_code == 403, (who, method, path, r.status_code, r.text)
                assert r.json()["error_code"] in (2, 3), (method, path, r.text)
                assert store.max_position() == before, (who, method, path)
            else:
                assert r.status_code != 403, (who, method, path, r.text)
    # the trusted bootstrap client passes every moderation route's auth
    for method, path in sorted(TRUSTED):
        r = await call(client, method, path, ids, {"X-API-Key": API_KEY})
        assert r.status_code not in (401, 403), (method, path, r.text)


async def test_api_clients_need_the_root_token(world):
    client, _, untrusted_key = world
    spec = {"description": "x", "frontend_type": "web", "trusted": True}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {API_KEY}"},
        {"X-API-Key": API_KEY, "Authorization": ""},
    ):
        r = await client.post("/api/v1/admin/api_client", json=spec, headers=headers)
        assert r.status_code == 403 and r.json()["error_code"] == 3, headers


async def test_a_client_cannot_act_for_another_clients_users_or_tasks(world):
    client, ids, untrusted_key = world
    other = {"X-API-Key": untrusted_key}
    # the other client's "alice" is another user; alice's task is not theirs to ack or answer
    r = await client.post(f"/api/v1/tasks/{ids['task_id']}/ack", json={"message_id": "fe-x"}, headers=other)
    assert r.status_code == 404
    r = await client.post(
        "/api/v1/tasks/interaction",
        headers=other,
        json={
            "type": "text_labels",
            "user": ALICE,
            "text": "",
            "labels": {"spam": 1.0},
            "message_id": ids["message_id"],
            "task_id": ids["task_id"],
        },
    )
    assert r.status_code == 400 and r.json()["error_code"] == 2100, r.text  # OA: not found among the client's
    mine = (await client.get("/api/v1/frontend_users/local/alice")).json()
    theirs = (await client.post("/api/v1/frontend_users/", json={**ALICE, "id": "alice"}, headers=other)).json()
    assert mine["user_id"] != theirs["user_id"]
