"""OA's message read routes, and their ``frontend_messages`` twins (frontend ids)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from litestar import Request, get
from litestar.params import FromPath, FromQuery, QueryParameter

from command_api.auth import Client, api_client, require_trusted
from domain import events as ev
from domain import shapes
from domain.errors import ErrorCode, OasstError
from domain.model import ApiClient
from domain.shapes import conversation_message, iso
from projections.message_tree import MessageRow, MessageTreeView
from query_api.common import (
    CaughtUp,
    OptionalPosition,
    Views,
    acting_user,
    frontend_message_or_404,
    message_dict,
    message_or_404,
    owner_filter,
    parse_id,
)
from query_api.history import events_concerning

MaxCount = Annotated[int, QueryParameter(ge=1, le=10_000)]


def _visible(view: MessageTreeView, m: MessageRow, include_deleted: bool, include_spam: bool = True) -> bool:
    if not include_deleted and view.is_hidden(m):
        return False
    return include_spam or m.review_result is not False


def _tree_messages(
    view: MessageTreeView, root: MessageRow, include_deleted: bool, include_spam: bool
) -> list[MessageRow]:
    tree = view.trees[root.tree_id]
    return [
        view.messages[i] for i in tree.message_ids if _visible(view, view.messages[i], include_deleted, include_spam)
    ]


def _live_children(view: MessageTreeView, m: MessageRow) -> list[MessageRow]:
    """Replies that are not hidden (a reply below a deleted message is hidden too)."""
    return [c for c in (view.messages[i] for i in m.children) if not view.is_hidden(c)]


def _descendants(view: MessageTreeView, m: MessageRow) -> list[MessageRow]:
    out, stack = [], [m]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(view.messages[c] for c in reversed(node.children))
    return out


def _resolve(request: Request, views: Views, client: ApiClient, message_id: str, frontend: bool):
    view = views.tree
    m = frontend_message_or_404(view, client, message_id) if frontend else message_or_404(view, message_id)
    return view, m, acting_user(request, view, client)


def _routes(frontend: bool):
    """The same reads, by our id (messages/) or by the frontend's id (frontend_messages/)."""
    get_message, conversation, children, descendants = _message_routes(frontend)
    tree, longest, max_children, tree_state = _tree_routes(frontend)
    handlers = [get_message, conversation, tree, children, descendants, longest, max_children]
    if tree_state is not None:
        handlers.append(tree_state)
    return handlers


