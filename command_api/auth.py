"""OA's API-key auth as Litestar guards, and what they establish as dependencies. Both sides
attach these guards (the read side imports this module, never the reverse)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.params import HeaderParameter

from domain.errors import ErrorCode, OasstError
from domain.model import ApiClient

Client = NamedDependency[ApiClient]  # the ``client`` dependency: whom the route's guard let in
# Any POST, PUT or DELETE may carry one; a retry with it gets the first answer.
IdempotencyKey = Annotated[str | None, HeaderParameter(name="idempotency-key", min_length=1, max_length=255)]


def _authenticate(connection: ASGIConnection, trusted: bool) -> None:
    """OA's auth: ``X-API-Key`` header or ``api_key`` query parameter. The client is kept on
    the connection: ``authenticated_client`` hands it to handlers, ``respond`` notes its writes."""
    key = connection.headers.get("x-api-key") or connection.query_params.get("api_key")
    state = connection.app.state
    client = state.api_keys.client_for_key(key)  # the write model, or ApiKeyIndex
    if client is None:
        raise OasstError("the API key is missing or unknown", ErrorCode.API_CLIENT_NOT_AUTHORIZED)
    if trusted:
        require_trusted(client)
    state.rate_limiter.api_request(client.id)
    connection.state.api_client = client


# Guards are async on purpose: Litestar runs a sync guard in a worker thread.
async def api_client(connection: ASGIConnection, _: Any) -> None:
    """Any known API client."""
    _authenticate(connection, trusted=False)


async def trusted_client(connection: ASGIConnection, _: Any) -> None:
    """A trusted API client (moderators, pipelines)."""
    _authenticate(connection, trusted=True)


def require_trusted(client: ApiClient) -> None:
    """For a route whose options decide whether it needs trust (``tree?at=``)."""
    if not client.trusted:
        raise OasstError("this route needs a trusted API client", ErrorCode.API_CLIENT_NOT_AUTHORIZED)


def authenticated_client(request: Request) -> ApiClient:
    """The ``client`` dependency: whom a guard let in (a route without one has none)."""
    return request.state.api_client
