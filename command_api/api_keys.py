"""API clients by key, for a server that answers queries only and so keeps no write model:
a small fold of the log's ``api_client_created`` events, read with the database skipping
every other type (``EventStore.read_topics``). An unknown key re-reads the log's tail, at
most once a second, so a client created a moment ago by the command server is found."""

from __future__ import annotations

import hashlib
import time

from domain import events as ev
from domain.model import ApiClient
from infra.store import EventStore

REFRESH_SECONDS = 1.0


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class ApiKeyIndex:
    def __init__(self, store: EventStore):
        self.store = store
        self.by_key: dict[str, ApiClient] = {}
        self.position = 0
        self._refreshed = float("-inf")

    def refresh(self) -> None:
        upto = self.store.max_position()
        while self.position < upto:
            page = self.store.read_topics(self.position, upto, ["api_client_created"])
            for n in page:
                e = ev.decode(n.state)
                self.by_key[e.key_sha256] = ApiClient(
                    e.client_id, e.key_sha256, e.trusted, e.description, e.frontend_type
                )
            self.position = page[-1].id if page else upto
        self._refreshed = time.monotonic()

    def client_for_key(self, api_key: str | None) -> ApiClient | None:
        if not api_key:
            return None
        digest = key_digest(api_key)
        if digest not in self.by_key and time.monotonic() - self._refreshed >= REFRESH_SECONDS:
            self.refresh()
        return self.by_key.get(digest)
