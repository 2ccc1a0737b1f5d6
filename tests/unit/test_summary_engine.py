"""The summary engine without Kafka: when it asks, what it sends, what it commits, and when.

Every test drives a `SummaryEngine` through in-memory fakes: a topic of encoded records
(partitions of lists), a projector that folds that topic with `evolve` up to the position
it is asked for, a publisher that appends summaries to the topic so the engine can read
them back, a summarizer stub that can be held back or made to fail, and an ack recorder.
Time only moves when a test moves the fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from chatlog.processors.projection import Record
from chatlog.processors.summarizers import (
    RetryableSummarizerError,
    SummarizerError,
    SummarizerUnavailable,
    SummaryRequest,
    SummaryResult,
)
from chatlog.processors.summary_engine import Ack, SummaryEngine, SummaryPolicy
from chatlog.producers.commands import append_message, new_event
from chatlog.projections.view import ForeignEvent, SessionView, WindowPolicy, evolve
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ChatlogError,
    ConfigError,
    DecodeError,
    Erased,
    InvalidInput,
    ReadTimeout,
    StoreUnavailable,
)
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    SummaryUpdated,
    UserErased,
)
from chatlog.schemas.position import Position

CODEC = EventCodec()
USER = "alice"
TENANT = "acme"
# Small numbers keep the offsets in each test countable by hand: with a window of 4 and
# a threshold of 3, the 7th turn of a session (offset 6 on its own partition) triggers
# a summary of its first three turns.
WINDOW = WindowPolicy(window=4, max_overflow=8)
THRESHOLD = 3
STUB_MODEL = "stub-1"

# The real sleep, for tests that patch asyncio.sleep to skip the engine's load back-off.
_sleep = asyncio.sleep


def async_test(scenario: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh event loop (pytest-asyncio is not a dependency)."""

    @functools.wraps(scenario)
    def test(*args: Any, **kwargs: Any) -> None:
        asyncio.run(scenario(*args, **kwargs))

    return test


# --------------------------------------------------------------------------- events


def turn(session: str, n: int, *, user: str = USER) -> ConversationEvent:
    role = "user" if n % 2 == 0 else "assistant"
    return append_message(
        session, user_id=user, role=role, content=f"{session} turn {n}", tenant=TENANT
    )


def summarized(session: str, through: int, *, covered: int, text: str) -> ConversationEvent:
    """A summary someone published earlier (or concurrently)."""
    payload = SummaryUpdated(
        summary=text, through_offset=through, model="seed", covered_messages=covered
    )
    return new_event(session, user_id=USER, tenant=TENANT, payload=payload)


def erased(session: str) -> ConversationEvent:
    return new_event(session, user_id=USER, tenant=TENANT, payload=UserErased())


def offsets(request: SummaryRequest) -> list[int]:
    return [message.offset for message in request.turns]


# --------------------------------------------------------------------------- fakes


class Topic:
    """An in-memory events topic: each partition a list of records, offsets from 0."""

    def __init__(self, window: WindowPolicy) -> None:
        self.window = window
        self.partitions: defaultdict[int, list[Record]] = defaultdict(list)
        self.partition_of: dict[str, int] = {}

    def append(self, event: ConversationEvent, partition: int | None = None) -> Record:
        """Append `event` keyed by its session, on the session's partition by default."""
        if partition is None:
            partition = self.partition_of.get(event.session_id, 0)
        self.partition_of.setdefault(event.session_id, partition)
        return self.append_raw(partition, event.session_id.encode(), CODEC.encode(event))

    def append_raw(self, partition: int, key: bytes | None, value: bytes | None) -> Record:
        log = self.partitions[partition]
        record = Record("events", partition, len(log), key, value)
        log.append(record)
        return record

    def view(self, session_id: str, partition: int, upto: int | None = None) -> SessionView | None:
        """The session as a projector that has read `partition` up to `upto` holds it."""
        log = self.partitions[partition]
        end = len(log) if upto is None else upto + 1
        view = None
        for record in log[:end]:
            if record.key != session_id.encode() or record.value is None:
                continue
            try:
                event = CODEC.decode(record.value)
            except DecodeError:
                continue
            if event.session_id != session_id:
                continue
            with contextlib.suppress(ForeignEvent):  # the projector dead-letters it
                view = evolve(view, event, Position(partition, record.offset), self.window)
        return view


class Projector:
    """The read-model as a ViewSource: the topic folded up to the asked position.

    `ahead` makes it answer with the whole partition folded, as a projector that is
    ahead of the summarizer's consumer does. `failures` are raised by the next calls;
    `gate`, when set, holds every load until it opens.
    """

    def __init__(self, topic: Topic, *, ahead: bool = False) -> None:
        self.topic = topic
        self.ahead = ahead
        self.calls: list[tuple[str, Position, float]] = []
        self.failures: list[ChatlogError] = []
        self.gate: asyncio.Event | None = None

    async def projected_view(
        self, session_id: str, position: Position, *, timeout: float
    ) -> SessionView | None:
        self.calls.append((session_id, position, timeout))
        if self.failures:
            raise self.failures.pop(0)
        if self.gate is not None:
            await self.gate.wait()
        upto = None if self.ahead else position.offset
        return self.topic.view(session_id, position.partition, upto)

    def loads_of(self, session_id: str) -> int:
        return sum(1 for called, _, _ in self.calls if called == session_id)


class Publisher:
    """Appends each summary to the topic, so consuming on reads it back.

    With `lose`, a summary gets a position but never shows up on the topic (a read-back
    that never comes). `failures` are raised by the next calls.
    """

    def __init__(self, topic: Topic, journal: list[tuple[Any, ...]]) -> None:
        self.topic = topic
        self.journal = journal
        self.events: list[ConversationEvent] = []
        self.failures: list[ChatlogError] = []
        self.lose = False

    async def publish(self, event: ConversationEvent) -> Position:
        if self.failures:
            raise self.failures.pop(0)
        self.events.append(event)
        assert isinstance(event.payload, SummaryUpdated)
        self.journal.append(("publish", event.session_id, event.payload.through_offset))
        if self.lose:
            return Position(self.topic.partition_of[event.session_id], 1_000_000 + len(self.events))
        record = self.topic.append(event)
        return Position(record.partition, record.offset)

    @property
    def summaries(self) -> list[SummaryUpdated]:
        return [e.payload for e in self.events if isinstance(e.payload, SummaryUpdated)]


