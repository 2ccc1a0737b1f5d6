"""The projection and read scenarios, each filling its rows of the report.

1. Projection throughput. A topic is filled once; each repetition then starts a projector
   process with a consumer group and Redis prefix of its own and times it from the moment
   the group has all partitions until every session's view holds its last event. The
   same records are folded by the pure core (no I/O), and by the core writing to Redis
   without Kafka, so the gaps between the three rows say where the time goes.
2. Publish-to-visible latency. A publisher thread paces `producer.send` at a steady rate
   while a projector process runs; for every n-th event a pool of waiter threads times
   from just before the send until `reader.context(after=position)` returns. The pool is
   unbounded in queue length, so slow reads never hold the publisher back.
3. Context reads. Sessions of 20 and 200 stored messages are projected, the projector is
   stopped, and `ChatLog.context` is timed on them one call at a time.

The rolling-summary scenarios (4 and 5) are in `bench.summaries`; `Plan` sizes them too.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from threading import Thread
from typing import Any

from bench.infra import BenchStack, CpuMeter, ProjectorProcess, ReadModelProbe, running
from bench.report import Report, percentile
from bench.workload import Traffic, chat_events, last_positions, records_for, user_of
from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.settings import Settings
from processors.projection import ProjectionCore, Record
from producers.kafka_producer import ConversationProducer
from projections.redis_reader import RedisReader
from projections.store import InMemoryViewStore, ViewStore
from schemas.errors import ChatlogError
from schemas.events import ConversationEvent
from schemas.position import Position

__all__ = ["Plan", "Published", "context_reads", "projection", "projection_core", "visibility"]

_PUBLISH_CHUNK = 10_000
_WAITERS = 32
_READ_TIMEOUT_S = 5.0
TARGET_PROJECTION = ">= 20,000 events/s"
TARGET_VISIBLE = "p99 <= 25 ms at 2,000 events/s"
TARGET_READ = "p99 <= 2 ms"


@dataclass(frozen=True, slots=True)
class Plan:
    """How big each scenario is: `full()` for the numbers, `quick_plan()` to check it runs."""

    quick: bool
    repeat: int
    events: int
    sessions: int
    record_bytes: int
    rate: float
    duration_s: float
    warmup_s: float
    sample_every: int
    publishers: int
    reads: int
    read_warmup: int
    read_sessions: int
    summary_turns: tuple[int, ...]
    summary_sessions: int
    summary_rounds: int
    summary_in_flight: tuple[int, ...]
    replay_events: int
    replay_sessions: int

    @classmethod
    def full(cls, repeat: int = 3) -> Plan:
        """The run the numbers come from (about three minutes on the 2-core dev machine)."""
        return cls(
            quick=False,
            repeat=repeat,
            events=100_000,
            sessions=2_000,
            record_bytes=200,
            rate=2_000.0,
            duration_s=10.0,
            warmup_s=2.0,
            sample_every=10,
            publishers=1,
            reads=5_000,
            read_warmup=500,
            read_sessions=20,
            summary_turns=(100, 500, 1_000),
            summary_sessions=2_000,
            summary_rounds=25,
            summary_in_flight=(1, 8, 32, 128),
            replay_events=1_000_000,
            replay_sessions=10_000,
        )

    @classmethod
    def quick_plan(cls, repeat: int = 1) -> Plan:
        """Everything shrunk so the run takes well under a minute (for CI)."""
        return cls(
            quick=True,
            repeat=repeat,
            events=5_000,
            sessions=200,
            record_bytes=200,
            rate=2_000.0,
            duration_s=2.0,
            warmup_s=0.5,
            sample_every=10,
            publishers=1,
            reads=300,
            read_warmup=50,
            read_sessions=4,
            summary_turns=(100, 300),
            summary_sessions=200,
            summary_rounds=5,
            summary_in_flight=(1, 8, 128),
            replay_events=50_000,
            replay_sessions=1_000,
        )


@dataclass(frozen=True, slots=True)
class Published:
    """What the projection scenario published, reused by the core scenario."""

    settings: Settings
    traffic: Traffic
    positions: list[Position]


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the garbage collector off the benchmark's own long-lived objects meanwhile.

    The benchmark holds its whole workload (up to 100,000 events and records), which a
    chat back end or the projector process would not; every full collection would walk
    it, and such pauses (tens of ms, measured) would be charged to the code under test.
    Frozen, they are skipped; what the measured code allocates is collected as usual.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def publish_bulk(
    producer: ConversationProducer, events: Sequence[ConversationEvent]
) -> list[Position]:
    """`publish_many` in chunks: librdkafka's local queue holds 100,000 messages at most."""
    positions: list[Position] = []
    for start in range(0, len(events), _PUBLISH_CHUNK):
        positions += producer.publish_many(events[start : start + _PUBLISH_CHUNK])
    return positions


