"""The session view and `evolve`: what a session looks like after a sequence of events.

What is a view? It is everything a chat back end needs to build its next prompt for one
session, derived from the session's events and nothing else: who owns it, the recent
window of messages, the older messages not yet folded into the rolling summary (the
overflow), and the summary itself. `evolve(view, event, position)` returns the view after
one more event. It does no I/O, so the live projector, the replay and the tests all run
the same code, and a view can always be rebuilt from the log.

Positions make it idempotent: a view records the offset of the last event it applied,
and `evolve` returns the view unchanged for an event at or below that offset. Replaying
part of the log after a crash therefore changes nothing.

The window keeps the last `window` messages; older ones move to the overflow, where the
summarizer finds them. A `SummaryUpdated` whose `through_offset` is newer than the current
summary's removes the overflow it covers. The overflow is bounded: past `max_overflow`,
the oldest overflow messages are dropped from the view (never from the log) and counted.

Redactions reach the summary. A summary is written over every message at or below its
`through_offset` (and, rolling, over the summaries before it), so redacting a message that
is not in the recent window may remove something the summary still says. Where the
redacted message is no longer in the view (folded into the summary, or dropped from the
overflow) its offset is unknown, so any summary the session has is taken to cover it. Such
a redaction withholds the summary: its text leaves the view (`summary` None,
`summary_withheld` True) while its coverage stays, until the summarizer rebuilds it from
the log without the redacted messages. A summary counts as clean only if it honours every
redaction that may concern it (`SummaryUpdated.redactions_through` at or past the view's
`redacted_at`): one computed before a redaction but published after it is withheld on
arrival. A clean summary with the same coverage as the withheld one (the rebuild) lifts
the withholding.

Sealed events stay sealed here: a view folded from them keeps each personal field's
ciphertext (`SealedFields`, beside an empty placeholder), exactly as the event carried
it, so the read-model holds no plaintext and a replay rebuilds it byte for byte. Readers
open a view with its owner's key (`chatlog.projections.opening.ViewOpener`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chatlog.projections.tasks import Task, apply_task
from chatlog.schemas.errors import ForeignEvent, Undecryptable
from chatlog.schemas.events import (
    CheckpointSaved,
    CheckpointWritesSaved,
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    SessionClosed,
    SessionStarted,
    SummaryUpdated,
    TaskEvent,
    ToolCall,
    UserErased,
    epoch_millis,
)
from chatlog.schemas.placeholders import reveal_field
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import METADATA, TOKENS, TOOL_CALLS

__all__ = [
    "DEFAULT_POLICY",
    "REDACTED",
    "ForeignEvent",
    "Message",
    "SealedFields",
    "SessionStatus",
    "SessionView",
    "WindowPolicy",
    "evolve",
    "fold",
    "message_of",
    "place_values",
    "redact",
    "redacted",
]

REDACTED = "[redacted]"


class SessionStatus(enum.StrEnum):
    """Where a session is in its life."""

    OPEN = "open"
    CLOSED = "closed"
    ERASED = "erased"


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How much of a session the view keeps in full."""

    window: int = 20
    max_overflow: int = 200

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        if self.max_overflow < 0:
            raise ValueError(f"max_overflow must be at least 0, got {self.max_overflow}")


