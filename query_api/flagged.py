"""OA's moderation queue: messages reported or given a red flag (trusted clients).

The queue is the message-tree view's ``flagged`` table: a report or a red flag puts a
message in (again, unprocessed, dated now), ``POST .../processed`` (a command) marks it done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import get
from litestar.params import FromQuery, QueryParameter

from command_api.auth import trusted_client
from domain.errors import ErrorCode, OasstError
from domain.shapes import iso
from projections.message_tree import Flag, MessageTreeView
from query_api.common import CaughtUp
from query_api.messages import keyset_page, page_body


def flagged_dict(message_id: UUID, flag: Flag) -> dict:
    """OA's FlaggedMessageResponse."""
    return {"message_id": str(message_id), "processed": flag.processed, "created_date": iso(flag.created_date)}


def _key(item: tuple[UUID, Flag]) -> tuple[datetime, str]:
    return item[1].created_date, str(item[0])


def _cursor_key(view: MessageTreeView, cursor: str) -> tuple[datetime, str]:
    """A cursor is a flagged message's id (OA's ``id$date`` form is read too)."""
    try:
        mid = UUID(cursor.split("$", 1)[0])
    except ValueError:
        raise OasstError(f"invalid cursor {cursor!r}", ErrorCode.REQUEST_VALIDATION_FAILED, 422) from None
    flag = view.flagged.get(mid)
    if flag is None:
        raise OasstError(f"message {mid} is not flagged", ErrorCode.MESSAGE_NOT_FOUND)
    return _key((mid, flag))


@get(
    "/admin/flagged_messages",
    summary="Flagged (reported) messages, oldest first (trusted clients)",
    guards=[trusted_client],
)
async def flagged_messages(views: CaughtUp, max_count: FromQuery[int]) -> list[dict]:
    items = sorted(views.tree.flagged.rows.items(), key=_key)
    return [flagged_dict(mid, flag) for mid, flag in items[: max(max_count, 0)]]


@get(
    "/admin/flagged_messages/cursor", summary="Page through flagged messages (trusted clients)", guards=[trusted_client]
)
async def flagged_messages_cursor(
    views: CaughtUp,
    before: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    max_count: Annotated[int, QueryParameter(gt=0, le=1000)] = 10,
    desc: FromQuery[bool] = False,
) -> dict:
    view = views.tree
    page, prev, nxt = keyset_page(
        list(view.flagged.rows.items()),
        _key,
        lambda c: _cursor_key(view, c),
        lambda item: str(item[0]),
        before=before,
        after=after,
        desc=desc,
        max_count=max_count,
    )
    return page_body([flagged_dict(mid, flag) for mid, flag in page], prev, nxt, desc=desc)


flagged_handlers = [flagged_messages, flagged_messages_cursor]
