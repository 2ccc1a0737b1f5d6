"""Live updates of a session over Server-Sent Events: ``GET /v1/sessions/{id}/events``.

How does the gateway learn that something changed? The live projector publishes a
notice on the session's shard channel each time it writes the session
(`chatlog.projections.redis_store`, ``SPUBLISH``), and each gateway process holds one
pub/sub connection (`RedisAppliedFeed`) that wakes the streams watching that session.
A woken stream reads the context through the library's read path (`own_context`: the
owner, the tenant and erasure are checked on every read) and sends what changed
(`LiveTracker`). A notice is only a hint: the stream also checks every few seconds
whether the session's applied offset moved, so a lost notice delays an update, never
drops it.

The stream is plain text/event-stream over a normal authenticated request (the bearer
header, as every route): a browser reads it with ``fetch`` and a stream reader, not with
``EventSource``, so no token travels in a URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Query
from fastapi.responses import StreamingResponse

from chatlog.client import AsyncChatLog
from chatlog.gateway.fastapi_app import Caller, _context_dict, _message_dict, own_context
from chatlog.gateway.live_events import HEARTBEAT, LiveTracker, SseEvent
from chatlog.gateway.tokens import Principal
from chatlog.projections.redis_applied import RedisAppliedFeed
from chatlog.schemas.errors import ChatlogError, OwnershipError, SessionNotFound
from chatlog.schemas.position import Position

__all__ = ["HEARTBEAT_S", "RECHECK_S", "live_routes"]

RECHECK_S = 3.0
"""How often a stream checks its session's applied offset without a notice."""
HEARTBEAT_S = 15.0
"""How long a stream stays silent before it sends a comment (a heartbeat)."""

_log = logging.getLogger("chatlog.gateway")

_STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and its kin: pass each event on at once
}


def live_routes(log: AsyncChatLog, *, stopping: asyncio.Event | None = None) -> APIRouter:
    """The live-updates route over `log`. Its streams end when `stopping` is set (the
    server is asked to stop: a stream would otherwise hold the shutdown forever)."""
    feed = RedisAppliedFeed(log.reader.client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        closer = None if stopping is None else asyncio.create_task(_close_on(stopping, feed))
        try:
            yield
        finally:
            if closer is not None:
                closer.cancel()
            await feed.aclose()

    router = APIRouter(lifespan=lifespan)

    @router.get(
        "/v1/sessions/{session_id}/events",
        tags=["sessions"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def session_events(
        session_id: str,
        caller: Caller,
        after: Annotated[
            str | None, Query(description="P:O: resume after this position (Last-Event-ID)")
        ] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """The session's changes as Server-Sent Events, as the projector applies them:
        ``reset`` (the whole context, first), then ``message``, ``summary`` and
        ``session`` events, each with the position as its id. With ``Last-Event-ID`` (or
        ``after``), only what was applied after it. Ends after a ``session`` event once
        the session is closed or erased."""
        text = last_event_id if last_event_id is not None else after
        resume = None if text is None else Position.parse(text)
        # Refused before the stream starts: a session the caller may not read answers
        # 404 as every other route does, not as an event.
        await own_context(log, session_id, caller, None)
        return StreamingResponse(
            _stream(log, feed, session_id, caller, resume),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
        )

    return router


async def _close_on(stopping: asyncio.Event, feed: RedisAppliedFeed) -> None:
    await stopping.wait()
    await feed.aclose()  # wakes every stream, which then ends


async def _stream(
    log: AsyncChatLog,
    feed: RedisAppliedFeed,
    session_id: str,
    caller: Principal,
    after: Position | None,
) -> AsyncIterator[str]:
    tracker = LiveTracker(_context_dict, _message_dict)
    try:
        channel = (await log.reader.keys()).applied(session_id)
        # Subscribed before the first read: a change applied after that read is notified.
        async with feed.watch(channel) as watch:
            yield _encode(tracker.start(await own_context(log, session_id, caller, None), after))
            sent_at = time.monotonic()
            while not tracker.ended:
                woken = await watch.wait(RECHECK_S)
                if watch.closed:
                    return  # the gateway is stopping: the client resumes elsewhere
                notified = watch.take_notified() if woken else None
                if await _moved(log, session_id, tracker, notified, woken=woken):
                    events = tracker.update(await own_context(log, session_id, caller, None))
                    if events:
                        yield _encode(events)
                        sent_at = time.monotonic()
                if time.monotonic() - sent_at >= HEARTBEAT_S:
                    yield HEARTBEAT
                    sent_at = time.monotonic()
    except (SessionNotFound, OwnershipError):
        yield tracker.gone().encode()  # erased (or its owner) since the stream began
    except ChatlogError as exc:
        # Redis failing, say: the stream ends (the answer has begun, so no error status
        # can be sent), and the client resumes from its Last-Event-ID once Redis answers.
        _log.warning("the live stream of %s ended: %s", session_id, exc.message)


async def _moved(
    log: AsyncChatLog,
    session_id: str,
    tracker: LiveTracker,
    notified: Position | None,
    *,
    woken: bool,
) -> bool:
    """Whether the session may have moved past what the client holds: a notice of a
    newer position, a wake without one, or (no notice for a while) its applied offset
    in Redis differing from the client's (None: gone, which the read then says)."""
    known = -1 if tracker.position is None else tracker.position.offset
    if woken:
        return notified is None or notified.offset > known
    return await log.reader.applied_offset(session_id) != known


def _encode(events: list[SseEvent]) -> str:
    # One chunk per update: its events reach the client together.
    return "".join(event.encode() for event in events)
