"""Projection throughput (`projection`): how fast a projector process drains a backlog.

A topic is filled once with `publish_many`; each repetition then starts a projector
process (`bench.projector_child`) with a consumer group and Redis prefix of its own and
times it from the moment the group has all partitions until every session's view holds
its last event. Beside it, the limit: Kafka's ConsumerPerformance reading the same topic
with the projector's fetch sizes (reading only, in a JVM). The projector's peak resident
memory goes to the memory rows. `bench.scenarios.projection_core` then takes the same
records apart.

With `--sealing both` (the default) the same events are also published without a keyring
into a topic of their own, and in the first `Plan.clear_repetitions` repetitions a
projector drains that one too, right after the sealed run: the sealing on/off twin.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.infra import (
    CLEAR,
    SEALED,
    BenchStack,
    ProjectorProcess,
    ReadModelProbe,
    copy_key_directory,
    publish_bulk,
    sealing_variants,
    variant_producer,
    variant_settings,
)
from bench.kafka_tools import cp_peer, find_tools
from bench.measure import CpuMeter, median_shares
from bench.plan import Plan
from bench.projector_child import gc_note
from bench.report import Report, say
from bench.scenarios.memory import peak_memory
from bench.workload import Traffic, chat_events, last_positions, user_of
from chatlog import wiring
from chatlog.schemas.position import Position
from chatlog.settings import Settings

__all__ = ["PROJECTOR_FETCH", "Published", "projection"]

TARGET_PROJECTION = ">= 20,000 events/s"


# The projector's consumer runs with librdkafka's default fetch sizes; ConsumerPerformance
# is given the same (they are also the Java consumer's defaults).
PROJECTOR_FETCH = {"max.partition.fetch.bytes": 1_048_576, "fetch.max.bytes": 52_428_800}


@dataclass(frozen=True, slots=True)
class Published:
    """What the projection scenario published, reused by the core scenario."""

    settings: Settings
    traffic: Traffic
    positions: list[Position]


def projection(stack: BenchStack, plan: Plan, report: Report) -> Published:
    """Scenario 1: a projector process drains a pre-filled topic into a fresh read-model."""
    variants = sealing_variants(plan)
    scenario = {variant: variant_settings(stack, "projection", variant) for variant in variants}
    settings = scenario[SEALED]
    tools, missing = find_tools(stack, "projection")
    with variant_producer(settings, SEALED) as producer:
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
        report.value_sizes += [len(producer.encode(e)) for e in traffic.events[:1_000]]
    expected = {SEALED: last_positions(traffic.events, positions)}
    if CLEAR in variants:
        say("projection: publishing them again without a keyring (the sealing-off twin)")
        with variant_producer(scenario[CLEAR], CLEAR) as clear:
            expected[CLEAR] = last_positions(traffic.events, publish_bulk(clear, traffic.events))
    report.metric("projection", "publish_many, bulk pre-fill (1 run)", "events/s").add(publish_rate)
    rate = report.metric(
        "projection",
        "projector process: partitions assigned → all applied",
        "events/s",
        TARGET_PROJECTION,
    )
    limit = report.measure("projection", "ConsumerPerformance", "events/s")
    headline = (
        f"events/s, one projector process, {plan.events:,} events: partitions assigned → "
        f"every view applied"
    )
    report.compare(
        "projection", headline, rate, cp_peer(missing), limit if tools is not None else None
    )
    twin = report.measure("projection", f"projector process, {CLEAR}", "events/s")
    if CLEAR in variants:
        report.twin("projection", headline, rate, twin)
    rss = peak_memory(report, "projector", events=plan.events, sessions=plan.sessions)
    startup = report.metric("projection", "projector start-up: spawn → partitions assigned", "s")
    batches: list[float] = []
    applied: list[float] = []
    gc_runs: list[dict[str, Any]] = []
    busy: list[dict[str, float]] = []
    for n, rep in enumerate(["warmup", *(f"r{n}" for n in range(1, plan.repeat + 1))]):
        run = _drain(stack, settings, rep, expected[SEALED], traffic, report)
        read = ""
        if tools is not None and rep != "warmup":
            result, _ = tools.consumer_performance(
                settings,
                group=f"{stack.repetition(settings, rep).projector_group}-cp",
                records=plan.events,
                fetch=PROJECTOR_FETCH,
                timeout=120,
            )
            limit.add(result.number("fetch.nMsg.sec"))
            read = f"; ConsumerPerformance {limit.values[-1]:,.0f}/s"
        if CLEAR in variants and 1 <= n <= plan.clear_repetitions:
            # The twin, right after the sealed run and its peer: the same events published
            # clear, drained by a projector of its own.
            clear = _drain(stack, scenario[CLEAR], rep, expected[CLEAR], traffic, report)
            twin.add(plan.events / (clear.done - clear.assigned))
            twinned = f"; sealing off {twin.values[-1]:,.0f}/s"
        else:
            twinned = ""
        say(
            f"projection {rep}: {plan.events / (run.done - run.assigned):,.0f} events/s{read}"
            f"{twinned}; CPU {CpuMeter.describe(run.cpu)}; {run.totals}"
        )
        if rep == "warmup":
            continue
        rate.add(plan.events / (run.done - run.assigned))
        startup.add(run.assigned - run.spawned)
        busy.append(run.cpu)
        if "peak_rss_kib" in run.totals:
            rss.add(run.totals["peak_rss_kib"] / 1024)
        if run.totals.get("batches"):
            batches.append(run.totals["events"] / run.totals["batches"])
            applied.append(run.totals["applied"])
            gc_runs.append(run.totals)
    if batches:
        report.notes.append(
            f"projection: {plan.events:,} events over {plan.sessions:,} sessions; mean batch "
            f"{statistics.mean(batches):,.0f} records (setting {settings.projector_batch}), "
            f"{statistics.mean(applied):,.0f} session writes per run; done = every "
            f"session's meta last_offset equals its last event's offset; each repetition's "
            f"prefix gets the writers' key directory copied in before the projector starts "
            f"(as deployed: no catch-up from the keys topic); CPU while "
            f"projecting (median, 100% = one core): {CpuMeter.describe(median_shares(busy))}"
            f"{gc_note(gc_runs)}; "
            + (
                f"ConsumerPerformance read the same topic from offset 0 after each "
                f"repetition, with the projector's fetch sizes (librdkafka's defaults: "
                f"{PROJECTOR_FETCH['max.partition.fetch.bytes']:,} B a partition, "
                f"{PROJECTOR_FETCH['fetch.max.bytes']:,} B a fetch), its fetch.nMsg.sec "
                f"(group join left out); the projector's peak memory is its child "
                f"process's VmHWM over its whole life"
                if tools is not None
                else f"ConsumerPerformance not run: {missing}"
            )
            + (
                f"; sealing off (the twin): the same events published without a keyring "
                f"(neither sealed nor redacted) into a topic of their own, drained the same "
                f"way by a projector of its own right after the sealed one, in the first "
                f"{min(plan.repeat, plan.clear_repetitions)} repetition(s)"
                if CLEAR in variants
                else ""
            )
        )
    return Published(settings=settings, traffic=traffic, positions=positions)


@dataclass(frozen=True, slots=True)
class _Drained:
    """One projector's drain: when it was spawned, had its partitions, had applied every
    view (perf_counter); the CPU while projecting; its totals."""

    spawned: float
    assigned: float
    done: float
    cpu: dict[str, float]
    totals: dict[str, Any]


def _drain(
    stack: BenchStack,
    settings: Settings,
    rep: str,
    expected: dict[str, Position],
    traffic: Traffic,
    report: Report,
) -> _Drained:
    """A projector process drains `settings`' topic into repetition `rep`'s own prefix
    (the writers' key directory copied in first, as deployed); its keys removed after."""
    rep_settings = stack.repetition(settings, rep)
    copy_key_directory(stack.redis, settings.redis_prefix, rep_settings.redis_prefix)
    projector = ProjectorProcess(rep_settings, stack)
    try:
        spawned = projector.start()
        meter = CpuMeter.for_stack(stack, projector=projector.pid)
        assigned = projector.wait_assigned()
        meter.start()
        done = ReadModelProbe(stack.redis, rep_settings.redis_prefix).wait_applied(
            expected, projector, timeout=max(60.0, len(traffic.events) / 1_000)
        )
        cpu = meter.busy()
        _check_first_session(rep_settings, stack, traffic)
    finally:
        totals = projector.stop()
    stack.forget_keys(rep_settings.redis_prefix)
    if totals.get("dead_letters"):
        report.notes.append(
            f"projection {rep} ({settings.topic}): {totals['dead_letters']} dead letters!"
        )
    return _Drained(spawned, assigned, done, cpu, totals)


def _check_first_session(settings: Settings, stack: BenchStack, traffic: Traffic) -> None:
    """A sanity check that the views hold the messages, not just the right offset."""
    session_id = traffic.sessions[0]
    want = sum(1 for e in traffic.events if e.session_id == session_id)
    reader = wiring.reader(settings, stack.redis)
    context = reader.context(session_id, user_id=user_of(0))
    if context.message_count != want:
        raise AssertionError(f"{session_id}: {context.message_count} messages, expected {want}")