def _message_routes(frontend: bool):
    """Reads of a message and its neighbours: itself, its thread, its replies, its subtree."""
    prefix = "/frontend_messages" if frontend else "/messages"

    @get(prefix + "/{message_id:str}", summary="A message", guards=[api_client])
    async def get_message(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> dict:
        view, m, me = _resolve(request, views, client, message_id, frontend)
        return message_dict(view, m, me)

    @get(
        prefix + "/{message_id:str}/conversation",
        summary="The thread from the prompt to this message",
        guards=[api_client],
    )
    async def conversation(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> dict:
        view, m, me = _resolve(request, views, client, message_id, frontend)
        return {"messages": [conversation_message(x, me) for x in view.thread(m)]}

    @get(prefix + "/{message_id:str}/children", summary="Direct replies", guards=[api_client])
    async def children(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> list[dict]:
        view, m, me = _resolve(request, views, client, message_id, frontend)
        return [message_dict(view, c, me) for c in _live_children(view, m)]

    @get(prefix + "/{message_id:str}/descendants", summary="The subtree under a message", guards=[api_client])
    async def descendants(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> dict:
        view, m, me = _resolve(request, views, client, message_id, frontend)
        return {
            "id": str(m.id),
            "messages": [message_dict(view, x, me) for x in _descendants(view, m) if not view.is_hidden(x)],
        }

    return get_message, conversation, children, descendants


def _tree_routes(frontend: bool):
    """Reads of a message's whole tree (and, by our id only, the tree's state)."""
    prefix = "/frontend_messages" if frontend else "/messages"

    @get(
        prefix + "/{message_id:str}/tree",
        summary="The whole tree of a message (trusted: ?at=POSITION replays it)",
        guards=[api_client],
    )
    async def tree(
        request: Request,
        message_id: FromPath[str],
        views: CaughtUp,
        client: Client,
        include_spam: FromQuery[bool] = True,
        include_deleted: FromQuery[bool] = False,
        at: OptionalPosition = None,
    ) -> dict:
        if at is not None:
            return await _tree_at(views, client, message_id, frontend, at, include_spam, include_deleted)
        view, m, me = _resolve(request, views, client, message_id, frontend)
        messages = _tree_messages(view, view.messages[m.tree_id], include_deleted, include_spam)
        return {"id": str(m.tree_id), "messages": [message_dict(view, x, me) for x in messages]}

    @get(
        prefix + "/{message_id:str}/longest_conversation_in_tree",
        summary="The deepest thread of the tree",
        guards=[api_client],
    )
    async def longest(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> dict:
        view, m, me = _resolve(request, views, client, message_id, frontend)
        live = _tree_messages(view, view.messages[m.tree_id], False, True)
        deepest = max(live, key=lambda x: (x.depth, x.created_date), default=None)
        return {"messages": [conversation_message(x, me) for x in view.thread(deepest)] if deepest else []}

    @get(
        prefix + "/{message_id:str}/max_children_in_tree",
        summary="The message with most replies, with them",
        guards=[api_client],
    )
    async def max_children(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> dict:
        view, m, me = _resolve(request, views, client, message_id, frontend)
        live = _tree_messages(view, view.messages[m.tree_id], False, True)
        if not live:  # the whole tree is deleted
            return {"id": str(m.tree_id), "messages": []}
        best = max(live, key=lambda x: (len(_live_children(view, x)), -x.depth))
        return {
            "id": str(best.id),
            "messages": [message_dict(view, x, me) for x in [best, *_live_children(view, best)]],
        }

    if frontend:
        return tree, longest, max_children, None

    @get(prefix + "/{message_id:str}/tree/state", summary="The tree's state and settings", guards=[api_client])
    async def tree_state(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> dict:
        view, m, _ = _resolve(request, views, client, message_id, frontend)
        return shapes.tree_state(view.trees[m.tree_id], views.tree_config)

    return tree, longest, max_children, tree_state


async def _tree_at(
    views: Views, client: ApiClient, message_id: str, frontend: bool, at: int, include_spam: bool, include_deleted: bool
) -> dict:
    """Time travel (trusted clients): fold only this tree's events up to position ``at``."""
    require_trusted(client)
    view = views.tree
    m = frontend_message_or_404(view, client, message_id) if frontend else message_or_404(view, message_id)
    past = replay(await events_concerning(views.runner, str(m.tree_id), at, limit=1_000_000), at)
    if m.tree_id not in past.trees:
        raise OasstError(f"the tree did not exist at position {at}", ErrorCode.NO_MESSAGE_TREE_FOUND)
    messages = _tree_messages(past, past.messages[m.tree_id], include_deleted, include_spam)
    return {
        "id": str(m.tree_id),
        "position": at,
        "state": past.trees[m.tree_id].state,
        "messages": [message_dict(past, x) for x in messages],
    }


def replay(history: list[dict], at: int) -> MessageTreeView:
    """A message-tree view folded from a tree's history (``events_concerning``) up to ``at``."""
    past = MessageTreeView()
    for item in history:
        if item["position"] <= at:
            past.apply(item["position"], ev.decode(item["raw"]))
    return past


def _utc(at: datetime | None) -> datetime | None:
    """Query dates without a zone are UTC (as OA reads them)."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


def search_terms(query: str | None) -> tuple[str, ...]:
    """OA's ``search_query`` (a PostgreSQL full-text match there): here every word of the
    query must occur in the text, case-insensitively (as a substring: no stemming)."""
    return tuple(query.casefold().split()) if query else ()


def _matches(
    m: MessageRow,
    *,
    user: UUID | None,
    only_roots: bool,
    include_deleted: bool,
    lang: str | None,
    start: datetime | None,
    end: datetime | None,
    view: MessageTreeView,
    api_client: UUID | None = None,
    search: tuple[str, ...] = (),
) -> bool:
    return (
        (user is None or m.user_id == user)
        and (api_client is None or m.api_client_id == api_client)
        and (not only_roots or m.parent_id is None)
        and (lang is None or m.lang == lang)
        and (start is None or m.created_date >= start)
        and (end is None or m.created_date <= end)
        and (include_deleted or not view.is_hidden(m))
        and (not search or all(word in m.text.casefold() for word in search))
    )


def list_messages(
    view: MessageTreeView,
    *,
    user: UUID | None = None,
    only_roots: bool = False,
    include_deleted: bool = False,
    lang: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    desc: bool = True,
    max_count: int = 10,
    api_client: UUID | None = None,
) -> list[MessageRow]:
    start, end = _utc(start), _utc(end)
    rows = [
        m
        for m in view.messages.values()
        if _matches(
            m,
            user=user,
            only_roots=only_roots,
            include_deleted=include_deleted,
            lang=lang,
            start=start,
            end=end,
            view=view,
            api_client=api_client,
        )
    ]
    rows.sort(key=lambda m: (m.created_date, str(m.id)), reverse=desc)
    return rows[:max_count]


def keyset_page(
    rows: list, key, cursor_key, cursor_of, *, before: str | None, after: str | None, desc: bool, max_count: int
) -> tuple[list, str | None, str | None]:
    """OA's cursor paging over ``rows`` in list order (ascending ``key``, or descending with
    ``desc``): ``after`` gives the items that follow the cursor in that order, ``before``
    those that precede it. ``prev``/``next`` are set, as OA sets them, only where paging on
    can find more (an empty page points back at the cursor it came from)."""
    rows = sorted(rows, key=key, reverse=desc)

    def follows(a, b) -> bool:  # does key a come after key b in list order?
        return a < b if desc else a > b

    if after:
        k = cursor_key(after)
        rows = [r for r in rows if follows(key(r), k)]
    if before:
        k = cursor_key(before)
        rows = [r for r in rows if follows(k, key(r))]
    more = len(rows) > max_count
    page = rows[-max_count:] if before and not after else rows[:max_count]
    if not page:
        return page, after or None, before or None
    prev = cursor_of(page[0]) if (more and before) or after else None
    nxt = cursor_of(page[-1]) if more or before else None
    return page, prev, nxt


def page_body(items: list, prev: str | None, nxt: str | None, *, desc: bool, sort_key: str = "created_date") -> dict:
    """OA's cursor page (MessagePage, FrontEndUserPage, FlaggedMessagePage)."""
    return {"prev": prev, "next": nxt, "sort_key": sort_key, "order": "desc" if desc else "asc", "items": items}


def cursor_page(
    view: MessageTreeView,
    me: UUID | None,
    *,
    before: str | None,
    after: str | None,
    desc: bool,
    max_count: int,
    include_user: bool,
    **filters,
) -> dict:
    """OA's MessagePage: keyset paging on (created_date, id); cursors are message ids
    (OA's ``id$date`` form is read too)."""
    rows = [m for m in view.messages.values() if _matches(m, view=view, **filters)]

    def cursor_key(cursor: str):
        m = message_or_404(view, cursor.split("$", 1)[0])
        return (m.created_date, str(m.id))

    page, prev, nxt = keyset_page(
        rows,
        lambda m: (m.created_date, str(m.id)),
        cursor_key,
        lambda m: str(m.id),
        before=before,
        after=after,
        desc=desc,
        max_count=max_count,
    )
    return page_body([message_dict(view, m, me, include_user) for m in page], prev, nxt, desc=desc)


@get("/messages/", summary="List messages", guards=[api_client])
async def messages_list(
    request: Request,
    views: CaughtUp,
    client: Client,
    auth_method: FromQuery[str | None] = None,
    username: FromQuery[str | None] = None,
    api_client_id: FromQuery[str | None] = None,
    max_count: MaxCount = 10,
    start_date: FromQuery[datetime | None] = None,
    end_date: FromQuery[datetime | None] = None,
    only_roots: FromQuery[bool] = False,
    desc: FromQuery[bool] = True,
    allow_deleted: FromQuery[bool] = False,
    lang: FromQuery[str | None] = None,
) -> list[dict]:
    view = views.tree
    owner = owner_filter(client, api_client_id)
    user = None
    if username:
        user = view.users_by_name.get((owner or client.id, auth_method or "local", username))
        if user is None:
            return []
    rows = list_messages(
        view,
        user=user,
        only_roots=only_roots,
        include_deleted=allow_deleted,
        lang=lang,
        start=start_date,
        end=end_date,
        desc=desc,
        max_count=max_count,
        api_client=owner,
    )
    me = acting_user(request, view, client)
    return [message_dict(view, m, me) for m in rows]


@get("/messages/cursor", summary="Page through messages", guards=[api_client])
async def messages_cursor(
    request: Request,
    views: CaughtUp,
    client: Client,
    before: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    user_id: FromQuery[str | None] = None,
    auth_method: FromQuery[str | None] = None,
    username: FromQuery[str | None] = None,
    only_roots: FromQuery[bool] = False,
    include_deleted: FromQuery[bool] = False,
    max_count: MaxCount = 10,
    desc: FromQuery[bool] = False,
    lang: FromQuery[str | None] = None,
    include_user: FromQuery[bool] = False,
    api_client_id: FromQuery[str | None] = None,
    search_query: FromQuery[str | None] = None,
) -> dict:
    view = views.tree
    owner = owner_filter(client, api_client_id)
    user = parse_id(user_id, "user_id")
    if username and user is None:
        user = view.users_by_name.get((owner or client.id, auth_method or "local", username))
        if user is None:
            return page_body([], None, None, desc=desc)
    return cursor_page(
        view,
        acting_user(request, view, client),
        before=before,
        after=after,
        desc=desc,
        max_count=max_count,
        include_user=include_user,
        user=user,
        only_roots=only_roots,
        include_deleted=include_deleted,
        lang=lang,
        start=None,
        end=None,
        api_client=owner,
        search=search_terms(search_query),
    )


@get(
    "/messages/{message_id:str}/history",
    summary="A message's revisions, the original first (once edited)",
    guards=[api_client],
)
async def message_history(request: Request, message_id: FromPath[str], views: CaughtUp, client: Client) -> list[dict]:
    view = views.tree
    m = message_or_404(view, message_id)
    me = acting_user(request, view, client)
    revisions = view.revisions.get(m.id)
    return [
        {
            "id": str(r.id),
            "text": r.text,
            "message_id": str(m.id),
            "user_id": str(r.user_id) if r.user_id else None,
            "created_date": iso(r.created_date),
            "user_is_author": me is not None and r.user_id == me,
        }
        for r in (revisions.items if revisions else ())
    ]


message_handlers = [messages_list, messages_cursor, *_routes(frontend=False), *_routes(frontend=True), message_history]
