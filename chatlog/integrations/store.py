"""`ChatlogConversationStore`: the asyncio conversation store, on chatlog's log and read-model.

    async with ChatlogConversationStore.from_env() as store:
        session = await store.create_session(user_id="alice", title="Order 7731")
        await store.add_message(session.session_id, user_id="alice", role="user", content="Hi")
        page = await store.get_messages(session.session_id, user_id="alice", limit=20)

The `ConversationStore` calls become events and reads (`conversations` holds the role,
the models and the paging rules):

    create_session, upsert_session  ->  SessionStarted(title)
    add_message                     ->  MessageAppended
    delete_session                  ->  UserErased: the read-model forgets the session (a
                                        tombstone); the log keeps its events, and reads
                                        from the log honour the erasure
    get_session, list_sessions      <-  the read-model (Redis)
    get_messages                    <-  the read-model when the page lies among the
                                        session's recent messages, else the log

Reads beyond the window come from the log: the read-model keeps each session's recent
window and unsummarized overflow only, so Redis memory stays bounded whatever a
session's length. A page reaching further back is read from the session's partition,
between the first offset and the last offset the read-model records for the session
(`KafkaSessionLog` says what that costs). A page within the recent messages costs one
Redis round trip.

Every call names the user (the store writes and reads the tenant "default"); another
user's session reads as a missing one (`chatlog.projections.access`), and a write into it
raises `OwnershipError`: nothing of it is returned or written. Each write's position is
noted, and the store's next read of that session waits until the projector has applied
it (read-your-writes, bounded by ``read_timeout_s``; `ReadTimeout` means the projector is
not running). Session metadata is not kept: the read-model keeps a session's title, not
the metadata of `SessionStarted`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from chatlog import wiring
from chatlog.integrations.conversations import (
    ConversationMessage,
    ConversationSession,
    ConversationStore,
    Page,
    SessionExists,
    conversation_message,
    page_of,
    session_of_entry,
    session_of_view,
)
from chatlog.integrations.kafka_log import KafkaSessionLog
from chatlog.integrations.positions import PositionBook
from chatlog.producers.commands import append_message, new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.access import may_read, refuse_writer, visible
from chatlog.projections.redis_loading import aload_session
from chatlog.projections.redis_reader import AsyncRedisReader
from chatlog.projections.redis_store import redis_errors
from chatlog.projections.view import Message, SessionStatus, SessionView, message_of
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    Payload,
    Role,
    SessionStarted,
    ToolCall,
    UserErased,
    epoch_millis,
)
from chatlog.schemas.ids import new_id, validate_id
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings

__all__ = ["ChatlogConversationStore"]

DELETE_REASON = "deleted through the conversation store"
_TENANT = "default"  # the tenant of every event this store writes


class ChatlogConversationStore:
    """A `ConversationStore` whose writes are chatlog events (see the module docstring)."""

    def __init__(
        self,
        *,
        producer: AsyncConversationProducer,
        reader: AsyncRedisReader,
        log: KafkaSessionLog,
        read_timeout_s: float = 5.0,
        positions: PositionBook | None = None,
    ) -> None:
        self.producer = producer
        self.reader = reader
        self.log = log
        self.read_timeout_s = read_timeout_s
        self.positions = positions or PositionBook()
        # Per user, the newest offset written on each partition: what `list_sessions`
        # waits for (bounded like `positions`: the least recently writing users go first).
        self._user_writes: OrderedDict[str, dict[int, int]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatlogConversationStore:
        """A store for the topic, Redis and window policy `settings` describe."""
        return cls(
            producer=AsyncConversationProducer(wiring.producer(settings)),
            reader=wiring.async_reader(settings),
            log=KafkaSessionLog(
                bootstrap_servers=settings.kafka_bootstrap,
                topic=settings.topic,
                codec=wiring.codec(settings),
                config=settings.kafka,
                window=settings.window,
                opener=wiring.opener(settings),
            ),
            read_timeout_s=settings.read_timeout_s,
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> ChatlogConversationStore:
        """Built from `CHATLOG_*` settings (`overrides` win)."""
        return cls.from_settings(Settings.from_env(**overrides))

    # -- sessions --------------------------------------------------------------------

    async def create_session(
        self, *, user_id: str, session_id: str | None = None, title: str | None = None
    ) -> ConversationSession:
        """A new session (a fresh id unless given); `SessionExists` if the id is taken."""
        validate_id(user_id, field="user_id")
        if session_id is None:
            session_id = new_id()
        elif await self._writable(session_id, user_id) is not None:
            raise SessionExists.about(session_id, deleted=False)
        await self._publish(session_id, user_id, SessionStarted(title=title))
        return await self._described(session_id, user_id)

    async def get_session(self, session_id: str, *, user_id: str) -> ConversationSession | None:
        """The session, or None if there is none (never created, expired or deleted)."""
        view = await self._readable(session_id, user_id)
        return None if view is None else session_of_view(view)

    async def upsert_session(
        self, session_id: str, *, user_id: str, title: str | None = None
    ) -> ConversationSession:
        """Create the session, or give it `title` if it exists (None keeps the title)."""
        await self._writable(session_id, user_id)
        await self._publish(session_id, user_id, SessionStarted(title=title))
        return await self._described(session_id, user_id)

    async def list_sessions(self, user_id: str, *, limit: int = 50) -> list[ConversationSession]:
        """The user's sessions, most recently active first (from the read-model).

        Waits until this store's writes for the user are projected, partition by partition.
        """
        validate_id(user_id, field="user_id")
        for partition, offset in list(self._user_writes.get(user_id, {}).items()):
            await self.reader.wait_projected(
                Position(partition, offset), timeout=self.read_timeout_s
            )
        entries = await self.reader.sessions(user_id, tenant=_TENANT, limit=limit)
        return [session_of_entry(entry, user_id=user_id) for entry in entries]

    async def delete_session(self, session_id: str, *, user_id: str) -> bool:
        """Erase the session from the read-model (`UserErased`); False if there was none."""
        if await self._readable(session_id, user_id) is None:
            return False
        await self._publish(session_id, user_id, UserErased(reason=DELETE_REASON))
        return True

    # -- messages --------------------------------------------------------------------

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
        """Append one message (starting the session if needed); returns it as stored.

        A `message_id` already among the session's recent messages is a retry: the
        read-model keeps the first copy.
        """
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
            producer=self.producer.sync.info,
        )
        await self._writable(session_id, user_id)
        position = await self._send(event)
        payload = event.payload
        assert isinstance(payload, MessageAppended)
        message = message_of(payload, position.offset, epoch_millis(event.occurred_at))
        return conversation_message(message, session_id=session_id, partition=position.partition)

    async def get_messages(
        self,
        session_id: str,
        *,
        user_id: str,
        limit: int | None = 20,
        before: str | None = None,
        after: str | None = None,
    ) -> list[ConversationMessage]:
        """One page of the session's messages, oldest first ([] if there is no session).

        Served from Redis when the page lies among the session's recent messages (with
        the default `limit` and no cursor, whenever the window is at least 20); otherwise
        read from the session's partition (see `KafkaSessionLog` for the cost).
        """
        page = Page(limit=limit, before=before, after=after)
        view = await self._readable(session_id, user_id, messages=True)
        if view is None:
            return []
        complete = len(view.messages) == view.message_count
        found = page_of(view.messages, page, complete=complete, session_id=session_id)
        if found is None:
            found = await self._from_log(view, page, user_id)
        return [
            conversation_message(m, session_id=session_id, partition=view.partition) for m in found
        ]

    # -- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        """Flush pending events and release connections."""
        try:
            await self.producer.aclose()
        finally:
            await self.reader.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------------

    async def _publish(self, session_id: str, user_id: str, payload: Payload) -> Position:
        event = new_event(
            session_id, user_id=user_id, payload=payload, producer=self.producer.sync.info
        )
        return await self._send(event)

    async def _send(self, event: ConversationEvent) -> Position:
        position = await self.producer.publish(event)
        self.positions.note((self.log.topic, event.session_id), position)
        marks = self._user_writes.pop(event.user_id, {})
        marks[position.partition] = max(marks.get(position.partition, -1), position.offset)
        self._user_writes[event.user_id] = marks  # the most recent user last
        if len(self._user_writes) > self.positions.max_sessions:
            self._user_writes.popitem(last=False)
        return position

    async def _described(self, session_id: str, user_id: str) -> ConversationSession:
        view = await self._writable(session_id, user_id)
        if view is None:
            # Only a deleted session stays without a view after its SessionStarted.
            raise SessionExists.about(session_id, deleted=True)
        return session_of_view(await self.reader.open(view))

    async def _view(
        self, session_id: str, user_id: str, *, messages: bool = False
    ) -> SessionView | None:
        """The session's view (erased ones included, whoever owns it) once this store's
        writes to it are applied; None if it has none. Callers apply the read rule through
        `_readable` or `_writable`."""
        validate_id(session_id, field="session_id")
        validate_id(user_id, field="user_id")
        after = self.positions.get((self.log.topic, session_id))
        with redis_errors():
            if after is not None:
                await self.reader.wait_applied(session_id, after, timeout=self.read_timeout_s)
            keys = await self.reader.keys()
        view, _ = await aload_session(self.reader.client, keys, session_id, messages=messages)
        return view

    async def _readable(
        self, session_id: str, user_id: str, *, messages: bool = False
    ) -> SessionView | None:
        """The view as the read rule lets `user_id` see it, opened; None if none, erased,
        or not theirs."""
        view = await self._view(session_id, user_id, messages=messages)
        if not may_read(view, tenant=_TENANT, user_id=user_id):
            return None
        assert view is not None  # may_read: it exists
        return await self.reader.open(view)

    async def _writable(self, session_id: str, user_id: str) -> SessionView | None:
        """The view `user_id` may write to (None: a new session); an erased id is never
        reused, and another user's session is refused (`OwnershipError`)."""
        view = await self._view(session_id, user_id)
        if view is None:
            return None
        if view.status is SessionStatus.ERASED:
            raise SessionExists.about(session_id, deleted=True)
        refuse_writer(
            session_id,
            owner=KeyScope(view.tenant, view.user_id),
            writer=KeyScope(_TENANT, user_id),
        )
        return view

    async def _from_log(self, view: SessionView, page: Page, user_id: str) -> list[Message]:
        fold = await asyncio.to_thread(
            self.log.page,
            view.session_id,
            page,
            partition=view.partition,
            first_offset=view.first_offset,
            last_offset=view.last_offset,
        )
        if fold.owner is not None:
            owner, tenant = fold.owner
            mine = KeyScope(_TENANT, user_id)
            if not visible(owner=KeyScope(tenant, owner), erased=False, reader=mine):
                return []  # as for a session that is not theirs: nothing
        return fold.result()


if TYPE_CHECKING:

    def _is_a_store(store: ChatlogConversationStore) -> ConversationStore:
        return store  # mypy checks that the store fulfils the role
