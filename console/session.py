"""Signing in to the console: a trusted API client's key, kept on the server; the browser holds
only a random session token in an HttpOnly, SameSite=Strict cookie. Each session has its own
CSRF token, which every action's form must send back.

Untrusted keys are refused: the console shows every client's users, the moderation queue and
history, which only trusted clients may read through the API."""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException

from domain.model import ApiClient

COOKIE = "oasst_console"
MAX_SESSIONS = 10_000  # the oldest are dropped beyond this (sessions live in the serving process)


@dataclass(frozen=True)
class Session:
    token: str
    api_key: str
    csrf: str


class Sessions:
    """Sessions by token, in memory: a restart signs everyone out."""

    def __init__(self) -> None:
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def open(self, api_key: str) -> Session:
        session = Session(secrets.token_urlsafe(32), api_key, secrets.token_urlsafe(32))
        self._by_token[session.token] = session
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return session

    def get(self, token: str | None) -> Session | None:
        return self._by_token.get(token) if token else None

    def close(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)


class SignInRequired(HTTPException):
    """No session, or its key no longer names a trusted client: the console redirects to sign-in."""

    status_code = 401


class CsrfRejected(HTTPException):
    status_code = 403


def trusted_for_key(connection: ASGIConnection, api_key: str | None) -> ApiClient | None:
    client = connection.app.state.api_keys.client_for_key(api_key)
    return client if client is not None and client.trusted else None


async def signed_in(connection: ASGIConnection, _: Any) -> None:
    """The console's guard: a live session of a trusted client. Like the API's guards it puts
    the client on the connection, so the ``client`` and ``views`` dependencies work as for the
    API (read-your-writes included)."""
    session = connection.app.state.console_sessions.get(connection.cookies.get(COOKIE))
    client = trusted_for_key(connection, session.api_key) if session else None
    if client is None:
        raise SignInRequired("sign in with a trusted API client's key")
    connection.state.api_client = client
    connection.state.console_session = session


async def checked_form(request: Request) -> dict[str, str]:
    """An action's form, once its CSRF token matches the session's (403 otherwise)."""
    form = await request.form()
    session: Session = request.state.console_session
    sent = form.get("csrf_token") or ""
    if not hmac.compare_digest(str(sent).encode(), session.csrf.encode()):
        raise CsrfRejected("the form's CSRF token is missing or wrong: reload the page and try again")
    return dict(form)
