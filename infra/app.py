"""The Litestar application: routes, error bodies, OpenAPI docs, start and stop."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from command_api.errors import ErrorCode, OasstError
from command_api.routes import command_router
from command_api.service import CommandService
from infra.settings import Settings
from infra.store import EventStore
from query_api.log import list_events

log = logging.getLogger("oasst")


def _oasst_error(_: Request, exc: OasstError) -> Response:
    return Response(exc.body(), status_code=exc.status)


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


def create_app(settings: Settings | None = None, only: str | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    store = EventStore(settings.database_url)
    service = CommandService(settings, store)

    @asynccontextmanager
    async def lifespan(app: Litestar):
        await service.start()
        # The write model is millions of long-lived objects: keep them out of the cyclic
        # collector's passes, which otherwise stall requests (p99 halved in bench/ingest.py).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        try:
            yield
        finally:
            await service.stop()
            store.close()

    handlers = [command_router, list_events]
    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        exception_handlers={
            OasstError: _oasst_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        openapi_config=OpenAPIConfig(
            title="oasst data engine", version="0.1.0", path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
    )
    app.state.service = service
    app.state.settings = settings
    return app
