"""The console's router (``/console``), its sign-in, error pages and template engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from console.actions import actions
from console.pages import read_pages
from console.session import COOKIE, CsrfRejected, SignInRequired, trusted_for_key
from domain.errors import OasstError

TEMPLATES = Path(__file__).parent / "templates"
SIGN_IN = "/console/sign-in"


def template_config() -> TemplateConfig:
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine)


@get("/sign-in")
async def sign_in_page(next_page: Annotated[str, QueryParameter(name="next")] = "/console/") -> Template:
    return Template(template_name="sign_in.html", context={"next": next_page, "error": None})


@post("/sign-in")
async def sign_in(
    request: Request, data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Response:
    """A trusted client's key opens a session; an untrusted or unknown one is refused (403)."""
    key = data.get("api_key", "").strip()
    if trusted_for_key(request, key) is None:
        error = "That key is not a trusted API client's: the console is for moderators."
        context = {"next": data.get("next", "/console/"), "error": error}
        return Template(template_name="sign_in.html", context=context, status_code=403)
    session = request.app.state.console_sessions.open(key)
    to = data.get("next", "")
    to = to if to.startswith("/console/") and "//" not in to else "/console/"
    cookie = Cookie(key=COOKIE, value=session.token, path="/console", httponly=True, samesite="strict")
    return Redirect(path=to, status_code=303, cookies=[cookie])


@post("/sign-out")
async def sign_out(request: Request) -> Redirect:
    request.app.state.console_sessions.close(request.cookies.get(COOKIE))
    return Redirect(path=SIGN_IN, status_code=303, cookies=[Cookie(key=COOKIE, value="", path="/console", max_age=0)])


def _sign_in_required(request: Request, _: SignInRequired) -> Response:
    if request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Redirect(path=f"{SIGN_IN}?next={quote(here)}", status_code=303)
    return _error_page(401, "Sign in first.")


def _csrf_rejected(_: Request, exc: CsrfRejected) -> Response:
    return _error_page(403, str(exc.detail))


def _refused(_: Request, exc: OasstError) -> Response:
    """A command or read the service refused: its message, on a page."""
    return _error_page(exc.status, f"{exc.message} (error {int(exc.code)})")


def _error_page(status: int, message: str) -> Response:
    return Template(template_name="error.html", context={"status": status, "message": message}, status_code=status)


def console_router() -> Router:
    return Router(
        path="/console",
        route_handlers=[sign_in_page, sign_in, sign_out, *read_pages, *actions],
        exception_handlers={SignInRequired: _sign_in_required, CsrfRejected: _csrf_rejected, OasstError: _refused},
        include_in_schema=False,
        response_headers={"Cache-Control": "no-store"},
    )
