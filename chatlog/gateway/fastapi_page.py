"""The chat page at ``/`` and, in development mode only, its login: FastAPI routes.

What is the chat page? One static HTML page with its script and style sheet
(``chatlog/gateway/static/``, no build step, nothing from a CDN), a chat front end as
small as one can be: it signs in, lists the caller's sessions, starts one, sends
messages, and shows the context as the event stream (``/v1/sessions/{id}/events``)
brings it. It speaks only the public ``/v1`` API with a bearer token, as any front end
would, so it proves that API rather than bypassing it.

Every answer of the page carries a strict Content-Security-Policy: scripts from this
origin only (no inline script, no ``eval``), requests to this origin only, no frames.
The script writes what users typed with ``textContent``, never as HTML; the policy is
the second wall should that ever slip.

``POST /dev/token`` is the development login: it mints a token for any user and tenant
named in its body, so it is a hole by design. It exists only when the gateway runs with
``chatlog serve --dev`` on the embedded HS256 secret (the router is built with a
`TokenIssuer`), and answers 404 as an unknown route otherwise. Never run ``--dev`` in
production.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from chatlog.gateway.tokens import TokenIssuer

__all__ = ["CONTENT_SECURITY_POLICY", "DEV_TOKEN_TTL_S", "page_router"]

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""The policy of every file of the page: this origin's scripts, styles and API only."""

DEV_TOKEN_TTL_S = 8 * 3600
"""How long a development login lasts: a working day, then the page asks again."""

# The page's files and their types: a fixed list, so no path from a request is ever read.
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the package; a stale script against a new API helps no one.
    "Cache-Control": "no-cache",
}


class DevLogin(BaseModel):
    """The body of ``POST /dev/token``: who to be, in development."""

    model_config = ConfigDict(extra="forbid")
    # Checked as ids by `TokenIssuer.mint`, as `chatlog token` checks them (422 if bad).
    user: str
    tenant: str = "default"


def _static(name: str) -> Response:
    body = resources.files("chatlog.gateway").joinpath("static", name).read_bytes()
    return Response(body, media_type=_FILES[name], headers=_HEADERS)


def page_router(*, dev_issuer: TokenIssuer | None = None) -> APIRouter:
    """The page's routes; with `dev_issuer`, also the development login that uses it."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page() -> Response:
        return _static("index.html")

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in _FILES or name == "index.html":
            return Response(status_code=404, headers=_HEADERS)
        return _static(name)

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return _static("favicon.svg")

    if dev_issuer is not None:

        @router.post("/dev/token", tags=["development"])
        async def dev_token(body: DevLogin) -> dict[str, Any]:
            """A token for any user and tenant: only with ``chatlog serve --dev``, never
            in production (anyone who reaches it can be anyone)."""
            token = dev_issuer.mint(body.user, tenant=body.tenant, ttl_s=DEV_TOKEN_TTL_S)
            return {"token": token, "expires_in": DEV_TOKEN_TTL_S}

    return router
