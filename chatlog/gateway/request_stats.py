"""The gateway's requests counted by route template and status, for its metrics.

A plain ASGI middleware, so it needs no web library: FastAPI puts the matched route in
the request's scope, and its template (``/v1/sessions/{session_id}/messages``), never the
path itself, is the label; a path that matched no route counts as ``unmatched``. So the
number of series stays bounded by the routes, whatever the ids callers send.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from chatlog.processors.measures import Histogram

__all__ = ["UNMATCHED", "GatewayStats", "RequestStats"]

UNMATCHED = "unmatched"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(slots=True)
class GatewayStats:
    """Requests by (method, route, status), and their latency by route."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    seconds: dict[str, Histogram] = field(default_factory=dict)

    def add(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests[(method, route, str(status))] += 1
        self.seconds.setdefault(route, Histogram()).observe(seconds)


class RequestStats:
    """Wraps an ASGI app; every HTTP request it answers is counted into `stats`."""

    def __init__(self, app: App, stats: GatewayStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan and the like: not requests
            return
        started = time.monotonic()
        status = 500  # an app that raised before answering: the server answers 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "")
            # Unknown verbs are one label, as unknown paths are: the set stays bounded.
            known = method if method in _METHODS else "other"
            self.stats.add(known, route, status, time.monotonic() - started)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
