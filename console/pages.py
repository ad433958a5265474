"""The console's pages (GET): each reads through the query API and renders a template.
Every page is a deep link; none needs JavaScript."""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import File, Template

from command_api.routes import Service
from console import preview, reads
from console.session import signed_in
from projections.leaderboard import TIME_FRAMES
from query_api.common import CaughtUp, OptionalPosition
from query_api.snapshots import get_snapshot, get_snapshot_file, list_snapshots

SIGNED_IN = [signed_in]
Step = Annotated[int | None, QueryParameter(ge=0)]
NOTICES = {
    "marked": "Marked spammer: their votes no longer count, their messages are hidden.",
    "unmarked": "Spammer mark undone: their votes count again.",
    "processed": "Taken off the moderation queue.",
    "deleted": "Message deleted (its subtree is hidden).",
    "undeleted": "Message restored (with its ancestors).",
    "halted": "Tree halted.",
    "resumed": "Tree resumed.",
}


def page(request: Request, name: str, **context) -> Template:
    """A template with what every page shows: the CSRF token for its forms and a notice."""
    session = request.state.console_session
    notice = NOTICES.get(request.query_params.get("done", ""))
    return Template(
        template_name=name,
        context={"csrf_token": session.csrf, "notice": notice, "path": request.url.path, **context},
    )


@get("/", guards=SIGNED_IN)
async def overview_page(request: Request, views: CaughtUp, service: Service) -> Template:
    return page(request, "overview.html", **await reads.overview(views, service))


@get("/trees/{message_id:str}", guards=SIGNED_IN)
async def tree_page(
    request: Request, views: CaughtUp, message_id: FromPath[str], at: OptionalPosition = None, step: Step = None
) -> Template:
    return page(request, "tree.html", **await reads.tree(views, message_id, at, step))


@get("/users", guards=SIGNED_IN)
async def users_page(request: Request, views: CaughtUp, q: FromQuery[str] = "") -> Template:
    found = reads.users_like(views, q) if q else []
    suspects = await reads.suspected(views)
    return page(request, "users.html", q=q, found=found, suspects=suspects)


@get("/users/{user_id:str}", guards=SIGNED_IN)
async def user_page(
    request: Request,
    views: CaughtUp,
    service: Service,
    user_id: FromPath[str],
    before: OptionalPosition = None,
    preview_mark: FromQuery[str | None] = None,
) -> Template:
    data = await reads.user(views, user_id, before)
    planned = effect = None
    if preview_mark in ("mark", "unmark"):  # the command side's dry run, then its effect on the board
        planned = service.spam_mark_preview(user_id, preview_mark == "mark")
        effect = preview.board_effect(views, planned)
    return page(request, "user.html", **data, preview=planned, effect=effect)


@get("/messages/{message_id:str}", guards=SIGNED_IN)
async def message_page(request: Request, views: CaughtUp, message_id: FromPath[str]) -> Template:
    return page(request, "message.html", **await reads.message(views, message_id))


@get("/flagged", guards=SIGNED_IN)
async def flagged_page(request: Request, views: CaughtUp, show: FromQuery[str] = "open") -> Template:
    return page(request, "flagged.html", items=reads.flagged(views, show == "all"), show=show)


@get("/boards", guards=SIGNED_IN)
async def boards_page(request: Request, views: CaughtUp, frame: FromQuery[str] = "total") -> Template:
    frame = frame if frame in TIME_FRAMES else "total"
    return page(request, "boards.html", frame=frame, **await reads.boards(views, frame))


@get("/snapshots", guards=SIGNED_IN)
async def snapshots_page(request: Request, settings: reads.SettingsDep) -> Template:
    return page(request, "snapshots.html", snapshots=await list_snapshots.fn(settings=settings))


@get("/snapshots/{snapshot_id:str}", guards=SIGNED_IN)
async def snapshot_page(request: Request, settings: reads.SettingsDep, snapshot_id: FromPath[str]) -> Template:
    manifest = await get_snapshot.fn(settings=settings, snapshot_id=snapshot_id)
    return page(request, "snapshot.html", manifest=manifest)


@get("/log", guards=SIGNED_IN)
async def log_page(request: Request, views: CaughtUp, service: Service, at: OptionalPosition = None) -> Template:
    """The log around a position: a URL per position."""
    head = service.model.position
    at = head if at is None else min(at, head)
    return page(request, "log.html", at=at, head=head, lines=await reads.log_around(views, at))


@get("/snapshots/{snapshot_id:str}/files/{name:str}", guards=SIGNED_IN)
async def snapshot_file(settings: reads.SettingsDep, snapshot_id: FromPath[str], name: FromPath[str]) -> File:
    """A snapshot file under the session (the API's route wants the key in a header)."""
    return await get_snapshot_file.fn(settings=settings, snapshot_id=snapshot_id, name=name)


read_pages = [
    overview_page,
    tree_page,
    users_page,
    user_page,
    message_page,
    flagged_page,
    boards_page,
    snapshots_page,
    snapshot_page,
    log_page,
    snapshot_file,
]
