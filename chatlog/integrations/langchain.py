"""`ChatlogMessageHistory`: LangChain's chat message history, kept by chatlog.

A drop-in for `RedisChatMessageHistory` and friends as the ``get_session_history``
factory of `RunnableWithMessageHistory`::

    def get_session_history(user_id: str, session_id: str) -> BaseChatMessageHistory:
        return ChatlogMessageHistory(session_id, user_id)  # was RedisChatMessageHistory(...)

Writes are events: `add_messages` publishes one `MessageAppended` per message to the
session's partition and waits for the broker. Reads are the projection: `messages` reads
the session's read-model in Redis. A history is one user's of one tenant (``tenant=``,
"default" unless given): another user's or tenant's session reads as a missing one (no
messages; `clear` does nothing), and `add_messages` into it raises `OwnershipError`,
nothing published. Message types and every field round-trip (`langchain_messages`).

How does a read see the last write? Every write's position is noted in a process-wide
`HistoryBook`, per session, and the next read of that session (by this object or by any
other history object in the process, such as the one `RunnableWithMessageHistory` builds
for the next turn) waits until the projector has applied it. So a message added is in
the next read, always, within the process. Another process reads the projection as it
is (typically milliseconds behind); pass it the writer's position as ``after=`` (from
`last_position`) to read after it. A read that cannot reach its position within
``read_timeout`` raises `ReadTimeout`: the projector is not running.

What `messages` returns: the read-model's unsummarized messages (the overflow, then the
recent window), oldest first, preceded by the rolling summary of older turns when there
is one, marked ``additional_kwargs["chatlog_summary"]``: by default a `HumanMessage` that
quotes the summary as data between delimiters it cannot close, under a label saying it is
a record of earlier turns and not instructions; a `SystemMessage` only with
``CHATLOG_SUMMARY_ROLE=system`` (`chatlog.projections.context.render_summary`;
``include_summary=False`` leaves it out). The summary is what keeps older turns in the
model's view once they leave the window; without it, a long conversation would silently
lose its beginning.
The marked message is never stored back by `add_messages`.

What `clear()` does: it publishes `SessionClosed` (the log keeps every message; replay
and audits still see them) and from then on every history of the session reads only
what was added after the clear. The read-model keeps a closed session's messages and
records the offset of its last close (`Context.closed_through`, kept when a later
message reopens the session), so every reader, in any process, leaves out what came
before it, whoever added the later messages. Messages added afterwards also carry the
clear's offset in metadata (``langchain.cleared_through``). The rolling summary is never
shown again after a clear, since it would still tell the earlier turns.

Used with `RunnableWithMessageHistory` and no ``history_messages_key``, LangChain reads
the history again after the call to cut the history out of its input; a summary landing
in between changes that count (true of any history whose read-model summarizes). Give the
prompt a ``history_messages_key`` (the usual `MessagesPlaceholder` set-up) to avoid it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatlog.schemas.errors import MissingExtra

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import BaseMessage
except ImportError as missing:
    raise MissingExtra.needs("langchain", "ChatlogMessageHistory", missing) from missing

from chatlog.client import AsyncChatLog, ChatLog
from chatlog.integrations.langchain_messages import (
    cleared_through,
    from_chatlog,
    is_summary,
    summary_message,
    to_chatlog,
)
from chatlog.integrations.positions import PositionBook, SessionKey, newest
from chatlog.producers.commands import LANGCHAIN_METADATA, append_owned_message, new_event
from chatlog.projections.context import Context
from chatlog.projections.view import SessionStatus
from chatlog.schemas.errors import ConfigError, SessionNotFound
from chatlog.schemas.events import ConversationEvent, ProducerInfo, SessionClosed
from chatlog.schemas.ids import validate_id
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope

__all__ = ["ChatlogMessageHistory", "HistoryBook", "shared_log"]

CLEAR_REASON = "cleared through LangChain (ChatlogMessageHistory.clear)"


@dataclass(frozen=True)
class HistoryBook:
    """What a process knows of its sessions: its newest writes and its last clears."""

    written: PositionBook = field(default_factory=PositionBook)
    cleared: PositionBook = field(default_factory=PositionBook)


_BOOK = HistoryBook()
_SHARED: ChatLog | None = None
_SHARED_LOCK = threading.Lock()


def shared_log() -> ChatLog:
    """The `ChatLog.from_env()` that histories given no ``log`` share (built on first use)."""
    global _SHARED  # noqa: PLW0603 - one client per process, like a connection pool
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ChatLog.from_env()
        return _SHARED


class ChatlogMessageHistory(BaseChatMessageHistory):
    """A LangChain chat history of one user's session, backed by chatlog.

    `log` serves the blocking methods and `async_log` the asyncio ones; with only `log`,
    the asyncio methods run the blocking ones in a thread, and with neither, a shared
    `ChatLog.from_env()` is used. `tenant` is the user's tenant. `after` is a position to
    read after (another process's write); `read_timeout` bounds that wait (default: the
    client's). `book` is where positions are noted (default: one per process).
    """

    def __init__(
        self,
        session_id: str,
        user_id: str,
        *,
        tenant: str = "default",
        log: ChatLog | None = None,
        async_log: AsyncChatLog | None = None,
        include_summary: bool = True,
        after: Position | None = None,
        read_timeout: float | None = None,
        book: HistoryBook | None = None,
    ) -> None:
        super().__init__()
        self.session_id = validate_id(session_id, field="session_id")
        self.user_id = validate_id(user_id, field="user_id")
        self.tenant = validate_id(tenant, field="tenant")
        if log is None and async_log is None:
            log = shared_log()
        self.log = log
        self.async_log = async_log
        self.include_summary = include_summary
        self.read_timeout = read_timeout
        self._book = book or _BOOK
        # Keyed by tenant and user too: one user's writes and clear marks never move
        # another's reads.
        self._key: SessionKey = (_topic(log, async_log), self.tenant, self.user_id, session_id)
        self._written: Position | None = self._book.written.note(self._key, after)
        self._cleared: Position | None = self._book.cleared.get(self._key)

    @property
    def last_position(self) -> Position | None:
        """The newest position written to this session that this process knows of."""
        self._written = self._book.written.note(self._key, self._written)
        return self._written

    # -- blocking --------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The summary (if any) and the messages since the last clear, oldest first."""
        context = self._read(self._sync_log())
        return self._absent() if context is None else self._history(context)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append `messages` in order; the next read of the session contains them."""
        log = self._sync_log()
        if self._cleared_through() is None:
            _ = self.messages  # learn whether, and where, the session was cleared
        events = self._events(messages, log.producer.info)
        if events:
            if log.claims is not None:  # another user's session: refused, nothing sent
                log.claims.claim(self._scope, self.session_id)
            self._note_written(max(log.producer.publish_many(events)))

    def clear(self) -> None:
        """Publish `SessionClosed`; reads then show only what is added afterwards."""
        log = self._sync_log()
        context = self._read(log)
        if context is None:
            return  # never created, expired or erased: nothing to clear
        if context.status is SessionStatus.CLOSED:
            self._note_cleared(context.position)
            return
        position = log.producer.publish(self._close_event(log.producer.info))
        self._note_written(position)
        self._note_cleared(position)

    # -- asyncio ---------------------------------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        """`messages`, awaited."""
        if self.async_log is None:
            return await super().aget_messages()
        context = await self._aread(self.async_log)
        return self._absent() if context is None else self._history(context)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """`add_messages`, awaited."""
        if self.async_log is None:
            await super().aadd_messages(messages)
            return
        if self._cleared_through() is None:
            await self.aget_messages()
        producer = self.async_log.producer
        events = self._events(messages, producer.sync.info)
        if events:
            claims = self.async_log.claims
            if claims is not None:  # another user's session: refused, nothing sent
                await claims.claim(self._scope, self.session_id)
            self._note_written(max(await producer.publish_many(events)))

    async def aclear(self) -> None:
        """`clear`, awaited."""
        if self.async_log is None:
            await super().aclear()
            return
        context = await self._aread(self.async_log)
        if context is None:
            return
        if context.status is SessionStatus.CLOSED:
            self._note_cleared(context.position)
            return
        producer = self.async_log.producer
        position = await producer.publish(self._close_event(producer.sync.info))
        self._note_written(position)
        self._note_cleared(position)

    # -- internals -------------------------------------------------------------------

    @property
    def _scope(self) -> KeyScope:
        return KeyScope(self.tenant, self.user_id)

    def _sync_log(self) -> ChatLog:
        if self.log is None:
            raise ConfigError(
                "this ChatlogMessageHistory was given only async_log=, so it has no blocking "
                "client; use the asyncio methods (aget_messages, aadd_messages, aclear) or "
                "pass log= as well"
            )
        return self.log

    def _read(self, log: ChatLog) -> Context | None:
        """The session's context after the newest write known; None if there is none."""
        try:
            # `timeout=None` is the client's own read timeout.
            return log.context(
                self.session_id,
                user_id=self.user_id,
                tenant=self.tenant,
                after=self.last_position,
                timeout=self.read_timeout,
            )
        except SessionNotFound:
            return None

    async def _aread(self, log: AsyncChatLog) -> Context | None:
        """`_read`, awaited."""
        try:
            return await log.context(
                self.session_id,
                user_id=self.user_id,
                tenant=self.tenant,
                after=self.last_position,
                timeout=self.read_timeout,
            )
        except SessionNotFound:
            return None

    def _history(self, context: Context) -> list[BaseMessage]:
        """The LangChain view of a context: the summary, then the messages since the clear."""
        known = self._cleared_through()
        # The read-model's record of the last close is exact for every reader in every
        # process; the marks in metadata and this process's book only add to it.
        cleared = max(
            [
                -1 if known is None else known,
                context.closed_through,
                *map(cleared_through, context.messages),
            ]
        )
        if context.status is SessionStatus.CLOSED:
            # Closed and not reopened: every message in the view precedes the close.
            cleared = max(cleared, context.position.offset)
        self._note_cleared(Position(context.position.partition, cleared))
        history = [from_chatlog(m) for m in context.messages if m.offset > cleared]
        if self.include_summary and context.summary and cleared < 0:
            summary = summary_message(
                context.summary, through_offset=context.summary_through, role=context.summary_role
            )
            history.insert(0, summary)
        return history

    def _absent(self) -> list[BaseMessage]:
        if self._cleared_through() is None:
            self._note_cleared(Position(0, -1))  # no session: nothing was ever cleared
        return []

    def _events(
        self, messages: Sequence[BaseMessage], info: ProducerInfo
    ) -> list[ConversationEvent]:
        cleared = self._cleared_through()
        producer = info.model_copy(update={"client": "chatlog-langchain"})
        events = []
        for message in messages:
            if is_summary(message):
                continue  # the summary is derived from the log, never written to it
            stored = to_chatlog(message, cleared_through=-1 if cleared is None else cleared)
            events.append(
                # The one writer of the reserved langchain.* keys (see producers.commands).
                append_owned_message(
                    LANGCHAIN_METADATA,
                    self.session_id,
                    user_id=self.user_id,
                    tenant=self.tenant,
                    role=stored.role,
                    content=stored.content,
                    producer=producer,
                    name=stored.name,
                    tool_calls=stored.tool_calls,
                    tool_call_id=stored.tool_call_id,
                    metadata=stored.metadata,
                    message_id=stored.message_id,
                )
            )
        return events

    def _close_event(self, info: ProducerInfo) -> ConversationEvent:
        return new_event(
            self.session_id,
            user_id=self.user_id,
            tenant=self.tenant,
            payload=SessionClosed(reason=CLEAR_REASON),
            producer=info.model_copy(update={"client": "chatlog-langchain"}),
        )

    def _cleared_through(self) -> int | None:
        """The offset of the session's last clear; -1 if none; None if not known yet."""
        self._cleared = newest(self._cleared, self._book.cleared.get(self._key))
        return None if self._cleared is None else self._cleared.offset

    def _note_written(self, position: Position) -> None:
        self._written = self._book.written.note(self._key, newest(self._written, position))

    def _note_cleared(self, position: Position) -> None:
        self._cleared = self._book.cleared.note(self._key, newest(self._cleared, position))


def _topic(log: ChatLog | None, async_log: AsyncChatLog | None) -> str:
    topics = set() if log is None else {log.producer.topic}
    if async_log is not None:
        topics.add(async_log.producer.sync.topic)
    if len(topics) != 1:
        raise ConfigError(
            f"log= and async_log= publish to different topics ({', '.join(sorted(topics))}); "
            f"give a history two clients of the same chatlog"
        )
    return topics.pop()
