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
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeAlias, Unpack

from chatlog import wiring
from chatlog.processors.kafka_history import AsOf, context_as_of
from chatlog.producers.commands import MessageFields, new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from chatlog.projections.context import Context, TokenCounter, approx_tokens
from chatlog.projections.redis_reader import AsyncRedisReader, RedisReader
from chatlog.projections.store import SessionEntry
from chatlog.projections.view import DEFAULT_POLICY, WindowPolicy
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import ConfigError, InvalidInput
from chatlog.schemas.events import (
    ConversationEvent,
    ProducerInfo,
    Role,
    SessionStarted,
    from_epoch_millis,
)
from chatlog.schemas.position import Position
from chatlog.settings import Settings

__all__ = ["AsOfPoint", "AsyncChatLog", "ChatLog", "KafkaHistory"]

# What `as_of` takes, as `chatlog context --as-of` does: an aware time, epoch
# milliseconds, or a position P:O meaning "right after the event at P:O".
AsOfPoint: TypeAlias = datetime | int | Position


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaHistory:
    """Point-in-time reads of the events topic: `context_as_of` with its parts bound once."""

    bootstrap_servers: str
    topic: str
    policy: WindowPolicy = DEFAULT_POLICY
    codec: EventCodec = field(default_factory=EventCodec)
    config: Mapping[str, str] = field(default_factory=dict)
    count_tokens: TokenCounter = approx_tokens
    timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaHistory:
        """Configured from `settings`, as the projector folds: same policy, codec, tokens."""
        return cls(
            bootstrap_servers=settings.kafka_bootstrap,
            topic=settings.topic,
            policy=wiring.policy(settings),
            codec=wiring.codec(settings),
            config=settings.kafka,
            count_tokens=wiring.token_counter(settings),
        )

    def context(
        self, session_id: str, *, user_id: str, as_of: AsOfPoint, timeout: float | None = None
    ) -> Context:
        """The session's context as it was at `as_of`, read from the log (blocking).

        Raises `SessionNotFound`, `OwnershipError`, `InvalidInput` (a bad point, a naive
        time, a position not on the session's partition) and `BrokerUnavailable`.
        """
        return context_as_of(
            session_id,
            user_id=user_id,
            as_of=_point(as_of),
            bootstrap_servers=self.bootstrap_servers,
            topic=self.topic,
            policy=self.policy,
            codec=self.codec,
            config=self.config,
            count_tokens=self.count_tokens,
            timeout=self.timeout if timeout is None else timeout,
        )


def _point(as_of: AsOfPoint) -> AsOf:
    # bool is an int, and True as "1 ms after 1970" is surely a mistake.
    if isinstance(as_of, datetime | Position):
        return as_of
    if isinstance(as_of, int) and not isinstance(as_of, bool) and as_of >= 0:
        return from_epoch_millis(as_of)
    raise InvalidInput(
        f"as_of must be an aware datetime, epoch milliseconds (>= 0) or a Position, not {as_of!r}"
    )


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
    ) -> None:
        self.producer = producer
        self.reader = reader
        self.read_timeout_s = read_timeout_s
        self.history = history

    @classmethod
    def from_env(cls, **overrides: Any) -> ChatLog:
        """Built from `CHATLOG_*` settings (`overrides` win)."""
        settings = Settings.from_env(**overrides)
        return cls(
            producer=wiring.producer(settings),
            reader=wiring.reader(settings),
            read_timeout_s=settings.read_timeout_s,
            history=KafkaHistory.from_settings(settings),
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
    ) -> Context:
        """The session's summary and recent messages; waits for `after` if given.

        With `as_of` (an aware datetime, epoch milliseconds, or a `Position` meaning
        right after that event), the context as it was then, folded from the log: no
        projector or Redis is asked. `after` and `as_of` exclude each other.
        """
        if as_of is not None:
            history = _history_for(self.history, after)
            return history.context(session_id, user_id=user_id, as_of=as_of, timeout=timeout)
        return self.reader.context(
            session_id,
            user_id=user_id,
            after=after,
            timeout=self.read_timeout_s if timeout is None else timeout,
        )

    def sessions(self, user_id: str, *, limit: int = 50) -> list[SessionEntry]:
        """The user's sessions, most recently active first."""
        return self.reader.sessions(user_id, limit=limit)

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
    ) -> None:
        self.producer = producer
        self.reader = reader
        self.read_timeout_s = read_timeout_s
        self.history = history

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncChatLog:
        """Built from `CHATLOG_*` settings (`overrides` win)."""
        settings = Settings.from_env(**overrides)
        return cls(
            producer=AsyncConversationProducer(wiring.producer(settings)),
            reader=wiring.async_reader(settings),
            read_timeout_s=settings.read_timeout_s,
            history=KafkaHistory.from_settings(settings),
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
    ) -> Context:
        """The session's summary and recent messages; waits for `after` if given.

        `as_of` reads the context as it was at a past point, as `ChatLog.context` does;
        the blocking read of the log runs in a worker thread.
        """
        if as_of is not None:
            history = _history_for(self.history, after)
            return await asyncio.to_thread(
                history.context, session_id, user_id=user_id, as_of=as_of, timeout=timeout
            )
        return await self.reader.context(
            session_id,
            user_id=user_id,
            after=after,
            timeout=self.read_timeout_s if timeout is None else timeout,
        )

    async def sessions(self, user_id: str, *, limit: int = 50) -> list[SessionEntry]:
        """The user's sessions, most recently active first."""
        return await self.reader.sessions(user_id, limit=limit)

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