class StubSummarizer:
    """Echoes the turns it is given; counts calls, can be held back, can fail.

    Its summary is the previous one plus the offsets of the new turns, so a chain of
    summaries shows which turns each call saw.
    """

    def __init__(self) -> None:
        self.requests: list[SummaryRequest] = []
        self.failures: list[SummarizerError] = []
        self.gate: asyncio.Event | None = None
        self.running = 0
        self.most_running = 0

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        self.requests.append(request)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failures:
                raise self.failures.pop(0)
        finally:
            self.running -= 1
        new = ",".join(str(offset) for offset in offsets(request))
        text = f"{request.previous_summary}|{new}" if request.previous_summary else new
        return SummaryResult(
            summary=text,
            model=STUB_MODEL,
            prompt_tokens=10 * len(request.turns),
            completion_tokens=len(request.turns),
        )

    def hold(self) -> asyncio.Event:
        self.gate = asyncio.Event()
        return self.gate


class Acks:
    """Records acked offsets per partition, in the order the acks ran.

    A `yielding` ack suspends once before it records, as an ack that awaits the
    consumer (or a lock) does. `during` runs as an ack starts, before it suspends.
    """

    def __init__(self, journal: list[tuple[Any, ...]], *, yielding: bool = False) -> None:
        self.journal = journal
        self.yielding = yielding
        self.offsets: defaultdict[int, list[int]] = defaultdict(list)
        self.during: Callable[[Record], None] = lambda record: None

    def of(self, record: Record) -> Ack:
        async def ack() -> None:
            self.during(record)
            if self.yielding:
                await _sleep(0)
            self.offsets[record.partition].append(record.offset)
            self.journal.append(("ack", record.partition, record.offset))

        return ack


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class TopicLog:
    """The topic as the engine's `SessionLog`: a session's decoded events in a range."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.reads: list[tuple[str, int, int]] = []
        self.failures: list[ChatlogError] = []

    async def session_events(
        self, session_id: str, *, partition: int, start: int
    ) -> tuple[list[tuple[ConversationEvent, Position]], int]:
        if self.failures:
            raise self.failures.pop(0)
        log = self.topic.partitions[partition]
        self.reads.append((session_id, start, len(log)))
        events = [
            (CODEC.decode(r.value), Position(partition, r.offset))
            for r in log[start:]
            if r.key == session_id.encode() and r.value is not None
        ]
        return events, len(log) - 1


class Harness:
    """An engine wired to the fakes, and a consumer that feeds it the topic in log order."""

    def __init__(
        self,
        *,
        window: WindowPolicy = WINDOW,
        ahead: bool = False,
        yielding_acks: bool = False,
        log: bool = True,
        **policy: Any,
    ) -> None:
        self.window = window
        self.journal: list[tuple[Any, ...]] = []
        self.topic = Topic(window)
        self.projector = Projector(self.topic, ahead=ahead)
        self.publisher = Publisher(self.topic, self.journal)
        self.summarizer = StubSummarizer()
        self.acks = Acks(self.journal, yielding=yielding_acks)
        self.clock = Clock()
        self.policy = SummaryPolicy(**{"threshold": THRESHOLD, **policy})
        self.log = TopicLog(self.topic)
        self.engine = SummaryEngine(
            self.summarizer,
            self.projector,
            self.publisher,
            window=window,
            policy=self.policy,
            clock=self.clock,
            log=self.log if log else None,
        )
        self.next: defaultdict[int, int] = defaultdict(int)  # the consumer's position

    def write(self, *events: ConversationEvent, partition: int | None = None) -> list[Record]:
        return [self.topic.append(event, partition) for event in events]

    def turns(
        self, session: str, count: int, *, partition: int = 0, first: int = 0
    ) -> list[Record]:
        return self.write(*(turn(session, first + n) for n in range(count)), partition=partition)

    def unread(self) -> int:
        return sum(len(log) - self.next[p] for p, log in self.topic.partitions.items())

    async def consume(self, partition: int | None = None, *, upto: int | None = None) -> None:
        """Accept the unread records of `partition` (every partition by default) in order."""
        chosen = sorted(self.topic.partitions) if partition is None else [partition]
        for p in chosen:
            log = self.topic.partitions[p]
            end = len(log) if upto is None else upto + 1
            while self.next[p] < end:
                record = log[self.next[p]]
                self.next[p] += 1
                await self.engine.accept(record, self.acks.of(record))

    async def settle(self, rounds: int = 20) -> None:
        """Let the engine's tasks run as far as they can without the clock moving."""
        for _ in range(rounds):
            await _sleep(0)

    async def run(self) -> None:
        """Consume everything, read-backs included, until the engine is quiet."""
        while True:
            await self.consume()
            await self.settle()
            if not self.unread():
                return

    def acked(self, partition: int = 0) -> list[int]:
        return self.acks.offsets[partition]

    async def close(self) -> None:
        await self.engine.aclose()


# --------------------------------------------------------------------------- one summary