@dataclass(frozen=True, slots=True)
class SealedFields:
    """Personal fields of one event, still sealed: the event and key that sealed them,
    and each field's ciphertext by its path (see `chatlog.schemas.sealing`)."""

    event_id: str
    key_id: str
    fields: Mapping[str, bytes]

    @classmethod
    def of(cls, event: ConversationEvent, *only: str) -> SealedFields | None:
        """The sealed fields of `event` (just those named in `only`, if given); None if
        it has none."""
        sealed = event.sealed
        if sealed is None:
            return None
        fields = sealed.fields
        if only:
            fields = {path: fields[path] for path in only if path in fields}
        return cls(event.event_id, sealed.key_id, fields) if fields else None


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message as the read-model keeps it, with the offset that wrote it."""

    offset: int
    message_id: str
    role: str
    content: str
    occurred_at_ms: int
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    redacted: bool = False
    # Set while the fields above hold placeholders for what is sealed.
    sealed: SealedFields | None = None


@dataclass(frozen=True, slots=True)
class SessionView:
    """One session's read-model. `messages` holds the overflow, then the window."""

    session_id: str
    user_id: str
    tenant: str
    partition: int
    last_offset: int
    created_at_ms: int
    updated_at_ms: int
    status: SessionStatus = SessionStatus.OPEN
    title: str | None = None
    messages: tuple[Message, ...] = ()
    # The offset of the session's first event: a read beyond the window scans the log
    # from here, not from the partition's start.
    first_offset: int = -1
    # The offset of the session's last SessionClosed (-1: never closed). It stays when a
    # later message reopens the session, so a reader can start afresh after a close.
    closed_through: int = -1
    message_count: int = 0
    summary: str | None = None
    summary_through: int = -1
    summary_model: str | None = None
    summary_covered: int = 0
    overflow_dropped: int = 0
    # A redaction touched what the summary covers: its text is gone from the view (summary
    # None) and must not be served until a clean summary with at least its coverage lands.
    summary_withheld: bool = False
    # The offset of the latest redaction of a message outside the window (-1: none): a
    # summary is clean only if its `redactions_through` reaches it.
    redacted_at: int = -1
    # Set while `title` / `summary` is a placeholder for a sealed one.
    title_sealed: SealedFields | None = None
    summary_sealed: SealedFields | None = None
    # The session's long-running tasks, oldest first (`chatlog.projections.tasks`).
    tasks: tuple[Task, ...] = ()

    @property
    def sealed(self) -> bool:
        """Whether any of the view is still sealed (readers open it before use)."""
        return (
            self.title_sealed is not None
            or self.summary_sealed is not None
            or any(m.sealed is not None for m in self.messages)
            or any(task.sealed for task in self.tasks)
        )

    @property
    def position(self) -> Position:
        """Where the last applied event sits in the log."""
        return Position(self.partition, self.last_offset)

    def window(self, policy: WindowPolicy) -> tuple[Message, ...]:
        """The most recent messages, at most `policy.window` of them."""
        return self.messages[-policy.window :]

    def overflow(self, policy: WindowPolicy) -> tuple[Message, ...]:
        """Messages evicted from the window and not yet covered by the summary."""
        return self.messages[: max(0, len(self.messages) - policy.window)]


DEFAULT_POLICY = WindowPolicy()


def evolve(
    view: SessionView | None,
    event: ConversationEvent,
    position: Position,
    policy: WindowPolicy = DEFAULT_POLICY,
) -> SessionView | None:
    """The view after `event`, stored at `position`; None while no session exists.

    Raises `ForeignEvent` for an event that may not change this session (written by
    another user, or found on another partition); the view is then unchanged.
    """
    if view is not None and not _admit(view, view.last_offset, event, position):
        return view  # already applied: replays change nothing
    at_ms = epoch_millis(event.occurred_at)
    if view is None:
        if isinstance(event.payload, UserErased | SessionClosed | MessageRedacted):
            return None  # nothing to erase, close or redact: no session comes into being
        view = SessionView(
            session_id=event.session_id,
            user_id=event.user_id,
            tenant=event.tenant,
            partition=position.partition,
            last_offset=position.offset,
            created_at_ms=at_ms,
            updated_at_ms=at_ms,
            first_offset=position.offset,
        )
    # One replace per event: the projector's hot loop runs this for every record.
    return replace(
        view,
        last_offset=position.offset,
        updated_at_ms=max(view.updated_at_ms, at_ms),
        **_changes(view, event, position.offset, at_ms, policy),
    )


def fold(
    view: SessionView | None,
    events: list[tuple[ConversationEvent, Position]],
    policy: WindowPolicy = DEFAULT_POLICY,
) -> tuple[SessionView | None, list[tuple[ConversationEvent, Position, ForeignEvent]]]:
    """Apply `events` in order; returns the view and the events refused as foreign.

    The result is exactly that of `evolve` applied event by event. A run of appended
    messages, the bulk of any log, is folded with one copy of the view instead of one
    per event: that is most of what a replay or a batch under backlog spends.
    """
    refused: list[tuple[ConversationEvent, Position, ForeignEvent]] = []
    index, total = 0, len(events)
    while index < total:
        event, position = events[index]
        if view is not None and isinstance(event.payload, MessageAppended):
            view, index = _append_run(view, events, index, policy, refused)
            continue
        try:
            view = evolve(view, event, position, policy)
        except ForeignEvent as exc:
            refused.append((event, position, exc))
        index += 1
    return view, refused


