"""The embedder process: consume `chatlog.events`, embed every turn, write the recall index.

It is a member of a consumer group of its own (``chatlog-embedder``), built as the
projector's is (`GroupMembership`: static membership, cooperative-sticky). Its loop, per
batch:

1. consume up to `batch_size` records;
2. `RecallIndexing.plan` opens them with their owners' keys and embeds every user and
   assistant turn in one call to the model (`chatlog.processors.recall_indexing`);
3. `RedisRecallWriter.apply` writes the work to the live generation's recall index: the
   erased sessions' vectors deleted, then turns, redactions and the progress marks in
   one atomic call;
4. only then are the batch's offsets stored for the next commit.

A crash before step 4 indexes the batch again, which changes nothing (a document is
keyed by session and message id). Where does a partition start? After its progress mark
in the index (the index says what it holds; the group's committed offsets serve to tell
a lost index from a fresh one when the embedder starts).

Faults: an embeddings endpoint that fails or times out (after the embedder's own
retries, or while its circuit is open) and a recall Redis that does not answer pause
consumption, keeping the place in the group, and the same batch is tried again with
backoff (`Outages`, the projector's); nothing is skipped or committed meanwhile, the
outage is logged once when it starts and once when it ends, and counted. The projector
and the summarizer are separate processes: windows and summaries are not held up.

Generations: about once a second the embedder reads the read-model's pointer. When a
replay has flipped it, it moves to the new generation's recall index and reads each
partition again from after that index's marks (a replay that built the index leaves
little to do; one that did not leaves an empty index, filled from offset 0). A lost
index stops it with `DataLoss` naming `chatlog replay`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from chatlog.processors.embedder_stats import EmbedderStats
from chatlog.processors.embeddings import Embedder, ResilientEmbedder
from chatlog.processors.kafka_consumer import poll_batch
from chatlog.processors.kafka_projector import after_mark
from chatlog.processors.measures import Histogram
from chatlog.processors.projector_membership import GroupMembership
from chatlog.processors.projector_outages import Outages
from chatlog.processors.projector_stats import LIVENESS_BOUND_S, lag_problem
from chatlog.processors.recall_indexing import IndexWork, RecallIndexing
from chatlog.processors.redis_recall_writer import Applied, RedisRecallWriter
from chatlog.producers.kafka_topics import topic_partitions
from chatlog.projections.opening import EventOpener
from chatlog.projections.redis_vectors import IndexState
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import (
    BrokerUnavailable,
    DataLoss,
    EmbedderUnavailable,
    Interrupted,
    RetryableEmbeddingError,
    StoreUnavailable,
)

__all__ = ["KafkaEmbedder"]

log = logging.getLogger("chatlog.embedder")

# The faults waited out, consumption paused: the recall Redis (or the key directory's)
# not answering, the embeddings endpoint failing after its retries or its circuit open.
_RETRIED = (StoreUnavailable, RetryableEmbeddingError, EmbedderUnavailable)
_COMMITTED_TIMEOUT_S = 30.0
_COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


class _Timed:
    """An embedder whose answered calls (one per batch of records) are timed into
    `histogram`."""

    def __init__(self, inner: Embedder, histogram: Histogram) -> None:
        self.inner = inner
        self.histogram = histogram

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        started = time.monotonic()
        vectors = self.inner.embed(texts)
        self.histogram.observe(time.monotonic() - started)
        return vectors

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        started = time.monotonic()
        vectors = await self.inner.aembed(texts)
        self.histogram.observe(time.monotonic() - started)
        return vectors


class KafkaEmbedder:
    """Runs `RecallIndexing` as a member of a Kafka consumer group, into `writer`."""

    def __init__(
        self,
        embedder: ResilientEmbedder,
        writer: RedisRecallWriter,
        *,
        codec: EventCodec,
        opener: EventOpener | None,
        bootstrap_servers: str,
        topic: str,
        group_id: str = "chatlog-embedder",
        instance_id: str | None = None,
        session_timeout_s: float = 10.0,
        config: Mapping[str, Any] | None = None,
        batch_size: int = 1000,
        poll_timeout: float = 0.05,
        check_s: float = 1.0,
        lag_every_s: float | None = None,
        liveness_bound_s: float = LIVENESS_BOUND_S,
    ) -> None:
        self.embedder = embedder
        self.writer = writer
        self.stats = EmbedderStats()
        self.indexing = RecallIndexing(
            _Timed(embedder, self.stats.embed_seconds), codec=codec, opener=opener
        )
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.check_s = check_s
        self.lag_every_s = lag_every_s
        self.liveness_bound_s = liveness_bound_s
        self.assigned: set[int] = set()
        self.lost: DataLoss | None = None  # the recall index was found lost
        # The offset each assigned partition is indexed from next, where known (lag).
        self._next: dict[int, int] = {}
        # Assigned while Redis could not say where they start: held paused till it can.
        self._unstarted: set[int] = set()
        self._reseek = False  # a move to another generation not finished yet
        self._checked_at = time.monotonic()
        self._stop = threading.Event()
        self._closed = False
        self._membership = GroupMembership(
            group_id=group_id,
            instance_id=instance_id,
            session_timeout_s=session_timeout_s,
            member="embedder",
        )
        self._consumer = self._membership.consumer(bootstrap_servers, dict(config or {}))
        self._outages = Outages(
            self._consumer,
            self.stats,
            topic=topic,
            record_of=functools.partial(self._membership.record_of, topic=topic),
            unstarted=lambda: self._unstarted,
            forget=lambda: None,  # nothing cached: the index is read afresh
            stopping=lambda: self._stop.is_set(),  # noqa: PLW0108 - `run` replaces _stop
            retried=_RETRIED,
            logger=log,
        )

    @property
    def generation(self) -> str | None:
        """The generation whose recall index is written; None before `open`."""
        return self.writer.generation

    def open(self) -> IndexState:
        """Check the live generation's recall index before joining the group, against
        the offsets the group committed: created if fresh; `DataLoss` if it was lost,
        `EmbeddingModelMismatch` if another model built it."""
        count = topic_partitions(
            self._consumer, self.topic, bootstrap_servers=self.bootstrap_servers
        )
        committed = self._committed([TopicPartition(self.topic, p) for p in range(count)])
        try:
            return self.writer.open(committed)
        except DataLoss as exc:
            self._found_lost(exc)
            raise

    def _committed(self, owned: list[TopicPartition]) -> dict[int, int]:
        """The group's committed offsets (partition -> next offset), asked again while
        the group's coordinator is not ready (a new group, a broker just started)."""
        deadline = time.monotonic() + _COMMITTED_TIMEOUT_S
        while True:
            try:
                answer = self._consumer.committed(owned, timeout=_COMMITTED_TIMEOUT_S)
            except KafkaException as exc:
                error = exc.args[0]
                loading = isinstance(error, KafkaError) and error.code() in _COORDINATOR_NOT_READY
                if not loading or time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"Kafka did not say what group {self.group_id} has committed: {error}"
                    ) from exc
                time.sleep(0.2)
                continue
            return {tp.partition: int(tp.offset) for tp in answer if tp.offset >= 0}

    def run(self, *, stop: threading.Event | None = None, report_every_s: float = 10.0) -> None:
        """Index until `stop` is set; then commit and close (see `close`)."""
        stop = stop or threading.Event()
        self._stop = stop
        try:
            if self.writer.index is None:
                self.open()
            self._consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._membership.serve(self.step, stop, stats=self.stats, every_s=report_every_s)
        finally:
            self.close()

    def step(self) -> int:
        """Consume, embed and index one batch, riding out faults; the records finished."""
        self.stats.beat()
        try:
            return self._step()
        except Interrupted:
            # The batch's offsets stay unstored: it is indexed again after the restart.
            log.info("stopping while retrying; the unfinished batch is left for the restart")
            return 0
        except DataLoss as exc:
            self._found_lost(exc)
            raise

    def _step(self) -> int:
        self._outages.retrying("reading the live generation and its recall index", self._prepare)
        messages = poll_batch(self._consumer, self.batch_size, self.poll_timeout)
        self._measure_lag()
        records = self._outages.batch(messages)
        if not records:
            return 0
        started = time.monotonic()
        # The batch's work, planned once for the records still in hand: a retry after a
        # failed write (the recall Redis down) does not embed the batch again, which an
        # endpoint model would bill each time.
        planned: dict[tuple[tuple[int, int], ...], IndexWork] = {}

        def index() -> tuple[int, Mapping[int, int], Applied]:
            self._outages.in_hand(records, self.assigned)
            held = tuple((r.partition, r.offset) for r in records)
            if held not in planned:
                planned.clear()
                planned[held] = self.indexing.plan(records, owners=self.writer.owners)
            work = planned[held]
            applied = self.writer.apply(work)
            self.stats.add(
                work,
                written=applied.written,
                refused=applied.refused,
                deleted=applied.deleted,
                erased=applied.erased,
                seconds=time.monotonic() - started,
                foreign=work.foreign + applied.foreign,
            )
            return work.records, work.marks, applied

        finished, marks, _ = self._outages.retrying(
            "embedding a batch into the recall index", index
        )
        self._membership.store_offsets(self._consumer, self.topic, marks, self.assigned)
        self._next.update({p: o + 1 for p, o in marks.items() if p in self.assigned})
        return finished

    def _prepare(self) -> None:
        """About once a second, follow a flip of the live generation and check that the
        index is whole; start the partitions held while Redis could not say where."""
        now = time.monotonic()
        if now - self._checked_at >= self.check_s:
            live = self.writer.live()
            if live != self.writer.generation:
                log.info(
                    "generation %s is live now (was %s): indexing into its recall index "
                    "from its progress marks",
                    live,
                    self.writer.generation,
                )
                # Set first: a Redis failure from here on leaves the move to the retry.
                self._reseek = True
                self.writer.use(live)
            else:
                self.writer.check()
            self._checked_at = now
        if self._reseek:
            # Continue where the new generation's index is, not where this embedder
            # was: what was fetched from the old position is read again.
            self._outages.drop_held()
            self._reposition(sorted(self.assigned))
            self._reseek = False
            return
        held = sorted(self._unstarted & self.assigned)
        if held:
            self._reposition(held)
            log.info("held partitions %s started", held)

    def _reposition(self, partitions: list[int]) -> None:
        """Read `partitions` from after their marks in the index written to. Assigning
        again is how a start is set whether or not the partition is being fetched."""
        if not partitions:
            return
        marks = self.writer.marks()
        starts = [TopicPartition(self.topic, p, after_mark(marks.get(p, -1))) for p in partitions]
        self._consumer.incremental_unassign(starts)
        self._assign(starts)
        self._unstarted -= set(partitions)

    def _assign(self, starts: list[TopicPartition]) -> None:
        self._membership.assign(
            self._consumer, starts, next_offsets=self._next, paused=self._outages.failing
        )

    def _measure_lag(self) -> None:
        """Each assigned partition's lag: its end, as the last fetch saw it, minus the
        offset indexed next (its first offset when reading from the beginning)."""
        now = time.monotonic()
        if self.lag_every_s is None or now - self.stats.lag_at < self.lag_every_s:
            return
        lag = {}
        try:
            for partition in sorted(self.assigned):
                tp = TopicPartition(self.topic, partition)
                low, end = self._consumer.get_watermark_offsets(tp, cached=True)
                if end >= 0:  # nothing fetched yet: unknown, not zero
                    lag[partition] = max(0, end - self._next.get(partition, low))
        except KafkaException as exc:
            log.debug("lag not measured: %s", exc)
        self.stats.lag = lag  # replaced whole: the metrics thread reads it
        self.stats.lag_at = now

    def liveness(self) -> str | None:
        """Why this embedder is not alive (its loop stopped turning); None if it is."""
        if self.stats.alive(time.monotonic(), bound_s=self.liveness_bound_s):
            return None
        return f"the embedder's loop has not turned for {self.liveness_bound_s:g} s"

    def readiness(self, max_lag: int) -> str | None:
        """Why this embedder is not ready; None when it is: partitions assigned, each
        within `max_lag` records of its end, the endpoint and the recall Redis working."""
        assigned, lag = set(self.assigned), dict(self.stats.lag)
        if self.lost is not None:
            return "the recall index was lost: rebuild it with `chatlog replay`"
        if self._outages.failing:
            return (
                "the embeddings endpoint or the recall index's Redis is failing; "
                "consumption is paused"
            )
        return lag_problem(assigned, lag, max_lag, unit="records")

    def close(self, *, timeout: float = 15.0) -> bool:
        """Commit what was stored and close the consumer, within `timeout` seconds;
        False if it did not close in time (the next owner indexes the uncommitted tail
        again, which changes nothing). Closing again does nothing."""
        if self._closed:
            return True
        self._closed = True
        return self._membership.close(self._consumer, timeout=timeout)

    def _found_lost(self, exc: DataLoss) -> None:
        if self.lost is None:
            self.stats.index_lost += 1
        self.lost = exc

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {tp.partition for tp in partitions}
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))
        if not partitions:
            return
        try:
            marks = self.writer.marks()
        except StoreUnavailable as exc:
            # Held, paused, until Redis says where they start (`_prepare`).
            self._unstarted |= {tp.partition for tp in partitions}
            self._outages.failed("reading the recall index's progress marks", exc)
            self._assign(partitions)
            return
        self._assign(
            [
                TopicPartition(self.topic, tp.partition, after_mark(marks.get(tp.partition, -1)))
                for tp in partitions
            ]
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop(partitions)
        self._membership.commit_revoked(consumer)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._membership.session_expired(partitions)
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.discard(tp.partition)
            self._unstarted.discard(tp.partition)
            self._next.pop(tp.partition, None)
