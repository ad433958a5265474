"""Litestar routes of the write side, at Open-Assistant's paths and payloads."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from litestar import Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from command_api.auth import Client, IdempotencyKey, api_client, trusted_client
from command_api.rate_limits import RateLimiter
from command_api.service import CommandService, Result
from domain import protocol as p
from domain.errors import ErrorCode, OasstError

JSON = "application/json"
Service = NamedDependency[CommandService]  # the ``service`` dependency (infra/app.py)


def note_write(request: Request, result: Result) -> None:
    """The client's last write: its next read waits until the views show it."""
    client = getattr(request.state, "api_client", None)
    if client is not None:
        last_writes = request.app.state.last_writes
        if result.position > last_writes.get(client.id, 0):
            last_writes[client.id] = result.position


def respond(request: Request, result: Result) -> Response:
    """A command's reply with the route's status (OA's: 200, 202 or 204) and its log position.
    The position is also noted as the client's last write, so that its next read waits for
    it (read-your-writes without asking: OA's clients never send ``min_position``)."""
    status = request.route_handler.status_code
    note_write(request, result)
    return Response(
        content=result.body if status != 204 else None,
        status_code=status,
        media_type=JSON,
        headers={"X-Log-Position": str(result.position)},
    )


@post("/tasks/", status_code=200, summary="Request a task", guards=[api_client])
async def request_task(
    request: Request,
    data: JSONBody[p.TaskRequest],
    service: Service,
    client: Client,
    rate_limiter: NamedDependency[RateLimiter],
    ikey: IdempotencyKey = None,
) -> Response:
    who = (client.id, data.user.auth_method, data.user.id) if data.user else (client.id,)
    rate_limiter.task_request(who, data.type)
    return respond(request, await service.request_task(client, data, ikey))


@post("/tasks/availability", status_code=200, summary="Count the tasks a user could get", guards=[api_client])
async def task_availability(
    data: JSONBody[p.User], service: Service, client: Client, lang: FromQuery[str | None] = None
) -> dict[str, int]:
    return service.availability(client, data, lang)


@post("/tasks/{task_id:str}/ack", status_code=204, summary="Acknowledge a task", guards=[api_client])
async def ack_task(
    request: Request,
    task_id: FromPath[str],
    data: JSONBody[p.TaskAck],
    service: Service,
    client: Client,
    ikey: IdempotencyKey = None,
) -> Response[None]:
    return respond(request, await service.ack(client, task_id, data, ikey))


@post("/tasks/{task_id:str}/nack", status_code=204, summary="Skip a task", guards=[api_client])
async def nack_task(
    request: Request,
    task_id: FromPath[str],
    data: JSONBody[p.TaskNAck],
    service: Service,
    client: Client,
    ikey: IdempotencyKey = None,
) -> Response[None]:
    return respond(request, await service.nack(client, task_id, data, ikey))