@async_test
async def test_an_overflow_at_the_threshold_asks_for_one_summary_of_exactly_the_overflow():
    h = Harness()
    # History the projector has seen: six turns, then a summary of the first two.
    h.turns("s1", 6)
    h.write(summarized("s1", 1, covered=2, text="S0"))
    h.next[0] = 7  # the summarizer's committed offset: it starts after the summary
    h.turns("s1", 4, first=6)  # offsets 7..10

    await h.run()

    # After offset 9 the overflow is offsets 2, 3, 4 (the window 5, 7, 8, 9). Offset 10
    # pushes 5 into the overflow while the summary is unread: that must not ask again.
    [request] = h.summarizer.requests
    assert request.session_id == "s1"
    assert request.previous_summary == "S0"
    assert offsets(request) == [2, 3, 4]
    assert [t.content for t in request.turns] == ["s1 turn 2", "s1 turn 3", "s1 turn 4"]
    assert request.max_summary_tokens == h.policy.max_summary_tokens

    [event] = h.publisher.events
    assert (event.session_id, event.user_id, event.tenant) == ("s1", USER, TENANT)
    assert event.payload == SummaryUpdated(
        summary="S0|2,3,4",
        through_offset=4,
        model=STUB_MODEL,
        prompt_tokens=30,
        completion_tokens=3,
        covered_messages=2 + 3,
        redactions_through=9,  # the record its view had folded when it asked
    )
    # It went to the topic keyed by the session, and was read back by the engine.
    echo = h.topic.partitions[0][11]
    assert echo.key == b"s1"
    assert CODEC.decode(echo.value) == event
    assert h.acked() == list(range(7, 12))

    stats = h.engine.stats
    assert (stats.requested, stats.published, stats.turns) == (1, 1, 3)
    assert (stats.prompt_tokens, stats.completion_tokens) == (30, 3)
    assert len(stats.latencies) == 1
    assert "published=1" in stats.line()


@async_test
async def test_an_overflow_below_the_threshold_asks_for_nothing():
    h = Harness()
    h.turns("s1", 6)  # overflow: two turns

    await h.run()

    assert h.summarizer.requests == []
    assert h.acked() == list(range(6))


# --------------------------------------------------------------------------- one at a time


@async_test
async def test_no_second_summary_is_asked_for_until_the_first_is_read_back():
    h = Harness()
    gate = h.summarizer.hold()
    h.turns("s1", 7)  # offset 6 triggers a summary of 0..2
    await h.run()
    assert [offsets(r) for r in h.summarizer.requests] == [[0, 1, 2]]

    h.turns("s1", 3, first=7)  # offsets 7..9: the overflow grows to 0..5
    await h.consume()
    await h.settle()
    assert len(h.summarizer.requests) == 1, "a second summary while the first is in flight"

    h.turns("s1", 3, first=10)  # offsets 10..12, written before the summary is published
    gate.set()
    await h.settle()
    assert [s.through_offset for s in h.publisher.summaries] == [2]  # at offset 13
    await h.consume(upto=12)  # the turns before the summary: it is not read back yet
    await h.settle()
    assert len(h.summarizer.requests) == 1, "a second summary before the first was read back"

    await h.run()  # reads the summary back
    _, second = h.summarizer.requests
    assert offsets(second) == [3, 4, 5, 6, 7, 8]  # only turns no summary covered yet
    assert second.previous_summary == "0,1,2"
    assert h.publisher.events[-1].payload.covered_messages == 9
    assert h.acked() == list(range(len(h.topic.partitions[0])))


@async_test
async def test_a_long_session_sends_each_evicted_turn_exactly_once():
    window = WindowPolicy(window=20, max_overflow=200)
    h = Harness(window=window, threshold=10)
    written = []
    for n in range(500):
        written += h.turns("s1", 1, first=n)
        if n % 7 == 6:  # the consumer runs in bursts: turns pile up while summaries run
            await h.run()
    await h.run()

    requests = h.summarizer.requests
    sent = [offset for request in requests for offset in offsets(request)]
    final = h.topic.view("s1", 0)
    assert final is not None
    held = [m.offset for m in final.messages]
    assert len(sent) == len(set(sent)), "a turn was sent twice"
    assert sent == sorted(sent), "a request repeated turns an earlier one covered"
    assert sorted(set(sent) | set(held)) == [r.offset for r in written]
    assert not set(sent) & set(held)
    assert all(len(r.turns) >= 10 for r in requests)
    # Each request builds on the summary before it, read back from the topic.
    assert requests[0].previous_summary is None
    assert [r.previous_summary for r in requests[1:]] == [
        s.summary for s in h.publisher.summaries[:-1]
    ]
    assert final.summary_covered + len(final.messages) + final.overflow_dropped == 500
    assert final.overflow_dropped == 0
    assert final.message_count == 500
    assert len(final.overflow(window)) < 10
    stats = h.engine.stats
    assert (stats.requested, stats.published) == (len(requests), len(requests))
    assert stats.turns == len(sent) == 500 - len(held)
    assert stats.records == len(h.topic.partitions[0])
    assert h.acked() == list(range(len(h.topic.partitions[0])))


@async_test
async def test_a_summary_read_back_before_its_publish_returns_counts_and_the_rest_follows():
    # The read-back of a summary can be folded before its publish returns, while the
    # summary is still in flight; the turns that came meanwhile must not wait for another.
    h = Harness(echo_timeout_s=60.0)
    publish = h.publisher.publish

    async def publish_and_read_back(event: ConversationEvent) -> Position:
        position = await publish(event)
        await h.consume(upto=position.offset)
        return position

    h.publisher.publish = publish_and_read_back
    gate = h.summarizer.hold()
    h.turns("s1", 7)
    await h.run()
    h.turns("s1", 3, first=7)  # 7..9 arrive while the first summary runs
    await h.run()
    assert h.acked() == [0, 1, 2, 3, 4, 5]  # the trigger (6) holds the rest
    gate.set()
    await h.settle()

    # No turn came after the read-back (10), yet its overflow 3..5 was asked for; the
    # trigger stayed uncommitted until that follow-up was published and read back (11).
    assert [offsets(r) for r in h.summarizer.requests] == [[0, 1, 2], [3, 4, 5]]
    assert [s.through_offset for s in h.publisher.summaries] == [2, 5]
    assert h.acked() == list(range(12))
    assert len(h.topic.view("s1", 0).overflow(WINDOW)) < THRESHOLD
    await h.close()