def _admit(
    view: SessionView, last_offset: int, event: ConversationEvent, position: Position
) -> bool:
    """Whether `event` at `position` changes `view` (last applied: `last_offset`).

    False for an event already applied; raises `ForeignEvent` for one that may not
    change this session at all.
    """
    if event.session_id != view.session_id or event.tenant != view.tenant:
        raise ForeignEvent(
            f"an event of session {event.session_id} (tenant {event.tenant}) cannot change "
            f"session {view.session_id} (tenant {view.tenant})",
            session_id=view.session_id,
            partition=position.partition,
            offset=position.offset,
        )
    if position.partition != view.partition:
        raise ForeignEvent(
            f"session {view.session_id} lives on partition {view.partition}, but an event "
            f"for it arrived on partition {position.partition}; its producer does not "
            f"partition by murmur2(session_id)",
            session_id=view.session_id,
            partition=position.partition,
            offset=position.offset,
        )
    if position.offset <= last_offset:
        return False
    if event.user_id != view.user_id:
        raise ForeignEvent(
            f"session {view.session_id} belongs to another user; an event from "
            f"{event.user_id} may not change it",
            session_id=view.session_id,
            partition=position.partition,
            offset=position.offset,
        )
    return True


def _append_run(
    view: SessionView,
    events: list[tuple[ConversationEvent, Position]],
    index: int,
    policy: WindowPolicy,
    refused: list[tuple[ConversationEvent, Position, ForeignEvent]],
) -> tuple[SessionView, int]:
    """Fold the appends from `index` on, as `evolve` would one by one; the next index."""
    messages = list(view.messages)
    # The ids at the end of `messages`, where a retried append is looked for: compared in
    # C (`in` on a list of strings) rather than by a generator over the messages.
    window = policy.window
    recent = [m.message_id for m in messages[-window:]]
    last_offset, updated_at_ms = view.last_offset, view.updated_at_ms
    count, moved, appended = view.message_count, False, False
    while index < len(events):
        event, position = events[index]
        payload = event.payload
        if not isinstance(payload, MessageAppended):
            break
        index += 1
        try:
            if not _admit(view, last_offset, event, position):
                continue
        except ForeignEvent as exc:
            refused.append((event, position, exc))
            continue
        at_ms = epoch_millis(event.occurred_at)
        last_offset, updated_at_ms, moved = position.offset, max(updated_at_ms, at_ms), True
        message_id = payload.message_id
        if message_id in recent[-window:]:
            continue  # a retried append (see `_append`)
        messages.append(message_of(payload, position.offset, at_ms, SealedFields.of(event)))
        recent.append(message_id)
        count += 1
        appended = True
    if not moved:
        return view, index
    # Trimming once at the end drops what trimming after every append would have: the
    # window, where duplicates are looked for, is never trimmed.
    dropped = max(0, len(messages) - (policy.window + policy.max_overflow))
    changes: dict[str, Any] = {"last_offset": last_offset, "updated_at_ms": updated_at_ms}
    if appended:
        changes.update(
            messages=tuple(messages[dropped:]),
            message_count=count,
            overflow_dropped=view.overflow_dropped + dropped,
            status=SessionStatus.OPEN,
        )
    return replace(view, **changes), index


