"""The gateway's routes, on FastAPI: `create_app(log, auth)` is the ASGI application.

FastAPI (on Starlette, served by uvicorn) because it is well kept, asyncio-native like
`AsyncChatLog`, and derives request validation and the OpenAPI document (``/docs``,
``/openapi.json``) from the same type hints the handlers are written with.

Every ``/v1`` route depends on `_principal`: the credentials decide the user and the
tenant (a user's JWT, or a service API key with the ``Chatlog-User`` it acts for), an
operator's key is refused, and no route reads a user from its body or path. Failures
become HTTP answers in one place (`chatlog.gateway.http_errors`), as do FastAPI's own (a
bad body, an unknown route), so every error has the same JSON shape.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import BackgroundTasks, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from chatlog.client import AsyncChatLog
from chatlog.gateway.bots import Bot, answer
from chatlog.gateway.fastapi_limits import RateLimiter, limited
from chatlog.gateway.fastapi_page import page_router
from chatlog.gateway.http_errors import HttpError, http_error
from chatlog.gateway.principals import ACTING_USER_HEADER, Authenticator, Principal
from chatlog.gateway.tokens import TokenIssuer
from chatlog.processors.kafka_lag import KafkaTopicEnds
from chatlog.processors.projector_stats import records_behind
from chatlog.projections.context import Context
from chatlog.projections.recall import MAX_K, MAX_QUERY_CHARS
from chatlog.schemas.errors import ChatlogError
from chatlog.schemas.events import MAX_TITLE_CHARS, Role
from chatlog.schemas.ids import new_id, validate_id
from chatlog.schemas.position import Position

if TYPE_CHECKING:
    from chatlog.processors.redis_recall_reader import AsyncRedisRecall

__all__ = ["MAX_BODY_BYTES", "Caller", "LagBound", "create_app", "own_context"]

MAX_BODY_BYTES = 1024 * 1024
"""The largest request body accepted (413 above it): a chat message, not an upload."""

_SESSION_ID_BYTES = 16  # 128 random bits, 22 URL-safe characters: valid ids, unguessable
_READY_TIMEOUT_S = 2.0

_log = logging.getLogger("chatlog.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LagBound:
    """What ``/readyz`` checks of the projector: at most `max_lag` records of the events
    topic (whose partition ends `ends` reads) not yet projected."""

    ends: KafkaTopicEnds
    max_lag: int


class NewSession(BaseModel):
    """The body of ``POST /v1/sessions`` (optional)."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(None, max_length=MAX_TITLE_CHARS)


class ToolCallIn(BaseModel):
    """A function call an assistant message asked for; `arguments` is JSON text."""

    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    arguments: str = "{}"


class NewMessage(BaseModel):
    """The body of ``POST /v1/sessions/{id}/messages``; no user: the token says who."""

    model_config = ConfigDict(extra="forbid")
    role: Role  # an enum, so the OpenAPI document lists the roles
    content: str
    name: str | None = None
    tool_calls: list[ToolCallIn] = Field(default_factory=list)
    tool_call_id: str | None = None
    metadata: dict[str, str] | None = None