@async_test
async def test_a_summary_never_read_back_is_asked_for_again_after_the_echo_timeout():
    h = Harness(echo_timeout_s=30.0)
    h.publisher.lose = True
    h.turns("s1", 7)
    await h.run()
    assert len(h.publisher.events) == 1

    h.clock.now += 29.0
    h.turns("s1", 1, first=7)
    await h.run()
    assert len(h.summarizer.requests) == 1

    h.clock.now += 2.0
    h.turns("s1", 1, first=8)
    await h.run()
    # Nothing covered the first turns, so they are asked for again, with the newer ones.
    assert [offsets(r) for r in h.summarizer.requests] == [[0, 1, 2], [0, 1, 2, 3, 4]]


# --------------------------------------------------------------------------- concurrency


@async_test
async def test_at_most_max_in_flight_summaries_run_and_other_partitions_keep_committing():
    h = Harness(max_in_flight=2)
    gate = h.summarizer.hold()
    for p in range(5):
        h.turns(f"s{p}", 7, partition=p)  # each triggers at offset 6 of its partition
    h.turns("quiet0", 2, partition=0)  # offsets 7, 8: behind s0's trigger
    h.turns("quiet5", 3, partition=5)  # a partition with no summary at all

    await h.run()

    assert h.summarizer.running == 2
    assert h.engine.stats.requested == 2
    assert h.acked(5) == [0, 1, 2]  # a slow summary holds back no other partition
    for p in range(5):
        # ... but on its own partition nothing from its trigger on, quiet0 included.
        assert h.acked(p) == list(range(6)), p

    gate.set()
    await h.run()

    assert h.summarizer.most_running == 2
    assert sorted(r.session_id for r in h.summarizer.requests) == [f"s{p}" for p in range(5)]
    assert h.engine.stats.published == 5
    assert h.acked(0) == list(range(9 + 1))  # 7 turns, 2 quiet, the read-back summary
    for p in range(1, 5):
        assert h.acked(p) == list(range(8)), p


@async_test
async def test_a_trigger_is_committed_only_after_its_summary_is_published():
    h = Harness(yielding_acks=True)
    gate = h.summarizer.hold()
    h.turns("s1", 7)
    h.turns("s2", 2)  # offsets 7, 8
    await h.run()
    assert h.acked() == list(range(6))
    assert h.publisher.events == []

    gate.set()
    await h.run()

    trigger = h.journal.index(("ack", 0, 6))
    assert h.journal.index(("publish", "s1", 2)) < trigger
    assert h.acked() == list(range(10))


@async_test
async def test_acks_are_in_offset_order_without_gaps_when_summaries_finish_out_of_order():
    h = Harness(yielding_acks=True)
    first = h.summarizer.hold()
    h.turns("a", 7)  # trigger at 6
    await h.run()
    second = h.summarizer.hold()  # b's summary gets its own gate
    h.turns("b", 7, first=0)  # offsets 7..13, trigger at 13
    h.turns("c", 2)  # 14, 15
    await h.run()
    assert h.acked() == list(range(6))

    second.set()  # the later trigger finishes first ...
    await h.run()
    assert [e.session_id for e in h.publisher.events] == ["b"]
    assert h.acked() == list(range(6)), "a record was acked past an unfinished trigger"

    first.set()  # ... and everything goes once the earlier one does
    await h.run()
    assert h.acked() == list(range(len(h.topic.partitions[0])))


@async_test
async def test_aclose_leaves_the_trigger_and_every_record_after_it_uncommitted():
    h = Harness()
    h.summarizer.hold()
    h.turns("s1", 7)
    h.turns("s2", 2)  # 7, 8
    await h.run()
    h.projector.gate = asyncio.Event()  # a load on partition 1 that never finishes
    h.turns("s3", 1, partition=1)
    await h.run()
    assert h.engine.in_flight == 2

    await h.engine.aclose()

    assert h.engine.in_flight == 0
    assert h.summarizer.running == 0  # the call was cancelled, not left running
    assert h.publisher.events == []
    assert h.acked(0) == list(range(6))
    assert h.acked(1) == []
    assert h.engine.stats.failed == 0


@async_test
async def test_drain_reports_whether_work_is_left():
    h = Harness()
    gate = h.summarizer.hold()
    h.turns("s1", 7)
    await h.run()

    assert await h.engine.drain(0.001) is False

    gate.set()
    assert await h.engine.drain(1.0) is True
    assert h.engine.stats.published == 1
    await h.close()


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("error", "counter"),
    [
        (SummarizerUnavailable("the circuit is open"), "refused"),
        (RetryableSummarizerError("429 slow down", retry_after=1.0), "failed"),
        (SummarizerError("the request was refused"), "failed"),
    ],
)
@async_test
async def test_a_failed_summary_publishes_nothing_and_is_retried_after_the_cooldown(error, counter):
    h = Harness(failure_cooldown_s=15.0)
    h.summarizer.failures.append(error)
    h.turns("s1", 7)
    await h.run()

    assert h.publisher.events == []
    assert h.acked() == list(range(7))  # the trigger is committed: the window still works
    assert getattr(h.engine.stats, counter) == 1
    assert (h.engine.stats.refused + h.engine.stats.failed, h.engine.stats.published) == (1, 0)

    h.turns("s1", 1, first=7)  # more overflow during the cooldown asks nothing
    await h.run()
    assert len(h.summarizer.requests) == 1
    h.clock.now += 14.9
    assert await h.engine.retry_due() == 0
    await h.settle()
    assert len(h.summarizer.requests) == 1

    h.clock.now += 0.2
    assert await h.engine.retry_due() == 1
    await h.run()

    first, retried = h.summarizer.requests
    assert offsets(first) == [0, 1, 2]
    assert offsets(retried) == [0, 1, 2, 3]
    [summary] = h.publisher.summaries
    assert (summary.through_offset, summary.covered_messages) == (3, 4)
    assert await h.engine.retry_due() == 0  # nothing is left to retry
    assert h.acked() == list(range(len(h.topic.partitions[0])))


@async_test
async def test_a_failed_publish_is_counted_and_retried():
    h = Harness(failure_cooldown_s=5.0)
    h.publisher.failures.append(BrokerUnavailable("no broker answered"))
    h.turns("s1", 7)
    await h.run()
    assert (h.engine.stats.failed, h.engine.stats.published) == (1, 0)
    assert h.acked() == list(range(7))

    h.clock.now += 5.0
    assert await h.engine.retry_due() == 1
    await h.run()
    assert h.engine.stats.published == 1
    assert [s.through_offset for s in h.publisher.summaries] == [2]