def _changes(
    view: SessionView, event: ConversationEvent, offset: int, at_ms: int, policy: WindowPolicy
) -> dict[str, Any]:
    """The fields `event` changes, besides the offset and time every event moves."""
    payload = event.payload
    if isinstance(payload, MessageAppended):
        return _append(view, payload, offset, at_ms, policy, sealed=SealedFields.of(event))
    if isinstance(payload, SummaryUpdated):
        return _summarize(view, payload, policy, SealedFields.of(event, "summary"))
    if isinstance(payload, MessageRedacted):
        return _redact(view, payload.message_id, offset, policy)
    if isinstance(payload, SessionStarted):
        if payload.title is None:
            return {}
        # The title's tokenized originals travel with it, for a reader who may reveal them.
        tokens = [f"{TOKENS}{name}" for name in event.tokens]
        return {"title": payload.title, "title_sealed": SealedFields.of(event, "title", *tokens)}
    if isinstance(payload, SessionClosed):
        return {"status": SessionStatus.CLOSED, "closed_through": offset}
    if isinstance(payload, UserErased):
        return _erase(view)
    if isinstance(payload, CheckpointSaved | CheckpointWritesSaved):
        # A LangGraph thread's state: it makes the session (its owner, its partition, its
        # offset, which read-your-writes waits on) but no message; the store keeps it
        # beside the view (`chatlog.projections.checkpoints`).
        return {}
    if isinstance(payload, TaskEvent):
        # A long-running task of the session (`chatlog.projections.tasks`).
        sealed = SealedFields.of(event)
        return {"tasks": apply_task(view.tasks, payload, offset=offset, at_ms=at_ms, sealed=sealed)}
    raise AssertionError(f"unhandled payload {type(payload).__name__}")  # pragma: no cover


def _append(
    view: SessionView,
    payload: MessageAppended,
    offset: int,
    at_ms: int,
    policy: WindowPolicy,
    *,
    sealed: SealedFields | None,
) -> dict[str, Any]:
    # A client retrying an append it already made (same message_id) does so right after
    # the failure, so the recent window is where the first copy is.
    message_id = payload.message_id
    for recent in view.messages[-policy.window :]:
        if recent.message_id == message_id:
            return {}
    messages = (*view.messages, message_of(payload, offset, at_ms, sealed))
    limit = policy.window + policy.max_overflow
    dropped = max(0, len(messages) - limit)
    # An erased or closed session that gets a new message is in use again.
    return {
        "messages": messages[dropped:] if dropped else messages,
        "message_count": view.message_count + 1,
        "overflow_dropped": view.overflow_dropped + dropped,
        "status": SessionStatus.OPEN,
    }


def message_of(
    payload: MessageAppended, offset: int, at_ms: int, sealed: SealedFields | None = None
) -> Message:
    """The read-model's message for an appended one at `offset` (`sealed`: its sealed
    fields, when `payload` holds placeholders)."""
    return Message(
        offset=offset,
        message_id=payload.message_id,
        role=payload.role.value,
        content=payload.content,
        occurred_at_ms=at_ms,
        name=payload.name,
        tool_calls=payload.tool_calls,
        tool_call_id=payload.tool_call_id,
        metadata=payload.metadata,
        sealed=sealed,
    )


def place_values(
    values: Mapping[str, str],
    *,
    message_id: str,
    content: str,
    name: str | None,
    calls: tuple[ToolCall, ...],
    metadata: Mapping[str, str],
) -> tuple[str, str | None, tuple[ToolCall, ...], Mapping[str, str]]:
    """A message's content, name, tool calls and metadata with its sealed fields'
    `values` (by path, `chatlog.schemas.sealing`) in their places; tokenized originals
    among them (``tokens.<name>``, opened only for a reader who reveals) go back in
    place of their placeholders."""
    originals: dict[str, str] = {}
    for path, value in values.items():
        if path == "content":
            content = value
        elif path == "name":
            name = value
        elif path.startswith(TOOL_CALLS):
            index, _, part = path.removeprefix(TOOL_CALLS).partition(".")
            at = int(index)
            calls = (*calls[:at], calls[at].model_copy(update={part: value}), *calls[at + 1 :])
        elif path.startswith(METADATA):
            metadata = {**metadata, path.removeprefix(METADATA): value}
        elif path.startswith(TOKENS):
            originals[path.removeprefix(TOKENS)] = value
        else:
            raise Undecryptable(
                f"message {message_id} carries a sealed field {path} that a message has no "
                f"place for",
                field=path,
            )
    if originals:
        content = reveal_field("content", content, originals)
        name = None if name is None else reveal_field("name", name, originals)
        calls = tuple(
            c.model_copy(
                update={
                    "arguments": reveal_field(f"{TOOL_CALLS}{i}.arguments", c.arguments, originals)
                }
            )
            for i, c in enumerate(calls)
        )
        metadata = {
            key: reveal_field(f"{METADATA}{key}", value, originals)
            for key, value in metadata.items()
        }
    return content, name, calls, metadata


