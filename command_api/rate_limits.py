"""Open-Assistant's rate limits (docs/oa-rules.md, "Guards and rate limits"), kept in memory
by the one process that serves the API: per user on task requests (and tighter on reply
tasks), per API client on every request. A refusal is 429 with ``Retry-After``; nothing is logged as an
event, because a refused request changes nothing."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from domain.errors import ErrorCode, OasstError


@dataclass(frozen=True)
class Limit:
    times: int
    seconds: float


TASKS_PER_USER = Limit(30, 4 * 60)
TASK_TYPE_PER_USER = {"assistant_reply": Limit(4, 2 * 60), "prompter_reply": Limit(8, 2 * 60)}
REQUESTS_PER_API_CLIENT = Limit(10_000, 60)


class RateLimited(OasstError):
    def __init__(self, what: str, retry_after: float):
        super().__init__(
            f"rate limit exceeded: {what}; retry in {math.ceil(retry_after)} s", ErrorCode.TOO_MANY_REQUESTS, 429
        )
        self.retry_after = max(1, math.ceil(retry_after))


class RateLimiter:
    """Sliding windows: the times of the last ``limit.times`` hits per key."""

    def __init__(self, enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled
        self.clock = clock
        self.hits: dict[tuple, deque[float]] = {}

    def hit(self, *checks: tuple[tuple, Limit, str]) -> None:
        """Count one hit on each (key, limit, what), or raise RateLimited counting none."""
        if not self.enabled:
            return
        now = self.clock()
        for key, limit, what in checks:
            window = self.hits.get(key)
            if window is not None and len(window) == limit.times and now - window[0] < limit.seconds:
                raise RateLimited(what, limit.seconds - (now - window[0]))
        for key, limit, _ in checks:
            window = self.hits.get(key)
            if window is None:
                window = self.hits[key] = deque(maxlen=limit.times)
            window.append(now)

    def task_request(self, user_key: tuple, task_type: str) -> None:
        checks = [(("tasks", *user_key), TASKS_PER_USER, "30 task requests per 4 minutes per user")]
        limit = TASK_TYPE_PER_USER.get(task_type)
        if limit:
            checks.append(((task_type, *user_key), limit, f"{limit.times} {task_type} tasks per 2 minutes per user"))
        self.hit(*checks)

    def api_request(self, client_id) -> None:
        self.hit((("client", client_id), REQUESTS_PER_API_CLIENT, "10,000 requests per minute per API client"))
