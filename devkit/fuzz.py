"""Hostile input (issue #9): schemathesis generates requests from our own OpenAPI schema
(valid ones and ones that break it) against a real ``oasst serve``; no answer may be a
5xx, and a rejected request (4xx) must leave the log as it was. Used by
tests/test_bad_input.py and bench/fuzz.py."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devkit.brokers import free_port
from devkit.servers import OASST, server

API_KEY = "fuzz-key"


@dataclass
class FuzzStats:
    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    server_errors: list = field(default_factory=list)  # (method, path, status, body)
    appended_by_rejected: list = field(default_factory=list)  # (method, path, status)
    unsatisfiable: int = 0  # (operation, mode) pairs with nothing to generate
    documented_503: int = 0  # OA's "no task of this type available" and "views behind, retry"

    @property
    def rejected(self) -> int:
        return sum(n for s, n in self.by_status.items() if 400 <= s < 500)


@contextlib.contextmanager
def fuzz_server(tmp: Path) -> Iterator[tuple[str, str]]:
    """A real ``oasst serve`` on a fresh SQLite store: (base url, store url)."""
    port = free_port()
    store_url = f"sqlite:///{tmp / 'fuzz.sqlite3'}"
    env = {
        "OASST_DATABASE_URL": store_url,
        "OASST_DATA_DIR": str(tmp),
        "OASST_BOOTSTRAP_API_KEY": API_KEY,
        "OASST_ROOT_TOKEN": "fuzz-root",
        "OASST_PORT": str(port),
        "OASST_RATE_LIMITS": "off",
    }
    with server(
        [*OASST, "serve", "--port", str(port)], env, port, tmp / "fuzz-server.log", ready_path="/schema/openapi.json"
    ):
        yield f"http://127.0.0.1:{port}", store_url


def _documented_503(response) -> bool:
    from domain.errors import ErrorCode

    try:
        code = response.json().get("error_code")
    except ValueError:
        return False
    return code in (ErrorCode.TASK_REQUESTED_TYPE_NOT_AVAILABLE, ErrorCode.VIEWS_BEHIND)


def fuzz_api(base_url: str, store_url: str, examples: int, seed: int = 0) -> FuzzStats:
    """``examples`` generated cases per operation and generation mode (valid and invalid)."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    from infra.store import EventStore

    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
    store = EventStore(store_url)
    session = requests.Session()
    stats = FuzzStats()
    headers = {"X-API-Key": API_KEY}
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @hseed(seed)
                @settings(
                    max_examples=examples,
                    deadline=None,
                    database=None,
                    derandomize=False,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def probe(case) -> None:
                    before = store.max_position()
                    response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
                    stats.requests += 1
                    stats.by_status[response.status_code] += 1
                    where = (case.method, case.formatted_path if hasattr(case, "formatted_path") else case.path)
                    if response.status_code == 503 and _documented_503(response):
                        stats.documented_503 += 1
                    elif response.status_code >= 500:
                        stats.server_errors.append((*where, response.status_code, response.text[:300]))
                    elif response.status_code >= 400 and store.max_position() != before:
                        stats.appended_by_rejected.append((*where, response.status_code))

                try:
                    probe()
                except Unsatisfiable:  # nothing in this operation can be made invalid
                    stats.unsatisfiable += 1
    finally:
        store.close()
        session.close()
    return stats