@post("/tasks/interaction", status_code=200, summary="Submit a task's result", guards=[api_client])
async def interaction(
    request: Request, data: JSONBody[p.Interaction], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response:
    return respond(request, await service.interaction(client, data, ikey))


@post("/tasks/close", status_code=200, summary="Close a task", guards=[api_client])
async def close_task(
    request: Request, data: JSONBody[p.TaskClose], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response:
    return respond(request, await service.close(client, data, ikey))


@post("/text_labels/", status_code=204, summary="Label or report a message without a task", guards=[api_client])
async def text_labels(
    request: Request, data: JSONBody[p.TextLabels], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response[None]:
    return respond(request, await service.free_labels(client, data, ikey))


@post("/messages/{message_id:str}/emoji", status_code=202, summary="Add or remove a reaction", guards=[api_client])
async def message_emoji(
    request: Request,
    message_id: FromPath[str],
    data: JSONBody[p.MessageEmojiRequest],
    service: Service,
    client: Client,
    ikey: IdempotencyKey = None,
) -> Response:
    return respond(request, await service.emoji(client, message_id, data, ikey))


@post(
    "/admin/import",
    status_code=200,
    summary="Import oasst trees or messages (trusted clients)",
    request_max_body_size=64_000_000,
    guards=[trusted_client],
)
async def import_oasst(
    request: Request, data: JSONBody[p.ImportRequest], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response:
    from infra.oasst_format import FormatError, parse_items

    try:
        trees = parse_items(enumerate(data.items, 1))
    except FormatError as e:
        raise OasstError(f"not an oasst file: {e}", ErrorCode.REQUEST_VALIDATION_FAILED) from None
    return respond(request, await service.import_trees(client, data.origin, trees, ikey))


@delete("/messages/{message_id:str}", status_code=204, summary="Delete a message (moderators)", guards=[trusted_client])
async def delete_message(
    request: Request, message_id: FromPath[str], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response[None]:
    return respond(request, await service.delete_message(client, message_id, ikey))


@put(
    "/messages/{message_id:str}/undelete",
    status_code=202,
    summary="Undelete a message (moderators)",
    guards=[trusted_client],
)
async def undelete_message(
    request: Request, message_id: FromPath[str], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response:
    return respond(request, await service.undelete_message(client, message_id, ikey))


@put(
    "/messages/{message_id:str}/tree/state",
    status_code=200,
    summary="Halt or resume a tree (moderators)",
    guards=[trusted_client],
)
async def put_tree_state(
    request: Request,
    message_id: FromPath[str],
    halt: FromQuery[bool],
    service: Service,
    client: Client,
    ikey: IdempotencyKey = None,
) -> Response:
    return respond(request, await service.set_tree_halted(client, message_id, halt, ikey))


@put("/users/{user_id:str}", status_code=204, summary="Update a user (moderators)", guards=[trusted_client])
async def update_user(
    request: Request,
    user_id: FromPath[str],
    service: Service,
    client: Client,
    enabled: FromQuery[bool | None] = None,
    notes: FromQuery[str | None] = None,
    show_on_leaderboard: FromQuery[bool | None] = None,
    tos_acceptance: FromQuery[bool | None] = None,
    display_name: FromQuery[str | None] = None,
    ikey: IdempotencyKey = None,
) -> Response[None]:
    return respond(
        request,
        await service.update_user(
            client, user_id, enabled, notes, show_on_leaderboard, tos_acceptance, ikey, display_name=display_name
        ),
    )


@delete(
    "/users/{user_id:str}", status_code=204, summary="Delete (anonymise) a user (moderators)", guards=[trusted_client]
)
async def delete_user(
    request: Request, user_id: FromPath[str], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response[None]:
    return respond(request, await service.delete_user(client, user_id, ikey))


@post(
    "/admin/purge_user/{user_id:str}",
    status_code=200,
    summary="Mark a user a spammer (preview: counts only)",
    guards=[trusted_client],
)
async def purge_user(
    request: Request,
    user_id: FromPath[str],
    service: Service,
    client: Client,
    preview: FromQuery[bool] = True,
    ban: FromQuery[bool] = True,
    ikey: IdempotencyKey = None,
) -> Response:
    return respond(request, await service.purge_user(client, user_id, preview, ban, ikey))


@post("/admin/users/{user_id:str}/spammer", status_code=204, summary="Mark a user a spammer", guards=[trusted_client])
async def mark_spammer(
    request: Request, user_id: FromPath[str], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response[None]:
    return respond(request, await service.set_spammer(client, user_id, True, ikey=ikey))


@delete("/admin/users/{user_id:str}/spammer", status_code=204, summary="Unmark a spammer", guards=[trusted_client])
async def unmark_spammer(
    request: Request, user_id: FromPath[str], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response[None]:
    return respond(request, await service.set_spammer(client, user_id, False, ikey=ikey))


@post(
    "/admin/users/{user_id:str}/erase",
    status_code=204,
    summary="Erase a user: destroy their key, so their texts and display name read as erased (trusted clients)",
    guards=[trusted_client],
)
async def erase_user(
    request: Request,
    user_id: FromPath[str],
    service: Service,
    client: Client,
    reason: FromQuery[str] = "",
    ikey: IdempotencyKey = None,
) -> Response[None]:
    return respond(request, await service.erase_user(client.id, user_id, reason, ikey))


@get(
    "/admin/users/{user_id:str}/spammer/preview",
    summary="What marking (spammer=true) or unmarking a spammer would re-decide; appends nothing",
    guards=[trusted_client],
)
async def preview_spammer(service: Service, user_id: FromPath[str], spammer: FromQuery[bool] = True) -> dict:
    return service.spam_mark_preview(user_id, spammer)


@post("/admin/api_client", status_code=200, summary="Create an API client (root token); returns its key")
async def create_api_client(request: Request, data: JSONBody[p.CreateApiClientRequest], service: Service) -> Response:
    token = service.settings.root_token
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        raise OasstError("the root token is missing or wrong", ErrorCode.ROOT_TOKEN_NOT_AUTHORIZED)
    return respond(request, await service.create_api_client(data))


@post("/frontend_users/", status_code=200, summary="Create or update a frontend user", guards=[api_client])
async def create_frontend_user(
    request: Request,
    data: JSONBody[p.CreateFrontendUserRequest],
    service: Service,
    client: Client,
    ikey: IdempotencyKey = None,
) -> Response:
    return respond(request, await service.create_frontend_user(client, data, ikey))


# --- moderation (issue #14): edits, a user's messages, the flagged queue, merging users -------------


@post(
    "/messages/{message_id:str}/edit",
    status_code=200,
    summary="Edit a message: a new revision (trusted clients)",
    guards=[trusted_client],
)
async def edit_message(
    request: Request,
    message_id: FromPath[str],
    data: JSONBody[p.MessageEditRequest],
    service: Service,
    client: Client,
    ikey: IdempotencyKey = None,
) -> Response:
    return respond(request, await service.edit_message(client, message_id, data, ikey))


@delete(
    "/users/{user_id:str}/messages",
    status_code=204,
    summary="Mark all of a user's messages deleted (moderators)",
    guards=[trusted_client],
)
async def delete_user_messages(
    request: Request, user_id: FromPath[str], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response[None]:
    return respond(request, await service.delete_user_messages(client, user_id=user_id, ikey=ikey))


@delete(
    "/frontend_users/{auth_method:str}/{username:str}/messages",
    status_code=204,
    summary="Mark all of a frontend user's messages deleted (moderators)",
    guards=[trusted_client],
)
async def delete_frontend_user_messages(
    request: Request,
    auth_method: FromPath[str],
    username: FromPath[str],
    service: Service,
    client: Client,
    ikey: IdempotencyKey = None,
) -> Response[None]:
    return respond(
        request, await service.delete_user_messages(client, auth_method=auth_method, username=username, ikey=ikey)
    )


def _utc(at: datetime | None) -> datetime | None:
    """Dates without a zone are UTC (as OA reads them)."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


@post(
    "/admin/purge_user/{user_id:str}/messages",
    status_code=200,
    summary="Mark a user's messages deleted, replies only unless purge_initial_prompts (preview: counts only)",
    guards=[trusted_client],
)
async def purge_user_messages(
    request: Request,
    user_id: FromPath[str],
    service: Service,
    client: Client,
    purge_initial_prompts: FromQuery[bool] = False,
    min_date: FromQuery[datetime | None] = None,
    max_date: FromQuery[datetime | None] = None,
    preview: FromQuery[bool] = True,
    ikey: IdempotencyKey = None,
) -> Response:
    return respond(
        request,
        await service.purge_user_messages(
            client, user_id, purge_initial_prompts, _utc(min_date), _utc(max_date), preview, ikey
        ),
    )


@post(
    "/admin/flagged_messages/{message_id:str}/processed",
    status_code=200,
    summary="Mark a flagged (reported) message processed",
    guards=[trusted_client],
)
async def process_flagged_message(
    request: Request, message_id: FromPath[str], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response:
    return respond(request, await service.process_flagged(client, message_id, ikey))


@post(
    "/admin/merge_users",
    status_code=204,
    summary="Merge users into one (their contributions follow)",
    guards=[trusted_client],
)
async def merge_users(
    request: Request, data: JSONBody[p.MergeUsersRequest], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response[None]:
    return respond(request, await service.merge_users(client, data, ikey))


command_handlers = [
    request_task,
    task_availability,
    ack_task,
    nack_task,
    interaction,
    close_task,
    text_labels,
    message_emoji,
    delete_message,
    undelete_message,
    put_tree_state,
    update_user,
    delete_user,
    purge_user,
    mark_spammer,
    unmark_spammer,
    preview_spammer,
    erase_user,
    create_api_client,
    create_frontend_user,
    import_oasst,
    edit_message,
    delete_user_messages,
    delete_frontend_user_messages,
    purge_user_messages,
    process_flagged_message,
    merge_users,
]
