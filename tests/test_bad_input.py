"""Hostile and broken input (issue #9): generated requests from our own OpenAPI schema get
no 5xx and leave the log unchanged when rejected; oversized bodies, expired tasks and
replays of done tasks get clear 4xx codes. (bench/fuzz.py is the 10,000-request variant;
malformed JSON, wrong types, unknown ids, labels outside [0, 1] and rankings that are not
permutations are covered in tests/test_guards.py.)"""

from __future__ import annotations

from datetime import timedelta

from devkit.fuzz import fuzz_api, fuzz_server
from tests.frontend import acked_task, answer_for, do_task, user

ALICE = user("alice")


def test_generated_requests_get_no_5xx_and_rejected_ones_append_nothing(tmp_path):
    with fuzz_server(tmp_path) as (base, store_url):
        stats = fuzz_api(base, store_url, examples=4)
    assert stats.requests > 300 and stats.rejected > 100
    assert stats.server_errors == []
    assert stats.appended_by_rejected == []


async def test_oversized_bodies_are_413(client):
    before = (await client.get("/api/v1/events")).json()["last_position"]
    text = "x" * 1_100_000  # over the 1 MB default of OASST_MAX_BODY_BYTES
    r = await client.post(
        "/api/v1/tasks/interaction",
        json={"type": "text_reply_to_message", "user": ALICE, "message_id": "m", "user_message_id": "u", "text": text},
    )
    assert r.status_code == 413 and r.json()["error_code"] == 105
    assert (await client.get("/api/v1/events")).json()["last_position"] == before


async def test_expired_tasks_and_replays_of_done_tasks(client):
    service = client.app.state.service
    task, frontend_id = await acked_task(client, ALICE, "initial_prompt")
    later = service.clock() + timedelta(minutes=service.settings.task_expire_minutes + 1)
    service.clock = lambda: later
    r = await client.post("/api/v1/tasks/interaction", json=answer_for(task, ALICE, frontend_id))
    assert r.status_code == 400 and r.json()["error_code"] == 2101, r.text  # TASK_EXPIRED

    done = await do_task(client, ALICE, "initial_prompt")
    r = await client.post(f"/api/v1/tasks/{done['id']}/ack", json={"message_id": "again"})
    assert r.status_code == 400 and r.json()["error_code"] == 2103  # already acked / done
