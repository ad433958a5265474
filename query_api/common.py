"""What every read route needs: the views, caught up with the caller (read-your-writes),
and lookups shared by the routes. OA's response shapes are built in ``domain/shapes.py``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import Request
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.types import Message, Scope

from domain import shapes
from domain.config import TreeConfig
from domain.errors import ErrorCode, OasstError
from domain.model import ApiClient
from projections.consensus import ConsensusView
from projections.leaderboard import LeaderboardView
from projections.message_tree import MessageRow, MessageTreeView, UserRow
from projections.runner import ProjectionRunner
from projections.trust import TrustCache

READ_YOUR_WRITES_TIMEOUT = 2.0
# On a query answered while the views cannot follow the log (its database is away): seconds
# since they were last known to be at its end. Absent while they follow it.
STALE_HEADER = b"x-views-stale-seconds"
MAX_POSITION = 2**63 - 1  # the databases' 64-bit integers
Position = Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)]
OptionalPosition = Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)]


class ViewsBehind(OasstError):
    def __init__(self, position: int, reached: int):
        super().__init__(
            f"views are at position {reached}, not yet {position}; retry shortly",
            ErrorCode.VIEWS_BEHIND,
            503,
        )


class Views:
    """What the read routes answer from: the runner's views, the tree settings their answers
    show, and caches of what is costly to recompute. One per app; the ``views`` dependency
    (``caught_up``) hands it to a route once it has caught up with the caller."""

    def __init__(self, runner: ProjectionRunner, tree_config: TreeConfig, last_writes: dict[UUID, int]):
        self.runner = runner
        self.tree_config = tree_config
        self.last_writes = last_writes  # API client id -> its last acknowledged write (routes.respond)
        self.board_cache: dict = {}
        self.trust = TrustCache()

    @property
    def tree(self) -> MessageTreeView:
        return self.runner.by_name["message_tree"]

    @property
    def board(self) -> LeaderboardView:
        return self.runner.by_name["leaderboard"]

    @property
    def consensus(self) -> ConsensusView:
        return self.runner.by_name["consensus"]

    async def caught_up(self, client: NamedDependency[ApiClient], request: Request) -> Views:
        """Wait (bounded) until the views reached the client's own last write on this server
        (read-your-writes without asking) and any position the caller asks for with
        ``?min_position=`` or ``X-Min-Log-Position``. A client that wrote nothing waits for nothing."""
        runner = self.runner
        if not runner.ready.is_set():  # a server just started: its stored views are being loaded
            try:
                await asyncio.wait_for(runner.ready.wait(), READ_YOUR_WRITES_TIMEOUT)
            except TimeoutError:
                raise OasstError(
                    "the views are being loaded after a start; retry shortly", ErrorCode.VIEWS_BEHIND
                ) from None
        position = max(asked_position(request), self.last_writes.get(client.id, 0))
        if position > runner.position and not await runner.wait_for(position, READ_YOUR_WRITES_TIMEOUT):
            raise ViewsBehind(position, runner.position)
        stale = runner.stale_seconds()
        if stale is not None:
            request.state.views_stale = stale  # views_stale_header puts it on the answer
        return self


async def views_stale_header(message: Message, scope: Scope) -> None:
    """The app's before-send hook: a query answered from views that cannot follow the log says
    how stale they are (``STALE_HEADER``)."""
    if message["type"] == "http.response.start":
        stale = scope.get("state", {}).get("views_stale")
        if stale is not None:
            message["headers"] = [*message.get("headers", ()), (STALE_HEADER, b"%.1f" % stale)]


CaughtUp = NamedDependency[Views]  # the ``views`` dependency: ``Views.caught_up``


def asked_position(request: Request) -> int:
    wanted = request.query_params.get("min_position") or request.headers.get("x-min-log-position")
    if not wanted:
        return 0
    try:
        position = int(wanted)
        if not 0 <= position <= MAX_POSITION:
            raise ValueError(wanted)
    except ValueError:
        raise OasstError("min_position must be an integer", ErrorCode.REQUEST_VALIDATION_FAILED, 422) from None
    return position


def message_or_404(view: MessageTreeView, message_id: str | UUID) -> MessageRow:
    try:
        mid = message_id if isinstance(message_id, UUID) else UUID(message_id)
    except ValueError:
        mid = None
    m = view.messages.get(mid) if mid else None
    if m is None:
        raise OasstError(f"message {message_id} not found", ErrorCode.MESSAGE_NOT_FOUND)
    return m


def frontend_message_or_404(view: MessageTreeView, client: ApiClient, frontend_id: str) -> MessageRow:
    mid = view.by_frontend_id.get((client.id, frontend_id))
    if mid is None:
        raise OasstError(f"message {frontend_id!r} not found", ErrorCode.MESSAGE_NOT_FOUND)
    return view.messages[mid]


def parse_id(value: str | None, name: str) -> UUID | None:
    """An id from a query parameter (None if absent); 422 if it is not one."""
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise OasstError(f"{name} must be an id, not {value!r}", ErrorCode.REQUEST_VALIDATION_FAILED, 422) from None


def owner_filter(client: ApiClient, api_client_id: str | None) -> UUID | None:
    """Whose users and messages a client may list (OA's rule): an untrusted client only its
    own (asking for another client's is 403); a trusted one the client it names, or all (None)."""
    wanted = parse_id(api_client_id, "api_client_id")
    if not client.trusted:
        if wanted is not None and wanted != client.id:
            raise OasstError(
                "an untrusted API client sees its own users and messages only", ErrorCode.API_CLIENT_NOT_AUTHORIZED, 403
            )
        return client.id
    return wanted


def user_or_404(
    view: MessageTreeView, user_id: str, client: ApiClient | None = None, api_client_id: str | None = None
) -> UserRow:
    """A user by our id; with ``client``, only one that client may see (OA: untrusted
    clients resolve their own users only)."""
    try:
        user = view.users.get(UUID(user_id))
    except ValueError:
        user = None
    if user is not None and client is not None:
        owner = owner_filter(client, api_client_id)
        if owner is not None and user.api_client_id != owner:
            user = None
    if user is None:
        raise OasstError(f"user {user_id} not found", ErrorCode.USER_NOT_FOUND)
    return user


def acting_user(request: Request, view: MessageTreeView, client: ApiClient) -> UUID | None:
    """OA's ``x-oasst-user: <auth_method>:<username>`` header."""
    header = request.headers.get("x-oasst-user")
    if not header or ":" not in header:
        return None
    auth_method, username = header.split(":", 1)
    return view.users_by_name.get((client.id, auth_method, username))


def frontend_user(u: UserRow, streak: tuple[int, datetime | None] = (0, None)) -> dict:
    """OA's FrontEndUser from a user row (``streak``: the leaderboard view's)."""
    return shapes.frontend_user(u, created=u.created_date, last_activity=u.last_activity_date, streak=streak)


def message_dict(view: MessageTreeView, m: MessageRow, me: UUID | None = None, include_user: bool = False) -> dict:
    """OA's Message from the views; hidden (deleted) includes being below a deleted message."""
    out = shapes.message(m, me, created=m.created_date, deleted=view.is_hidden(m), ranking_count=m.ranking_count)
    if include_user and m.user_id and m.user_id in view.users:
        out["user"] = frontend_user(view.users[m.user_id])
    return out
