"""The conversation store role: sessions and messages as agent frameworks plug them in.

What is a conversation store? The asyncio interface an agent framework calls to keep its
conversations: create, read, update and delete sessions, add messages, page through
them. `ConversationStore` is that role as a Protocol, with pydantic models for what it
returns; `chatlog.integrations.memory_store.InMemoryConversationStore` is the tiny fake
beside it (for the tests of code that uses a store);
`chatlog.integrations.store.ChatlogConversationStore` is the real one.

Paging: `get_messages(session_id, user_id=..., limit, before, after)` returns messages
oldest first. `before` and `after` are message ids, both exclusive. With `after`, the
page is the first `limit` messages after it (paging forward); otherwise the last `limit`
messages (before `before`, if given: paging back). `limit=None` means all of them. A
cursor that is not a message of the session raises `UnknownMessage`.

Also here, pure and shared by both stores: `page_of`, which answers a page from the
newest messages a store holds (or says it cannot), and `LogPage`, which folds a session's
events, in log order and with the projector's rules, into one page.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self

from pydantic import BaseModel, ConfigDict

from chatlog.projections.store import SessionEntry
from chatlog.projections.view import Message, SessionStatus, SessionView, message_of, redacted
from chatlog.schemas.errors import InvalidInput, SessionExists, UnknownMessage
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Role,
    SessionClosed,
    ToolCall,
    UserErased,
    epoch_millis,
)
from chatlog.schemas.ids import validate_id
from chatlog.schemas.position import Position

__all__ = [
    "ConversationMessage",
    "ConversationSession",
    "ConversationStore",
    "LogPage",
    "Page",
    "SessionExists",
    "UnknownMessage",
    "conversation_message",
    "page_of",
    "session_of_entry",
    "session_of_view",
    "utc_datetime",
]


class ConversationSession(BaseModel):
    """One conversation, as a store lists it."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    user_id: str
    title: str | None = None
    status: SessionStatus = SessionStatus.OPEN
    message_count: int = 0
    created_at: datetime
    updated_at: datetime


class ConversationMessage(BaseModel):
    """One message of a conversation, with where the log holds it."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    session_id: str
    role: Role
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    metadata: dict[str, str] = {}
    created_at: datetime
    partition: int
    offset: int
    redacted: bool = False

    @property
    def position(self) -> Position:
        """The message's event in the log."""
        return Position(self.partition, self.offset)


