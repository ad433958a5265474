"""History for moderators: the events that concern a user, a tree or a message."""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID

from litestar import get
from litestar.params import FromQuery, QueryParameter

from command_api.auth import trusted_client
from domain import events as ev
from domain.errors import ErrorCode, OasstError
from query_api.common import CaughtUp, OptionalPosition


@get(
    "/api/v1/history",
    tags=["history"],
    summary="Events concerning a user, tree or message (trusted)",
    guards=[trusted_client],
)
async def history(
    views: CaughtUp,
    user: FromQuery[str | None] = None,
    tree: FromQuery[str | None] = None,
    message: FromQuery[str | None] = None,
    until: OptionalPosition = None,
    limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
) -> dict:
    given = [v for v in (user, tree, message) if v]
    if len(given) != 1:
        raise OasstError("give exactly one of user, tree, message", ErrorCode.REQUEST_VALIDATION_FAILED, 422)
    try:
        entity = str(UUID(given[0]))
    except ValueError:
        raise OasstError(f"{given[0]!r} is not an id", ErrorCode.REQUEST_VALIDATION_FAILED, 422) from None
    events = await events_concerning(views.runner, entity, until, limit)
    for item in events:
        del item["raw"]
    return {"entity": entity, "events": events}


async def events_concerning(runner, entity: str, until: int | None = None, limit: int = 10_000) -> list[dict]:
    return await events_at(runner, (await positions_concerning(runner, entity, until, limit))[:limit])


async def positions_concerning(runner, entity: str, until: int | None = None, limit: int = 10_000) -> list[int]:
    """The log positions of the events concerning ``entity``, oldest first (the first ``limit``
    stored ones, and those folded but not yet stored)."""
    view = runner.by_name["history"]
    pending = view.unflushed(entity, until)  # taken before the read, so nothing falls in between
    stored = await asyncio.to_thread(runner.storage.history, view.key, entity, until, limit)
    return sorted(set(stored) | set(pending))


async def events_at(runner, positions: list[int]) -> list[dict]:
    """The events at these positions, decoded, with their actors."""
    notes = await asyncio.to_thread(runner.store.read_positions, positions)
    out = []
    for n in notes:
        e = ev.decode(n.state)
        out.append(
            {
                "position": n.id,
                "type": n.topic,
                "at": e.at.isoformat(),
                "actor": {
                    "user_id": str(e.user_id) if e.user_id else None,
                    "api_client_id": str(e.api_client_id) if e.api_client_id else None,
                },
                "event": ev.to_builtins(e),
                "raw": n.state,
            }
        )
    return out
