"""The summarizer's logic without Kafka: which session to summarize, when, and what to commit.

What does it do with each record? It folds the event into its copy of the session's view
with the same `evolve` as the projector, so it knows the session's overflow exactly (the
turns evicted from the window and not yet covered by the summary). When the overflow
reaches `SummaryPolicy.threshold` it asks the summarizer for
``summary(previous summary, overflow)`` and publishes the result as a `SummaryUpdated`
event keyed by the session. The projector then drops the overflow that summary covers.

Where does a session's view come from after a restart? From the read-model: the first
time the engine meets a session it waits until the projector has projected the
session's partition up to this record, loads the stored view, and folds on from there
(`evolve` skips what the view already has). The engine keeps the views of recently
active sessions in memory, bounded by `max_sessions`.

Rules that keep summaries correct and cheap:

* At most one summary per session is in flight, and after publishing one the engine
  waits to read it back before asking again, so each request covers only turns no
  earlier summary covered: the cost of a session grows with its length, not its square.
* Summaries run concurrently across sessions, at most `max_in_flight` at a time; a slow
  call holds back neither other sessions nor the partition.
* Records are committed in log order, and a record that triggered a summary only once
  that summary is published (or has failed), and so is any follow-up summary of turns
  that arrived while it ran. A crash mid-summary therefore consumes the record again
  after the restart, and the summary is asked for again.
* A failed summary (the LLM down, its circuit open, or a publish failure) is retried
  after `failure_cooldown_s`. Meanwhile the window keeps working and the overflow stays
  bounded: the projector drops its oldest turns from the read-model (never from the log)
  and counts them.
* A result that arrives after the session moved on (erased, or a newer summary already
  there) is dropped, not published. So is one whose owner was erased meanwhile (the
  publisher's keyring refuses it with `Erased`): it is logged and counted (`erased`),
  never retried, and the session gets no more summaries. Duplicates that do get
  published are harmless: the projector keeps only a newer ``through_offset``.

What if a redaction touches a summary? The fold withholds it (`chatlog.projections.view`:
its text leaves the view until a clean summary with its coverage lands). The engine then
rebuilds it from the log, never from the summary it replaces: it reads the session's
events from the log (`SessionLog`) up to the partition's end, folds them with the
same `evolve` (redactions applied, retries and foreign events left out), keeps the turns
the withheld summary covered minus every redacted one, and summarizes them afresh in
chunks of `threshold` turns, rolling, as they were summarized the first time. The result
is published with the withheld summary's `through_offset` and a `redactions_through` at
the last offset read, so the projector takes it as the rebuild and lifts the withholding.
While a session's summary is withheld, no rolling summary is asked for: without the
previous summary it would lose every older turn. Without a `SessionLog` the engine cannot
rebuild, and the summary stays withheld.

How does it stop? `stop` takes no more records and starts no more work, cancels the
loads at once (a load may wait for a projector that is not running, for ever), gives the
summaries under way a grace period to publish, and cancels what is left. Records whose
work was not finished are not acked, so they stay uncommitted and are consumed again by
the next worker, which asks for their summaries again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatlog.logs import context
from chatlog.processors.commits import Ack, CommitTracker, Pending
from chatlog.processors.measures import Histogram
from chatlog.processors.projection import Record, decode_record
from chatlog.processors.summarizers import Summarizer, SummaryRequest, SummaryResult
from chatlog.producers.commands import new_event
from chatlog.projections.opening import EventOpener
from chatlog.projections.view import (
    ForeignEvent,
    Message,
    SessionStatus,
    SessionView,
    WindowPolicy,
    evolve,
    fold,
)
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import (
    ChatlogError,
    ConfigError,
    DecodeError,
    Erased,
    InvalidInput,
    RetryableSummarizerError,
    SummarizerError,
    SummarizerUnavailable,
)
from chatlog.schemas.events import ConversationEvent, ProducerInfo, SummaryUpdated
from chatlog.schemas.position import Position

__all__ = [
    "SessionLog",
    "SummaryEngine",
    "SummaryPolicy",
    "SummaryPublisher",
    "SummaryStats",
    "ViewSource",
    "check_policy",
    "covered_turns",
]

log = logging.getLogger("chatlog.summarizer")


@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryPolicy:
    """When to summarize, how much at once, and how patiently."""

    threshold: int = 10  # overflow turns that trigger a summary
    max_summary_tokens: int = 400
    max_in_flight: int = 8  # summaries in flight across all sessions
    max_loads: int = 8  # views being loaded from the read-model at once
    max_pending: int = 20_000  # consumed records not yet committable before consuming waits
    max_sessions: int = 10_000  # session views kept in memory
    failure_cooldown_s: float = 15.0
    echo_timeout_s: float = 60.0  # how long to wait to read back a published summary
    load_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("threshold", "max_summary_tokens", "max_in_flight", "max_loads"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_pending < 1 or self.max_sessions < 1:
            raise InvalidInput("max_pending and max_sessions must be at least 1")


@dataclass(slots=True)
class SummaryStats:
    """What the engine has done since it started."""

    records: int = 0
    skipped: int = 0  # undecodable or foreign records: the projector dead-letters them
    loads: int = 0
    requested: int = 0
    published: int = 0
    failed: int = 0
    refused: int = 0  # not attempted: the summarizer's circuit was open
    stale: int = 0  # results dropped because the session had moved on
    erased: int = 0  # summaries dropped because their owner was erased
    rebuilt: int = 0  # withheld summaries rebuilt from the log and published
    turns: int = 0  # turns folded into published summaries
    # Of every answered summarizer call, published or not: what an LLM bills.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_failed: int = 0  # calls that ended without a summary (after the retries)
    # Seconds per summarizer call (retries included), for the metrics.
    llm_seconds: Histogram = field(default_factory=Histogram)
    # Seconds per published summary, the most recent ones.
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def line(self) -> str:
        """A one-line report for the logs."""
        return (
            f"records={self.records} loads={self.loads} requested={self.requested} "
            f"published={self.published} failed={self.failed} refused={self.refused} "
            f"stale={self.stale} erased={self.erased} rebuilt={self.rebuilt} turns={self.turns} "
            f"prompt_tokens={self.prompt_tokens} completion_tokens={self.completion_tokens}"
        )


class ViewSource(Protocol):
    """Where the engine gets a session's view the first time it meets the session."""

    async def projected_view(
        self, session_id: str, position: Position, *, timeout: float
    ) -> SessionView | None:
        """The view, once the projection of `position`'s partition has reached it."""
        ...


