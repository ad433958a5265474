"""Reading the log: ``GET /api/v1/events`` (trusted clients)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from litestar import Response, get
from litestar.params import QueryParameter

from command_api.auth import trusted_client
from command_api.routes import Service
from domain import events as ev
from query_api.common import Position


@get("/api/v1/events", tags=["log"], summary="Events after a position, in log order (trusted)", guards=[trusted_client])
async def list_events(
    service: Service,
    after: Position = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
) -> Response:
    store = service.store
    notes = await asyncio.to_thread(store.read_stored, after, limit)
    items = [
        {
            "position": n.id,
            "type": n.topic,
            "stream_id": str(n.originator_id),
            "stream_version": n.originator_version,
            "event": ev.to_builtins(ev.decode(n.state)),
        }
        for n in notes
    ]
    last = items[-1]["position"] if items else after
    return Response({"events": items, "last_position": last}, headers={"X-Log-Position": str(last)})
