"""The Litestar application: routes, error bodies, OpenAPI docs, start and stop."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from command_api.api_keys import ApiKeyIndex
from command_api.auth import authenticated_client
from command_api.rate_limits import RateLimiter
from command_api.routes import command_handlers
from command_api.service import CommandService
from console.app import console_router, template_config
from console.session import Sessions
from domain.errors import ErrorCode, OasstError
from domain.model import ApiClient
from infra.checkpoints import Checkpoints
from infra.landing import landing
from infra.metrics import Metrics
from infra.metrics import metrics as metrics_route
from infra.settings import Settings
from infra.store import STORE_AWAY_ERRORS, EventStore
from projections.runner import ProjectionRunner
from query_api.backend_settings import settings_handlers
from query_api.boards import board_handlers
from query_api.cached_stats import cached_stats_handlers
from query_api.common import Views, views_stale_header
from query_api.flagged import flagged_handlers
from query_api.history import history
from query_api.log import list_events
from query_api.messages import message_handlers
from query_api.snapshots import snapshot_commands, snapshot_handlers
from query_api.trust import trust_handlers
from query_api.users import user_handlers

log = logging.getLogger("oasst")


def _oasst_error(_: Request, exc: OasstError) -> Response:
    headers = {"Retry-After": str(getattr(exc, "retry_after", 1))} if exc.status in (429, 503) else None
    return Response(exc.body(), status_code=exc.status, headers=headers)


def _store_away(request: Request, exc: Exception) -> Response:
    """A route that reads the store while its database is away (the log, history, an
    Idempotency-Key's first answer): 503 with Retry-After, as a command gets."""
    log.warning("the event store is unavailable: %s", exc)
    error = OasstError("the event store is unavailable; retry shortly", ErrorCode.STORE_UNAVAILABLE)
    return _oasst_error(request, error)


def _validation_error(_: Request, exc: ValidationException) -> Response:
    detail = "; ".join(str(e.get("message", e)) for e in (exc.extra or []) if isinstance(e, dict))
    message = f"{exc.detail}: {detail}" if detail else str(exc.detail)
    return Response({"error_code": int(ErrorCode.REQUEST_VALIDATION_FAILED), "message": message}, status_code=422)


def _http_error(_: Request, exc: HTTPException) -> Response:
    code = {
        400: ErrorCode.REQUEST_VALIDATION_FAILED,  # e.g. a body that is not JSON
        413: ErrorCode.REQUEST_TOO_LARGE,
        429: ErrorCode.TOO_MANY_REQUESTS,
    }.get(exc.status_code, ErrorCode.GENERIC_ERROR)
    return Response({"error_code": int(code), "message": str(exc.detail)}, status_code=exc.status_code)


def _server_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return Response({"error_code": int(ErrorCode.SERVER_ERROR0), "message": "internal server error"}, status_code=500)


# --- dependencies: what handlers declare as parameters -----------------------------------------
# Litestar resolves a handler's dependencies that do not depend on one another concurrently, in a
# task group: ~70 µs a request here (litestar#4563), as much as the rest of a request's routing.
# So those a handler declares together form a chain (service -> client -> rate_limiter | views),
# resolved one after another at a few µs each; a parameter marked "(order)" carries nothing else.


def _constant(value) -> Provide:
    """An app-wide object (resolved once, then cached)."""
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def _client(request: Request, service: NamedDependency[CommandService]) -> ApiClient:  # service: (order)
    return authenticated_client(request)


def _rate_limiter(state: State, client: NamedDependency[ApiClient]) -> RateLimiter:  # client: (order)
    return state.rate_limiter  # read per request: tests swap it before the app starts


def _dependencies(settings: Settings, service: CommandService, views: Views | None) -> dict[str, Provide]:
    deps = {
        "settings": _constant(settings),
        "service": _constant(service),
        "client": Provide(_client, sync_to_thread=False),  # the guard's (command_api/auth.py)
        "rate_limiter": Provide(_rate_limiter, sync_to_thread=False),
    }
    if views is not None:  # caught up with the caller's writes (query_api/common.py)
        deps["views"] = Provide(views.caught_up)
    return deps


def create_app(settings: Settings | None = None, only: str | None = None) -> Litestar:
    """Command and query routes on one app; ``only`` = "commands" or "queries" serves one side."""
    settings = settings or Settings.from_env()
    store = EventStore(settings.database_url)
    keeps_model = only != "queries"  # a queries-only server folds no write model
    on_disk = ":memory:" not in settings.database_url
    checkpoints = Checkpoints(settings.checkpoints_folder) if keeps_model and on_disk else None
    service = CommandService(settings, store, checkpoints=checkpoints)
    runner = ProjectionRunner(store) if only != "commands" else None
    if runner:
        service.on_commit.append(lambda position: runner.notify())
    last_writes: dict = {}  # API client id -> log position of its last acknowledged write
    views = Views(runner, settings.tree, last_writes) if runner else None

    @asynccontextmanager
    async def lifespan(app: Litestar):
        if keeps_model:
            await service.start()
        else:
            await asyncio.to_thread(app.state.api_keys.refresh)  # API keys without the write model
        if runner:
            await runner.start()
        relay = None
        if settings.kafka.bootstrap and only != "queries":  # publish the log to Kafka (issue #6)
            from infra.relay import serve_relay

            relay = await serve_relay(store, settings.kafka, service.on_commit)
        # The write model is millions of long-lived objects: keep them out of the cyclic
        # collector's passes, which otherwise stall requests (p99 halved in bench/ingest.py).
        # No collection first: at OA's size it took 1.1 s of start-up to find next to nothing.
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        try:
            yield
        finally:
            if runner:
                await runner.stop()
            await service.stop()
            if relay:
                await relay.stop()
            store.close()

    # One router for /api/v1: Litestar cannot merge two routers that share a path.
    commands = [*command_handlers, *snapshot_commands] if keeps_model else []
    queries = (
        [
            *message_handlers,
            *user_handlers,
            *board_handlers,
            *trust_handlers,
            *snapshot_handlers,
            *flagged_handlers,
            *settings_handlers,
            *cached_stats_handlers,
        ]
        if runner
        else []
    )
    handlers = [Router(path="/api/v1", route_handlers=[*commands, *queries]), list_events, metrics_route, landing]
    if runner:
        handlers.append(history)
    serves_console = runner is not None and keeps_model  # it reads the views and acts through commands
    if serves_console:
        handlers.append(console_router())
    metrics = Metrics()
    app = Litestar(
        route_handlers=handlers,
        dependencies=_dependencies(settings, service, views),
        middleware=[metrics.middleware],
        before_send=[views_stale_header] if runner else [],
        lifespan=[lifespan],
        exception_handlers={
            OasstError: _oasst_error,
            **dict.fromkeys(STORE_AWAY_ERRORS, _store_away),
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        openapi_config=OpenAPIConfig(
            title="oasst data engine",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        request_max_body_size=settings.max_body_bytes,
        template_config=template_config() if serves_console else None,
        debug=False,
    )
    app.state.service = service
    app.state.api_keys = service if keeps_model else ApiKeyIndex(store)
    app.state.rate_limiter = RateLimiter(enabled=settings.rate_limits)
    app.state.runner = runner
    app.state.metrics = metrics
    metrics.figures.state = app.state
    app.state.last_writes = last_writes  # noted by command_api/routes.respond
    app.state.settings = settings
    app.state.console_sessions = Sessions()
    return app
