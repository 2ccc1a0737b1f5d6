"""What a session's live stream sends: the contexts read, turned into Server-Sent Events.

What is a live stream? A client watching a session (``GET /v1/sessions/{id}/events``)
gets each change as the projector applies it. The stream reads the session's `Context`
whenever it may have moved, and `LiveTracker` says what changed since the last read, as
events the client applies in order:

- ``message``: a message appended (its id: the message's position ``P:O``);
- ``summary``: the rolling summary changed (``summary``, ``summary_through``,
  ``summary_withheld``); a client drops its messages at or before ``summary_through``;
- ``session``: the status or the title changed; a closed or erased session ends the
  stream with this event;
- ``reset``: the whole context, which replaces what the client holds: first on connect,
  when a message the client holds was redacted, and when the client's position is older
  than what the context still holds (messages since then were summarized or dropped).

Every event carries an ``id``, a position: a client that reconnects sends the last one
(``Last-Event-ID``) and is sent only what was applied after it, or a ``reset`` when that
can no longer be told apart. Ids never decrease. Pure: no network, no web framework;
the FastAPI route (`chatlog.gateway.fastapi_live`) reads and writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatlog.projections.context import Context
from chatlog.projections.view import SessionStatus
from chatlog.schemas.position import Position

__all__ = ["ENDED", "HEARTBEAT", "LiveTracker", "SseEvent"]

HEARTBEAT = ": keep-alive\n\n"
"""An SSE comment: keeps proxies from closing an idle stream; clients ignore it."""

ENDED = frozenset({SessionStatus.CLOSED, SessionStatus.ERASED})
"""Statuses that end a live stream (after their ``session`` event)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event: its kind, its id (a position) and its JSON data."""

    event: str
    id: Position
    data: dict[str, Any]

    def encode(self) -> str:
        """The event in the text/event-stream format (one line of JSON data)."""
        data = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"id: {self.id}\nevent: {self.event}\ndata: {data}\n\n"


ContextJson = Callable[[Context], dict[str, Any]]
MessageJson = Callable[[Any], dict[str, Any]]


def _summary(context: Context) -> dict[str, Any]:
    return {
        "summary": context.summary,
        "summary_through": context.summary_through,
        "summary_withheld": context.summary_withheld,
    }


def _session(status: str, title: str | None) -> dict[str, Any]:
    return {"status": status, "title": title}


class LiveTracker:
    """What the client of one stream holds, and the events that bring it up to date.

    `context_json` and `message_json` render a context and a message as the rest of the
    API does (the gateway's ``_context_dict`` and ``_message_dict``), so a streamed
    message reads exactly as the same message in ``GET .../context``.
    """

    def __init__(self, context_json: ContextJson, message_json: MessageJson) -> None:
        self._context_json = context_json
        self._message_json = message_json
        self.position: Position | None = None  # the id of the last event sent
        self.ended = False
        self._message_count = 0
        self._redacted: dict[str, bool] = {}  # message id -> redacted, of what it holds
        self._summary: dict[str, Any] = {}
        self._session: dict[str, Any] = {}

    def start(self, context: Context, after: Position | None) -> list[SseEvent]:
        """The first events of a stream: a ``reset``, or with `after` (the client's
        ``Last-Event-ID``) what was applied after it, if the context can still tell."""
        if after is None or not _resumable(context, after):
            events = [self._reset(context)]
        else:
            events = [
                self._message(context, m) for m in context.messages if m.offset > after.offset
            ]
            if context.position.offset > after.offset:
                # What else changed after `after` is not recorded: the current state is
                # sent (a client replaces its copy, so a repeat is harmless).
                if context.summary_through >= 0 or context.summary_withheld:
                    events.append(SseEvent("summary", context.position, _summary(context)))
                events.append(self._session_event(context))
            self._remember(context)
        return self._finish(context, events)

    def update(self, context: Context) -> list[SseEvent]:
        """The events since the last context seen (none if it has not moved)."""
        if self.position is not None and context.position.offset <= self.position.offset:
            return []
        since = -1 if self.position is None else self.position.offset
        new = [m for m in context.messages if m.offset > since]
        appended = context.message_count - self._message_count
        redacted = any(
            m.redacted and self._redacted.get(m.message_id) is False for m in context.messages
        )
        if redacted or len(new) < appended:
            # A message the client shows was redacted, or messages were appended and
            # summarized (or dropped) before this read: only the whole context is right.
            return self._finish(context, [self._reset(context)])
        events = [self._message(context, m) for m in new]
        if _summary(context) != self._summary:
            events.append(SseEvent("summary", context.position, _summary(context)))
        if _session(context.status.value, context.title) != self._session:
            events.append(self._session_event(context))
        self._remember(context)
        return self._finish(context, events)

    def gone(self) -> SseEvent:
        """The last event of a stream whose session was erased (or is no longer
        readable): ``session`` with status ``erased``."""
        self.ended = True
        at = self.position if self.position is not None else Position(0, 0)
        return SseEvent("session", at, _session(SessionStatus.ERASED.value, None))

    def _reset(self, context: Context) -> SseEvent:
        self._remember(context)
        return SseEvent("reset", context.position, self._context_json(context))

    def _message(self, context: Context, message: Any) -> SseEvent:
        position = Position(context.position.partition, message.offset)
        return SseEvent("message", position, self._message_json(message))

    def _session_event(self, context: Context) -> SseEvent:
        return SseEvent("session", context.position, _session(context.status.value, context.title))

    def _remember(self, context: Context) -> None:
        self._message_count = context.message_count
        self._redacted = {m.message_id: m.redacted for m in context.messages}
        self._summary = _summary(context)
        self._session = _session(context.status.value, context.title)

    def _finish(self, context: Context, events: list[SseEvent]) -> list[SseEvent]:
        self.position = context.position
        if context.status in ENDED:
            self.ended = True
            if not events or events[-1].event != "session":
                events.append(self._session_event(context))
        return events


def _resumable(context: Context, after: Position) -> bool:
    """Whether what was applied after `after` can be told from `context` alone.

    Messages leave a context oldest first (summarized, or dropped from a long overflow),
    so if any has left and `after` is older than the oldest still held, the client may
    have missed one that is gone. A redacted message the client may hold unredacted, and
    a position of another partition or from the future, cannot be resumed either.
    """
    if after.partition != context.position.partition or after > context.position:
        return False
    if context.position.offset > after.offset and any(
        m.redacted and m.offset <= after.offset for m in context.messages
    ):
        return False
    held = context.messages
    gone = context.message_count > len(held)
    return not (gone and (not held or held[0].offset > after.offset))
