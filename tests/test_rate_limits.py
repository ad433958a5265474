"""Open-Assistant's rate limits (docs/oa-rules.md, "Guards and rate limits"): per user on task
requests, tighter on reply tasks, per API client on every request; 429 with Retry-After, and
nothing logged."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from command_api import rate_limits
from command_api.rate_limits import Limit, RateLimiter
from infra.app import create_app
from tests.config import API_KEY, make_settings
from tests.frontend import user


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def limited(tmp_path):
    """The app with rate limits on and a clock the test moves."""
    settings = make_settings(f"sqlite:///{tmp_path / 'rl.sqlite3'}", tmp_path)
    app = create_app(settings)
    clock = Clock()
    app.state.rate_limiter = RateLimiter(enabled=True, clock=clock)
    async with AsyncTestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        yield client, clock


async def ask(client, who: dict, kind: str):
    return await client.post("/api/v1/tasks/", json={"type": kind, "user": who, "lang": "en"})


async def log_length(client) -> int:
    return client.app.state.service.store.max_position()


async def test_thirty_task_requests_per_four_minutes_per_user(limited):
    client, clock = limited
    alice, bob = user("alice"), user("bob")
    for _ in range(30):  # none is available in an empty store: each answers 503, and counts
        assert (await ask(client, alice, "rank_assistant_replies")).status_code == 503
    before = await log_length(client)
    r = await ask(client, alice, "rank_assistant_replies")
    assert r.status_code == 429 and r.json()["error_code"] == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 240 and "30 task requests per 4 minutes" in r.json()["message"]
    assert await log_length(client) == before
    assert (await ask(client, bob, "rank_assistant_replies")).status_code == 503  # per user
    clock.now += 239
    assert (await ask(client, alice, "rank_assistant_replies")).status_code == 429
    clock.now += 2
    assert (await ask(client, alice, "rank_assistant_replies")).status_code == 503


@pytest.mark.parametrize(("kind", "times"), [("assistant_reply", 4), ("prompter_reply", 8)])
async def test_reply_tasks_per_two_minutes(limited, kind, times):
    client, clock = limited
    carol = user("carol")
    for _ in range(times):
        assert (await ask(client, carol, kind)).status_code == 503
    r = await ask(client, carol, kind)
    assert r.status_code == 429 and kind in r.json()["message"]
    assert (await ask(client, carol, "rank_assistant_replies")).status_code == 503  # other task types go on
    clock.now += 121
    assert (await ask(client, carol, kind)).status_code == 503


async def test_requests_per_api_client(limited, monkeypatch):
    client, clock = limited
    monkeypatch.setattr(rate_limits, "REQUESTS_PER_API_CLIENT", Limit(5, 60))
    for i in range(5):
        assert (await client.get("/api/v1/stats/")).status_code == 200, i
    r = await client.post("/api/v1/frontend_users/", json={**user("dave"), "id": "dave"})
    assert r.status_code == 429 and "per API client" in r.json()["message"] and r.headers["Retry-After"] == "60"
    clock.now += 60
    assert (await client.get("/api/v1/stats/")).status_code == 200


def test_limits_can_be_turned_off():
    limiter = RateLimiter(enabled=False)
    for _ in range(100):
        limiter.task_request(("c", "local", "x"), "assistant_reply")
    assert limiter.hits == {}
