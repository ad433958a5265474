"""What every read route needs: auth, the views, read-your-writes, OA's response shapes."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import Request
from litestar.params import QueryParameter

from domain.errors import ErrorCode, OasstError
from domain.model import ACTIVE_STATES, ApiClient
from projections.message_tree import MessageRow, MessageTreeView, UserRow
from projections.runner import ProjectionRunner

READ_YOUR_WRITES_TIMEOUT = 2.0
MAX_POSITION = 2**63 - 1  # the databases' 64-bit integers
Position = Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)]
OptionalPosition = Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)]


class ViewsBehind(OasstError):
    def __init__(self, position: int, reached: int):
        super().__init__(
            f"views are at position {reached}, not yet {position}; retry shortly",
            ErrorCode.VIEWS_BEHIND, 503,
        )


def runner_of(request: Request) -> ProjectionRunner:
    return request.app.state.runner


def client_of(request: Request, trusted: bool = False) -> ApiClient:
    from command_api.routes import authorize

    return authorize(request, trusted)


async def views(request: Request, trusted: bool = False) -> tuple[ApiClient, ProjectionRunner]:
    """Auth, then wait (bounded) until the views reached the client's own last write on this
    server (read-your-writes without asking) and any position the caller asks for with
    ``?min_position=`` or ``X-Min-Log-Position``. A client that wrote nothing waits for nothing."""
    client = client_of(request, trusted)
    runner = runner_of(request)
    if not runner.ready.is_set():  # a server just started: its stored views are being loaded
        try:
            await asyncio.wait_for(runner.ready.wait(), READ_YOUR_WRITES_TIMEOUT)
        except TimeoutError:
            raise OasstError("the views are being loaded after a start; retry shortly",
                             ErrorCode.VIEWS_BEHIND) from None
    position = max(asked_position(request), request.app.state.last_writes.get(client.id, 0))
    if position > runner.position and not await runner.wait_for(position, READ_YOUR_WRITES_TIMEOUT):
        raise ViewsBehind(position, runner.position)
    return client, runner


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


def tree_view(runner: ProjectionRunner) -> MessageTreeView:
    return runner.by_name["message_tree"]


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
            raise OasstError("an untrusted API client sees its own users and messages only",
                             ErrorCode.API_CLIENT_NOT_AUTHORIZED, 403)
        return client.id
    return wanted


def user_or_404(view: MessageTreeView, user_id: str, client: ApiClient | None = None,
                api_client_id: str | None = None) -> UserRow:
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


def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def frontend_user(u: UserRow, streak: tuple[int, datetime | None] = (0, None)) -> dict:
    return {
        "id": u.username, "display_name": u.display_name, "auth_method": u.auth_method, "user_id": str(u.id),
        "enabled": u.enabled, "deleted": u.deleted, "notes": u.notes, "created_date": iso(u.created_date),
        "show_on_leaderboard": u.show_on_leaderboard, "streak_days": streak[0],
        "streak_last_day_date": iso(streak[1]), "last_activity_date": iso(u.last_activity_date),
        "tos_acceptance_date": iso(u.tos_acceptance_date),
    }


def message_dict(view: MessageTreeView, m: MessageRow, me: UUID | None = None, include_user: bool = False) -> dict:
    """OA's Message: a ConversationMessage with its place in the tree and its review."""
    out = {
        **conversation_message(m, me),
        "parent_id": str(m.parent_id) if m.parent_id else None, "created_date": iso(m.created_date),
        # deleted: itself or below a deleted ancestor (OA marks the whole subtree deleted)
        "review_result": m.review_result, "review_count": m.review_count, "deleted": view.is_hidden(m),
        "model_name": m.model_name, "message_tree_id": str(m.tree_id), "ranking_count": m.ranking_count,
        "rank": m.rank, "edited": m.edited,
    }
    if include_user and m.user_id and m.user_id in view.users:
        out["user"] = frontend_user(view.users[m.user_id])
    return out


def conversation_message(m: MessageRow, me: UUID | None = None) -> dict:
    """OA's ConversationMessage."""
    return {
        "id": str(m.id), "user_id": str(m.user_id) if m.user_id else None,
        "frontend_message_id": m.frontend_message_id, "text": m.text, "lang": m.lang,
        "is_assistant": m.role == "assistant",
        "emojis": {k: len(v) for k, v in sorted(m.emojis.items()) if v and not k.startswith("_")},
        "user_emojis": sorted(k for k, v in m.emojis.items() if me is not None and me in v),
        "user_is_author": me is not None and m.user_id == me, "synthetic": m.synthetic,
    }


def tree_state_dict(view: MessageTreeView, tree_id: UUID, settings) -> dict:
    t = view.trees[tree_id]
    return {
        "message_tree_id": str(t.id), "state": t.state,
        "goal_tree_size": t.goal_tree_size or settings.tree.goal_tree_size,
        "max_depth": settings.tree.max_tree_depth, "max_children_count": settings.tree.max_children_count,
        "active": t.state in ACTIVE_STATES, "origin": t.origin,
    }