class _BodyLimit:
    """Refuses a request body above `limit` bytes with 413, declared or streamed.

    A ``Content-Length`` above the limit is refused before a byte is read; a chunked
    body is read up to the limit and refused as soon as it passes it, so no more than
    `limit` bytes are ever held. A body within the limit is handed on as it came.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(scope, receive, send)
            return
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = HttpError(413, "too_large", f"the request body is over {self.limit} bytes")
        await _json(error)(scope, receive, send)


def _json(error: HttpError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _position(text: str | None) -> Position | None:
    return None if text is None else Position.parse(text)


def _message_dict(message: Any) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "role": message.role,
        "content": message.content,
        "name": message.name,
        "tool_calls": [call.model_dump() for call in message.tool_calls],
        "tool_call_id": message.tool_call_id,
        "metadata": dict(message.metadata),
        "occurred_at_ms": message.occurred_at_ms,
        "redacted": message.redacted,
    }


def _context_dict(context: Context) -> dict[str, Any]:
    return {
        "session_id": context.session_id,
        "title": context.title,
        "status": context.status.value,
        "summary": context.summary,
        "summary_through": context.summary_through,
        "summary_withheld": context.summary_withheld,
        "messages": [_message_dict(m) for m in context.messages],
        "position": str(context.position),
        "message_count": context.message_count,
        "updated_at_ms": context.updated_at_ms,
        **_recall_dict(context),
    }


def _recall_dict(context: Context) -> dict[str, Any]:
    """What a context read that recalled says of it: the turns, or why there are none."""
    return {
        "recalled": [turn.to_dict() for turn in context.recalled],
        "recall_error": context.recall_error,
    }


_bearer = HTTPBearer(
    auto_error=False, description="a user's JWT (chatlog token --user U), or a service API key"
)
_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="a service API key (clk_...)"
)


async def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    acting_user: Annotated[
        str | None,
        Header(
            alias=ACTING_USER_HEADER,
            description="the user a service API key acts for (refused with a user's JWT)",
        ),
    ] = None,
) -> Principal:
    """Who the request is, from its credentials alone (`chatlog.gateway.principals`): a
    user's JWT, or a service key acting for the user it names; an operator is refused."""
    auth: Authenticator = request.app.state.auth

    def check() -> Principal:
        return auth.user(
            bearer=None if credentials is None else credentials.credentials,
            api_key=api_key,
            acting_user=acting_user,
        )

    # A JWKS fetch may wait on the identity provider: then off the event loop. A shared
    # secret's check is ~0.1 ms of CPU, cheaper inline than a hop to a worker thread.
    return await asyncio.to_thread(check) if auth.may_block else check()


Caller = Annotated[Principal, Depends(limited(_principal))]  # counted by the rate limits


async def own_context(
    log: AsyncChatLog,
    session_id: str,
    caller: Principal,
    after: Position | None,
    *,
    recall: str | None = None,
    recall_k: int = 5,
) -> Context:
    """The caller's session's context (with turns recalled for `recall`); another user's
    or tenant's answers as a missing one (the library's read rule: `SessionNotFound`
    either way)."""
    if recall is not None and log.recaller is None:
        raise HTTPException(
            400,
            "semantic recall is not enabled on this server (CHATLOG_RECALL): read the "
            "context without recall",
        )
    return await log.context(
        session_id,
        user_id=caller.user_id,
        tenant=caller.tenant,
        after=after,
        recall=recall,
        recall_k=recall_k,
    )