class SummaryPublisher(Protocol):
    """Where summaries go: the events topic, keyed by session."""

    async def publish(self, event: ConversationEvent) -> Position:
        """Publish `event`; its position once the broker has it."""
        ...


class SessionLog(Protocol):
    """Where a withheld summary is rebuilt from: the session's events in the log."""

    async def session_events(
        self, session_id: str, *, partition: int, start: int
    ) -> tuple[list[tuple[ConversationEvent, Position]], int]:
        """The session's events from offset `start` of `partition` to its end as it is
        now, opened, in log order (what the projector dead-letters left out), and the
        last offset read."""
        ...


def covered_turns(
    events: list[tuple[ConversationEvent, Position]], *, through: int, window: WindowPolicy
) -> tuple[Message, ...]:
    """The turns a summary through `through` covers, as the log has them now: folded with
    the projector's `evolve` (retries, foreign events and erasures as it treats them)
    with no summary and no overflow limit, minus every redacted turn."""
    unbounded = WindowPolicy(window=window.window, max_overflow=len(events))
    # Summaries are left out: the turns are wanted, not what any summary made of them.
    plain = [(e, p) for e, p in events if not isinstance(e.payload, SummaryUpdated)]
    view, _ = fold(None, plain, unbounded)
    if view is None:
        return ()
    return tuple(m for m in view.messages if m.offset <= through and not m.redacted)


def check_policy(window: WindowPolicy, policy: SummaryPolicy) -> None:
    """Raise `ConfigError` if `policy` cannot work with the read-model's `window`."""
    if window.max_overflow < policy.threshold:
        raise ConfigError(
            f"the summary threshold ({policy.threshold} turns) is above the overflow "
            f"the read-model keeps ({window.max_overflow}): turns would be dropped before "
            f"they are summarized; lower CHATLOG_SUMMARY_THRESHOLD or raise "
            f"CHATLOG_MAX_OVERFLOW",
            setting="CHATLOG_SUMMARY_THRESHOLD",
        )


