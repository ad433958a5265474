"""Read-your-writes without asking: OA's clients never send ``min_position``, so a read that
follows a client's own acknowledged write must see it; a client that wrote nothing must not
wait for anyone else's writes. The views are slowed down on purpose, so that without the
guarantee these reads would miss."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
from litestar.testing import AsyncTestClient

from infra.app import create_app
from tests.config import API_KEY, ROOT_TOKEN, make_settings
from tests.frontend import acked_task, user

_n = itertools.count()


def slow_views(app, delay: float) -> threading.Event:
    """Every page the runner reads takes ``delay`` more; clearing the returned event stalls it."""
    store = app.state.runner.store
    flowing = app.state.views_flowing
    read = store.read_stored

    def read_slowly(after, limit):  # runs in the runner's worker thread
        time.sleep(delay)
        flowing.wait()
        return read(after, limit)

    store.read_stored = read_slowly
    return flowing


async def write_prompt(client, who: dict) -> str:
    """An initial prompt through the task flow; returns its frontend message id."""
    task, fid = await acked_task(client, who, "initial_prompt")
    user_message_id = f"ryw-{next(_n)}"
    r = await client.post(
        "/api/v1/tasks/interaction",
        json={
            "type": "text_reply_to_message",
            "user": who,
            "message_id": fid,
            "user_message_id": user_message_id,
            "text": f"a prompt numbered {user_message_id}",
            "lang": "en",
        },
    )
    assert r.status_code == 200, r.text
    return user_message_id


@pytest.fixture
async def app(store_url, tmp_path):
    application = create_app(make_settings(store_url, tmp_path))
    application.state.views_flowing = threading.Event()
    application.state.views_flowing.set()
    async with AsyncTestClient(application) as c:
        c.headers["X-API-Key"] = API_KEY
        application.state.test_client = c
        try:
            yield application
        finally:
            application.state.views_flowing.set()  # never leave the runner stalled


async def test_a_read_right_after_a_write_sees_it(app):
    client = app.state.test_client
    slow_views(app, 0.02)
    who = user("writer")
    for _ in range(20):
        fid = await write_prompt(client, who)
        r = await client.get(f"/api/v1/frontend_messages/{fid}")  # no min_position
        assert r.status_code == 200, r.text
        assert r.json()["frontend_message_id"] == fid


async def test_a_client_that_did_not_write_does_not_wait(app):
    client = app.state.test_client
    r = await client.post(
        "/api/v1/admin/api_client",
        json={"description": "reader", "frontend_type": "web"},
        headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
    )
    assert r.status_code == 200, r.text
    reader_key = r.json()
    first = await write_prompt(client, user("writer"))
    assert (await client.get(f"/api/v1/frontend_messages/{first}")).status_code == 200  # the views are up
    flowing = slow_views(app, 0.0)
    flowing.clear()  # the views stop following the log...
    await asyncio.sleep(0.1)  # ...once a page being read now is folded
    fid = await write_prompt(client, user("writer"))
    started = time.perf_counter()
    r = await client.get("/api/v1/stats/", headers={"X-API-Key": reader_key})
    assert r.status_code == 200 and time.perf_counter() - started < 0.5  # no wait for the writer's write

    threading.Timer(0.3, flowing.set).start()  # the views follow again in 0.3 s
    started = time.perf_counter()
    r = await client.get(f"/api/v1/frontend_messages/{fid}")
    assert r.status_code == 200, r.text  # the writer's own read waited for its write, then saw it
    assert time.perf_counter() - started >= 0.25
