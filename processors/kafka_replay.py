"""Replay: rebuild the read-model from offset 0 into a new generation, then flip to it.

What does a replay do, in order?

1. **Rebuild.** It reads every partition of the events topic from its start (or, when
   resuming, from where the interrupted run's progress marks say) up to the end offsets
   it saw when it started, and folds the records into a generation nobody reads yet.
   It runs the projector's own `ProjectionCore`, with batches large enough that a
   session's events are folded in memory and written once per batch.
   It reads **one partition at a time**: a session's events all sit in one partition,
   so the views a partition needs are cached only while it is read, and dropped once it
   is done. Memory stays bounded by one partition's active sessions (and the core's
   bounded cache of views), a batch, and librdkafka's capped queue, whatever the number
   of partitions; and the batches of one partition hold more events per session than
   batches mixed from every partition, so fewer writes. The next partition is fetched
   before the current one ends, once at most `READ_AHEAD_RECORDS` of it are left: a
   partition assigned only after the last one was done waited for its first fetch, 0.2
   to 0.6 s each (the broker holds the previous fetch up to `fetch.wait.max.ms`), which
   left a replay of 30,000 events over six partitions idle a third of the time. Not
   earlier: two partitions read side by side hold both partitions' growing views (with
   the next partition assigned from the start, 500,000 events peaked at 390 MB against
   260 MB), while the views of a partition's first records are small.
2. **Catch up.** It keeps reading new records until, on every partition, the new
   generation has projected at least as far as the live projector has in the live one.
3. **Flip.** It moves the pointer to the new generation with a compare-and-set, so
   readers switch in one step and never see a half-built generation.
4. **Hand over.** It keeps projecting for `handover_s` more seconds, long enough for the
   live projector to notice the flip (it checks every second) and continue in the new
   generation from that generation's progress marks.
5. **Clean up.** It deletes the old generation with UNLINK in batches.

With semantic recall on, each batch is also indexed into the new generation's recall
index (`chatlog.processors.replay_recall`), so the flip moves both at once.

Interrupted anywhere before step 3, the live generation is untouched; running it again
resumes from the new generation's progress marks (the lower of the read-model's and the
recall index's, each skipping what it has). The verify mode stops after step 1,
compares the rebuilt generation with the live one, and deletes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from chatlog.processors.kafka_consumer import groupless_consumer, record_of
from chatlog.processors.projection import ProjectionCore
from chatlog.processors.replay_recall import RecallSink
from chatlog.producers.kafka_topics import topic_partitions
from chatlog.projections.store import ViewStore
from chatlog.schemas.errors import Interrupted

__all__ = [
    "READ_AHEAD_RECORDS",
    "REPLAY_BATCH",
    "REPLAY_FETCH",
    "REPLAY_QUEUE",
    "Interrupted",
    "KafkaReplay",
    "ReplayProgress",
]

log = logging.getLogger("chatlog.replay")

# Fetches far larger than librdkafka's defaults: a replay reads whole partitions at once.
REPLAY_FETCH = {"fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 8 * 1024 * 1024}
# What librdkafka prefetches ahead of the replay, far below its defaults (100,000 records
# and 64 MB a partition): the replay folds 20,000 to 60,000 records a second, so 8 MB
# (about 30,000 records) keeps it fed, and its defaults held 100 MB more (measured with
# one partition assigned; `bench/README.md`).
# That queue is the consumer's one, shared by the partitions assigned: reading ahead adds
# no memory to it. A partition's fetch that has reached its end waits at the broker for
# new records up to `fetch.wait.max.ms` (librdkafka's default 500 ms), and a partition
# assigned meanwhile joins only the next fetch: 50 ms keeps that short while a replay
# moves on, for one fetch request every 50 ms when it has read everything.
REPLAY_QUEUE = {
    "queued.min.messages": 10_000,
    "queued.max.messages.kbytes": 8 * 1024,
    "fetch.wait.max.ms": 50,
}
# Records per batch: each decoded record is alive until its batch is written (about 10 KB
# of Python objects), while larger batches fold more events of a session per write.
REPLAY_BATCH = 10_000
# The next partition is assigned when at most this many records of the one being read are
# left: a batch, much longer to fold than a first fetch takes (`fetch.wait.max.ms` and a
# round trip), so the next partition's records are waiting when the current one ends.
READ_AHEAD_RECORDS = REPLAY_BATCH


@dataclass(slots=True)
class ReplayProgress:
    """Where a replay is, for the progress display."""

    phase: str
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    dead_letters: int = 0

    @property
    def rate(self) -> float:
        """Events per second since the start."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate (None before there is a rate)."""
        rate = self.rate
        return max(0, self.total - self.done) / rate if rate > 0 else None