def _summarize(
    view: SessionView, payload: SummaryUpdated, policy: WindowPolicy, sealed: SealedFields | None
) -> dict[str, Any]:
    # Clean: it saw every redaction that may concern it (see the module's docstring).
    clean = payload.redactions_through >= view.redacted_at
    rebuilt = view.summary_withheld and clean and payload.through_offset == view.summary_through
    if payload.through_offset <= view.summary_through and not rebuilt:
        return {}  # a stale or duplicate summary: keep the newer one
    # The summary replaces overflow only: the recent window always stays in full.
    overflow, window = view.overflow(policy), view.window(policy)
    kept = tuple(m for m in overflow if m.offset > payload.through_offset) + window
    return {
        "messages": kept,
        # Withheld on arrival, it still covers its turns (they are not asked for again),
        # but its text never enters the view: the rebuild replaces it.
        "summary": payload.summary if clean else None,
        "summary_sealed": sealed if clean else None,
        "summary_withheld": not clean,
        "summary_through": payload.through_offset,
        "summary_model": payload.model,
        "summary_covered": payload.covered_messages,
    }


def redacted(message: Message) -> Message:
    """`message` as a `MessageRedacted` leaves it: its place kept, its content gone."""
    return replace(
        message, content=REDACTED, name=None, tool_calls=(), metadata={}, redacted=True, sealed=None
    )


def redact(
    view: SessionView, message_id: str, offset: int, policy: WindowPolicy = DEFAULT_POLICY
) -> SessionView:
    """`view` after the message `message_id` was redacted at `offset`: the message blanked
    in place and, if the summary may cover it, the summary withheld.

    `evolve` applies a `MessageRedacted` with it; a read of the past applies a redaction
    made after its point with it too, so the summary it shows is withheld alike.
    """
    return replace(view, **_redact(view, message_id, offset, policy))


def _redact(
    view: SessionView, message_id: str, offset: int, policy: WindowPolicy
) -> dict[str, Any]:
    messages = tuple(redacted(m) if m.message_id == message_id else m for m in view.messages)
    changes: dict[str, Any] = {"messages": messages}
    if view.status is SessionStatus.ERASED:
        return changes  # nothing left to summarize or to withhold
    found = next((m for m in view.messages if m.message_id == message_id), None)
    if found is not None and found in view.window(policy):
        # No summary covers a window message, and none in flight can: the summarizer
        # only reads the overflow, and a message leaves the window, never enters it.
        return changes
    # A summary in flight may have read this message: it must see this redaction.
    changes["redacted_at"] = offset
    # Gone from the view (summarized, or dropped from the overflow), its offset is
    # unknown: any summary the session has may hold it.
    covered = view.summary_through >= 0 if found is None else found.offset <= view.summary_through
    if covered and view.summary is not None:  # a withheld one stays withheld
        changes.update(summary=None, summary_sealed=None, summary_withheld=True)
    return changes


def _erase(view: SessionView) -> dict[str, Any]:
    # A tombstone: nothing of the user's content survives, but the offset does, so a
    # replay of events before the erasure cannot bring the session back.
    # A summary of the erased turns may still be in flight: moving summary_through to the
    # erasure makes it stale on arrival, so it cannot bring the erased content back.
    return {
        "status": SessionStatus.ERASED,
        "title": None,
        "title_sealed": None,
        "messages": (),
        "message_count": 0,
        "overflow_dropped": 0,
        "summary": None,
        "summary_sealed": None,
        "summary_through": max(view.summary_through, view.last_offset),
        "summary_model": None,
        "summary_covered": 0,
        "summary_withheld": False,
        "tasks": (),
    }