# -- 1. projection throughput -----------------------------------------------------------


def projection(stack: BenchStack, plan: Plan, report: Report) -> Published:
    """Scenario 1: a projector process drains a pre-filled topic into a fresh read-model."""
    settings = stack.scenario("projection")
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        say(f"projection: building {plan.events:,} events over {plan.sessions:,} sessions")
        traffic = chat_events(
            sessions=plan.sessions,
            count=plan.events,
            record_bytes=plan.record_bytes,
            codec=producer.codec,
            info=producer.info,
        )
        say("projection: publishing them (publish_many)")
        started = time.perf_counter()
        positions = publish_bulk(producer, traffic.events)
        publish_rate = len(positions) / (time.perf_counter() - started)
        report.value_sizes += [len(producer.codec.encode(e)) for e in traffic.events[:1_000]]
    expected = last_positions(traffic.events, positions)
    report.metric("projection", "publish_many, bulk pre-fill (1 run)", "events/s").add(publish_rate)
    rate = report.metric(
        "projection",
        "projector process: partitions assigned → all applied",
        "events/s",
        TARGET_PROJECTION,
    )
    startup = report.metric("projection", "projector start-up: spawn → partitions assigned", "s")
    batches: list[float] = []
    applied: list[float] = []
    gc_runs: list[dict[str, Any]] = []
    busy: list[dict[str, float]] = []
    for rep in ["warmup", *(f"r{n}" for n in range(1, plan.repeat + 1))]:
        rep_settings = stack.repetition(settings, rep)
        projector = ProjectorProcess(rep_settings, stack)
        try:
            spawned = projector.start()
            meter = CpuMeter.for_stack(stack, projector=projector.pid)
            assigned = projector.wait_assigned()
            meter.start()
            done = ReadModelProbe(stack.redis, rep_settings.redis_prefix).wait_applied(
                expected, projector, timeout=max(60.0, plan.events / 1_000)
            )
            cpu = meter.busy()
            _check_first_session(rep_settings, stack, traffic)
        finally:
            totals = projector.stop()
        stack.forget_keys(rep_settings.redis_prefix)
        if totals.get("dead_letters"):
            report.notes.append(f"projection {rep}: {totals['dead_letters']} dead letters!")
        say(
            f"projection {rep}: {plan.events / (done - assigned):,.0f} events/s; "
            f"CPU {CpuMeter.describe(cpu)}; {totals}"
        )
        if rep == "warmup":
            continue
        rate.add(plan.events / (done - assigned))
        startup.add(assigned - spawned)
        busy.append(cpu)
        if totals.get("batches"):
            batches.append(totals["events"] / totals["batches"])
            applied.append(totals["applied"])
            gc_runs.append(totals)
    if batches:
        report.notes.append(
            f"projection: {plan.events:,} events over {plan.sessions:,} sessions; mean batch "
            f"{statistics.mean(batches):,.0f} records (setting {settings.projector_batch}), "
            f"{statistics.mean(applied):,.0f} session writes per run; done = every "
            f"session's meta last_offset equals its last event's offset; CPU while "
            f"projecting (median, 100% = one core): {CpuMeter.describe(median_shares(busy))}"
            f"{_gc_note(gc_runs)}"
        )
    return Published(settings=settings, traffic=traffic, positions=positions)


