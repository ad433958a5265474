"""OA's user read routes: users/ (by our id) and frontend_users/ (by auth method and name)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar import Request, get
from litestar.params import FromPath, FromQuery, QueryParameter

from command_api.auth import Client, api_client
from domain.errors import ErrorCode, OasstError
from domain.model import ApiClient
from domain.shapes import iso
from projections.leaderboard import TIME_FRAMES, LeaderboardView, leader_score, level
from projections.message_tree import MessageTreeView, UserRow
from query_api.common import (
    CaughtUp,
    Views,
    acting_user,
    frontend_user,
    message_dict,
    owner_filter,
    user_or_404,
)
from query_api.messages import cursor_page, keyset_page, list_messages, page_body

MaxCount = Annotated[int, QueryParameter(ge=1, le=10_000)]


def _visible_users(
    view: MessageTreeView,
    client,
    api_client_id: str | None,
    auth_method: str | None,
    search_text: str | None,
    search_field: str,
) -> list[UserRow]:
    """The users a client may list (its own; a trusted client may name another client), filtered;
    ``search_text`` is looked for in ``search_field`` (OA: the sort key)."""
    owner = owner_filter(client, api_client_id) or client.id
    needle = search_text.lower() if search_text else None
    return [
        u
        for u in view.users.values()
        if u.api_client_id == owner
        and (auth_method is None or u.auth_method == auth_method)
        and (needle is None or needle in getattr(u, search_field).lower())
    ]


def _sorted_page(
    users: list[UserRow],
    key: str,
    gte: str | None,
    lte: str | None,
    gt_id: str | None,
    lt_id: str | None,
    desc: bool,
    max_count: int,
) -> list[UserRow]:
    def k(u: UserRow):
        return (getattr(u, key), str(u.id))

    users = sorted(users, key=k, reverse=desc)
    if gte is not None:
        users = [
            u
            for u in users
            if (getattr(u, key), str(u.id)) > (gte, gt_id or "") or (getattr(u, key) == gte and gt_id is None)
        ]
    if lte is not None:
        users = [
            u
            for u in users
            if (getattr(u, key), str(u.id)) < (lte, lt_id or "\uffff") or (getattr(u, key) == lte and lt_id is None)
        ]
    return users[:max_count]


def _user_listing(key: str):
    def listing(
        views: Views,
        client: ApiClient,
        api_client_id: str | None,
        gte: str | None,
        gt_id: str | None,
        lte: str | None,
        lt_id: str | None,
        search_text: str | None,
        auth_method: str | None,
        max_count: int,
        desc: bool,
    ) -> list[dict]:
        users = _visible_users(views.tree, client, api_client_id, auth_method, search_text, key)
        board = views.board
        now = datetime.now(UTC)
        return [
            frontend_user(u, board.streak(u.id, now))
            for u in _sorted_page(users, key, gte, lte, gt_id, lt_id, desc, max_count)
        ]

    return listing


_list_by_username = _user_listing("username")
_list_by_display_name = _user_listing("display_name")


@get("/users/by_username", summary="Users ordered by username", guards=[api_client])
async def users_by_username(
    views: CaughtUp,
    client: Client,
    api_client_id: FromQuery[str | None] = None,
    gte_username: FromQuery[str | None] = None,
    gt_id: FromQuery[str | None] = None,
    lte_username: FromQuery[str | None] = None,
    lt_id: FromQuery[str | None] = None,
    search_text: FromQuery[str | None] = None,
    auth_method: FromQuery[str | None] = None,
    max_count: MaxCount = 100,
    desc: FromQuery[bool] = False,
) -> list[dict]:
    return _list_by_username(
        views,
        client,
        api_client_id,
        gte_username,
        gt_id,
        lte_username,
        lt_id,
        search_text,
        auth_method,
        max_count,
        desc,
    )


@get("/users/by_display_name", summary="Users ordered by display name", guards=[api_client])
async def users_by_display_name(
    views: CaughtUp,
    client: Client,
    api_client_id: FromQuery[str | None] = None,
    gte_display_name: FromQuery[str | None] = None,
    gt_id: FromQuery[str | None] = None,
    lte_display_name: FromQuery[str | None] = None,
    lt_id: FromQuery[str | None] = None,
    auth_method: FromQuery[str | None] = None,
    search_text: FromQuery[str | None] = None,
    max_count: MaxCount = 100,
    desc: FromQuery[bool] = False,
) -> list[dict]:
    return _list_by_display_name(
        views,
        client,
        api_client_id,
        gte_display_name,
        gt_id,
        lte_display_name,
        lt_id,
        search_text,
        auth_method,
        max_count,
        desc,
    )


@get("/users/cursor", summary="Page through users", guards=[api_client])
async def users_cursor(
    views: CaughtUp,
    client: Client,
    before: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    sort_key: FromQuery[str] = "username",
    max_count: MaxCount = 10,
    api_client_id: FromQuery[str | None] = None,
    search_text: FromQuery[str | None] = None,
    auth_method: FromQuery[str | None] = None,
) -> dict:
    if sort_key not in ("username", "display_name"):
        raise OasstError(f"unsupported sort key {sort_key!r}", ErrorCode.SORT_KEY_UNSUPPORTED)
    view = views.tree
    users = _visible_users(view, client, api_client_id, auth_method, search_text, sort_key)

    def key(u: UserRow):
        return (getattr(u, sort_key), str(u.id))

    def cursor_key(cursor: str):  # a user id (OA's "id$name" form is read too)
        return key(user_or_404(view, cursor.split("$", 1)[0]))

    page, prev, nxt = keyset_page(
        users, key, cursor_key, lambda u: str(u.id), before=before, after=after, desc=False, max_count=max_count
    )
    board, now = views.board, datetime.now(UTC)
    return page_body(
        [frontend_user(u, board.streak(u.id, now)) for u in page], prev, nxt, desc=False, sort_key=sort_key
    )


@get("/users/{user_id:str}", summary="A user", guards=[api_client])
async def get_user(
    views: CaughtUp, client: Client, user_id: FromPath[str], api_client_id: FromQuery[str | None] = None
) -> dict:
    user = user_or_404(views.tree, user_id, client, api_client_id)
    return frontend_user(user, views.board.streak(user.id, datetime.now(UTC)))


@get("/users/{user_id:str}/messages", summary="A user's messages", guards=[api_client])
async def user_messages(
    request: Request,
    views: CaughtUp,
    client: Client,
    user_id: FromPath[str],
    api_client_id: FromQuery[str | None] = None,
    max_count: MaxCount = 10,
    start_date: FromQuery[datetime | None] = None,
    end_date: FromQuery[datetime | None] = None,
    only_roots: FromQuery[bool] = False,
    desc: FromQuery[bool] = True,
    include_deleted: FromQuery[bool] = False,
    lang: FromQuery[str | None] = None,
) -> list[dict]:
    view = views.tree
    user = user_or_404(view, user_id, client, api_client_id)
    rows = list_messages(
        view,
        user=user.id,
        only_roots=only_roots,
        include_deleted=include_deleted,
        lang=lang,
        start=start_date,
        end=end_date,
        desc=desc,
        max_count=max_count,
    )
    me = acting_user(request, view, client)
    return [message_dict(view, m, me) for m in rows]


def _messages_page(
    request, view, client, user, before, after, desc, max_count, only_roots, include_deleted, lang
) -> dict:
    """One user's messages as OA's cursor page (both routes that page them, by id or by frontend name)."""
    return cursor_page(
        view,
        acting_user(request, view, client),
        before=before,
        after=after,
        desc=desc,
        max_count=max_count,
        include_user=False,
        user=user.id,
        only_roots=only_roots,
        include_deleted=include_deleted,
        lang=lang,
        start=None,
        end=None,
    )


@get("/users/{user_id:str}/messages/cursor", summary="Page through a user's messages", guards=[api_client])
async def user_messages_cursor(
    request: Request,
    views: CaughtUp,
    client: Client,
    user_id: FromPath[str],
    before: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    only_roots: FromQuery[bool] = False,
    include_deleted: FromQuery[bool] = False,
    max_count: MaxCount = 10,
    desc: FromQuery[bool] = False,
    lang: FromQuery[str | None] = None,
) -> dict:
    view = views.tree
    user = user_or_404(view, user_id, client)
    return _messages_page(
        request, view, client, user, before, after, desc, max_count, only_roots, include_deleted, lang
    )


def user_score(board: LeaderboardView, user: UserRow, frame: str, now: datetime, rank: int | None = None) -> dict:
    """OA's UserScore."""
    stats = board.stats(user.id, frame, now)
    score = leader_score(stats)
    streak_days, streak_date = board.streak(user.id, now)
    return {
        "rank": rank,
        "user_id": str(user.id),
        "highlighted": False,
        "username": user.username,
        "auth_method": user.auth_method,
        "display_name": user.display_name,
        "leader_score": score,
        "level": level(score),
        "base_date": None,
        "modified_date": iso(now),
        **stats,
        "streak_last_day_date": iso(streak_date),
        "streak_days": streak_days,
        "last_activity_date": iso(user.last_activity_date),
    }


