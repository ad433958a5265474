"""The console's actions (POST): each is a plain HTML form carrying the session's CSRF token,
runs one command of the command service as the signed-in API client (so it is an event with
the moderator's client as actor), notes the write for read-your-writes, and redirects back to a
page (post/redirect/get) that waits until the views show it."""

from __future__ import annotations

from litestar import Request, post
from litestar.params import FromPath
from litestar.response import Redirect

from command_api.routes import Service, note_write
from command_api.service import Result
from console.session import checked_form, signed_in

SIGNED_IN = [signed_in]


def done(request: Request, result: Result, to: str, notice: str) -> Redirect:
    """Redirect after a command; the client's next read waits for its events (as the API's ``respond`` notes)."""
    note_write(request, result)
    return Redirect(path=f"{to}{'&' if '?' in to else '?'}done={notice}", status_code=303)


def back_to(form: dict, default: str) -> str:
    """Where the form came from, if it is one of the console's pages."""
    to = form.get("back", "")
    return to if to.startswith("/console/") and "//" not in to else default


@post("/users/{user_id:str}/spammer", guards=SIGNED_IN)
async def mark_spammer(request: Request, service: Service, user_id: FromPath[str]) -> Redirect:
    await checked_form(request)
    result = await service.set_spammer(request.state.api_client, user_id, True)
    return done(request, result, f"/console/users/{user_id}", "marked")


@post("/users/{user_id:str}/unspammer", guards=SIGNED_IN)
async def unmark_spammer(request: Request, service: Service, user_id: FromPath[str]) -> Redirect:
    """The undo of a spam mark."""
    await checked_form(request)
    result = await service.set_spammer(request.state.api_client, user_id, False)
    return done(request, result, f"/console/users/{user_id}", "unmarked")


@post("/flagged/{message_id:str}/processed", guards=SIGNED_IN)
async def process_flagged(request: Request, service: Service, message_id: FromPath[str]) -> Redirect:
    form = await checked_form(request)
    result = await service.process_flagged(request.state.api_client, message_id)
    return done(request, result, back_to(form, "/console/flagged"), "processed")


@post("/messages/{message_id:str}/delete", guards=SIGNED_IN)
async def delete_message(request: Request, service: Service, message_id: FromPath[str]) -> Redirect:
    form = await checked_form(request)
    result = await service.delete_message(request.state.api_client, message_id)
    return done(request, result, back_to(form, f"/console/messages/{message_id}"), "deleted")


@post("/messages/{message_id:str}/undelete", guards=SIGNED_IN)
async def undelete_message(request: Request, service: Service, message_id: FromPath[str]) -> Redirect:
    form = await checked_form(request)
    result = await service.undelete_message(request.state.api_client, message_id)
    return done(request, result, back_to(form, f"/console/messages/{message_id}"), "undeleted")


@post("/trees/{message_id:str}/halt", guards=SIGNED_IN)
async def halt_tree(request: Request, service: Service, message_id: FromPath[str]) -> Redirect:
    await checked_form(request)
    result = await service.set_tree_halted(request.state.api_client, message_id, True)
    return done(request, result, f"/console/trees/{message_id}", "halted")


@post("/trees/{message_id:str}/resume", guards=SIGNED_IN)
async def resume_tree(request: Request, service: Service, message_id: FromPath[str]) -> Redirect:
    await checked_form(request)
    result = await service.set_tree_halted(request.state.api_client, message_id, False)
    return done(request, result, f"/console/trees/{message_id}", "resumed")


actions = [
    mark_spammer,
    unmark_spammer,
    process_flagged,
    delete_message,
    undelete_message,
    halt_tree,
    resume_tree,
]
