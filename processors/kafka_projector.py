"""The projector process: consume `chatlog.events`, project into Redis, commit.

It is a plain confluent-kafka consumer group member (not faust: the projection path
needs exact offset control). Its loop, per batch:

1. consume up to `batch_size` records (a small live batch held a moment for more:
   `projector_coalescing`);
2. `ProjectionCore.handle` folds them into the view store (one atomic, idempotent write
   per session);
3. dead letters are produced to the DLQ topic and acknowledged;
4. only then are the batch's offsets stored for the next commit.

A crash anywhere before step 4 replays the batch, which changes nothing (writes are
idempotent and dead letters may repeat, never vanish). On a rebalance the cached views
of moved partitions are dropped and stored offsets are committed before partitions go.
SIGTERM or SIGINT (through `stop`) finishes the current batch and commits.

The rest is told beside its code:

- `projector_outages`: a fault of Redis or of the dead-letter topic does not end the
  process; the step is retried, consumption paused, the place in the group kept.
- `projector_membership`: failover, as a static member of the group; what being fenced
  means.
- `projector_generations`: following the live generation when a replay flips it; lost
  data found, then a stop or a rebuild.
- `kafka_keys_tick`: ticks on the keys topic, so that an erased user's key leaves the
  disks in bounded time even when nothing else is written there.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    TopicPartition,
)

from chatlog.processors.kafka_consumer import poll_batch
from chatlog.processors.kafka_dead_letters import KafkaDeadLetters
from chatlog.processors.kafka_keys_tick import KafkaKeysTicker
from chatlog.processors.projection import BatchResult, ProjectionCore
from chatlog.processors.projector_coalescing import Coalescing
from chatlog.processors.projector_generations import (
    GenerationPointer,
    GenerationWatch,
    OnDataLoss,
    Rebuild,
)
from chatlog.processors.projector_membership import GroupMembership
from chatlog.processors.projector_outages import Outages
from chatlog.processors.projector_stats import LIVENESS_BOUND_S, ProjectorStats, lag_problem
from chatlog.projections.store import ViewStore
from chatlog.schemas.errors import DataLoss, Interrupted, StoreUnavailable

__all__ = [
    "DataLoss",
    "GenerationPointer",
    "KafkaProjector",
    "ProjectorStats",
    "after_mark",
    "tune_garbage_collector",
]

log = logging.getLogger("chatlog.projector")

# The broker's answer about a partition's start, wanted once per assignment for its lag.
_LAG_QUERY_TIMEOUT_S = 2.0


class KafkaProjector:
    """Runs a `ProjectionCore` as a member of a Kafka consumer group."""

    def __init__(
        self,
        core: ProjectionCore,
        *,
        bootstrap_servers: str,
        topic: str,
        dlq_topic: str,
        group_id: str = "chatlog-projector",
        instance_id: str | None = None,
        session_timeout_s: float = 10.0,
        config: Mapping[str, Any] | None = None,
        batch_size: int = 5000,
        poll_timeout: float = 0.05,
        max_hold_s: float = 0.002,
        generations: GenerationPointer | None = None,
        generation: str | None = None,
        store_for: Callable[[str], ViewStore] | None = None,
        on_data_loss: OnDataLoss = "stop",
        rebuild: Rebuild | None = None,
        generation_check_s: float = 1.0,
        keys_ticker: KafkaKeysTicker | None = None,
        lag_every_s: float | None = None,
    ) -> None:
        if generations is not None and store_for is None:
            raise ValueError("watching generations needs store_for")
        if on_data_loss == "rebuild" and generations is not None and rebuild is None:
            raise ValueError('on_data_loss="rebuild" needs rebuild')
        self.core = core
        self._seeks: dict[int, int] = {}
        self.topic = topic
        self.group_id = group_id
        self.instance_id = instance_id
        self.session_timeout_s = session_timeout_s
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        # Live batches held a little for the records on their way (`Coalescing`).
        self._coalescing = Coalescing(max_hold_s=max_hold_s)
        self.stats = ProjectorStats()
        self.assigned: set[int] = set()
        # How often the lag is measured (for metrics and readiness); None: never.
        self.lag_every_s = lag_every_s
        # The offset each assigned partition is projected from next, where known (lag).
        self._next: dict[int, int] = {}
        # Assigned while Redis could not say where to start them: held paused till it can.
        self._unstarted: set[int] = set()
        self._reseek = False
        self._stop = threading.Event()
        extra = dict(config or {})
        self._membership = GroupMembership(
            group_id=group_id, instance_id=instance_id, session_timeout_s=session_timeout_s
        )
        self._consumer = self._membership.consumer(bootstrap_servers, extra)
        self._dlq = KafkaDeadLetters(bootstrap_servers, dlq_topic, config=extra)
        self.keys_ticker = keys_ticker
        self._outages = Outages(
            self._consumer,
            self.stats,
            topic=topic,
            record_of=functools.partial(self._membership.record_of, topic=topic),
            unstarted=lambda: self._unstarted,
            forget=core.forget,
            stopping=lambda: self._stop.is_set(),  # noqa: PLW0108 - `run` replaces _stop
        )
        self._generations = GenerationWatch(
            core,
            generations,
            generation=generation,
            store_for=store_for,
            on_data_loss=on_data_loss,
            rebuild=rebuild,
            check_s=generation_check_s,
            outages=self._outages,
            reposition=self._resume_from_marks,
        )

    @property
    def generations(self) -> GenerationPointer | None:
        """The pointer to the live generation, if the projector follows it."""
        return self._generations.pointer

    @property
    def generation(self) -> str | None:
        """The generation projected into; None until one is known."""
        return self._generations.generation

    @property
    def on_data_loss(self) -> OnDataLoss:
        """What the projector does when Redis has lost data: stop, or rebuild."""
        return self._generations.on_data_loss

    def run(self, *, stop: threading.Event | None = None, report_every_s: float = 10.0) -> None:
        """Project until `stop` is set; then commit and close (see `close`)."""
        stop = stop or threading.Event()
        self._stop = stop
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        if self.keys_ticker is not None:
            self.keys_ticker.start(stop)  # ends with `stop`; `close` waits for it
        try:
            self._membership.serve(self.step, stop, stats=self.stats, every_s=report_every_s)
        finally:
            self.close()

    def step(self) -> BatchResult:
        """Consume and project one batch, riding out Redis and dead-letter faults."""
        self.stats.beat()
        try:
            try:
                return self._step()
            except DataLoss as exc:
                self.stats.data_losses += 1
                self._generations.data_lost(exc)
                return BatchResult()
        except Interrupted:
            # Stopped while retrying: the batch's offsets stay unstored, so whoever owns
            # its partitions next projects it again, which changes nothing done already.
            log.info("stopping while retrying; the unfinished batch is left for a replay")
            return BatchResult()

    def _step(self) -> BatchResult:
        if self._generations.loss is not None:
            raise self._generations.loss
        # One step, so that Redis counts as back only once both work: the generation
        # check alone may not touch Redis at all (no generation known yet).
        self._outages.retrying("reading the live generation and progress marks", self._prepare)
        messages = poll_batch(
            self._consumer, self.batch_size, self.poll_timeout, coalescing=self._coalescing
        )
        self._measure_lag()
        records = self._outages.batch(messages)
        if not records:
            return BatchResult()
        started = time.monotonic()

        def project() -> BatchResult:
            self._outages.in_hand(records, self.assigned)
            return self.core.handle(records)

        result = self._outages.retrying("projecting a batch into Redis", project)
        self._outages.retrying(
            "writing dead letters", lambda: self._dlq.write(result.dead_letters, stop=self._stop)
        )
        self._membership.store_offsets(
            self._consumer, self.topic, result.last_offsets, self.assigned
        )
        self._next.update({p: o + 1 for p, o in result.last_offsets.items() if p in self.assigned})
        self.stats.add(
            result,
            records=len(records),
            seconds=time.monotonic() - started,
            now_ms=time.time_ns() // 1_000_000,
        )
        return result

    def _measure_lag(self) -> None:
        """Each assigned partition's lag: its end, as the last fetch saw it (no request to
        the broker), minus the offset projected next (`_next`)."""
        now = time.monotonic()
        if self.lag_every_s is None or now - self.stats.lag_at < self.lag_every_s:
            return
        lag = {}
        try:
            unknown = sorted(self.assigned - set(self._next))
            if unknown:
                self._next.update(self._first_offsets(unknown))
            for partition in sorted(self.assigned):
                tp = TopicPartition(self.topic, partition)
                _, end = self._consumer.get_watermark_offsets(tp, cached=True)
                # Nothing fetched yet (just assigned): unknown, not zero; readiness waits.
                if end >= 0 and partition in self._next:
                    lag[partition] = max(0, end - self._next[partition])
        except KafkaException as exc:
            log.debug("lag not measured: %s", exc)
            self.stats.lag_at = now  # not again at once: the loop has a batch to project
            return
        self.stats.lag = lag  # replaced whole: the metrics thread reads it
        self.stats.lag_at = now

    def _first_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Where partitions assigned with no known start are read from: the group's
        committed offsets, else their first offsets (a new group reads from the
        beginning). Asked of the broker once per assignment, in one request."""
        owned = [TopicPartition(self.topic, p) for p in partitions]
        starts = {}
        for tp in self._consumer.committed(owned, timeout=_LAG_QUERY_TIMEOUT_S):
            if tp.offset >= 0:
                starts[tp.partition] = int(tp.offset)
            else:
                low, _ = self._consumer.get_watermark_offsets(tp, timeout=_LAG_QUERY_TIMEOUT_S)
                starts[tp.partition] = int(low)
        return starts

    def liveness(self) -> str | None:
        """Why this projector is not alive (its loop stopped turning); None if it is."""
        if self.stats.alive(time.monotonic()):
            return None
        return f"the projector's loop has not turned for {LIVENESS_BOUND_S:g} s"

    def readiness(self, max_lag: int) -> str | None:
        """Why this projector is not ready to be relied on; None when it is: partitions
        assigned, each within `max_lag` events of its end, Redis and the dead-letter
        topic working. Called from the health server's thread: it only reads."""
        assigned, lag = set(self.assigned), dict(self.stats.lag)
        if self._generations.loss is not None:
            return "the read-model has lost data"
        if self._outages.failing:
            return "Redis or the dead-letter topic is failing; consumption is paused"
        return lag_problem(assigned, lag, max_lag)

    def _prepare(self) -> None:
        if self._generations.watching:
            if self._reseek:  # a switch whose marks Redis failed to give
                self._resume_from_marks()
            self._seek_pending()
            self._generations.watch()
        self._start_held()

    def _start_held(self) -> None:
        """Start the partitions assigned while Redis could not say where (see `_on_assign`)."""
        held = [TopicPartition(self.topic, p) for p in sorted(self._unstarted & self.assigned)]
        self._unstarted.clear()
        if not held:
            return
        try:
            starts = self._starts(self._consumer, held)
        except StoreUnavailable:
            self._unstarted.update(tp.partition for tp in held)
            raise
        # Assigning again is how a start is set before fetching begins (as on assign).
        self._consumer.incremental_unassign(held)
        self._assign(self._consumer, starts)
        log.info("held partitions %s started", [tp.partition for tp in starts])

    def _assign(self, consumer: Consumer, starts: list[TopicPartition]) -> None:
        """Add `starts` to the assignment (`GroupMembership.assign`), paused while Redis
        is failing."""
        self._membership.assign(
            consumer, starts, next_offsets=self._next, paused=self._outages.failing
        )

    def close(self, *, timeout: float = 15.0) -> bool:
        """Commit what was stored and close the consumer, within `timeout` seconds.

        With an `instance_id` the projector stays a member of the group until its session
        times out, so that a restart gets the same partitions back at once.

        Returns False if the consumer did not close in time. That is safe to walk away
        from: every write is idempotent, so the uncommitted tail is replayed by the next
        owner of the partitions and changes nothing.
        """
        ticker = self.keys_ticker
        closed = self._membership.close(
            self._consumer,
            timeout=timeout,
            # While the consumer closes, within its bound.
            meanwhile=None if ticker is None else ticker.close,
        )
        self._dlq.close(10)
        return closed

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {tp.partition for tp in partitions}
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))
        if not partitions:
            return
        starts = partitions
        if self.generations is not None:
            # Start where the committed offsets say, unless the store lacks what they
            # promise; assigning here, before fetching starts, is how the start is set.
            try:
                starts = self._starts(consumer, partitions)
            except StoreUnavailable as exc:
                # Without the marks the start is unknown: hold them, paused, until
                # Redis answers (`_start_held`, from the loop).
                self._unstarted |= {tp.partition for tp in partitions}
                self._outages.failed("reading the progress marks", exc)
                log.info(
                    "partitions %s held, paused, until Redis says where they start",
                    sorted(tp.partition for tp in partitions),
                )
            except DataLoss as exc:
                # Not here: a rebuild takes long, and stopping is best done from the loop.
                # Held until the read-model is whole again (`_start_held`).
                self._unstarted |= {tp.partition for tp in partitions}
                self._generations.loss = exc
        self._assign(consumer, starts)

    def _starts(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        committed = consumer.committed(partitions, timeout=30)
        if self.generations is not None:
            self._generations.check_start({tp.partition: tp.offset for tp in committed})
        marks = self.core.store.progress()
        # Never committed: a new group, or a generation built by replay: after the mark.
        return [
            TopicPartition(
                self.topic,
                tp.partition,
                tp.offset if tp.offset >= 0 else after_mark(marks.get(tp.partition, -1)),
            )
            for tp in committed
        ]

    def _resume_from_marks(self) -> None:
        """Drop the cached views and read each assigned partition from after its mark."""
        self.core.forget()
        self._outages.drop_held()  # fetched from the old position: the seek reads them again
        self._reseek = True
        marks = self.core.store.progress()
        self._seeks = {p: after_mark(marks.get(p, -1)) for p in self.assigned}
        self._next = {p: o for p, o in self._seeks.items() if o >= 0}
        self._reseek = False
        self._seek_pending()

    def _seek_pending(self) -> None:
        for partition, offset in list(self._seeks.items()):
            try:
                self._consumer.seek(TopicPartition(self.topic, partition, offset))
            except KafkaException as exc:
                # Not fetching yet (just assigned): try again before the next batch.
                log.debug("seek %d to %d deferred: %s", partition, offset, exc)
                continue
            del self._seeks[partition]

    # Cooperative-sticky: `partitions` is only what is added or taken away, never the
    # whole assignment. The client applies the delta itself (incremental_assign and
    # incremental_unassign) unless a callback did.

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop(partitions)
        self._membership.commit_revoked(consumer)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._membership.session_expired(partitions)
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        self.assigned -= {tp.partition for tp in partitions}
        self._unstarted -= {tp.partition for tp in partitions}
        for tp in partitions:
            self._seeks.pop(tp.partition, None)
            self._next.pop(tp.partition, None)
        # The new owner may write these sessions: our cached views of them go stale.
        self.core.forget()


def after_mark(mark: int) -> int:
    """Where to read a partition from once it is projected up to `mark` (-1: nothing)."""
    return mark + 1 if mark >= 0 else OFFSET_BEGINNING


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector from pausing the projection for long.

    For a process whose main job is projecting (`chatlog run projector`); it changes
    process-wide state, so a library embedding the projector decides for itself.

    The projector holds many long-lived, acyclic objects (cached views and their
    messages) and allocates quickly, so with the default thresholds every few thousand
    events a full collection walks the whole cache: pauses of 100-200 ms, seen as
    publish-to-visible tail latency. Start-up objects are frozen out of collection, and
    young collections run less often; reference counting still frees nearly everything.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