class KafkaReplay:
    """Reads the events topic by assignment (no consumer group) into one generation."""

    def __init__(
        self,
        core: ProjectionCore,
        *,
        bootstrap_servers: str,
        topic: str,
        config: Mapping[str, Any] | None = None,
        batch_size: int = REPLAY_BATCH,
        on_progress: Callable[[ReplayProgress], None] | None = None,
        stop: threading.Event | None = None,
        recall: RecallSink | None = None,
    ) -> None:
        self.core = core
        # Indexes every batch into the same generation's recall index too (recall on).
        self.recall = recall
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.batch_size = batch_size
        self.on_progress = on_progress or (lambda progress: None)
        self.stop = stop or threading.Event()
        self.position: dict[int, int] = {}  # next offset to read, per partition
        # Partitions nothing was read from yet: assigned from their beginning.
        self._fresh: dict[int, bool] = {}
        self._assigned: list[int] | None = None  # None: not yet (`start` reads no records)
        self._consumer = groupless_consumer(
            bootstrap_servers, config, purpose="replay", tuning={**REPLAY_FETCH, **REPLAY_QUEUE}
        )

    @property
    def store(self) -> ViewStore:
        """The generation being built."""
        return self.core.store

    def start(
        self, *, only: Collection[int] | None = None, timeout: float = 10.0
    ) -> dict[int, int]:
        """Assign the partitions (all, or `only` these) from the new generation's progress;
        returns their end offsets."""
        count = topic_partitions(
            self._consumer, self.topic, bootstrap_servers=self.bootstrap_servers, timeout=timeout
        )
        partitions = [p for p in range(count) if only is None or p in only]
        marks = self._start_marks()
        ends: dict[int, int] = {}
        for partition in partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=timeout
            )
            start = marks[partition] + 1 if partition in marks else low
            self.position[partition] = max(start, low)
            ends[partition] = high
            self._fresh[partition] = partition not in marks
        # Assigned when read (`run_to`, `step`): an assignment of every partition here
        # would have librdkafka prefetch them all before `run_to` reads them one by one.
        self._assigned = None
        return ends

    def _assign(self, partitions: Collection[int]) -> None:
        """Read `partitions` (only those) from their positions."""
        self._assigned = list(partitions)
        self._consumer.assign([self._from_position(p) for p in partitions])

    def _fetch(self, partition: int) -> None:
        """Start fetching `partition` too, keeping what librdkafka has already fetched of
        the partitions assigned (`assign` would drop it)."""
        assert self._assigned is not None
        self._consumer.incremental_assign([self._from_position(partition)])
        self._assigned.append(partition)

    def _unfetch(self, partition: int) -> None:
        """Stop fetching `partition`, keeping the others."""
        assert self._assigned is not None
        self._consumer.incremental_unassign([TopicPartition(self.topic, partition)])
        self._assigned.remove(partition)

    def _from_position(self, partition: int) -> TopicPartition:
        """`partition` at its position; one never read from its beginning, wherever
        retention has moved that."""
        start = OFFSET_BEGINNING if self._fresh.get(partition) else self.position[partition]
        return TopicPartition(self.topic, partition, start)

    def _start_marks(self) -> dict[int, int]:
        """Partition -> the last offset every sink has: the read-model's progress marks,
        lowered to the recall index's (a partition either lacks starts from the start)."""
        marks = dict(self.store.progress())
        if self.recall is not None:
            indexed = self.recall.start()
            marks = {p: min(o, indexed[p]) for p, o in marks.items() if p in indexed}
        return marks

    def run_to(self, ends: Mapping[int, int], progress: ReplayProgress) -> None:
        """Project until every partition has been read up to `ends` (exclusive), one
        partition at a time, the next fetched before it ends (see the module docstring);
        then read them all again, for the catch-up."""
        behind = [p for p, end in sorted(ends.items()) if self.position[p] < end]
        self._assign(behind[:1])
        coming = 1  # behind[coming]: the next partition to assign
        for n, partition in enumerate(behind):
            while True:
                left = ends[partition] - self.position[partition]
                # Records of the next partition are projected as they come, in order.
                if coming == n + 1 < len(behind) and left <= READ_AHEAD_RECORDS:
                    self._fetch(behind[coming])
                    coming += 1
                if left <= 0:
                    break
                self.step(progress)
            # No other partition holds its sessions: their views are not needed again.
            self.core.forget_partitions([partition])
            self._unfetch(partition)
        self._assign(sorted(self.position))

    def step(self, progress: ReplayProgress, *, timeout: float = 0.2) -> int:
        """Project one batch of whatever has arrived; the number of records."""
        if self.stop.is_set():
            raise Interrupted("the replay was interrupted")
        if self._assigned is None:
            self._assign(sorted(self.position))
        first = self._consumer.poll(timeout)
        if first is None:
            self.on_progress(progress)
            return 0
        messages = [first, *self._consumer.consume(self.batch_size - 1, timeout=0)]
        records = [r for r in (record_of(m, self.topic) for m in messages) if r is not None]
        if records:
            result = self.core.handle(records)
            progress.dead_letters += len(result.dead_letters)
            if self.recall is not None:
                self.recall.handle(records)
            progress.done += len(records)
            for partition, offset in result.last_offsets.items():
                self.position[partition] = max(self.position.get(partition, 0), offset + 1)
                self._fresh[partition] = False
        self.on_progress(progress)
        return len(records)

    def caught_up_with(self, live: Mapping[int, int]) -> bool:
        """Whether this generation has projected, everywhere, as far as `live` has."""
        ours = self.store.progress()
        return all(ours.get(p, -1) >= mark for p, mark in live.items())

    def close(self) -> None:
        """Leave; nothing to commit."""
        self._consumer.close()
