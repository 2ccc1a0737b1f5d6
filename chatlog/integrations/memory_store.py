"""`InMemoryConversationStore`: the conversation store role in a dict, for tests.

The same contract as `chatlog.integrations.store.ChatlogConversationStore` (the contract
tests run against both), with no Kafka and no Redis: code that takes a `ConversationStore`
is tested against this fake. It keeps the projector's rules for what a message becomes
(`conversation_message`) and the same paging (`page_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self

from chatlog.integrations.conversations import (
    ConversationMessage,
    ConversationSession,
    ConversationStore,
    Page,
    conversation_message,
    page_of,
    utc_datetime,
)
from chatlog.producers.commands import append_message
from chatlog.projections.access import refuse_writer, visible
from chatlog.projections.view import Message, message_of
from chatlog.schemas.errors import SessionExists
from chatlog.schemas.events import (
    MessageAppended,
    Role,
    ToolCall,
    epoch_millis,
)
from chatlog.schemas.ids import new_id, validate_id
from chatlog.schemas.sealing import KeyScope

__all__ = ["InMemoryConversationStore"]


@dataclass
class _Session:
    owner: str
    title: str | None
    created_ms: int
    updated_ms: int
    messages: list[Message]
    deleted: bool = False


class InMemoryConversationStore:
    """A `ConversationStore` in a dict: the same contract, no Kafka, no Redis."""

    def __init__(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._offset = -1
        self._clock_ms = 0

    async def create_session(
        self, *, user_id: str, session_id: str | None = None, title: str | None = None
    ) -> ConversationSession:
        session_id = validate_id(session_id or new_id(), field="session_id")
        if self._writable(session_id, user_id) is not None:
            raise SessionExists.about(session_id, deleted=False)
        now = self._tick()
        self._sessions[session_id] = _Session(user_id, title, now, now, [])
        return self._describe(session_id)

    async def get_session(self, session_id: str, *, user_id: str) -> ConversationSession | None:
        if self._readable(session_id, user_id) is None:
            return None
        return self._describe(session_id)

    async def upsert_session(
        self, session_id: str, *, user_id: str, title: str | None = None
    ) -> ConversationSession:
        session = self._writable(session_id, user_id)
        if session is None:
            return await self.create_session(user_id=user_id, session_id=session_id, title=title)
        session.updated_ms = self._tick()
        if title is not None:
            session.title = title
        return self._describe(session_id)

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
        event = append_message(
            session_id,
            user_id=user_id,
            role=role,
            content=content,
            name=name,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            metadata=metadata,
            message_id=message_id,
        )
        session = self._writable(session_id, user_id)
        now = self._tick()
        if session is None:
            session = self._sessions[session_id] = _Session(user_id, None, now, now, [])
        payload = event.payload
        assert isinstance(payload, MessageAppended)
        message = message_of(payload, self._offset, now)
        session.updated_ms = now
        if all(m.message_id != message.message_id for m in session.messages):
            session.messages.append(message)
        return conversation_message(message, session_id=session_id, partition=0)

    async def get_messages(
        self,
        session_id: str,
        *,
        user_id: str,
        limit: int | None = 20,
        before: str | None = None,
        after: str | None = None,
    ) -> list[ConversationMessage]:
        page = Page(limit=limit, before=before, after=after)
        session = self._readable(session_id, user_id)
        if session is None:
            return []
        found = page_of(session.messages, page, complete=True, session_id=session_id)
        assert found is not None  # complete: always answered
        return [conversation_message(m, session_id=session_id, partition=0) for m in found]

    async def list_sessions(self, user_id: str, *, limit: int = 50) -> list[ConversationSession]:
        validate_id(user_id, field="user_id")
        mine = [
            self._describe(session_id)
            for session_id, session in self._sessions.items()
            if session.owner == user_id and not session.deleted
        ]
        mine.sort(key=lambda s: s.updated_at, reverse=True)
        return mine[:limit]

    async def delete_session(self, session_id: str, *, user_id: str) -> bool:
        session = self._readable(session_id, user_id)
        if session is None:
            return False
        session.deleted = True
        session.messages.clear()
        self._tick()
        return True

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _readable(self, session_id: str, user_id: str) -> _Session | None:
        """The session as the read rule lets `user_id` see it; None if none, erased, or
        not theirs."""
        validate_id(session_id, field="session_id")
        validate_id(user_id, field="user_id")
        session = self._sessions.get(session_id)
        if session is None or not visible(
            owner=_scope(session.owner), erased=session.deleted, reader=_scope(user_id)
        ):
            return None
        return session

    def _writable(self, session_id: str, user_id: str) -> _Session | None:
        """The session `user_id` may write to (None: a new one); an erased id is never
        reused, and another user's session is refused (`OwnershipError`)."""
        validate_id(session_id, field="session_id")
        validate_id(user_id, field="user_id")
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.deleted:
            raise SessionExists.about(session_id, deleted=True)
        refuse_writer(session_id, owner=_scope(session.owner), writer=_scope(user_id))
        return session

    def _tick(self) -> int:
        """A new offset, and the time in ms (strictly increasing, so orders are total)."""
        self._offset += 1
        self._clock_ms = max(epoch_millis(datetime.now(UTC)), self._clock_ms + 1)
        return self._clock_ms

    def _describe(self, session_id: str) -> ConversationSession:
        session = self._sessions[session_id]
        return ConversationSession(
            session_id=session_id,
            user_id=session.owner,
            title=session.title,
            message_count=len(session.messages),
            created_at=utc_datetime(session.created_ms),
            updated_at=utc_datetime(session.updated_ms),
        )


def _scope(user_id: str) -> KeyScope:
    return KeyScope("default", user_id)  # the tenant of every session of this store


if TYPE_CHECKING:

    def _is_a_store(store: InMemoryConversationStore) -> ConversationStore:
        return store  # mypy checks that the fake fulfils the role
