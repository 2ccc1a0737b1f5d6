"""Partitions a projector is given while Redis is out are projected once Redis answers.

A rebalance during a Redis outage hands a projector partitions it cannot start: where to
start them depends on what Redis holds. It holds them, paused, until Redis answers, then
assigns them again from the right offsets. librdkafka keeps a partition's pause across
an unassign and an assign, so they once stayed paused for good: the projector ran, but
never projected them again. Found by `tests/system/test_projector_rebalances.py`.

The projector runs in-process against a real broker, with its views in memory and a
generation pointer that refuses (`StoreUnavailable`, as the Redis one does) until the
test lets it answer: the same code path as Redis being down, with no timing to win.
"""

from __future__ import annotations

import threading

from chatlog import wiring
from chatlog.processors.kafka_projector import KafkaProjector
from chatlog.processors.projection import ProjectionCore
from chatlog.producers.commands import append_message
from chatlog.producers.partitioning import partition_for
from chatlog.projections.store import InMemoryViewStore
from chatlog.schemas.errors import StoreUnavailable
from tests.processes import unique_settings, wait_until

PARTITIONS = 2


class UnreachablePointer:
    """A `GenerationPointer` to generation g1 that refuses until `answering` is set."""

    def __init__(self) -> None:
        self.answering = threading.Event()
        self.refused = 0

    def _reach(self) -> None:
        if not self.answering.is_set():
            self.refused += 1
            raise StoreUnavailable("Redis did not answer (the test's outage)")

    def live(self) -> str | None:
        self._reach()
        return "g1"

    def epoch(self, generation: str) -> str | None:
        self._reach()
        return "epoch-of-g1"

    def initialise(self, generation: str) -> str:
        self._reach()
        return "g1"

    def create(self, generation: str, *, layout: int = 2) -> None:
        self._reach()

    def mark_lost(self, generation: str, reason: str) -> None:
        self._reach()


def test_partitions_assigned_while_redis_is_out_are_projected_once_it_answers(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=PARTITIONS)
    sessions = {partition_for(f"s{n}", PARTITIONS): f"s{n}" for n in range(20)}
    assert sorted(sessions) == list(range(PARTITIONS))
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        last = {
            s: producer.publish(append_message(s, user_id="u1", role="user", content="hi")).offset
            for s in sessions.values()
        }
    store = InMemoryViewStore()
    pointer = UnreachablePointer()
    projector = KafkaProjector(
        ProjectionCore(store),
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        dlq_topic=settings.dlq_topic,
        group_id=settings.projector_group,
        instance_id="held",
        generations=pointer,
        generation="g1",
        store_for=lambda generation: store,
        # The pointer is read in every step: the first step, before the group has even
        # assigned anything, finds Redis out, and the assignment comes while it retries.
        generation_check_s=0.0,
    )
    stop = threading.Event()
    running = threading.Thread(target=projector.run, kwargs={"stop": stop}, name="projector")
    running.start()
    try:
        wait_until(
            lambda: projector.assigned == set(range(PARTITIONS)), timeout=60, what="assignment"
        )
        # The first call after the assignment is the callback's own: refused, so held.
        refused = pointer.refused
        wait_until(lambda: pointer.refused > refused, timeout=30, what="a refused start")
        pointer.answering.set()
        wait_until(
            lambda: all(
                (view := store.views.get(s)) is not None and view.last_offset == offset
                for s, offset in last.items()
            ),
            timeout=30,
            what="the held partitions to be projected once Redis answered",
        )
    finally:
        stop.set()
        running.join(30)
    assert not running.is_alive()
    assert projector.stats.outages == 1