def _gc_note(runs: Sequence[dict[str, Any]]) -> str:
    """The projector's collector pauses (medians over runs; whole process life)."""
    runs = [run for run in runs if "gc_pause_max_ms" in run]
    if not runs:
        return ""

    def median(key: str) -> float:
        return statistics.median(float(run[key]) for run in runs)

    return (
        f"; the projector's garbage collector (whole process life, start-up included): "
        f"{median('gc_full_collections'):.0f} full collections, pauses "
        f"{median('gc_pause_total_ms'):,.0f} ms in all, longest {median('gc_pause_max_ms'):.0f} ms"
    )


def median_shares(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per process, the median CPU share over runs (processes seen in every run)."""
    names = [name for name in runs[0] if all(name in run for run in runs)] if runs else []
    return {name: statistics.median(run[name] for run in runs) for name in names}


def _check_first_session(settings: Settings, stack: BenchStack, traffic: Traffic) -> None:
    """A sanity check that the views hold the messages, not just the right offset."""
    session_id = traffic.sessions[0]
    want = sum(1 for e in traffic.events if e.session_id == session_id)
    reader = RedisReader(stack.redis, prefix=settings.redis_prefix)
    context = reader.context(session_id, user_id=user_of(0))
    if context.message_count != want:
        raise AssertionError(f"{session_id}: {context.message_count} messages, expected {want}")


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


# -- 2. publish-to-visible latency ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled event: when it was sent (perf_counter), and seconds from then until
    acknowledged and until visible (None: not visible in time)."""

    sent: float
    acked_s: float
    visible_s: float | None
    error: str | None = None


def visibility(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario 2: paced sends; sampled events read back with `context(after=position)`."""
    settings = stack.scenario("latency")
    p50 = report.metric("publish→visible", "p50", "ms")
    p99 = report.metric("publish→visible", "p99", "ms", TARGET_VISIBLE)
    worst = report.metric("publish→visible", "max", "ms")
    achieved = report.metric(
        "publish→visible", "achieved send rate", "events/s", f"{plan.rate:,.0f} events/s"
    )
    ack50 = report.metric("publish→visible", "of which send → broker ack, p50", "ms")
    ack99 = report.metric("publish→visible", "of which send → broker ack, p99", "ms")
    per_rep = math.ceil(plan.rate * (plan.warmup_s + plan.duration_s))
    failures = 0
    samples_total = 0
    busy: list[dict[str, float]] = []
    with (
        running(settings, stack) as projector,
        wiring.producer(settings, flush_on_sigterm=False) as producer,
    ):
        projector.wait_assigned()
        meter = CpuMeter.for_stack(stack, projector=projector.pid)
        reader = wiring.reader(settings)
        try:
            for n in range(1, plan.repeat + 1):
                traffic = chat_events(
                    sessions=plan.sessions,
                    count=per_rep,
                    record_bytes=plan.record_bytes,
                    codec=producer.codec,
                    info=producer.info,
                    seed=100 + n,
                )
                say(
                    f"publish→visible r{n}: {plan.rate:,.0f} events/s for "
                    f"{plan.warmup_s:g} s warm-up + {plan.duration_s:g} s"
                )
                if not report.value_sizes:
                    report.value_sizes += [len(producer.codec.encode(e)) for e in traffic.events]
                with frozen_heap():
                    meter.start()
                    rate, samples = _paced_run(producer, reader, traffic.events, plan)
                    busy.append(meter.busy())
                projector.check_alive()
                visible = [s.visible_s * 1000 for s in samples if s.visible_s is not None]
                acked = [s.acked_s * 1000 for s in samples if not math.isnan(s.acked_s)]
                failures += sum(1 for s in samples if s.visible_s is None)
                samples_total += len(samples)
                p50.add(percentile(visible, 50))
                p99.add(percentile(visible, 99))
                worst.add(max(visible, default=math.nan))
                achieved.add(rate)
                ack50.add(percentile(acked, 50))
                ack99.add(percentile(acked, 99))
                say(
                    f"publish→visible r{n}: p50 {p50.values[-1]:.1f} ms, "
                    f"p99 {p99.values[-1]:.1f} ms, rate {rate:,.0f}/s; "
                    f"CPU {CpuMeter.describe(busy[-1])}"
                )
        finally:
            reader.client.close()
    report.notes.append(
        f"publish→visible: {samples_total:,} sampled events (every {plan.sample_every}th, "
        f"after {plan.warmup_s:g} s warm-up per repetition), {failures} not visible within "
        f"{_READ_TIMEOUT_S:g} s; {plan.publishers} publisher thread(s), {_WAITERS} waiter "
        f"threads; CPU per repetition (median, 100% = one core): "
        f"{CpuMeter.describe(median_shares(busy))}{_gc_note([projector.totals])}"
    )


def _paced_run(
    producer: ConversationProducer,
    reader: RedisReader,
    events: Sequence[ConversationEvent],
    plan: Plan,
) -> tuple[float, list[Sample]]:
    """Send `events` on a fixed schedule; returns the achieved rate and measured samples.

    Event i is due at start + i/rate. A publisher that falls behind sends at once rather
    than skipping, and the time is taken just before each send, so a late send shows in
    the achieved rate, not as latency.
    """
    sent_at = [math.nan] * len(events)
    start = time.perf_counter() + 0.05
    waiters = ThreadPoolExecutor(max_workers=_WAITERS, thread_name_prefix="bench-wait")
    sampled: list[tuple[int, Future[Sample]]] = []
    failed: list[BaseException] = []

    def publish(first: int) -> None:
        try:
            for i in range(first, len(events), plan.publishers):
                delay = start + i / plan.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                future = producer.send(events[i])
                sent_at[i] = sent
                if i % plan.sample_every == 0:
                    waiter = waiters.submit(_wait_visible, reader, events[i], future, sent)
                    sampled.append((i, waiter))
        except BaseException as exc:  # a thread's exception would vanish: hand it over
            failed.append(exc)

    threads = [
        Thread(target=publish, args=(k,), name=f"bench-pub-{k}") for k in range(plan.publishers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        waiters.shutdown(wait=True, cancel_futures=True)
        raise failed[0]
    measure_from = start + plan.warmup_s
    samples = [future.result() for i, future in sampled if sent_at[i] >= measure_from]
    waiters.shutdown(wait=True)
    measured = sorted(t for t in sent_at if t >= measure_from)
    span = measured[-1] - measured[0] if len(measured) > 1 else math.nan
    return (len(measured) - 1) / span, samples


def _wait_visible(
    reader: RedisReader, event: ConversationEvent, future: Future[Position], sent: float
) -> Sample:
    try:
        position = future.result(timeout=60)
        acked = time.perf_counter() - sent
        reader.context(
            event.session_id, user_id=event.user_id, after=position, timeout=_READ_TIMEOUT_S
        )
        return Sample(sent, acked, time.perf_counter() - sent)
    except ChatlogError as exc:
        return Sample(sent, math.nan, None, type(exc).__name__)


# -- 3. context reads --------------------------------------------------------------------


def context_reads(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario 3: `ChatLog.context` on projected sessions of 20 and 200 messages."""
    settings = stack.scenario("reads")
    sizes = (20, 200)
    per_session = [size for size in sizes for _ in range(plan.read_sessions)]
    rows = {
        size: (
            report.metric("context read", f"ChatLog.context, {size} msgs, p50", "ms"),
            report.metric("context read", f"ChatLog.context, {size} msgs, p99", "ms", TARGET_READ),
            report.metric("context read", f"Redis round trip only, {size} msgs, p50", "ms"),
        )
        for size in sizes
    }
    producer = wiring.producer(settings, flush_on_sigterm=False)
    log = ChatLog(producer=producer, reader=wiring.reader(settings))
    try:
        traffic = chat_events(
            sessions=len(per_session),
            count=0,
            record_bytes=plan.record_bytes,
            codec=producer.codec,
            info=producer.info,
            per_session=per_session,
        )
        if not report.value_sizes:
            report.value_sizes += [len(producer.codec.encode(e)) for e in traffic.events[:1_000]]
        say(f"context read: projecting {len(traffic.events):,} events")
        expected = last_positions(traffic.events, publish_bulk(producer, traffic.events))
        with running(settings, stack) as projector:
            projector.wait_assigned()
            ReadModelProbe(stack.redis, settings.redis_prefix).wait_applied(
                expected, projector, timeout=120
            )
        # Read with the projector stopped: this is the read path alone, not the read path
        # competing with a projector for two cores (scenario 2 covers that mix).
        by_size = {size: [i for i, n in enumerate(per_session) if n == size] for size in sizes}
        for size, indexes in by_size.items():
            for i in indexes:
                got = len(log.context(traffic.sessions[i], user_id=user_of(i)).messages)
                if got != size:
                    raise AssertionError(f"{traffic.sessions[i]}: {got} messages, not {size}")
        meter = CpuMeter.for_stack(stack)
        busy: list[dict[str, float]] = []
        with frozen_heap():
            for n in range(1, plan.repeat + 1):
                meter.start()
                for size, indexes in by_size.items():
                    calls = [(traffic.sessions[i], user_of(i)) for i in indexes]
                    context_ms = _time_reads(log, calls, plan.reads, plan.read_warmup)
                    raw_ms = _time_round_trips(log.reader, calls, plan.reads, plan.read_warmup)
                    p50, p99, raw = rows[size]
                    p50.add(percentile(context_ms, 50))
                    p99.add(percentile(context_ms, 99))
                    raw.add(percentile(raw_ms, 50))
                    say(
                        f"context read r{n}, {size} msgs: p50 {p50.values[-1]:.3f} ms, "
                        f"p99 {p99.values[-1]:.3f} ms"
                    )
                busy.append(meter.busy())
    finally:
        log.close()
    report.notes.append(
        f"context read: {plan.reads:,} timed reads per size and repetition after "
        f"{plan.read_warmup:,} warm-up reads, round-robin over {plan.read_sessions} sessions "
        f"per size, one thread, projector stopped; window {settings.window}, overflow up to "
        f"{settings.max_overflow}; the round-trip row is the same MULTI (HGETALL + LRANGE) "
        f"without decoding; CPU (median, 100% = one core): "
        f"{CpuMeter.describe(median_shares(busy))}"
    )


def _time_reads(
    log: ChatLog, calls: Sequence[tuple[str, str]], reads: int, warmup: int
) -> list[float]:
    timings = []
    for n in range(warmup + reads):
        session_id, user_id = calls[n % len(calls)]
        started = time.perf_counter()
        log.context(session_id, user_id=user_id)
        if n >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def _time_round_trips(
    reader: RedisReader, calls: Sequence[tuple[str, str]], reads: int, warmup: int
) -> list[float]:
    keys = reader.keys()
    timings = []
    for n in range(warmup + reads):
        session_id, _ = calls[n % len(calls)]
        started = time.perf_counter()
        pipe = reader.client.pipeline(transaction=True)
        pipe.hgetall(keys.meta(session_id))
        pipe.lrange(keys.messages(session_id), 0, -1)
        pipe.execute()
        if n >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
    return timings
