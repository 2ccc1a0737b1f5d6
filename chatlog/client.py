"""`ChatLog` and `AsyncChatLog`: the three calls a chat back end makes.

    log = ChatLog.from_env()
    position = log.append("session-42", user_id="alice", role="user", content="Hi!")
    context = log.context("session-42", user_id="alice", after=position)
    messages = context.to_openai(system="You are helpful.", max_tokens=3000)

`append` publishes an event and returns its position; `context` reads the projection,
waiting for that position when given one (read-your-writes); `sessions` lists a user's
sessions, with the title `start_session` gave them. Every read names the user, and a
session of another user is refused.

`context(..., as_of=...)` answers what the bot saw at a past point, folded from the log
itself (`KafkaHistory`), so it needs neither the projector nor Redis:

    then = log.context("session-42", user_id="alice", as_of=datetime(2025, 6, 1, tzinfo=UTC))

`erase_user` erases a person: their keys are destroyed, so what the log holds of them
can never be read again, and their sessions leave Redis (`chatlog.processors.erasure`):

    erasure = log.erase_user("alice")
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self, Unpack

from chatlog import wiring
from chatlog.processors.erasure import Erasure, UserEraser
from chatlog.processors.kafka_history import AsOfPoint, KafkaHistory
from chatlog.producers.commands import MessageFields, new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from chatlog.projections.context import Context
from chatlog.projections.redis_reader import AsyncRedisReader, RedisReader
from chatlog.projections.store import SessionEntry
from chatlog.schemas.errors import ConfigError, InvalidInput
from chatlog.schemas.events import (
    ConversationEvent,
    ProducerInfo,
    Role,
    SessionStarted,
)
from chatlog.schemas.position import Position
from chatlog.settings import Settings

__all__ = ["AsyncChatLog", "ChatLog"]


def _eraser_of(eraser: UserEraser | None) -> UserEraser:
    if eraser is None:
        raise ConfigError(
            "this client cannot erase users: build it with eraser=wiring.eraser(settings, "
            "producer), or with from_env()",
            setting="eraser",
        )
    return eraser


def _history_for(history: KafkaHistory | None, after: Position | None) -> KafkaHistory:
    """Where an `as_of` read goes; refuses the combinations it cannot honour."""
    if after is not None:
        # `after` waits for the read-model to reach a position; `as_of` reads the log as
        # it was, without the read-model: together they ask for two different answers.
        raise InvalidInput(
            f"pass after or as_of, not both: after={after} waits for the projection to "
            f"reach a position, as_of reads the log as it was at a point"
        )
    if history is None:
        raise ConfigError(
            "this client has no history to read as_of from: build it with "
            "history=KafkaHistory(...), or with from_env()",
            setting="history",
        )
    return history


class ChatLog:
    """Publish messages and read contexts (blocking)."""

    def __init__(
        self,
        *,
        producer: ConversationProducer,
        reader: RedisReader,
        read_timeout_s: float = 5.0,
        history: KafkaHistory | None = None,
        eraser: UserEraser | None = None,
    ) -> None:
        self.producer = producer
        self.reader = reader
        self.read_timeout_s = read_timeout_s
        self.history = history
        self.eraser = eraser

    @classmethod
    def from_env(cls, **overrides: Any) -> ChatLog:
        """Built from `CHATLOG_*` settings (`overrides` win)."""
        settings = Settings.from_env(**overrides)
        producer = wiring.producer(settings)
        reader = wiring.reader(settings)
        return cls(
            producer=producer,
            reader=reader,
            read_timeout_s=settings.read_timeout_s,
            history=wiring.kafka_history(settings),
            eraser=wiring.eraser(settings, producer, reader.client),
        )

    def append(
        self,
        session_id: str,
        *,
        user_id: str,
        role: Role | str,
        content: str,
        **fields: Unpack[MessageFields],
    ) -> Position:
        """Append one message; returns its position once the broker has it."""
        return self.producer.append(
            session_id, user_id=user_id, role=role, content=content, **fields
        )

    def start_session(self, session_id: str, *, user_id: str, title: str | None = None) -> Position:
        """Start the session, or retitle it (None keeps the title); returns its position.

        Optional: `append` starts a session too, with no title.
        """
        return self.producer.publish(
            _session_started(session_id, user_id, title, self.producer.info)
        )

    def context(
        self,
        session_id: str,
        *,
        user_id: str,
        after: Position | None = None,
        as_of: AsOfPoint | None = None,
        timeout: float | None = None,
        reveal: bool = False,
    ) -> Context:
        """The session's summary and recent messages; waits for `after` if given.

        With `as_of` (an aware datetime, epoch milliseconds, or a `Position` meaning
        right after that event), the context as it was then, folded from the log: no
        projector or read-model is asked (Redis serves only the owner's keys). `after`
        and `as_of` exclude each other.

        With `reveal`, personal data the producer tokenized (``CHATLOG_PII_MODE=tokenize``)
        comes back in place of its ``[EMAIL#1]`` placeholders, opened with the owner's
        key: for the owner's own views (a receipt, a form to fill), never for a prompt.
        Once the owner is erased nothing reveals it.
        """
        if as_of is not None:
            history = _history_for(self.history, after)
            return history.context(
                session_id, user_id=user_id, as_of=as_of, timeout=timeout, reveal=reveal
            )
        return self.reader.context(
            session_id,
            user_id=user_id,
            after=after,
            timeout=self.read_timeout_s if timeout is None else timeout,
            reveal=reveal,
        )

    def sessions(self, user_id: str, *, limit: int = 50) -> list[SessionEntry]:
        """The user's sessions, most recently active first."""
        return self.reader.sessions(user_id, limit=limit)

    def erase_user(self, user_id: str, *, tenant: str = "default") -> Erasure:
        """Erase the user: destroy their keys and remove their sessions from Redis.

        Returns once the keys' tombstones are acknowledged and no generation of the
        read-model holds a session of theirs. Harmless when repeated
        (`already_erased`); `UnknownUser` if chatlog has nothing of them.
        """
        return _eraser_of(self.eraser).erase(user_id, tenant=tenant)

    def close(self) -> None:
        """Flush pending events and release connections."""
        try:
            self.producer.close()
        finally:
            self.reader.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncChatLog:
    """Publish messages and read contexts (asyncio)."""

    def __init__(
        self,
        *,
        producer: AsyncConversationProducer,
        reader: AsyncRedisReader,
        read_timeout_s: float = 5.0,
        history: KafkaHistory | None = None,
        eraser: UserEraser | None = None,
    ) -> None:
        self.producer = producer
        self.reader = reader
        self.read_timeout_s = read_timeout_s
        self.history = history
        self.eraser = eraser

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncChatLog:
        """Built from `CHATLOG_*` settings (`overrides` win)."""
        settings = Settings.from_env(**overrides)
        producer = wiring.producer(settings)
        return cls(
            producer=AsyncConversationProducer(producer),
            reader=wiring.async_reader(settings),
            read_timeout_s=settings.read_timeout_s,
            history=wiring.kafka_history(settings),
            eraser=wiring.eraser(settings, producer),
        )

    async def append(
        self,
        session_id: str,
        *,
        user_id: str,
        role: Role | str,
        content: str,
        **fields: Unpack[MessageFields],
    ) -> Position:
        """Append one message; returns its position once the broker has it."""
        return await self.producer.append(
            session_id, user_id=user_id, role=role, content=content, **fields
        )

    async def start_session(
        self, session_id: str, *, user_id: str, title: str | None = None
    ) -> Position:
        """Start the session, or retitle it (None keeps the title); returns its position.

        Optional: `append` starts a session too, with no title.
        """
        return await self.producer.publish(
            _session_started(session_id, user_id, title, self.producer.sync.info)
        )

    async def context(
        self,
        session_id: str,
        *,
        user_id: str,
        after: Position | None = None,
        as_of: AsOfPoint | None = None,
        timeout: float | None = None,
        reveal: bool = False,
    ) -> Context:
        """The session's summary and recent messages; waits for `after` if given.

        `as_of` reads the context as it was at a past point, as `ChatLog.context` does;
        the blocking read of the log runs in a worker thread. `reveal` as in
        `ChatLog.context`.
        """
        if as_of is not None:
            history = _history_for(self.history, after)
            return await asyncio.to_thread(
                history.context,
                session_id,
                user_id=user_id,
                as_of=as_of,
                timeout=timeout,
                reveal=reveal,
            )
        return await self.reader.context(
            session_id,
            user_id=user_id,
            after=after,
            timeout=self.read_timeout_s if timeout is None else timeout,
            reveal=reveal,
        )

    async def sessions(self, user_id: str, *, limit: int = 50) -> list[SessionEntry]:
        """The user's sessions, most recently active first."""
        return await self.reader.sessions(user_id, limit=limit)

    async def erase_user(self, user_id: str, *, tenant: str = "default") -> Erasure:
        """`ChatLog.erase_user`; the blocking calls run in a worker thread."""
        eraser = _eraser_of(self.eraser)
        return await asyncio.to_thread(eraser.erase, user_id, tenant=tenant)

    async def aclose(self) -> None:
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
        await self.aclose()


def _session_started(
    session_id: str, user_id: str, title: str | None, producer: ProducerInfo
) -> ConversationEvent:
    return new_event(
        session_id, user_id=user_id, payload=SessionStarted(title=title), producer=producer
    )