# --------------------------------------------------------------------------- sessions


@dataclass(slots=True)
class _Session:
    partition: int
    view: SessionView | None = None
    loading: bool = True
    backlog: list[tuple[ConversationEvent, Position, Pending]] = field(default_factory=list)
    in_flight: bool = False
    awaiting: int | None = None  # through_offset of our summary not read back yet
    awaiting_until: float = 0.0
    retry_at: float = 0.0
    erased: bool = False  # its owner was erased: never summarized again
    # The redactions_through of our rebuild of a withheld summary, not read back yet.
    rebuilt: int | None = None

    def evictable(self, now: float) -> bool:
        """Nothing under way and nothing to remember: reloaded, it would act the same."""
        # Waiting to read its summary back, a reloaded view would lack the summary and
        # ask for the same turns again; cooling down, it would ask again at once.
        return not (
            self.loading
            or self.in_flight
            or self.backlog
            or ((self.awaiting, self.rebuilt) != (None, None) and now < self.awaiting_until)
            or now < self.retry_at
        )


class SummaryEngine:
    """Folds records into session views and keeps each session's overflow summarized."""

    def __init__(
        self,
        summarizer: Summarizer,
        views: ViewSource,
        publisher: SummaryPublisher,
        *,
        window: WindowPolicy,
        policy: SummaryPolicy | None = None,
        codec: EventCodec | None = None,
        producer: ProducerInfo | None = None,
        clock: Callable[[], float] = time.monotonic,
        opener: EventOpener | None = None,
        log: SessionLog | None = None,
    ) -> None:
        self.policy = policy or SummaryPolicy()
        # Where withheld summaries are rebuilt from; without it they stay withheld.
        self.log = log
        check_policy(window, self.policy)
        self.summarizer = summarizer
        self.views = views
        self.publisher = publisher
        self.window = window
        self.codec = codec or EventCodec()
        # Opens sealed events: the engine folds the records it consumes into the views
        # it loaded, and summarizes what they say.
        self.opener = opener
        self.producer = producer
        self.stats = SummaryStats()
        self.tracker = CommitTracker()
        self._clock = clock
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._retry: set[str] = set()
        self._slots = asyncio.Semaphore(self.policy.max_in_flight)
        self._load_slots = asyncio.Semaphore(self.policy.max_loads)
        self._loads: set[asyncio.Task[None]] = set()
        self._summaries: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ----------------------------------------------------------------------- intake

    async def accept(self, record: Record, ack: Ack) -> None:
        """Take the next record of a partition (in log order); `ack` commits it later.

        Once stopping, the record is left alone: never acked, it is consumed again.
        """
        if self._stopping:
            return
        self.stats.records += 1
        item = self.tracker.add(record.partition, record.offset, ack)
        event = self._decode(record)
        if event is not None and event.sealed is not None:
            event = await self._open(event)
            if self._stopping:
                return  # never acked: consumed again after the restart
        if event is None:
            self.stats.skipped += 1
            await self.tracker.finish(item)
        else:
            position = Position(record.partition, record.offset)
            session = self._sessions.get(event.session_id)
            if session is None:
                session = _Session(record.partition, backlog=[(event, position, item)])
                self._sessions[event.session_id] = session
                self._spawn(self._load(event.session_id, session, position), self._loads)
                self._evict()
            else:
                self._sessions.move_to_end(event.session_id)
                if session.loading or session.backlog:
                    session.backlog.append((event, position, item))
                else:
                    await self._fold(event.session_id, session, event, position, item)
        # Backpressure: a summary stuck in flight holds its partition's commits, and the
        # records behind it wait in memory; past the limit, consuming waits instead.
        await self.tracker.wait_below(self.policy.max_pending)

    async def retry_due(self) -> int:
        """Ask again for summaries that failed, once their cool-down is over."""
        if self._stopping:
            return 0
        now = self._clock()
        started = 0
        for session_id in list(self._retry):
            session = self._sessions.get(session_id)
            if session is None:
                self._retry.discard(session_id)
            elif session.retry_at <= now:
                self._retry.discard(session_id)
                started += self._start(session_id, session, None)
        return started

    def revoke(self, partitions: Collection[int]) -> None:
        """Forget the sessions and records of `partitions`: another worker owns them now."""
        gone = set(partitions)
        self.tracker.revoke(gone)
        for session_id in [s for s, v in self._sessions.items() if v.partition in gone]:
            del self._sessions[session_id]
            self._retry.discard(session_id)

    @property
    def in_flight(self) -> int:
        """Loads and summaries under way."""
        return len(self._loads) + len(self._summaries)

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for work under way; True if none is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A load that finishes may start a summary: wait for the work it starts too.
        while self.in_flight and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(self._loads | self._summaries, timeout=remaining)
        return not self.in_flight

    async def stop(self, grace_s: float) -> int:
        """Stop within about `grace_s` seconds; the number of summaries left unfinished.

        No record is taken and no work started from now on. Loads are cancelled at once:
        one can wait for a projector that has stopped, and it has produced nothing yet.
        Summaries under way get `grace_s` to publish; the rest are cancelled. A record is
        acked only if its work finished, so the next worker consumes the others again.
        Idempotent.
        """
        self._stopping = True
        for task in self._loads:
            task.cancel()
        await self.drain(grace_s)
        left = len(self._summaries)
        await self.aclose()
        return left

    async def aclose(self) -> None:
        """Cancel work under way; its records stay uncommitted and are consumed again."""
        tasks = self._loads | self._summaries
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # ----------------------------------------------------------------------- folding

    def _decode(self, record: Record) -> ConversationEvent | None:
        try:
            return decode_record(self.codec, record)
        except (DecodeError, InvalidInput):
            return None

    async def _open(self, event: ConversationEvent) -> ConversationEvent | None:
        """`event` opened; None for one the projector skips (erased) or dead-letters.

        The key directory is read in a thread (a blocking Redis call), and waited for
        while Redis is away, as a load is; stopping ends the wait.
        """
        assert self.opener is not None
        delay = 0.1
        while True:
            try:
                [opened] = await asyncio.to_thread(self.opener.open_batch, [event])
                break
            except ChatlogError as exc:  # Redis is away
                if self._stopping:
                    return None
                log.warning(
                    "summarizer: waiting to open an event of %s: %s",
                    event.session_id,
                    exc,
                    extra=context(session_id=event.session_id, event_id=event.event_id),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return opened if isinstance(opened, ConversationEvent) else None

    async def _load(self, session_id: str, session: _Session, position: Position) -> None:
        delay = 0.1
        async with self._load_slots:
            while True:
                if self._sessions.get(session_id) is not session:
                    return  # revoked while waiting
                try:
                    view = await self.views.projected_view(
                        session_id, position, timeout=self.policy.load_timeout_s
                    )
                    break
                except Erased:
                    view, session.erased = None, True  # nothing to summarize, ever
                    break
                except ChatlogError as exc:  # the projector is behind, or Redis is away
                    log.warning(
                        "summarizer: waiting to load session %s: %s",
                        session_id,
                        exc,
                        extra=context(session_id=session_id),
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        self.stats.loads += 1
        session.view, session.loading = view, False
        # Records that arrive while the backlog is folded (an ack may suspend) join its
        # end: folded before it, they would make `evolve` skip the backlog's events.
        while session.backlog:
            event, event_position, item = session.backlog.pop(0)
            await self._fold(session_id, session, event, event_position, item)

    async def _fold(
        self,
        session_id: str,
        session: _Session,
        event: ConversationEvent,
        position: Position,
        item: Pending,
    ) -> None:
        try:
            session.view = evolve(session.view, event, position, self.window)
        except ForeignEvent:
            self.stats.skipped += 1
        view, awaiting = session.view, session.awaiting
        if awaiting is not None and view is not None and view.summary_through >= awaiting:
            session.awaiting = None  # our summary is back (or a newer one is)
        rebuilt = session.rebuilt
        if rebuilt is not None and (
            view is None or not view.summary_withheld or view.redacted_at > rebuilt
        ):
            session.rebuilt = None  # our rebuild is back, or a later redaction needs another
        if not self._start(session_id, session, item):
            await self.tracker.finish(item)

    def _start(self, session_id: str, session: _Session, item: Pending | None) -> bool:
        """Start a summary of the session's overflow if one is due; True if one is due.

        True means `item` now belongs to the summary, which finishes it. Once stopping,
        a due summary is not started and `item` is never finished: left uncommitted, its
        record is consumed again by the next worker, which starts the summary.
        """
        view = session.view
        if view is None or view.status is SessionStatus.ERASED or session.erased:
            return False
        if session.loading or session.in_flight:
            return False
        now = self._clock()
        if session.awaiting is not None:
            if now < session.awaiting_until:
                return False
            session.awaiting = None  # never read back (lost, or revoked): ask again
        if now < session.retry_at:
            return False
        if view.summary_withheld:
            # Rebuild first: a rolling summary now would be one without the older turns.
            if self.log is None or (session.rebuilt is not None and now < session.awaiting_until):
                return False
            if self._stopping:
                return True
            session.in_flight, session.rebuilt = True, None
            work = self._rebuild_now(session_id, session, view, self.log)
            self._spawn(self._summarize(session_id, session, work, item), self._summaries)
            return True
        turns = view.overflow(self.window)
        if len(turns) < self.policy.threshold:
            return False
        if self._stopping:
            return True
        session.in_flight = True
        request = SummaryRequest(
            session_id=session_id,
            previous_summary=view.summary,
            turns=turns,
            max_summary_tokens=self.policy.max_summary_tokens,
        )
        work = self._summarize_now(session_id, session, view, request)
        self._spawn(self._summarize(session_id, session, work, item), self._summaries)
        return True

    # ----------------------------------------------------------------------- summaries

    async def _summarize(
        self,
        session_id: str,
        session: _Session,
        work: Coroutine[Any, Any, None],
        item: Pending | None,
    ) -> None:
        try:
            async with self._slots:
                await work
        except asyncio.CancelledError:
            session.in_flight = False  # shutting down: leave the record uncommitted, to redo it
            raise
        except Exception:
            log.exception(
                "summarizer: summary of session %s failed",
                session_id,
                extra=context(session_id=session_id),
            )
            self.stats.failed += 1
            self._retry_later(session_id, session)
        session.in_flight = False
        # Records folded while this summary ran could not start the next one, and the last
        # of them may have been its own read-back (the consumer can see a summary before
        # the producer's delivery report): with no record to come, the overflow they left
        # would wait for the session's next turn. So look again now, and keep the trigger
        # uncommitted until that follow-up is done too, so that a crash redoes it.
        current = self._sessions.get(session_id) is session  # not revoked meanwhile
        followed = current and self._start(session_id, session, item)
        if not followed and item is not None:
            await self.tracker.finish(item)

    async def _ask(
        self, session_id: str, session: _Session, request: SummaryRequest
    ) -> SummaryResult | None:
        """The summarizer's answer to `request`; None if it failed (retried later)."""
        self.stats.requested += 1
        started = self._clock()
        try:
            result = await self.summarizer.summarize(request)
        except SummarizerUnavailable:
            self.stats.refused += 1
        except (SummarizerError, RetryableSummarizerError) as exc:  # final, or out of retries
            self.stats.llm_seconds.observe(self._clock() - started)
            self.stats.llm_failed += 1
            log.warning(
                "summarizer: no summary for session %s: %s",
                session_id,
                exc,
                extra=context(session_id=session_id),
            )
            self.stats.failed += 1
        else:
            self.stats.llm_seconds.observe(self._clock() - started)
            self.stats.prompt_tokens += result.prompt_tokens
            self.stats.completion_tokens += result.completion_tokens
            return result
        self._retry_later(session_id, session)
        return None

    async def _rebuild_now(
        self, session_id: str, session: _Session, view: SessionView, source: SessionLog
    ) -> None:
        """Rebuild the withheld summary of `view` from the log, without redacted turns."""
        started = self._clock()
        # Read to the partition's end, not just to the record folded: a redaction already
        # in the log is honoured now rather than by a second rebuild.
        try:
            events, read_through = await source.session_events(
                session_id, partition=view.partition, start=max(view.first_offset, 0)
            )
        except Erased:
            session.erased = True  # its keys are gone: nothing to rebuild, ever
            self.stats.erased += 1
            return
        honoured = max(view.last_offset, read_through)
        turns = covered_turns(events, through=view.summary_through, window=self.window)
        summary, model, prompt_tokens, completion_tokens = "", view.summary_model or "none", 0, 0
        step = self.policy.threshold
        for at in range(0, len(turns), step):
            request = SummaryRequest(
                session_id=session_id,
                previous_summary=summary or None,
                turns=turns[at : at + step],
                max_summary_tokens=self.policy.max_summary_tokens,
            )
            result = await self._ask(session_id, session, request)
            if result is None:
                return
            summary, model = result.summary, result.model
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
        current = session.view
        if (
            current is None
            or current.status is SessionStatus.ERASED
            or not current.summary_withheld
            or current.summary_through != view.summary_through
        ):
            self.stats.stale += 1  # erased, lifted or covered further meanwhile
            return
        event = new_event(
            view.session_id,
            user_id=view.user_id,
            tenant=view.tenant,
            producer=self.producer,
            payload=SummaryUpdated(
                summary=summary,
                through_offset=view.summary_through,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                covered_messages=view.summary_covered,
                # Every redaction up to the end read was applied to `turns`.
                redactions_through=honoured,
            ),
        )
        session.rebuilt = honoured
        session.awaiting_until = self._clock() + self.policy.echo_timeout_s
        if await self._publish(session_id, session, event):
            self.stats.rebuilt += 1
            self.stats.turns += len(turns)
            self.stats.latencies.append(self._clock() - started)
        else:
            session.rebuilt = None

    async def _publish(self, session_id: str, session: _Session, event: ConversationEvent) -> bool:
        """Publish a summary; False if it was dropped (owner erased) or failed (retried)."""
        try:
            await self.publisher.publish(event)
        except Erased:
            # Erased while the summary was being written: drop it, and every later one.
            session.awaiting, session.erased = None, True
            log.info(
                "summarizer: dropped the summary of %s: its owner was erased",
                session_id,
                extra=context(session_id=session_id),
            )
            self.stats.erased += 1
            return False
        except ChatlogError as exc:
            session.awaiting = None
            log.warning(
                "summarizer: could not publish the summary of %s: %s",
                session_id,
                exc,
                extra=context(session_id=session_id),
            )
            self.stats.failed += 1
            self._retry_later(session_id, session)
            return False
        return True

    async def _summarize_now(
        self, session_id: str, session: _Session, view: SessionView, request: SummaryRequest
    ) -> None:
        started = self._clock()
        result = await self._ask(session_id, session, request)
        if result is None:
            return
        through = request.turns[-1].offset
        current = session.view
        if (
            current is None
            or current.status is SessionStatus.ERASED
            or current.summary_through >= through
        ):
            self.stats.stale += 1  # erased meanwhile, or already covered: nothing to add
            return
        event = self._summary_event(view, request, result, through)
        # Awaited from before the publish: its read-back may be folded before it returns.
        session.awaiting = through
        session.awaiting_until = self._clock() + self.policy.echo_timeout_s
        if not await self._publish(session_id, session, event):
            return
        self.stats.published += 1
        self.stats.turns += len(request.turns)
        self.stats.latencies.append(self._clock() - started)

    def _summary_event(
        self, view: SessionView, request: SummaryRequest, result: SummaryResult, through: int
    ) -> ConversationEvent:
        return new_event(
            view.session_id,
            user_id=view.user_id,
            tenant=view.tenant,
            producer=self.producer,
            payload=SummaryUpdated(
                summary=result.summary,
                through_offset=through,
                model=result.model,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                # Cumulative: with the turns dropped unsummarized and the turns still held,
                # it adds up to every message the session ever had.
                covered_messages=view.summary_covered + len(request.turns),
                # The turns and the previous summary honour every redaction folded so far;
                # one folded after this view reads the summary as not clean.
                redactions_through=view.last_offset,
            ),
        )

    def _retry_later(self, session_id: str, session: _Session) -> None:
        session.retry_at = self._clock() + self.policy.failure_cooldown_s
        self._retry.add(session_id)

    # ----------------------------------------------------------------------- housekeeping

    def _spawn(self, work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _evict(self) -> None:
        """Forget the least recently active idle sessions beyond `max_sessions`."""
        excess = len(self._sessions) - self.policy.max_sessions
        if excess <= 0:
            return
        now = self._clock()
        for session_id in list(itertools.islice(self._sessions, excess * 2)):
            if excess <= 0:
                break
            if self._sessions[session_id].evictable(now):
                del self._sessions[session_id]
                self._retry.discard(session_id)
                excess -= 1