def _frame(time_frame: str) -> str:
    if time_frame not in TIME_FRAMES:
        raise OasstError(f"time frame must be one of {TIME_FRAMES}", ErrorCode.REQUEST_VALIDATION_FAILED, 422)
    return time_frame


@get("/users/{user_id:str}/stats", summary="A user's scores in every time frame", guards=[api_client])
async def user_stats(views: CaughtUp, user_id: FromPath[str]) -> dict:
    user = user_or_404(views.tree, user_id)
    now = datetime.now(UTC)
    return {frame: user_score(views.board, user, frame, now) for frame in TIME_FRAMES}


@get("/users/{user_id:str}/stats/{time_frame:str}", summary="A user's score in one time frame", guards=[api_client])
async def user_stats_frame(views: CaughtUp, user_id: FromPath[str], time_frame: FromPath[str]) -> dict:
    user = user_or_404(views.tree, user_id)
    return user_score(views.board, user, _frame(time_frame), datetime.now(UTC))


@get("/users/{user_id:str}/stats/{time_frame:str}/window", summary="The leaderboard around a user", guards=[api_client])
async def user_stats_window(
    views: CaughtUp,
    client: Client,
    user_id: FromPath[str],
    time_frame: FromPath[str],
    window_size: Annotated[int, QueryParameter(ge=1, le=100)] = 5,
) -> dict:
    from query_api.boards import leaderboard_rows

    user = user_or_404(views.tree, user_id, client)
    rows, updated = leaderboard_rows(views, _frame(time_frame))
    index = next((i for i, r in enumerate(rows) if r["user_id"] == str(user.id)), None)
    window = [] if index is None else rows[max(0, index - window_size) : index + window_size + 1]
    for r in window:
        r["highlighted"] = r["user_id"] == str(user.id)
    return {"time_frame": time_frame, "last_updated": updated, "leaderboard": window}


