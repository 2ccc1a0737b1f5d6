"""A running gateway as the tests meet it: `chatlog serve` and a projector on fresh topics.

`gateway_stack` starts both (real uvicorn, real Kafka and Redis) on settings of their own
and yields a `Gateway`: its URL, its settings and a token issuer for the same secret, so a
test can act as any user of any tenant. The test modules of the gateway each start one
(the `gateway` fixture of tests/integration/conftest.py) and give every test users of its
own, so the tests do not see each other's sessions.

`ROUTES` says how to call each route of the API (the authorization matrix and the fuzz
tests call them all, and fail on a route of the OpenAPI document it does not list);
`PUBLIC` lists the routes anyone may call.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chatlog.gateway.tokens import TokenIssuer
from chatlog.settings import Settings
from tests.processes import delete_prefix, running_gateway, running_projector, unique_settings


@dataclass
class Gateway:
    """A running gateway: where it listens, what it runs on, and tokens it accepts."""

    url: str
    settings: Settings
    issuer: TokenIssuer

    def token(self, user: str, **claims: Any) -> str:
        """A valid token of `user` (`tenant=`, `ttl_s=`, `now=` and other claims)."""
        return self.issuer.mint(user, **claims)

    def auth(self, user: str, **claims: Any) -> dict[str, str]:
        """The Authorization header of a valid token of `user`."""
        return {"Authorization": f"Bearer {self.token(user, **claims)}"}


def new_user() -> str:
    """A user id no other test uses."""
    return f"u-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def gateway_stack(kafka, redis_url: str, logs: Path, **overrides: Any) -> Iterator[Gateway]:
    """A projector and a gateway on fresh topics and a fresh Redis prefix, for the block;
    the prefix's keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    secret = "gateway-tests-" + uuid.uuid4().hex  # 46 characters, fresh each run
    # Reads wait up to 30 s: a loaded test machine can take longer than 5 s to project.
    # No rate limit unless a test asks for one: the matrix and the fuzz hammer one user.
    options = {
        "auth_secret": secret,
        "read_timeout_s": 30.0,
        "rate_user": "off",
        "api_keys_file": logs / "api-keys.json",
        **overrides,
    }
    settings = unique_settings(kafka, redis_url, prefix, **options)
    try:
        with (
            running_projector(settings, log=logs / "projector.log"),
            running_gateway(settings, log=logs / "serve.log") as url,
        ):
            yield Gateway(url, settings, TokenIssuer.from_settings(settings))
    finally:
        delete_prefix(redis_url, prefix)


# Routes anyone may call: no token, no data of anyone's.
PUBLIC = {"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
PUBLIC_PREFIXES = ("/static/",)


@dataclass(frozen=True)
class Route:
    """How to call one route: on a session (its path's ``{session_id}``) or on the
    caller's own data (no session in the path), with a body and query of that shape."""

    on_session: bool
    body: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


# Every route of the API, by (method, OpenAPI path template). Routes issue 15 names that a
# gateway may not serve yet are listed too; only those in the document are called.
ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/v1/sessions"): Route(on_session=False, body={"title": "intruder"}),
    ("GET", "/v1/sessions"): Route(on_session=False, params={"limit": "200"}),
    ("POST", "/v1/sessions/{session_id}/messages"): Route(
        on_session=True,
        body={"role": "user", "content": "intruder"},
        headers={"Idempotency-Key": "intruder-1"},
    ),
    ("GET", "/v1/sessions/{session_id}/context"): Route(on_session=True),
    ("POST", "/v1/sessions/{session_id}/close"): Route(on_session=True),
    ("DELETE", "/v1/sessions/{session_id}"): Route(on_session=True),
    ("GET", "/v1/sessions/{session_id}/events"): Route(on_session=True),
    ("DELETE", "/v1/me"): Route(on_session=False),
    ("GET", "/v1/me/export"): Route(on_session=False),
    ("GET", "/v1/tasks"): Route(on_session=False, params={"limit": "200"}),
    ("GET", "/v1/sessions/{session_id}/tasks"): Route(on_session=True),
    # Served only with CHATLOG_RECALL=true.
    ("GET", "/v1/recall"): Route(on_session=False, params={"q": "intruder"}),
}

SUCCESS = frozenset({200, 201, 202, 204})


def served_routes(gateway: Gateway) -> set[tuple[str, str]]:
    """(method, path template) of every route in the gateway's OpenAPI document."""
    document = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in {"get", "put", "post", "delete", "patch"}
    }


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def call(
    client: httpx.Client,
    method: str,
    template: str,
    route: Route,
    headers: dict[str, str],
    session: str,
) -> tuple[int, str, httpx.Headers]:
    """Send the route's request; (status, body, headers). An event stream is not read."""
    path = template.replace("{session_id}", session)
    request = client.build_request(
        method,
        path,
        json=route.body,
        params=route.params,
        headers={**route.headers, **headers},
    )
    response = client.send(request, stream=True)
    try:
        streaming = response.headers.get("content-type", "").startswith("text/event-stream")
        body = "" if streaming and response.status_code in SUCCESS else response.read().decode()
    finally:
        response.close()
    return response.status_code, body, response.headers
