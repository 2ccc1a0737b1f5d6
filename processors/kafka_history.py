"""Point-in-time reads straight from the log: a session's context as it was at an offset or time.

What did the bot see when it answered message X? The read-model in Redis only knows the
present, but the log knows every past: a session's context at any point is the fold of the
session's events up to that point. `KafkaHistory.read` finds the session's partition (murmur2,
as the producers put it there), reads that partition from its start up to the bound, folds
the session's records with the same pure `evolve` the projector uses, and applies the same
read rules as the Redis reader. It needs no projector and never reads the read-model;
sealed events are opened with the owner's keys (`opener`, which reads the key directory).

The bound, exclusive, is the first offset *not* read:

* A `Position` P:O means "right after the event at O was applied": offsets up to and
  including O. It must name the session's partition, and an offset the log holds.
* A time T means "every record stamped at or before T". Stamped by the Kafka record
  timestamp, the log's own clock, not by the events' `occurred_at`: the broker indexes it
  (``offsets_for_times``), and with ``CreateTime`` (Kafka's default) chatlog's producer sets
  it to `occurred_at` anyway. The bound is the first record stamped after T; every record
  before it is read, even one stamped later than T by a producer with a fast clock. So the
  answer is always a prefix of the log, which is a state the projection really passed
  through; skipping single records by their own stamps would build views that never
  existed (a summary covering a message left out, say). A time after the end of the
  partition reads it to its end as it is now.

Records the projector dead-letters (undecodable, keyed other than their session, written
by someone who does not own the session) never reached the read-model, so they are skipped
here too, and counted. Other sessions' records on the partition are skipped by key before
anything is decoded, so memory holds one session's view, whatever the partition's size.

The read rules are the Redis reader's (`chatlog.projections.access`), with one addition
that protects privacy: a session of another user or tenant, an erased one, and one that
did not exist yet at that point are not found (the first and the last with the same
answer, so a read of the past is no existence oracle either). Because the log still
holds what a `UserErased` or a `MessageRedacted` made the read-model forget (there is no
crypto-shredding yet), a session its owner erased *after* the bound is refused too, and a
message redacted after the bound is shown redacted, and a summary that may hold it is
withheld (`chatlog.projections.view.redact`): a point-in-time read must not bring
forgotten content back. Checking that means reading on from the bound to the partition's
end as it was when the read began (decoding only this session's records).

How close is this to what the bot saw? The fold is the projector's own, so with the
projector's window policy (`policy`) a position gives exactly the view the read-model held
once it had applied that position; a back end that records the `Context.position` it
prompted with can replay that prompt exactly. A time gives the log as it stood then; the
read-model may have lagged behind it by the projector's delay. Redis's idle expiry (TTL) is
not modelled: the log never forgets a session. A topic whose retention deleted the
partition's start would give an incomplete fold; the events topic keeps everything (see
DESIGN.md), so this module does not guard against it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ParamSpec, TypeAlias, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.producers.kafka_topics import kafka_reason, topic_partitions
from chatlog.producers.partitioning import partition_for
from chatlog.projections.access import no_session, readable
from chatlog.projections.context import Context, SummaryRole, TokenCounter, approx_tokens
from chatlog.projections.opening import ERASED, EventOpener
from chatlog.projections.view import (
    DEFAULT_POLICY,
    ForeignEvent,
    SessionView,
    WindowPolicy,
    evolve,
    redact,
)
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import (
    BrokerUnavailable,
    DecodeError,
    Erased,
    InvalidInput,
    SessionNotFound,
    Undecryptable,
)
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    UserErased,
    epoch_millis,
    from_epoch_millis,
)
from chatlog.schemas.ids import validate_id
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.placeholders import revealed
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope

__all__ = [
    "AsOf",
    "AsOfPoint",
    "KafkaHistory",
    "KafkaSessionLog",
    "LogContext",
    "as_of_point",
    "describe",
    "kafka_call",
    "partition_records",
    "ranges_records",
    "usable",
]

_LOG = logging.getLogger("chatlog.history")
_KAFKA_LOG = logging.getLogger("chatlog.kafka")
_BATCH = 1000
_POLL_S = 0.2

AsOf: TypeAlias = datetime | Position
_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class LogContext:
    """A context rebuilt from the log, and which part of the log it was rebuilt from."""

    context: Context
    as_of: AsOf
    topic: str
    partition: int
    # The prefix folded: offsets start_offset (the partition's low watermark) up to
    # end_offset, exclusive.
    start_offset: int
    end_offset: int
    # The session's records in that prefix set aside as the projector would set them
    # aside (undecodable, or from someone who does not own the session).
    skipped: int = 0

    @property
    def through(self) -> Position | None:
        """The last position of the prefix read; None if the prefix was empty."""
        if self.end_offset <= self.start_offset:
            return None
        return Position(self.partition, self.end_offset - 1)


# What `as_of` takes, as `chatlog context --as-of` does: an aware time, epoch
# milliseconds, or a position P:O meaning "right after the event at P:O".
AsOfPoint: TypeAlias = datetime | int | Position


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaHistory:
    """Point-in-time reads of the events topic, with the parts they fold with bound once.

    `chatlog.wiring.kafka_history(settings)` builds it as the projector folds (same window
    policy, codec and token counter); `ChatLog.context(..., as_of=...)` and `chatlog
    context --as-of` read through it.
    """

    bootstrap_servers: str
    topic: str
    policy: WindowPolicy = DEFAULT_POLICY
    codec: EventCodec = field(default_factory=EventCodec)
    config: Mapping[str, str] = field(default_factory=dict)
    count_tokens: TokenCounter = approx_tokens
    summary_role: SummaryRole = SummaryRole.DATA
    timeout: float = 10.0
    # Opens sealed events (the keys come from the key directory in Redis); without one,
    # sealed fields read as their empty placeholders.
    opener: EventOpener | None = None

    def context(
        self,
        session_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        as_of: AsOfPoint,
        timeout: float | None = None,
        reveal: bool = False,
    ) -> Context:
        """The session of `user_id` of `tenant`: its context as it was at `as_of`, read
        from the log (blocking).

        Raises `SessionNotFound` (no session yet at that point, erased, or another user's
        or tenant's), `InvalidInput` (a bad point, a naive time, a position on
        another partition or beyond the log), `BrokerUnavailable`/`TopicMissing`. `timeout`
        (default `self.timeout`) bounds each broker request and any stretch of the scan
        during which no record arrives. With `reveal`, tokenized personal data is restored
        in place of its placeholders, as `RedisReader.context` does.
        """
        return self.read(
            session_id, user_id=user_id, tenant=tenant, as_of=as_of, timeout=timeout, reveal=reveal
        ).context

    def read(
        self,
        session_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        as_of: AsOfPoint,
        timeout: float | None = None,
        reveal: bool = False,
    ) -> LogContext:
        """Like `context`, and also says which part of the log the context came from."""
        as_of = as_of_point(as_of)
        timeout = self.timeout if timeout is None else timeout
        validate_id(session_id, field="session_id")
        validate_id(user_id, field="user_id")
        validate_id(tenant, field="tenant")
        if isinstance(as_of, datetime) and as_of.tzinfo is None:
            raise InvalidInput(
                f"as_of {as_of.isoformat()} has no timezone; pass an aware datetime "
                f"(datetime.now(UTC), or .replace(tzinfo=UTC) for a UTC time)",
                session_id=session_id,
            )
        consumer = groupless_consumer(self.bootstrap_servers, self.config, purpose="history")
        try:
            partition = partition_for(
                session_id,
                topic_partitions(
                    consumer,
                    self.topic,
                    bootstrap_servers=self.bootstrap_servers,
                    timeout=timeout,
                ),
            )
            where = TopicPartition(self.topic, partition)
            # The watermarks first: a time bound found later is capped by them, so records
            # appended while this read runs are never part of it.
            low, high = kafka_call(consumer.get_watermark_offsets, where, timeout=timeout)
            end = _end_offset(
                consumer, where, as_of, low=low, high=high, session_id=session_id, timeout=timeout
            )
            scan = _Scan(
                session_id,
                reader=KeyScope(tenant, user_id),
                as_of=as_of,
                partition=partition,
                end=end,
                policy=self.policy,
                opener=self.opener,
                reveal=reveal,
            )
            for message in partition_records(consumer, where, low, high, timeout):
                scan.take(message, self.codec)
            view = scan.finish()
        finally:
            consumer.close()
        if scan.skipped:
            _LOG.warning(
                "skipped %d record(s) of session %s on %s[%d] that the projector dead-letters "
                "(undecodable, or written by someone who does not own the session)",
                scan.skipped,
                session_id,
                self.topic,
                partition,
            )
        return LogContext(
            context=Context.from_view(
                view,
                window_size=self.policy.window,
                count_tokens=self.count_tokens,
                summary_role=self.summary_role,
            ),
            as_of=as_of,
            topic=self.topic,
            partition=partition,
            start_offset=low,
            end_offset=end,
            skipped=scan.skipped,
        )

    def session_events(
        self, session_id: str, *, partition: int, start: int, timeout: float | None = None
    ) -> tuple[list[tuple[ConversationEvent, Position]], int]:
        """The session's events from offset `start` of its `partition` to the partition's
        end as it is now, decoded and opened, in log order, and the last offset read
        (blocking).

        What the projector dead-letters (undecodable, undecryptable) is left out; other
        users' events are kept, for `evolve` to refuse as it does (an erased one is skipped,
        as the projector skips it). `Erased` if the owner's keys are gone. The summarizer
        rebuilds a withheld summary from these.
        """
        timeout = self.timeout if timeout is None else timeout
        key = session_id.encode("utf-8")
        known: dict[KeyScope, KeyEntries] = {}
        events: list[tuple[ConversationEvent, Position]] = []
        owner: KeyScope | None = None
        consumer = groupless_consumer(self.bootstrap_servers, self.config, purpose="history")
        try:
            where = TopicPartition(self.topic, partition)
            _, stop = kafka_call(consumer.get_watermark_offsets, where, timeout=timeout)
            for message in partition_records(consumer, where, start, stop, timeout):
                value = message.value()
                if message.key() != key or value is None:
                    continue
                try:
                    event = self.codec.decode(value)
                except DecodeError:
                    continue
                if event.session_id != session_id:
                    continue
                owner = owner or KeyScope.of(event)  # the session's first event names it
                if self.opener is not None:
                    opened = _open_as_projected(self.opener, event, known, owner, partition)
                    if opened is None:
                        continue
                    event = opened
                events.append((event, Position(partition, _offset(message))))
        finally:
            consumer.close()
        return events, stop - 1


@dataclass(frozen=True, slots=True)
class KafkaSessionLog:
    """`KafkaHistory.session_events` for asyncio callers (the summarizer's `SessionLog`)."""

    history: KafkaHistory

    async def session_events(
        self, session_id: str, *, partition: int, start: int
    ) -> tuple[list[tuple[ConversationEvent, Position]], int]:
        """`KafkaHistory.session_events`, read in a worker thread."""
        return await asyncio.to_thread(
            self.history.session_events, session_id, partition=partition, start=start
        )


def _open_as_projected(
    opener: EventOpener,
    event: ConversationEvent,
    known: dict[KeyScope, KeyEntries],
    owner: KeyScope,
    partition: int,
) -> ConversationEvent | None:
    """`event` opened with its writer's keys, as the projector opens it; None for what the
    projector leaves out: an undecryptable event (dead-lettered), or one of another user
    who was erased (an intruder's event, skipped). `Erased` if `owner`, the session's
    owner, was erased: nothing of the session can be read."""
    [opened] = opener.open_batch([event], known=known)
    if opened is ERASED:
        if KeyScope.of(event) != owner:
            return None
        raise Erased(
            f"session {event.session_id} belongs to a user who was erased: the keys that "
            f"sealed their events no longer exist",
            session_id=event.session_id,
            partition=partition,
        )
    if isinstance(opened, Undecryptable):
        return None
    assert isinstance(opened, ConversationEvent)
    return opened


def as_of_point(as_of: AsOfPoint) -> AsOf:
    """`as_of` as a position or an aware time; `InvalidInput` for anything else."""
    # bool is an int, and True as "1 ms after 1970" is surely a mistake.
    if isinstance(as_of, datetime | Position):
        return as_of
    if isinstance(as_of, int) and not isinstance(as_of, bool) and as_of >= 0:
        return from_epoch_millis(as_of)
    raise InvalidInput(
        f"as_of must be an aware datetime, epoch milliseconds (>= 0) or a Position, not {as_of!r}"
    )


def describe(as_of: AsOf) -> str:
    """`as_of` for people: ``position 3:17`` or an ISO 8601 time with milliseconds."""
    if isinstance(as_of, Position):
        return f"position {as_of}"
    return as_of.isoformat(timespec="milliseconds")


class _Scan:
    """The fold of one session's records, then the watch for later erasures and redactions."""

    def __init__(
        self,
        session_id: str,
        *,
        reader: KeyScope,
        as_of: AsOf,
        partition: int,
        end: int,
        policy: WindowPolicy,
        opener: EventOpener | None = None,
        reveal: bool = False,
    ) -> None:
        self.opener = opener
        self.reveal = reveal
        self.known: dict[KeyScope, KeyEntries] = {}  # the owner's keys, fetched once
        self.session_id = session_id
        self.reader = reader
        self.as_of = as_of
        self.partition = partition
        self.end = end
        self.policy = policy
        self.key = session_id.encode("utf-8")
        self.view: SessionView | None = None
        self.answer: SessionView | None = None  # set once the bound is passed
        self.redacted_later: dict[str, int] = {}  # message id -> offset of its redaction
        # The ids of the messages appended up to the bound: a later redaction of any other
        # is of a message that did not exist yet, which no summary then could hold.
        self.appended: set[str] = set()
        self.skipped = 0

    def take(self, message: Message, codec: EventCodec) -> None:
        """Fold one record of the partition in; past the bound, watch for what must hide it."""
        offset = _offset(message)
        if self.answer is None and offset >= self.end:
            self.answer = self._answer()  # raises for reads to refuse
        if message.key() != self.key:
            return  # another session's record: never decoded
        event = self._decode(message, codec)
        if event is None:
            return
        if self.answer is None:
            try:
                self.view = evolve(self.view, event, Position(self.partition, offset), self.policy)
            except ForeignEvent:
                self.skipped += 1
            else:
                if isinstance(event.payload, MessageAppended):
                    self.appended.add(event.payload.message_id)
            return
        if not self._from_owner(event):
            return  # the projector would refuse it: it hides nothing
        if isinstance(event.payload, MessageRedacted):
            self.redacted_later.setdefault(event.payload.message_id, offset)
        elif isinstance(event.payload, UserErased):
            raise SessionNotFound(
                f"session {self.session_id} was erased later (at position "
                f"{self.partition}:{offset}); its history before the erasure is not readable",
                session_id=self.session_id,
                partition=self.partition,
                offset=offset,
            )

    def finish(self) -> SessionView:
        """The answer, once the scan reached the partition's end as it was at the start."""
        view = self.answer if self.answer is not None else self._answer()
        if not self.redacted_later:
            return view
        # A message redacted after the bound must no longer be shown, even as it was then,
        # nor the summary that may hold it: applied as the projector applies a redaction.
        for message_id, offset in self.redacted_later.items():
            if message_id in self.appended:
                view = redact(view, message_id, offset, self.policy)
        return view

    def _decode(self, message: Message, codec: EventCodec) -> ConversationEvent | None:
        value = message.value()
        try:
            event = codec.decode(value) if value is not None else None
        except DecodeError:
            event = None
        if event is not None and event.session_id == self.session_id:
            event = self._open(event)
        if event is None or event.session_id != self.session_id:
            # Dead-lettered by the projector, so never part of any view.
            if self.answer is None:
                self.skipped += 1
            return None
        return event

    def _open(self, event: ConversationEvent) -> ConversationEvent | None:
        if self.opener is None:
            return event
        # The session's owner: its first event's (the view keeps it once there is one).
        view = self.view
        owner = KeyScope.of(event) if view is None else KeyScope(view.tenant, view.user_id)
        opened = _open_as_projected(self.opener, event, self.known, owner, self.partition)
        if opened is None:
            return None
        return revealed(opened) if self.reveal else opened

    def _from_owner(self, event: ConversationEvent) -> bool:
        # The projector refuses an event from anyone else (another user, another tenant).
        view = self.answer
        return view is not None and event.user_id == view.user_id and event.tenant == view.tenant

    def _answer(self) -> SessionView:
        """The Redis reader's rules, applied to the view at the bound: no session yet
        answers as another's session does."""
        reader, when = self.reader, describe(self.as_of)
        if self.view is None:
            raise no_session(
                self.session_id, tenant=reader.tenant, user_id=reader.user_id, as_of=when
            )
        return readable(self.view, tenant=reader.tenant, user_id=reader.user_id, as_of=when)


def _end_offset(
    consumer: Consumer,
    where: TopicPartition,
    as_of: AsOf,
    *,
    low: int,
    high: int,
    session_id: str,
    timeout: float,
) -> int:
    """The first offset past `as_of` (exclusive bound of the scan), within low..high."""
    if isinstance(as_of, Position):
        if as_of.partition != where.partition:
            raise InvalidInput(
                f"position {as_of} is on partition {as_of.partition}, but session "
                f"{session_id} lives on partition {where.partition} of {where.topic}; "
                f"pass a position on partition {where.partition}",
                session_id=session_id,
                partition=as_of.partition,
                offset=as_of.offset,
            )
        if not low <= as_of.offset < high:
            held = f"offsets {low}..{high - 1}" if high > low else "no records"
            raise InvalidInput(
                f"position {as_of} is not in the log: partition {where.partition} of "
                f"{where.topic} holds {held}",
                session_id=session_id,
                partition=as_of.partition,
                offset=as_of.offset,
            )
        return as_of.offset + 1
    after_ms = epoch_millis(as_of) + 1
    if after_ms <= 0:
        return low  # before 1970: nothing can be stamped that early
    # offsets_for_times answers the earliest offset stamped at or after a time; a record
    # stamped in the same millisecond as `as_of` is part of the context, hence the +1.
    [found] = kafka_call(
        consumer.offsets_for_times,
        [TopicPartition(where.topic, where.partition, after_ms)],
        timeout=timeout,
    )
    if found.error is not None:
        raise BrokerUnavailable(
            f"looking up {describe(as_of)} in {where.topic}[{where.partition}] failed: "
            f"{found.error}",
            topic=where.topic,
            partition=where.partition,
        )
    # A negative offset means no record is stamped after `as_of`: read to the end.
    return high if found.offset < 0 else max(low, min(found.offset, high))


def partition_records(
    consumer: Consumer, where: TopicPartition, start: int, stop: int, timeout: float
) -> Iterator[Message]:
    """The partition's records from `start` up to `stop` (exclusive), in offset order."""
    return ranges_records(consumer, where.topic, {where.partition: (start, stop)}, timeout)


def ranges_records(
    consumer: Consumer, topic: str, ranges: Mapping[int, tuple[int, int]], timeout: float
) -> Iterator[Message]:
    """Each partition's records from its start up to its stop (exclusive), each partition
    in offset order (partitions interleaved), all partitions fetched at once.

    Each poll asks for no more records than remain, so the last batch comes back as soon
    as it has arrived rather than at the end of the poll: a short scan takes milliseconds.
    `BrokerUnavailable` when nothing arrives for `timeout` seconds before the stops.
    """
    stops = {p: stop for p, (start, stop) in ranges.items() if stop > start}
    if not stops:
        return
    at = {p: ranges[p][0] for p in stops}
    consumer.assign([TopicPartition(topic, p, at[p]) for p in stops])
    heard_at = time.monotonic()
    while stops:
        left = sum(stops[p] - at[p] for p in stops)
        batch = kafka_call(consumer.consume, min(_BATCH, max(1, left)), timeout=_POLL_S)
        if batch:
            heard_at = time.monotonic()
        for message in batch:
            partition = message.partition()
            if partition is None:  # an error about no partition in particular
                usable(message, TopicPartition(topic, -1))
                continue
            stop = stops.get(partition)
            if not usable(message, TopicPartition(topic, partition)) or stop is None:
                continue  # an error logged, or a partition read up to its stop already
            offset = _offset(message)
            if offset < stop:
                yield message
                at[partition] = offset + 1
            if offset + 1 >= stop:
                del stops[partition]
        if not stops:
            return
        # Offsets may have gaps (transaction markers, aborted or compacted records): the
        # position tells when a partition is read up to its stop even if no record sits there.
        positions = kafka_call(consumer.position, [TopicPartition(topic, p) for p in stops])
        for position in positions:
            if position.offset >= stops.get(position.partition, position.offset + 1):
                del stops[position.partition]
        if stops and time.monotonic() - heard_at > timeout:
            lagging = ", ".join(f"[{p}] at {at[p]} of {stop}" for p, stop in sorted(stops.items()))
            raise BrokerUnavailable(
                f"reading {topic} stalled: nothing arrived for {timeout:g} s before the end "
                f"of {lagging}",
                topic=topic,
                partition=min(stops),
            )


def usable(message: Message, where: TopicPartition) -> bool:
    """Whether a consumed message is a record of `where` (errors raise or are logged)."""
    error = message.error()
    if error is None:
        return True
    if error.code() == KafkaError._PARTITION_EOF:
        return False
    if error.fatal() or not error.retriable():
        raise BrokerUnavailable(
            f"reading {where.topic}[{where.partition}] failed: {error.str()}",
            topic=where.topic,
            partition=where.partition,
        )
    _KAFKA_LOG.warning("consumer: %s", error.str())
    return False


def _offset(message: Message) -> int:
    offset = message.offset()
    # Only error events lack an offset, and those never get this far.
    assert offset is not None, "a consumed record without an offset"
    return offset


# A partition whose leader is moving (a new topic, a broker restart) answers these for a
# moment; the call is read-only, so it is asked again before it counts as a failure.
_LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})
_LEADER_RETRIES_S = (0.1, 0.3, 0.9, 2.0)


def kafka_call(function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Call a consumer method, turning librdkafka's failures into `BrokerUnavailable`."""
    for pause in (*_LEADER_RETRIES_S, None):
        try:
            return function(*args, **kwargs)
        except KafkaException as exc:
            error = exc.args[0]
            moving = isinstance(error, KafkaError) and error.code() in _LEADER_MOVING
            if not moving or pause is None:
                raise BrokerUnavailable(f"Kafka did not answer: {kafka_reason(exc)}") from exc
            time.sleep(pause)
    raise AssertionError("unreachable: the last pause is None")