def _frontend_user_or_404(view: MessageTreeView, client, auth_method: str, username: str, api_client_id):
    owner = owner_filter(client, api_client_id) or client.id
    uid = view.users_by_name.get((owner, auth_method, username))
    if uid is None:
        raise OasstError(f"user {auth_method}:{username} not found", ErrorCode.USER_NOT_FOUND)
    return view.users[uid]


@get("/frontend_users/", summary="List a client's users", guards=[api_client])
async def list_frontend_users(
    views: CaughtUp,
    client: Client,
    api_client_id: FromQuery[str | None] = None,
    gte_username: FromQuery[str | None] = None,
    gt_id: FromQuery[str | None] = None,
    lte_username: FromQuery[str | None] = None,
    lt_id: FromQuery[str | None] = None,
    search_text: FromQuery[str | None] = None,
    auth_method: FromQuery[str | None] = None,
    max_count: MaxCount = 100,
) -> list[dict]:
    return _list_by_username(
        views,
        client,
        api_client_id,
        gte_username,
        gt_id,
        lte_username,
        lt_id,
        search_text,
        auth_method,
        max_count,
        False,
    )


@get("/frontend_users/{auth_method:str}/{username:str}", summary="A user by frontend identity", guards=[api_client])
async def get_frontend_user(
    views: CaughtUp,
    client: Client,
    auth_method: FromPath[str],
    username: FromPath[str],
    api_client_id: FromQuery[str | None] = None,
) -> dict:
    user = _frontend_user_or_404(views.tree, client, auth_method, username, api_client_id)
    return frontend_user(user, views.board.streak(user.id, datetime.now(UTC)))


@get(
    "/frontend_users/{auth_method:str}/{username:str}/messages",
    summary="A frontend user's messages",
    guards=[api_client],
)
async def frontend_user_messages(
    request: Request,
    views: CaughtUp,
    client: Client,
    auth_method: FromPath[str],
    username: FromPath[str],
    api_client_id: FromQuery[str | None] = None,
    max_count: MaxCount = 10,
    start_date: FromQuery[datetime | None] = None,
    end_date: FromQuery[datetime | None] = None,
    only_roots: FromQuery[bool] = False,
    desc: FromQuery[bool] = True,
    include_deleted: FromQuery[bool] = False,
    lang: FromQuery[str | None] = None,
) -> list[dict]:
    view = views.tree
    user = _frontend_user_or_404(view, client, auth_method, username, api_client_id)
    rows = list_messages(
        view,
        user=user.id,
        only_roots=only_roots,
        include_deleted=include_deleted,
        lang=lang,
        start=start_date,
        end=end_date,
        desc=desc,
        max_count=max_count,
    )
    return [message_dict(view, m, acting_user(request, view, client)) for m in rows]


@get(
    "/frontend_users/{auth_method:str}/{username:str}/messages/cursor",
    summary="Page a frontend user's messages",
    guards=[api_client],
)
async def frontend_user_messages_cursor(
    request: Request,
    views: CaughtUp,
    client: Client,
    auth_method: FromPath[str],
    username: FromPath[str],
    before: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
    only_roots: FromQuery[bool] = False,
    include_deleted: FromQuery[bool] = False,
    max_count: MaxCount = 10,
    desc: FromQuery[bool] = False,
    lang: FromQuery[str | None] = None,
) -> dict:
    view = views.tree
    user = _frontend_user_or_404(view, client, auth_method, username, None)
    return _messages_page(
        request, view, client, user, before, after, desc, max_count, only_roots, include_deleted, lang
    )


user_handlers = [
    users_by_username,
    users_by_display_name,
    users_cursor,
    get_user,
    user_messages,
    user_messages_cursor,
    user_stats,
    user_stats_frame,
    user_stats_window,
    list_frontend_users,
    get_frontend_user,
    frontend_user_messages,
    frontend_user_messages_cursor,
]