class ConversationStore(Protocol):
    """Sessions and messages, per user; see the module docstring for paging.

    Every call names the user. Another user's session reads as a missing one (None, no
    messages, nothing to delete), and a write into it raises `OwnershipError`, nothing
    written. Writes are read by the next read of the same store.
    """

    async def create_session(
        self, *, user_id: str, session_id: str | None = None, title: str | None = None
    ) -> ConversationSession:
        """A new session (a fresh id unless given); `SessionExists` if the id is taken."""
        ...

    async def get_session(self, session_id: str, *, user_id: str) -> ConversationSession | None:
        """The session, or None if there is none (never created, expired or deleted)."""
        ...

    async def upsert_session(
        self, session_id: str, *, user_id: str, title: str | None = None
    ) -> ConversationSession:
        """Create the session, or give it `title` if it exists (None keeps the title)."""
        ...

    async def add_message(
        self,
        session_id: str,
        *,
        user_id: str,
        role: Role | str,
        content: str,
        name: str | None = None,
        tool_calls: Iterable[ToolCall | Mapping[str, str]] = (),
        tool_call_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> ConversationMessage:
        """Append one message (starting the session if needed); returns it as stored."""
        ...

    async def get_messages(
        self,
        session_id: str,
        *,
        user_id: str,
        limit: int | None = 20,
        before: str | None = None,
        after: str | None = None,
    ) -> list[ConversationMessage]:
        """One page of the session's messages, oldest first ([] if there is no session)."""
        ...

    async def list_sessions(self, user_id: str, *, limit: int = 50) -> list[ConversationSession]:
        """The user's sessions, most recently active first."""
        ...

    async def delete_session(self, session_id: str, *, user_id: str) -> bool:
        """Delete the session; False if there was none."""
        ...

    async def close(self) -> None:
        """Release the store's connections (pending writes are flushed)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Page:
    """Which messages `get_messages` asks for (see the module docstring)."""

    limit: int | None = 20
    before: str | None = None
    after: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise InvalidInput(f"limit must be at least 1 (or None for all), got {self.limit}")
        for cursor, value in (("before", self.before), ("after", self.after)):
            if value is not None:
                validate_id(value, field=cursor)


def page_of(
    messages: Sequence[Message], page: Page, *, complete: bool, session_id: str
) -> list[Message] | None:
    """The page, from `messages`, the newest of the session's messages, oldest first.

    `complete` says whether they are all of them. None when the page needs older ones;
    `UnknownMessage` when all are there and a cursor is not among them.
    """
    ids: dict[str, int] = {}
    for index, message in enumerate(messages):
        ids.setdefault(message.message_id, index)

    def find(cursor: str) -> int | None:
        index = ids.get(cursor)
        if index is None and complete:
            raise _unknown(cursor, session_id)
        return index

    if page.after is not None:
        start = find(page.after)
        if start is None:
            return None  # older than what is held
        end = len(messages)
        if page.before is not None:
            before = find(page.before)
            if before is None:
                return None
            end = max(before, start + 1)
        return list(messages[start + 1 : end][: page.limit])
    end = len(messages)
    if page.before is not None:
        before = find(page.before)
        if before is None:
            return None
        end = before
    if page.limit is not None and end >= page.limit:
        return list(messages[end - page.limit : end])
    return list(messages[:end]) if complete else None


class LogPage:
    """One page of a session's messages, folded from its events in log order.

    The rules are the projector's: the session's owner is whoever wrote its first event,
    and events from anyone else are skipped; an append whose message id is among the last
    `window` messages is a retry, not a message; a redaction blanks the message, an
    erasure forgets every message before it. Memory: the page and `window` ids.
    """

    def __init__(self, session_id: str, page: Page, *, window: int) -> None:
        self.session_id = session_id
        self.page = page
        self.window = window
        self.owner: tuple[str, str] | None = None
        self._reset()

    def _reset(self) -> None:
        backward = self.page.after is None
        self._kept: deque[Message] = deque(maxlen=self.page.limit if backward else None)
        self._recent: deque[str] = deque(maxlen=self.window)
        self._open = backward
        self._closed = False
        self._seen_before = False
        self._seen_after = False

    def take(self, event: ConversationEvent, offset: int) -> None:
        """Fold in the session's event stored at `offset` (events of other sessions: no-op)."""
        if event.session_id != self.session_id:
            return
        payload = event.payload
        if self.owner is None:
            if isinstance(payload, UserErased | SessionClosed | MessageRedacted):
                return  # the projector starts no session with these
            self.owner = (event.user_id, event.tenant)
        elif (event.user_id, event.tenant) != self.owner:
            return  # the projector dead-letters it
        if isinstance(payload, MessageAppended):
            self._append(payload, offset, epoch_millis(event.occurred_at))
        elif isinstance(payload, MessageRedacted):
            self._redact(payload.message_id)
        elif isinstance(payload, UserErased):
            self._reset()

    def result(self) -> list[Message]:
        """The page, oldest first; `UnknownMessage` if a cursor was not found."""
        for cursor, seen in (
            (self.page.after, self._seen_after),
            (self.page.before, self._seen_before),
        ):
            if cursor is not None and not seen:
                raise _unknown(cursor, self.session_id)
        return list(self._kept)

    def _append(self, payload: MessageAppended, offset: int, at_ms: int) -> None:
        message_id = payload.message_id
        if message_id in self._recent:
            return  # a retried append
        self._recent.append(message_id)
        is_after = message_id == self.page.after
        is_before = message_id == self.page.before
        self._seen_before = self._seen_before or is_before
        if not self._open:
            if is_after:
                self._seen_after = self._open = True
                self._closed = self._seen_before  # `before` came first: an empty page
            return
        if self._closed:
            return
        if is_before:
            self._closed = True
            return
        forward = self._kept.maxlen is None
        if forward and self.page.limit is not None and len(self._kept) >= self.page.limit:
            return  # paging forward: the page is full
        self._kept.append(message_of(payload, offset, at_ms))

    def _redact(self, message_id: str) -> None:
        if any(m.message_id == message_id for m in self._kept):
            self._kept = deque(
                (redacted(m) if m.message_id == message_id else m for m in self._kept),
                maxlen=self._kept.maxlen,
            )


def conversation_message(
    message: Message, *, session_id: str, partition: int
) -> ConversationMessage:
    """A stored message as a store returns it."""
    return ConversationMessage(
        message_id=message.message_id,
        session_id=session_id,
        role=Role(message.role),
        content=message.content,
        name=message.name,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
        metadata=dict(message.metadata),
        created_at=utc_datetime(message.occurred_at_ms),
        partition=partition,
        offset=message.offset,
        redacted=message.redacted,
    )


def session_of_view(view: SessionView) -> ConversationSession:
    """A session's read-model view as a store returns it."""
    return ConversationSession(
        session_id=view.session_id,
        user_id=view.user_id,
        title=view.title,
        status=view.status,
        message_count=view.message_count,
        created_at=utc_datetime(view.created_at_ms),
        updated_at=utc_datetime(view.updated_at_ms),
    )


def session_of_entry(entry: SessionEntry, *, user_id: str) -> ConversationSession:
    """A line of `user_id`'s session list as a store returns it."""
    return ConversationSession(
        session_id=entry.session_id,
        user_id=user_id,
        title=entry.title,
        status=entry.status,
        message_count=entry.message_count,
        created_at=utc_datetime(entry.created_at_ms),
        updated_at=utc_datetime(entry.updated_at_ms),
    )


def _unknown(cursor: str, session_id: str) -> UnknownMessage:
    return UnknownMessage(
        f"no message {cursor} in session {session_id}; page with the ids get_messages returned",
        session_id=session_id,
    )


def utc_datetime(epoch_ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime, as the store's models carry times."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
