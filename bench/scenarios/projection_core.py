"""Projection core (part of `projection`): where a projected event's time goes.

The records the projection scenario published, folded in one process without Kafka:
decoded only, through `ProjectionCore` into an `InMemoryViewStore`, and through it into
Redis. No peer: the rows are measured beside the projector process's own rate, and the
gaps between them split an event's time into decode, fold, Redis write and the rest.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

from bench.infra import BenchStack
from bench.measure import frozen_heap
from bench.plan import Plan
from bench.report import Report, say
from bench.scenarios.projection import Published
from bench.workload import records_for
from chatlog import wiring
from chatlog.processors.projection import ProjectionCore, Record
from chatlog.projections.store import InMemoryViewStore, ViewStore

__all__ = ["projection_core"]


def projection_core(stack: BenchStack, plan: Plan, report: Report, published: Published) -> None:
    """Scenario 1b: the same records through the pure core, then the core on Redis."""
    settings = published.settings
    codec = wiring.codec(settings)
    policy = wiring.policy(settings)
    records = records_for(
        published.traffic.events, published.positions, codec, topic=settings.topic
    )
    # A consumer that is behind gets each fetch from one partition (up to a MB of it), so
    # its batches hold one partition's records, about a sixth of the sessions; batches in
    # publish order would touch every session each time and write far more often.
    records.sort(key=lambda record: (record.partition, record.offset))
    batch = settings.projector_batch
    decode = report.metric("projection core", "decode only (EventCodec.decode)", "events/s")
    memory = report.metric(
        "projection core", "ProjectionCore.handle + InMemoryViewStore", "events/s"
    )
    on_redis = report.metric(
        "projection core", "ProjectionCore.handle + RedisViewStore (no Kafka)", "events/s"
    )
    writes = 0
    warm = records[: max(1, len(records) // 10)]
    _fold_all(ProjectionCore(InMemoryViewStore(), codec=codec, policy=policy), warm, batch)
    with frozen_heap():
        for n in range(1, plan.repeat + 1):
            started = time.perf_counter()
            for record in records:
                codec.decode(record.value or b"")
            decode.add(len(records) / (time.perf_counter() - started))
            core = ProjectionCore(InMemoryViewStore(), codec=codec, policy=policy)
            memory.add(_fold_all(core, records, batch)[0])
            rep_settings = stack.repetition(settings, f"core-r{n}")
            wiring.generations(rep_settings, stack.redis).initialise("g1")  # as a projector
            store: ViewStore = wiring.live_store(rep_settings, stack.redis)
            rate, writes = _fold_all(
                ProjectionCore(store, codec=codec, policy=policy), records, batch
            )
            on_redis.add(rate)
            stack.forget_keys(rep_settings.redis_prefix)
            say(
                f"projection core r{n}: decode {decode.values[-1]:,.0f}/s, in memory "
                f"{memory.values[-1]:,.0f}/s, on Redis {rate:,.0f}/s ({writes:,} writes)"
            )
    report.notes.append(
        f"projection core: the projector's records in one process, batches of {batch} "
        f"taken partition by partition as a lagging consumer gets them ({writes:,} session "
        f"writes per run); per event (medians): {_split(report)}"
    )


def _split(report: Report) -> str:
    """Where an event's time goes, from the medians of the projection rows."""
    rows = {row.name: row for row in report.metrics if row.values}

    def micros(name: str) -> float:
        return 1e6 / statistics.median(rows[name].values) if name in rows else math.nan

    decode = micros("decode only (EventCodec.decode)")
    memory = micros("ProjectionCore.handle + InMemoryViewStore")
    redis_ = micros("ProjectionCore.handle + RedisViewStore (no Kafka)")
    process = micros("projector process: partitions assigned → all applied")
    rest = process - redis_
    # The two are measured in different processes; a difference within a few µs is noise.
    kafka = f"{rest:.0f} µs" if rest > 0 else f"none measurable ({rest:.0f} µs)"
    return (
        f"decode {decode:.0f} µs, fold and bookkeeping {memory - decode:.0f} µs, Redis "
        f"write {redis_ - memory:.0f} µs, Kafka and the rest {kafka} (total {process:.0f} µs "
        f"in the projector process)"
    )


def _fold_all(core: ProjectionCore, records: Sequence[Record], batch: int) -> tuple[float, int]:
    started = time.perf_counter()
    writes = 0
    for start in range(0, len(records), batch):
        result = core.handle(records[start : start + batch])
        if result.dead_letters:
            raise AssertionError(f"dead letters in the core run: {result.dead_letters[:1]}")
        writes += result.applied
    return len(records) / (time.perf_counter() - started), writes