@async_test
async def test_an_unexpected_error_is_counted_and_retried_not_raised():
    class Broken(StubSummarizer):
        async def summarize(self, request):
            self.requests.append(request)
            raise RuntimeError("a bug in the summarizer")

    h = Harness(failure_cooldown_s=5.0)
    h.summarizer = Broken()
    h.engine.summarizer = h.summarizer
    h.turns("s1", 7)
    await h.run()

    assert h.engine.stats.failed == 1
    assert h.acked() == list(range(7))
    h.clock.now += 5.0
    assert await h.engine.retry_due() == 1
    await h.settle()
    assert len(h.summarizer.requests) == 2


# --------------------------------------------------------------------------- stale results


@async_test
async def test_a_summary_of_a_session_erased_meanwhile_is_dropped():
    h = Harness()
    gate = h.summarizer.hold()
    h.turns("s1", 7)
    await h.run()
    h.write(erased("s1"))  # offset 7
    h.turns("s1", 1, first=7)  # offset 8: the session is in use again, but empty
    await h.run()

    gate.set()
    await h.run()

    assert h.publisher.events == []
    assert h.engine.stats.stale == 1
    assert h.engine.stats.published == 0
    assert h.acked() == list(range(9))
    view = h.topic.view("s1", 0)
    assert view is not None
    assert view.summary is None
    assert [m.offset for m in view.messages] == [8]


@async_test
async def test_a_summary_overtaken_by_a_newer_one_is_dropped():
    h = Harness()
    gate = h.summarizer.hold()
    h.turns("s1", 7)
    await h.run()
    # Another summarizer (a zombie after a rebalance) got there first.
    h.write(summarized("s1", 3, covered=4, text="theirs"))
    await h.run()

    gate.set()
    await h.run()

    assert h.publisher.events == []
    assert h.engine.stats.stale == 1
    assert h.acked() == list(range(8))


@async_test
async def test_a_session_that_is_erased_asks_for_nothing():
    h = Harness()
    h.turns("s1", 6)
    h.write(erased("s1"))
    await h.run()
    assert h.summarizer.requests == []
    assert h.acked() == list(range(7))


# --------------------------------------------------------------------------- bootstrap


@async_test
async def test_a_new_session_is_loaded_at_its_first_records_position_then_folded_on():
    h = Harness()
    h.turns("s1", 4)  # offsets 0..3, already committed by an earlier run
    h.next[0] = 4
    h.turns("s1", 4, first=4)  # offsets 4..7
    h.projector.gate = asyncio.Event()

    await h.run()  # every record arrives while the view is loading
    assert h.projector.calls == [("s1", Position(0, 4), h.policy.load_timeout_s)]
    assert h.acked() == []
    assert h.summarizer.requests == []

    h.projector.gate.set()
    await h.run()

    assert h.engine.stats.loads == 1
    assert len(h.projector.calls) == 1
    # The view at offset 4 holds turns 0..4; 5 and 6 are folded after it, in order, and
    # 6 makes the overflow 0..2.
    [request] = h.summarizer.requests
    assert offsets(request) == [0, 1, 2]
    assert h.acked() == list(range(4, 9))


@async_test
async def test_events_the_loaded_view_already_has_are_not_folded_twice():
    h = Harness(ahead=True)  # the projector has read the whole partition already
    h.turns("s1", 9)
    h.next[0] = 2  # the summarizer's consumer is behind: offsets 2..8 are in the view
    await h.consume()
    await h.settle()

    [request] = h.summarizer.requests
    assert offsets(request) == [0, 1, 2, 3, 4]  # each turn once, in order
    assert [t.content for t in request.turns] == [f"s1 turn {n}" for n in range(5)]
    assert h.acked() == list(range(2, 9))


@async_test
async def test_a_session_with_no_stored_view_is_folded_from_its_first_event():
    h = Harness()
    h.turns("s1", 7)
    await h.run()
    assert h.projector.calls == [("s1", Position(0, 0), h.policy.load_timeout_s)]
    assert [offsets(r) for r in h.summarizer.requests] == [[0, 1, 2]]


