"""A user's data as one JSON document (right of access, portability), folded from the log.

`UserExport` takes the events of the events topic in each partition's order (already
opened with their owners' keys) and keeps the sessions the user owns: the session's first
event names its owner, as the projector decides, and every later event of another user is
refused the same way (`evolve`'s `ForeignEvent`). It folds with the projector's own
`evolve`, under a window no session reaches, so every message is kept, a redacted one
shows as redacted (its content gone), and a session erased on its own shows as erased.
The summary is the one the read-model serves: whether a redaction withholds a summary
depends on the window (`chatlog.projections.view`), so each session is folded a second
time under the read-model's own policy, and a summary that may hold a message redacted
since is left out until its rebuild lands, as a context read leaves it out (older
summaries are always left out). A session's long-running tasks come with it, opened.
`document` gives the format docs/privacy.md describes
(``"format": "chatlog-export"``, ``"version": 1``). Pure: the Kafka scan is
`chatlog.processors.kafka_export`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from chatlog.projections.tasks import Task, TaskInfo
from chatlog.projections.view import (
    DEFAULT_POLICY,
    ForeignEvent,
    Message,
    SessionView,
    WindowPolicy,
    evolve,
)
from chatlog.schemas.events import ConversationEvent, from_epoch_millis
from chatlog.schemas.position import Position

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "UserExport"]

EXPORT_FORMAT = "chatlog-export"
EXPORT_VERSION = 1
# No session reaches it, so nothing ever moves to the overflow or is dropped from it.
_EVERYTHING = WindowPolicy(window=2**62, max_overflow=0)


def _time(ms: int) -> str:
    return from_epoch_millis(ms).astimezone(UTC).isoformat(timespec="milliseconds")


class UserExport:
    """The sessions of one user, folded from the events given to `take`."""

    def __init__(self, *, tenant: str, user_id: str, policy: WindowPolicy = DEFAULT_POLICY) -> None:
        self.tenant = tenant
        self.user_id = user_id
        self.policy = policy  # the read-model's: which summary it serves, or withholds
        self.views: dict[str, SessionView] = {}
        self.served: dict[str, SessionView] = {}  # folded as the read-model folds them
        self.others: set[str] = set()  # sessions that exist and belong to someone else
        self.refused = 0  # the user's events the projector would refuse (foreign)

    def owns(self, event: ConversationEvent) -> bool:
        """Whether `event` is the user's (tenant and id), whoever owns its session."""
        return event.user_id == self.user_id and event.tenant == self.tenant

    def wants(self, event: ConversationEvent, position: Position) -> bool:
        """Whether `event` must be opened and taken: it is the user's, in a session that
        is theirs or does not exist yet. Another user's event that starts a session marks
        that session as not theirs."""
        session = event.session_id
        if session in self.others:
            return False
        if session in self.views or self.owns(event):
            return True
        if evolve(None, event, position, _EVERYTHING) is not None:
            self.others.add(session)
        return False

    def take(self, event: ConversationEvent, position: Position) -> None:
        """Fold one of the user's events (opened) into its session."""
        session = event.session_id
        try:
            view = evolve(self.views.get(session), event, position, _EVERYTHING)
            served = evolve(self.served.get(session), event, position, self.policy)
        except ForeignEvent:
            self.refused += 1
            return
        if view is not None:
            self.views[session] = view
        if served is not None:
            self.served[session] = served

    def document(
        self, *, topic: str, through: Mapping[int, int], exported_at: datetime
    ) -> dict[str, Any]:
        """The export, as JSON-ready data (see docs/privacy.md, "Export")."""
        sessions = sorted(self.views.values(), key=lambda v: (v.created_at_ms, v.session_id))
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported_at": exported_at.astimezone(UTC).isoformat(timespec="milliseconds"),
            "tenant": self.tenant,
            "user_id": self.user_id,
            "source": {
                "topic": topic,
                "through": {str(p): offset for p, offset in sorted(through.items())},
            },
            "sessions": [_session(view, self.served.get(view.session_id)) for view in sessions],
        }


def _session(view: SessionView, served: SessionView | None) -> dict[str, Any]:
    summary = None
    if served is not None and served.summary is not None:  # not withheld by a redaction
        summary = {
            "text": served.summary,
            "model": served.summary_model,
            "through_offset": served.summary_through,
        }
    return {
        "session_id": view.session_id,
        "status": str(view.status),
        "title": view.title,
        "created_at": _time(view.created_at_ms),
        "updated_at": _time(view.updated_at_ms),
        "partition": view.partition,
        "message_count": len(view.messages),
        "summary": summary,
        "messages": [_message(view.partition, m) for m in view.messages],
        "tasks": [_task(view.session_id, task) for task in view.tasks],
    }


def _task(session_id: str, task: Task) -> dict[str, Any]:
    # As recorded in the log: whether a running task has stalled is a reader's judgement
    # at its own time (`Task.status_at`), not something the person's data holds.
    shown = TaskInfo.of(session_id, task, now_ms=None).to_dict()
    del shown["session_id"]  # the session it is listed under
    return shown


def _message(partition: int, message: Message) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "message_id": message.message_id,
        "position": str(Position(partition, message.offset)),
        "occurred_at": _time(message.occurred_at_ms),
        "role": message.role,
        "redacted": message.redacted,
    }
    if message.redacted:
        shown["content"] = None  # redacted: nothing of what it said is kept
        return shown
    shown["content"] = message.content
    shown["name"] = message.name
    shown["tool_calls"] = [
        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
    ]
    shown["tool_call_id"] = message.tool_call_id
    shown["metadata"] = dict(message.metadata)
    return shown
