"""The projector through an outage: consumption paused, its place in the group kept.

Faults of Redis (refused, dropped or stalled connections: `StoreUnavailable`) and of the
dead-letter topic (`DeliveryFailed`) do not end the process. The step that failed is
retried as it is, with backoff from 0.1 s doubling to 5 s, until it succeeds: the
batch's offsets are stored only after that, so no batch is ever skipped. Meanwhile every
assigned partition is paused, so nothing more is fetched, and the consumer keeps polling,
so it keeps its place in the group (heartbeats, `max.poll.interval.ms`, rebalances). A
partition revoked during the wait is dropped from the batch in hand (its new owner
projects it); one assigned is paused too, and if Redis could not say where it must
start, it is held until Redis answers. The cached views are forgotten after each failure
(a write may have half-landed), so they are reloaded from what Redis holds. `stop`
interrupts the wait within about CHATLOG_REDIS_TIMEOUT_S: the unfinished batch's
offsets are not stored, so it is projected again after the restart.

A rebuild of a lost read-model (`chatlog.processors.projector_generations`) is waited
out the same way, paused and polling, with what was fetched before it read again after.

The embedder (`chatlog.processors.kafka_embedder`) rides out its own faults the same way:
the recall index's Redis, and an embeddings endpoint that fails or times out (`retried`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence, Set
from typing import Protocol, TypeVar

from confluent_kafka import Consumer, Message

from chatlog.processors.projection import Record
from chatlog.schemas.errors import DeliveryFailed, Interrupted, StoreUnavailable

__all__ = ["OutageStats", "Outages"]

T = TypeVar("T")

# Retries of a failing Redis or dead-letter write: soon after a blip, and no more than
# one attempt every few seconds during a long outage.
_FIRST_RETRY_S = 0.1
_MAX_RETRY_S = 5.0
# How often a paused projector polls the consumer (serving the group) and looks at `stop`.
_WAIT_POLL_S = 0.1

log = logging.getLogger("chatlog.projector")


class OutageStats(Protocol):
    """What an outage counts (`ProjectorStats`, `EmbedderStats`)."""

    outages: int  # times a dependency started to fail
    retries: int  # failed attempts in all
    redis_errors: int  # of which Redis's

    def beat(self) -> None:
        """The loop turned (liveness)."""
        ...


class Outages:
    """Retries the projector's steps while Redis or the dead-letter topic fails, and
    keeps consumption paused meanwhile.

    It pauses and resumes the projector's `consumer`, and polls it while paused;
    `record_of` reads what a poll returns. `unstarted` gives the partitions that stay
    paused when consumption resumes (their start is not known yet); `forget` drops the
    cached views; `stopping` says when to give up waiting. `retried` are the errors that
    mean a dependency is failing (Redis's and the dead-letter topic's by default); the
    warnings go to `logger`.
    """

    def __init__(
        self,
        consumer: Consumer,
        stats: OutageStats,
        *,
        topic: str,
        record_of: Callable[[Message], Record | None],
        unstarted: Callable[[], Set[int]],
        forget: Callable[[], None],
        stopping: Callable[[], bool],
        retried: tuple[type[Exception], ...] = (StoreUnavailable, DeliveryFailed),
        logger: logging.Logger = log,
    ) -> None:
        self._retried = retried
        self._log = logger
        self._consumer = consumer
        self._stats = stats
        self._topic = topic
        self._record_of = record_of
        self._unstarted = unstarted
        self._forget = forget
        self._stopping = stopping
        self._failing_since: float | None = None
        # Records fetched while paused, kept for the batch in hand (see `_wait`).
        self._held: list[Record] = []

    @property
    def failing(self) -> bool:
        """Whether Redis or the dead-letter topic is failing (consumption is paused)."""
        return self._failing_since is not None

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt()`, retried with backoff while Redis or the dead-letter topic fails;
        consumption stays paused from the first failure until an attempt succeeds."""
        delay = _FIRST_RETRY_S
        while True:
            try:
                value = attempt()
            except self._retried as exc:
                # A failed pipeline may have landed in part: reload views from Redis
                # rather than trust a cache that may not match what it holds.
                self._forget()
                self.failed(what, exc)
                self._wait(delay)
                delay = min(delay * 2, _MAX_RETRY_S)
                continue
            self._recovered()
            return value

    def failed(self, what: str, exc: Exception) -> None:
        """Count a failed attempt; the first of an outage pauses consumption."""
        self._stats.retries += 1
        if isinstance(exc, StoreUnavailable):
            self._stats.redis_errors += 1
        if self._failing_since is not None:
            self._log.debug("%s failed again: %s", what, exc)
            return
        self._failing_since = time.monotonic()
        self._stats.outages += 1
        self._log.warning(
            "%s failed (%s); consumption paused, retrying every %g-%g s until it works",
            what,
            exc,
            _FIRST_RETRY_S,
            _MAX_RETRY_S,
        )
        self._consumer.pause(self._consumer.assignment())

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        self._log.warning(
            "working again after %.1f s (%d failed attempts since start); consumption resumed",
            time.monotonic() - self._failing_since,
            self._stats.retries,
        )
        self._failing_since = None
        self._resume()

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds` while serving the group; `Interrupted` once `stop` is set."""
        deadline = time.monotonic() + seconds
        while not self._stopping():
            self._stats.beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Polling keeps the membership (heartbeats, max.poll.interval.ms) and runs
            # the rebalance callbacks; the partitions are paused, so nothing is fetched.
            message = self._consumer.poll(min(remaining, _WAIT_POLL_S))
            record = None if message is None else self._record_of(message)
            if record is not None:
                # Fetched just before the pause: the consumer's position is past it
                # now, so dropping it would skip it.
                self._held.append(record)
        raise Interrupted(f"stopped while retrying a step of the consumer of {self._topic}")

    def take_held(self) -> list[Record]:
        """The records fetched just before a pause, for the batch in hand."""
        held, self._held = self._held, []
        return held

    def batch(self, messages: Sequence[Message]) -> list[Record]:
        """The batch in hand: the records held from before a pause, then `messages`'."""
        records = self.take_held()
        records += [r for r in (self._record_of(m) for m in messages) if r is not None]
        return records

    def in_hand(self, records: list[Record], assigned: Set[int]) -> None:
        """Bring the batch `records` up to date for another attempt at it: with what was
        fetched just before a pause since, without the partitions no longer `assigned`
        (revoked during an outage: another member's now)."""
        records.extend(self.take_held())
        records[:] = [r for r in records if r.partition in assigned]

    def drop_held(self) -> None:
        """Forget the records fetched before a pause: a seek is about to read them again."""
        self._held.clear()

    def paused_while(
        self, task: Callable[[threading.Event], T], *, what: str, thread_name: str
    ) -> T:
        """`task(stop)`, run in a thread while consumption is paused and the group is
        served; `Interrupted` (and `stop` set) once the projector is stopped.

        What was fetched is dropped: the caller seeks to where reading goes on after."""
        self.drop_held()
        self._consumer.pause(self._consumer.assignment())
        stop = threading.Event()
        done: list[T] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                done.append(task(stop))
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=run, name=thread_name, daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                if self._stopping():
                    stop.set()
                    thread.join(30)
                    raise Interrupted(f"stopped while {what}")
                self._consumer.poll(_WAIT_POLL_S)  # the group; fetched records are read again
                self._stats.beat()
                thread.join(0)
        finally:
            self._resume()
        if failed:
            raise failed[0]
        return done[0]

    def _resume(self) -> None:
        self._consumer.resume(
            [tp for tp in self._consumer.assignment() if tp.partition not in self._unstarted()]
        )