def create_app(
    log: AsyncChatLog,
    auth: Authenticator,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    limiter: RateLimiter | None = None,
    stopping: asyncio.Event | None = None,
    lag: LagBound | None = None,
    dev_issuer: TokenIssuer | None = None,
    bot: Bot | None = None,
) -> ASGIApp:
    """The gateway's ASGI application over `log`, its callers found by `auth` and
    counted by `limiter` (`chatlog.gateway.fastapi_limits`; None: no rate limits).

    The application closes `log` when it shuts down (flushing pending events). Set
    `stopping` when the server is asked to stop: live streams end then, as they
    otherwise never would. With `lag`, ``/readyz`` also checks the projector's lag.

    It serves the chat page at ``/``. Development mode only (``chatlog serve --dev``):
    `dev_issuer` mints tokens at ``POST /dev/token`` for anyone who asks, and `bot`
    answers each user message (`chatlog.gateway.bots`).
    """
    # Imported here: the route modules import this one's shared parts.
    from chatlog.gateway.fastapi_lifecycle import lifecycle_routes  # noqa: PLC0415
    from chatlog.gateway.fastapi_live import live_routes  # noqa: PLC0415
    from chatlog.gateway.fastapi_me import me_routes  # noqa: PLC0415
    from chatlog.gateway.fastapi_recall import recall_routes  # noqa: PLC0415

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if lag is not None:
                await asyncio.to_thread(lag.ends.close)
            await log.aclose()

    app = FastAPI(
        title="chatlog",
        version="1",
        summary="Conversation memory for chat front ends: append messages, read contexts.",
        lifespan=lifespan,
        # A JSON API answers a path as it is: "/v1/sessions/" is no session id, a 404,
        # not a 307 to another route that a client would follow with its token.
        redirect_slashes=False,
    )
    app.state.auth = auth
    app.state.limiter = limiter
    _add_error_handlers(app)
    _add_session_routes(app, log, bot)
    app.include_router(live_routes(log, stopping=stopping))
    app.include_router(lifecycle_routes(log))
    app.include_router(me_routes(log))
    app.include_router(recall_routes(log))
    _add_health_routes(app, log, lag)
    app.include_router(page_router(dev_issuer=dev_issuer))
    return _BodyLimit(app, limit=max_body_bytes)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChatlogError)
    async def chatlog_error(request: Request, exc: ChatlogError) -> JSONResponse:
        error = http_error(exc)
        if error.status >= 500:
            _log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return _json(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The locations and rules only, never the input itself (it may be personal data).
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return _json(HttpError(422, "invalid", problems))

    @app.exception_handler(HTTPException)
    async def http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        return _json(HttpError(exc.status_code, "http", str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("%s %s failed", request.method, request.url.path)
        return _json(http_error(exc))


def _add_session_routes(app: FastAPI, log: AsyncChatLog, bot: Bot | None) -> None:
    @app.post("/v1/sessions", status_code=201, tags=["sessions"])
    async def create_session(caller: Caller, body: NewSession | None = None) -> dict[str, Any]:
        """Start a session of the caller's; its id is made here, unguessable.

        Answers once the session is readable (the projector has applied its start), so
        the next request of the caller finds it.
        """
        session_id = secrets.token_urlsafe(_SESSION_ID_BYTES)
        title = body.title if body is not None else None
        position = await log.start_session(
            session_id, user_id=caller.user_id, title=title, tenant=caller.tenant
        )
        await own_context(log, session_id, caller, position)
        return {"session_id": session_id, "position": str(position)}

    @app.post("/v1/sessions/{session_id}/messages", status_code=201, tags=["sessions"])
    async def append_message(
        session_id: str,
        body: NewMessage,
        caller: Caller,
        background: BackgroundTasks,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Append a message to the caller's session; returns its position.

        An ``Idempotency-Key`` becomes the message id, so a retried request is stored
        once (the projection keeps a message id once within the session's window).
        """
        validate_id(session_id, field="session_id")
        message_id = (
            new_id()
            if idempotency_key is None
            else validate_id(idempotency_key, field="Idempotency-Key")
        )
        # A session never started (the ids are the server's) is refused as another's is:
        # an append would start it. Another's is refused again at publish (claims).
        await own_context(log, session_id, caller, None)
        position = await log.append(
            session_id,
            user_id=caller.user_id,
            role=body.role,
            content=body.content,
            name=body.name,
            tool_calls=[call.model_dump() for call in body.tool_calls],
            tool_call_id=body.tool_call_id,
            metadata=body.metadata,
            message_id=message_id,
            tenant=caller.tenant,
        )
        if bot is not None and body.role == "user":
            # After the answer is sent: the caller has its position while the bot thinks.
            background.add_task(
                answer, bot, log, caller, session_id, message_id=message_id, position=position
            )
        return {"position": str(position), "message_id": message_id}

    @app.get("/v1/sessions/{session_id}/context", tags=["sessions"])
    async def read_context(
        session_id: str,
        caller: Caller,
        *,
        after: Annotated[str | None, Query(description="P:O: wait until applied")] = None,
        max_tokens: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
        format: Annotated[Literal["openai"] | None, Query()] = None,
        recall: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=MAX_QUERY_CHARS,
                description="add the caller's earlier turns nearest to this text",
            ),
        ] = None,
        recall_k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
    ) -> dict[str, Any]:
        """The session's context; with ``after`` (a position an append returned), once
        the projector has applied it (read-your-writes). ``format=openai`` gives the
        ``messages`` for a chat completion, trimmed to ``max_tokens``. With ``recall``
        (the latest message, say), up to ``recall_k`` earlier turns of the caller's from
        any of their sessions, nearest to it in meaning and not already in the context
        (``recalled``; in ``messages`` as one quoted data block). If recall does not
        answer, ``recall_error`` says why and the context comes without them."""
        context = await own_context(
            log, session_id, caller, _position(after), recall=recall, recall_k=recall_k
        )
        if format == "openai":
            return {
                "session_id": context.session_id,
                "position": str(context.position),
                "summary_withheld": context.summary_withheld,
                "messages": context.to_openai(max_tokens=max_tokens),
                **_recall_dict(context),
            }
        return _context_dict(context)

    @app.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(
        caller: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50
    ) -> dict[str, Any]:
        """The caller's sessions, most recently active first."""
        entries = await log.sessions(caller.user_id, tenant=caller.tenant, limit=limit)
        return {
            "sessions": [
                {
                    "session_id": e.session_id,
                    "title": e.title,
                    "status": e.status.value,
                    "message_count": e.message_count,
                    "created_at_ms": e.created_at_ms,
                    "updated_at_ms": e.updated_at_ms,
                }
                for e in entries
            ]
        }

    @app.get("/v1/tasks", tags=["tasks"])
    async def list_tasks(
        caller: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 50
    ) -> dict[str, Any]:
        """The caller's long-running tasks (in their ``limit`` most recently active
        sessions), newest first, each with its status now (``stalled``: no heartbeat
        for ``CHATLOG_TASK_STALL_S``)."""
        tasks = await log.tasks(caller.user_id, tenant=caller.tenant, limit=limit)
        return {"tasks": [task.to_dict() for task in tasks]}

    @app.get("/v1/sessions/{session_id}/tasks", tags=["tasks"])
    async def list_session_tasks(session_id: str, caller: Caller) -> dict[str, Any]:
        """The session's tasks; another's session is not found, as for its context."""
        tasks = await log.tasks(caller.user_id, session_id=session_id, tenant=caller.tenant)
        return {"session_id": session_id, "tasks": [task.to_dict() for task in tasks]}


def _add_health_routes(app: FastAPI, log: AsyncChatLog, lag: LagBound | None) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (it checks nothing else)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Kafka and Redis answer and the projector is not too far behind: 200, else
        503 naming what is wrong."""
        checks: dict[str, Any] = {}
        try:
            await asyncio.to_thread(log.producer.sync.check, timeout=_READY_TIMEOUT_S)
            checks["kafka"] = "ok"
        except ChatlogError as exc:
            checks["kafka"] = type(exc).__name__
        try:
            await asyncio.wait_for(log.reader.client.ping(), _READY_TIMEOUT_S)
            checks["redis"] = "ok"
        except Exception as exc:  # any failure means not ready; its kind is enough
            checks["redis"] = type(exc).__name__
        if lag is not None and checks["kafka"] == checks["redis"] == "ok":
            checks.update(await _projector_lag(log, lag))
        if log.recaller is not None:
            checks["recall"] = await _recall_redis(log.recaller)
        ready = all(value == "ok" for key, value in checks.items() if key in _CHECKS)
        return JSONResponse(
            {"status": "ready" if ready else "not ready", **checks},
            status_code=200 if ready else 503,
            headers={} if ready else {"Retry-After": "1"},
        )


# What /readyz says ok or not; the rest is detail. The recall Redis is detail: a context
# is still served without recalled turns (`recall_error`), so an index that does not
# answer must not take the chat out of the load balancer.
_CHECKS = ("kafka", "redis", "projector")


async def _recall_redis(recaller: AsyncRedisRecall) -> str:
    """The recall index's Redis for /readyz: "ok", or the kind of failure."""
    try:
        await asyncio.wait_for(recaller.client.ping(), _READY_TIMEOUT_S)
    except Exception as exc:  # any failure is reported; its kind is enough
        return type(exc).__name__
    return "ok"


async def _projector_lag(log: AsyncChatLog, lag: LagBound) -> dict[str, Any]:
    """The projector's check for /readyz: how many records it has left, and whether
    that is within the bound."""
    try:
        ends = await asyncio.to_thread(lag.ends.ends, timeout=_READY_TIMEOUT_S)
        marks = await asyncio.wait_for(log.reader.progress(), _READY_TIMEOUT_S)
    except Exception as exc:  # any failure means not ready; its kind is enough
        return {"projector": type(exc).__name__}
    behind = records_behind(ends, marks)
    return {
        "projector": "ok" if behind <= lag.max_lag else "behind",
        "projector_lag": behind,
        "max_lag": lag.max_lag,
    }