@async_test
async def test_a_load_that_times_out_is_retried_with_backoff(monkeypatch):
    slept: list[float] = []

    async def fast_sleep(delay: float, result: Any = None) -> Any:
        slept.append(delay)
        await _sleep(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", fast_sleep)
    h = Harness()
    h.projector.failures += [
        ReadTimeout("the projector is behind"),
        StoreUnavailable("redis went away"),
        ReadTimeout("still behind"),
    ]
    h.turns("s1", 7)
    await h.run()

    assert len(h.projector.calls) == 4
    assert slept == [0.1, 0.2, 0.4]
    assert h.engine.stats.loads == 1
    assert [offsets(r) for r in h.summarizer.requests] == [[0, 1, 2]]
    assert h.acked() == list(range(8))


@async_test
async def test_records_arriving_while_the_backlog_is_folded_keep_their_order():
    # The load folds its backlog and acks each record as it goes; an ack that suspends
    # lets the consumer hand in the next record meanwhile.
    h = Harness(yielding_acks=True)
    records = h.turns("s1", 8)
    await h.engine.accept(records[0], h.acks.of(records[0]))
    await h.engine.accept(records[1], h.acks.of(records[1]))
    await _sleep(0)  # the load runs, folds offset 0 and suspends in its ack
    for record in records[2:]:
        await h.engine.accept(record, h.acks.of(record))
    h.next[0] = 8
    await h.run()

    # Turn 1 must be in the session's overflow; with the bug it was skipped as applied,
    # and the summary asked for is of turns 0, 2, 3.
    assert [offsets(r) for r in h.summarizer.requests] == [[0, 1, 2]]
    assert h.acked() == list(range(len(h.topic.partitions[0])))


# --------------------------------------------------------------------------- skipping


@async_test
async def test_records_that_are_not_this_sessions_events_are_skipped_and_committed():
    h = Harness()
    h.topic.append_raw(0, b"s1", b"not avro at all")  # 0
    h.topic.append_raw(0, b"s1", None)  # 1: a tombstone
    h.topic.append_raw(0, b"other", CODEC.encode(turn("s1", 0)))  # 2: wrong key
    h.turns("s1", 1)  # 3
    h.write(turn("s1", 1, user="mallory"))  # 4: another user's event for alice's session
    h.turns("s1", 1, first=2)  # 5

    await h.run()

    assert h.engine.stats.skipped == 4
    assert h.engine.stats.records == 6
    assert h.acked() == list(range(6))
    assert [s for s, _, _ in h.projector.calls] == ["s1"]  # nothing loaded for the junk
    assert h.summarizer.requests == []


# --------------------------------------------------------------------------- revoke


@async_test
async def test_a_revoked_partition_is_forgotten_and_its_late_finishes_ack_nothing():
    h = Harness()
    gate = h.summarizer.hold()
    h.turns("a", 7)  # trigger at 6 on partition 0
    h.turns("quiet", 2)  # 7, 8
    h.turns("b", 2, partition=1)
    await h.run()
    assert h.acked(0) == list(range(6))

    h.engine.revoke([0])  # the consumer stops reading partition 0
    gate.set()
    await h.settle()
    await h.consume(1)
    await h.settle()

    assert h.acked(0) == list(range(6)), "a finish acked a record of a revoked partition"
    assert h.acked(1) == [0, 1]
    assert h.engine.tracker.size == 0

    # Assigned back later, from the committed offset: the session is loaded afresh.
    h.next[0] = 6
    await h.run()
    assert h.projector.loads_of("a") == 2
    assert ("a", Position(0, 6), h.policy.load_timeout_s) in h.projector.calls
    assert h.acked(0) == list(range(len(h.topic.partitions[0])))


@async_test
async def test_a_revoke_during_an_ack_stops_the_acks_of_that_partition():
    h = Harness(yielding_acks=True)
    gate = h.summarizer.hold()
    h.turns("a", 7)  # trigger at 6
    h.turns("quiet", 2)  # 7, 8: finished, waiting behind the trigger
    await h.run()
    assert h.engine.tracker.size == 3

    def revoke_while_acking(record: Record) -> None:
        if (record.partition, record.offset) == (0, 6):
            h.engine.revoke([0])  # the rebalance callback runs while the ack is awaited

    h.acks.during = revoke_while_acking
    gate.set()
    await h.settle()

    assert h.acked(0) == list(range(7)), "records of a revoked partition were acked"
    assert h.engine.tracker.size == 0


@async_test
async def test_a_revoked_session_is_not_retried():
    h = Harness(failure_cooldown_s=5.0)
    h.summarizer.failures.append(SummarizerUnavailable("open"))
    h.turns("a", 7)
    await h.run()

    h.engine.revoke([0])
    h.clock.now += 10.0
    assert await h.engine.retry_due() == 0
    assert len(h.summarizer.requests) == 1


@async_test
async def test_a_load_retrying_for_a_revoked_partition_gives_up(monkeypatch):
    async def fast_sleep(delay: float, result: Any = None) -> Any:
        await _sleep(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", fast_sleep)
    h = Harness()
    h.projector.failures += [ReadTimeout("behind")] * 100
    h.turns("a", 1)
    await h.consume()
    await h.settle(3)
    h.engine.revoke([0])
    await h.settle()

    calls = len(h.projector.calls)
    assert calls < 100
    await h.settle()
    assert len(h.projector.calls) == calls
    assert h.engine.in_flight == 0
    assert h.acked() == []


# --------------------------------------------------------------------------- backpressure


@async_test
async def test_accept_waits_while_max_pending_records_are_uncommitted():
    h = Harness(max_pending=4)
    gate = h.summarizer.hold()
    records = h.turns("s1", 10)
    h.next[0] = 10
    for record in records[:7]:  # 0..5 commit at once; 6 triggers and stays pending
        await h.engine.accept(record, h.acks.of(record))
    await h.settle()
    await h.engine.accept(records[7], h.acks.of(records[7]))  # 2 pending
    await h.engine.accept(records[8], h.acks.of(records[8]))  # 3 pending

    blocked = asyncio.create_task(h.engine.accept(records[9], h.acks.of(records[9])))
    await h.settle()
    assert not blocked.done(), "accept returned with max_pending records uncommitted"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(blocked), 0.01)

    gate.set()
    await h.settle()
    assert blocked.done()
    await blocked
    assert h.acked() == list(range(10))


# --------------------------------------------------------------------------- eviction


@async_test
async def test_idle_sessions_beyond_max_sessions_are_forgotten_and_reloaded():
    h = Harness(max_sessions=2)
    for session in ("a", "b", "c"):  # c pushes out a, the least recently active
        h.turns(session, 1)
        await h.run()
    h.write(turn("a", 1))  # a comes back and pushes out b
    await h.run()
    h.write(turn("c", 1))  # c is still there
    await h.run()

    assert [h.projector.loads_of(s) for s in "abc"] == [2, 1, 1]
    assert h.acked() == list(range(5))


@async_test
async def test_a_session_with_a_summary_in_flight_is_not_evicted():
    h = Harness(max_sessions=2)
    gate = h.summarizer.hold()
    h.turns("a", 7)
    await h.run()
    for session in ("b", "c"):  # a is the least recently active, but busy: b goes
        h.turns(session, 1)
        await h.run()
    h.write(turn("a", 7))
    gate.set()
    await h.run()

    assert [h.projector.loads_of(s) for s in "abc"] == [1, 1, 1]
    h.write(turn("b", 1))
    await h.run()
    assert h.projector.loads_of("b") == 2


@async_test
async def test_a_session_awaiting_its_summary_read_back_is_not_evicted():
    h = Harness(max_sessions=1)
    h.turns("a", 7)  # trigger at 6
    h.turns("b", 1)  # 7
    h.write(turn("a", 7))  # 8: written before the summary, so read before it
    await h.consume(upto=6)
    await h.settle()  # the summary is published at offset 9
    assert [s.through_offset for s in h.publisher.summaries] == [2]

    await h.run()  # b evicts a; a's next turn reloads it at offset 8, before the summary

    assert [offsets(r) for r in h.summarizer.requests] == [[0, 1, 2]]


@async_test
async def test_a_session_cooling_down_after_a_failure_keeps_its_cooldown():
    h = Harness(max_sessions=1, failure_cooldown_s=15.0)
    h.summarizer.failures.append(SummarizerUnavailable("the circuit is open"))
    h.turns("a", 7)
    await h.run()
    h.turns("b", 1)  # evicts a
    await h.run()
    h.write(turn("a", 7))  # a comes back well within its cooldown
    await h.run()

    assert len(h.summarizer.requests) == 1


# --------------------------------------------------------------------------- configuration


def test_a_threshold_above_the_kept_overflow_is_a_config_error_naming_the_setting():
    topic = Topic(WINDOW)
    with pytest.raises(ConfigError, match="CHATLOG_SUMMARY_THRESHOLD") as caught:
        SummaryEngine(
            StubSummarizer(),
            Projector(topic),
            Publisher(topic, []),
            window=WindowPolicy(window=4, max_overflow=5),
            policy=SummaryPolicy(threshold=6),
        )
    assert caught.value.context["setting"] == "CHATLOG_SUMMARY_THRESHOLD"
    assert "CHATLOG_MAX_OVERFLOW" in caught.value.message
    assert isinstance(caught.value, ValueError)


def test_a_threshold_equal_to_the_kept_overflow_is_accepted():
    topic = Topic(WINDOW)
    engine = SummaryEngine(
        StubSummarizer(),
        Projector(topic),
        Publisher(topic, []),
        window=WindowPolicy(window=4, max_overflow=5),
        policy=SummaryPolicy(threshold=5),
    )
    assert engine.policy.threshold == 5


@pytest.mark.parametrize(
    "field",
    [
        "threshold",
        "max_summary_tokens",
        "max_in_flight",
        "max_loads",
        "max_pending",
        "max_sessions",
    ],
)
def test_a_policy_below_one_is_refused(field):
    with pytest.raises(InvalidInput, match=field):
        SummaryPolicy(**{field: 0})


# --------------------------------------------------------------------------- stopping


@async_test
async def test_stop_cancels_loads_at_once_and_gives_summaries_under_way_their_grace():
    h = Harness()
    gate = h.summarizer.hold()
    h.turns("s1", 7)  # the seventh turn (offset 6) triggers a summary
    await h.run()
    h.projector.gate = asyncio.Event()  # a load on partition 1 that never finishes
    h.turns("s3", 1, partition=1)
    await h.run()
    assert h.engine.in_flight == 2

    stopping = asyncio.ensure_future(h.engine.stop(5.0))
    await h.settle()
    assert h.engine.in_flight == 1  # the load is gone; the summary keeps its grace
    gate.set()

    assert await stopping == 0
    assert h.engine.stats.published == 1
    assert h.acked(0) == list(range(7))  # the trigger, now finished
    assert h.acked(1) == []  # the record whose session never loaded stays uncommitted


@async_test
async def test_stop_past_its_grace_cancels_the_summary_and_leaves_its_trigger_uncommitted():
    h = Harness()
    h.summarizer.hold()
    h.turns("s1", 7)
    await h.run()

    assert await h.engine.stop(0.01) == 1

    assert h.summarizer.running == 0
    assert h.publisher.events == []
    assert h.acked(0) == list(range(6))


@async_test
async def test_once_stopping_no_record_is_taken_and_no_retry_started():
    h = Harness()
    gate = h.summarizer.hold()
    h.turns("s1", 7)
    await h.run()
    h.turns("s1", 3)  # 7-9, folded while the summary runs
    await h.consume()
    await h.settle()

    stopping = asyncio.ensure_future(h.engine.stop(5.0))
    await h.settle()
    h.turns("s2", 1)  # consumed after the stop began: left alone, never acked
    await h.consume()
    gate.set()
    assert await stopping == 0

    assert h.engine.stats.records == 10
    assert len(h.summarizer.requests) == 1
    assert h.acked(0) == list(range(10))  # not the summary's read-back (10), nor 11
    assert await h.engine.retry_due() == 0


@async_test
async def test_a_summary_whose_owner_was_erased_meanwhile_is_dropped_for_good():
    h = Harness(failure_cooldown_s=5.0)
    h.publisher.failures.append(Erased("user u1 was erased", user_id=USER, tenant=TENANT))
    h.turns("s1", 7)
    await h.run()
    stats = h.engine.stats
    assert (stats.requested, stats.erased, stats.failed, stats.published) == (1, 1, 0, 0)
    assert h.acked() == list(range(7))  # committed: nothing to ask again after a restart

    # Never retried, and later turns of the session start no summary.
    h.clock.now += 60.0
    assert await h.engine.retry_due() == 0
    h.turns("s1", 6, first=7)
    await h.run()
    assert (stats.requested, stats.erased) == (1, 1)
    assert h.acked() == list(range(13))
    assert h.publisher.events == []


@async_test
async def test_a_session_whose_owner_is_erased_when_it_loads_is_never_summarized():
    h = Harness()
    h.projector.failures.append(Erased("user u1 was erased", user_id=USER, tenant=TENANT))
    h.turns("s1", 7)
    await h.run()
    assert h.projector.loads_of("s1") == 1  # not waited on as if the projector were behind
    assert h.engine.stats.requested == 0
    assert h.acked() == list(range(7))


# --------------------------------------------------------------------------- redactions


def redaction_of(record: Record) -> ConversationEvent:
    """The redaction of the message appended at `record`."""
    assert record.value is not None
    payload = CODEC.decode(record.value).payload
    assert isinstance(payload, MessageAppended)
    return new_event(
        "s1", user_id=USER, tenant=TENANT, payload=MessageRedacted(message_id=payload.message_id)
    )


def contents_asked(h: Harness) -> list[list[str]]:
    return [[t.content for t in r.turns] for r in h.summarizer.requests]


@async_test
async def test_a_withheld_summary_is_rebuilt_from_the_log_without_the_redacted_turn():
    h = Harness()
    turns = h.turns("s1", 7)  # offset 6 triggers a summary of 0-2, read back at 7
    await h.run()
    assert h.publisher.summaries[-1].summary == "0,1,2"
    h.write(redaction_of(turns[1]))  # offset 8: turn 1 is in the summary
    await h.run()

    # The rebuild read the session's log up to the redaction, and never sent turn 1.
    assert h.log.reads == [("s1", 0, 9)]
    assert contents_asked(h)[-1] == ["s1 turn 0", "s1 turn 2"]
    rebuilt = h.publisher.summaries[-1]
    assert (rebuilt.summary, rebuilt.through_offset, rebuilt.redactions_through) == ("0,2", 2, 8)
    assert rebuilt.covered_messages == 3
    view = h.topic.view("s1", 0)
    assert view is not None
    assert (view.summary, view.summary_withheld, view.summary_through) == ("0,2", False, 2)
    assert h.engine.stats.rebuilt == 1
    assert h.acked() == list(range(10))
    # Once lifted, summaries roll on as before: no second rebuild.
    h.turns("s1", 3, first=7)
    await h.run()
    assert h.engine.stats.rebuilt == 1
    assert h.publisher.summaries[-1].summary == "0,2|3,4,5"


@async_test
async def test_a_summary_in_flight_when_its_turn_is_redacted_is_withheld_then_rebuilt():
    h = Harness()
    gate = h.summarizer.hold()
    turns = h.turns("s1", 7)
    await h.run()  # the summary of 0-2 is asked for, and held
    h.write(redaction_of(turns[2]))  # offset 7, before the summary lands
    await h.run()
    h.summarizer.gate = None
    gate.set()
    await h.run()

    first, rebuilt = h.publisher.summaries
    assert (first.summary, first.redactions_through) == ("0,1,2", 6)  # raced the redaction
    assert (rebuilt.summary, rebuilt.through_offset, rebuilt.redactions_through) == ("0,1", 2, 8)
    assert contents_asked(h)[-1] == ["s1 turn 0", "s1 turn 1"]
    view = h.topic.view("s1", 0)
    assert view is not None
    assert (view.summary, view.summary_withheld) == ("0,1", False)
    # The raced summary's text was never part of any view in between.
    for upto in range(len(h.topic.partitions[0])):
        seen = h.topic.view("s1", 0, upto)
        assert seen is None or seen.summary in (None, "0,1")


@async_test
async def test_without_a_log_a_withheld_summary_stays_withheld():
    h = Harness(log=False)
    turns = h.turns("s1", 7)
    await h.run()
    h.write(redaction_of(turns[0]))
    h.turns("s1", 3, first=7)  # enough overflow for another rolling summary
    await h.run()
    assert len(h.summarizer.requests) == 1  # no rolling summary without the older turns
    view = h.topic.view("s1", 0)
    assert view is not None
    assert (view.summary, view.summary_withheld) == (None, True)
    assert h.acked() == list(range(len(h.topic.partitions[0])))


@async_test
async def test_a_rebuild_with_every_covered_turn_redacted_publishes_an_empty_summary():
    h = Harness()
    turns = h.turns("s1", 7)
    await h.run()
    for record in turns[:3]:
        h.write(redaction_of(record))
    await h.run()
    rebuilt = h.publisher.summaries[-1]
    assert (rebuilt.summary, rebuilt.through_offset) == ("", 2)
    # The rebuild read the log to its end: every redaction already there was honoured
    # at once, so there was nothing left to send.
    assert len(h.summarizer.requests) == 1
    assert h.engine.stats.rebuilt == 1
    view = h.topic.view("s1", 0)
    assert view is not None
    assert (view.summary, view.summary_withheld) == ("", False)


@async_test
async def test_a_rebuild_overtaken_by_another_redaction_is_withheld_and_done_again():
    h = Harness()
    turns = h.turns("s1", 7)
    await h.run()
    gate = h.summarizer.hold()
    h.write(redaction_of(turns[0]))  # offset 8: the rebuild reads the log up to here
    await h.run()
    h.write(redaction_of(turns[1]))  # offset 9, while the rebuild's call is held
    await h.run()
    h.summarizer.gate = None
    gate.set()
    await h.run()

    assert contents_asked(h)[1:] == [["s1 turn 1", "s1 turn 2"], ["s1 turn 2"]]
    assert [(s.summary, s.redactions_through) for s in h.publisher.summaries[1:]] == [
        ("1,2", 8),
        ("2", 10),
    ]
    view = h.topic.view("s1", 0)
    assert view is not None
    assert (view.summary, view.summary_withheld) == ("2", False)
    assert h.engine.stats.rebuilt == 2


@async_test
async def test_a_rebuild_that_cannot_read_the_log_is_tried_again_and_an_erased_owner_never():
    h = Harness()
    turns = h.turns("s1", 7)
    await h.run()
    h.log.failures.append(BrokerUnavailable("Kafka did not answer"))
    h.write(redaction_of(turns[1]))
    await h.run()
    assert (h.engine.stats.failed, h.engine.stats.rebuilt) == (1, 0)
    h.clock.now += h.policy.failure_cooldown_s
    assert await h.engine.retry_due() == 1
    await h.run()
    assert h.engine.stats.rebuilt == 1

    turns = h.turns("s2", 7, partition=1)
    await h.run()
    h.log.failures.append(Erased("its keys are gone"))
    h.write(redaction_of(turns[1]).model_copy(update={"session_id": "s2"}))
    await h.run()
    assert (h.engine.stats.erased, h.engine.stats.rebuilt) == (1, 1)
    h.clock.now += h.policy.failure_cooldown_s
    assert await h.engine.retry_due() == 0  # never asked again
