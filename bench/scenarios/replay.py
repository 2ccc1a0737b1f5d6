"""The replay scenario: how fast `chatlog replay` rebuilds the read-model, beside Kafka's reader.

What is measured? A topic is filled once with `MessageAppended` events (500,000 over
5,000 sessions in the full run). Each repetition then reads the whole topic from offset 0 five
times, each time in a fresh process, one after the other:

1. Kafka's `ConsumerPerformance` (the JVM tool behind kafka-consumer-perf-test.sh, run
   by `bench.kafka_tools`): the rate at which the broker can hand these records to a
   consumer on this machine, the bound for any replay;
2. a bare confluent-kafka consumer that only counts the records: what reading alone
   costs in Python (it also decodes a sample afterwards, for the decode-only rate);
3. the same `rebuild` call with its views folded into an `InMemoryViewStore` instead of
   Redis: reading, decoding and folding, without the Redis writes;
4. `chatlog.processors.replay.rebuild` into a fresh Redis prefix in one process: the replay
   as `chatlog replay` runs it;
5. the same with as many worker processes as the machine has cores (`chatlog replay
   --workers N`, N at most the partitions): the rebuild row. Its peak resident memory is
   the largest of its processes' own (`VmHWM`; `bench.replay_child` says why not
   `ru_maxrss`), the parent's and each worker's.

Every rate covers the same span: from the partitions assigned (and the end offsets
known) until the last record is read, or applied. For ConsumerPerformance that is
`fetch.nMsg.sec`, which leaves out its consumer group join; for the Python processes
the start-up (interpreter, imports, metadata, end offsets) is reported apart. The
ratio of (4) to (1) is taken within each repetition, and its median reported.

With `--sealing both` (the default) the same events are also published without a keyring
into a topic of their own, and in the first `Plan.clear_repetitions` repetitions (5) runs
again on that topic, right after: the sealing-off twin of the rebuild row (the other rows
are not twinned, to keep the added time down).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.infra import (
    CLEAR,
    PARTITIONS,
    SEALED,
    BenchStack,
    child_env,
    copy_key_directory,
    sealing_variants,
    variant_producer,
    variant_settings,
)
from bench.kafka_tools import (
    CONSUMER_PERFORMANCE,
    JVM_OPTIONS,
    ConsumerPerformanceResult,
    Finished,
    cp_peer,
    find_tools,
    run_process,
)
from bench.measure import CpuMeter, median_shares
from bench.plan import Plan
from bench.projector_child import GcPauses
from bench.report import Report, say
from bench.scenarios.memory import peak_memory
from bench.workload import chat_event_chunks
from chatlog.processors.kafka_replay import REPLAY_FETCH
from chatlog.settings import Settings

__all__ = ["replay"]

TARGET_REPLAY = ">= 100,000 events/s"
TARGET_SHARE = ">= 1/3 of ConsumerPerformance"
_CHUNK = 10_000
_PREFILL_PROCESSES = 2
_ROW_CP = "Kafka ConsumerPerformance (JVM): fetch.nMsg.sec"
_ROW_READ = "Python confluent-kafka consumer, no decoding"
_ROW_DECODE = "decode only (EventCodec.decode, no Kafka)"
_ROW_MEMORY = "the same rebuild into an InMemoryViewStore (no Redis writes)"
_ROW_REBUILD = "chatlog.replay.rebuild into Redis: assigned → last applied"
_ROW_ONE = "the same rebuild in one process (--workers 1)"
# Processes over partitions: one a core, as `chatlog replay --workers N` would be run here.
_WORKERS = max(1, min(os.cpu_count() or 1, PARTITIONS))


def _child(
    mode: str, settings: Settings, stack: BenchStack, *, timeout: float, workers: int = 1
) -> Finished:
    return run_process(
        [sys.executable, "-m", "bench.replay_child", mode, str(workers)],
        env=child_env(settings),
        stack=stack,
        name={"rebuild": "replay", "memory": "in-memory", "read": "consumer"}[mode],
        timeout=timeout,
    )


def _prefill(
    settings: Settings, plan: Plan, report: Report, variant: str = SEALED
) -> tuple[int, float, int]:
    """Publish the scenario's events (`variant`: sealed, or clear for the twin); (count,
    seconds, processes).

    Building a million events and encoding them is CPU work (about 75 µs an event with
    the publishing), so up to `_PREFILL_PROCESSES` processes share it, each building and
    publishing the sessions of its share (`chat_event_chunks(share=...)`) with
    `publish_many`, a chunk at a time. A small workload is not worth their start-up.
    """
    processes = max(1, min(_PREFILL_PROCESSES, os.cpu_count() or 1, plan.replay_events // 200_000))
    started = time.perf_counter()
    jobs = [(settings, plan, (k, processes), variant) for k in range(processes)]
    if processes == 1:
        done = [_publish_share(*jobs[0])]
    else:
        # Spawned, not forked: this process runs librdkafka threads, which fork would copy.
        with multiprocessing.get_context("spawn").Pool(processes) as pool:  # exit: terminate
            # A guard against a hung publisher, not a measure: generous, as a machine shared
            # with other work builds events several times slower (seen at a load of 12).
            done = pool.starmap_async(_publish_share, jobs).get(60.0 + plan.replay_events / 200)
    if variant == SEALED and not report.value_sizes:
        report.value_sizes += done[0][1]
    return sum(count for count, _ in done), time.perf_counter() - started, processes


def _publish_share(
    settings: Settings, plan: Plan, share: tuple[int, int], variant: str
) -> tuple[int, list[int]]:
    """One pre-fill process: its share of the sessions; (events published, sample sizes)."""
    count = 0
    sizes: list[int] = []
    with variant_producer(settings, variant) as producer:
        chunks = chat_event_chunks(
            sessions=plan.replay_sessions,
            count=plan.replay_events,
            record_bytes=plan.record_bytes,
            codec=producer.codec,
            info=producer.info,
            seed=61,
            chunk=_CHUNK,
            share=share,
        )
        for chunk in chunks:
            if not sizes:
                sizes = [len(producer.encode(e)) for e in chunk[:1_000]]
            count += len(producer.publish_many(chunk))
    return count, sizes


def _rate(totals: Mapping[str, Any]) -> float:
    """Records over the rebuild phase: partitions assigned → last record read or applied."""
    return float(totals["events"]) / (float(totals["done"]) - float(totals["assigned"]))


def replay(stack: BenchStack, plan: Plan, report: Report) -> None:
    """The replay scenario: see the module docstring."""
    variants = sealing_variants(plan)
    scenario = {variant: variant_settings(stack, "replay", variant) for variant in variants}
    settings = scenario[SEALED]
    say(f"replay: publishing {plan.replay_events:,} events over {plan.replay_sessions:,} sessions")
    events, prefill_s, processes = _prefill(settings, plan, report)
    say(f"replay: published in {prefill_s:.1f} s ({events / prefill_s:,.0f} events/s)")
    if CLEAR in variants:
        clear_events, clear_s, _ = _prefill(scenario[CLEAR], plan, report, CLEAR)
        say(f"replay: published again without a keyring (the sealing-off twin) in {clear_s:.1f} s")
    tools, missing = find_tools(stack, "replay")
    # Without the tool, its rows are left out rather than printed empty.
    cp = (
        report.metric("replay", _ROW_CP, "events/s", "the bound: reading only")
        if tools is not None
        else None
    )
    read = report.metric("replay", _ROW_READ, "events/s")
    decode = report.metric("replay", _ROW_DECODE, "events/s")
    memory = report.metric("replay", _ROW_MEMORY, "events/s")
    one = report.metric("replay", _ROW_ONE, "events/s")
    rebuilt = report.metric(
        "replay", f"{_ROW_REBUILD}, {_WORKERS} worker processes", "events/s", TARGET_REPLAY
    )
    cpu = report.metric("replay", "rebuild CPU per event, all its processes", "µs")
    share = (
        report.metric("replay", "rebuild ÷ ConsumerPerformance", "share", TARGET_SHARE)
        if cp is not None
        else None
    )
    headline = (
        f"events/s, `chatlog replay --workers {_WORKERS}` of {plan.replay_events:,} events "
        f"from offset 0 into Redis: partitions assigned → last applied"
    )
    report.compare("replay", headline, rebuilt, cp_peer(missing), cp)
    twin = report.measure("replay", f"{_ROW_REBUILD}, {CLEAR}", "events/s")
    if CLEAR in variants:
        report.twin("replay", headline, rebuilt, twin)
    rss = peak_memory(report, "replay", events=plan.replay_events, sessions=plan.replay_sessions)
    startup = report.metric("replay", "rebuild start-up: spawn → partitions assigned", "s")
    timeout = 60.0 + plan.replay_events / 2_000  # 560 s for a million: 5 times the slowest seen
    seen: dict[str, list[dict[str, Any]]] = {
        "rebuild": [],
        "one": [],
        "memory": [],
        "read": [],
        "clear": [],
    }
    cp_runs: list[ConsumerPerformanceResult] = []
    busy: list[dict[str, float]] = []

    # The broker's page cache and code are warm after the pre-fill anyway; one reading
    # more, unmeasured, makes sure every row starts from the same state.
    warmup = stack.repetition(settings, "warmup")
    stack.groups.append(warmup.projector_group)
    warm = _child("read", warmup, stack, timeout=timeout).totals()
    say(f"replay warm-up (Python consumer): {_rate(warm):,.0f} events/s")
    for n in range(1, plan.repeat + 1):
        rep = stack.repetition(settings, f"r{n}")
        line = [f"replay r{n}:"]
        if cp is not None and tools is not None:
            result, _ = tools.consumer_performance(
                settings,
                group=f"{rep.projector_group}-cp",
                records=events,
                fetch=REPLAY_FETCH,
                timeout=timeout,
            )
            cp.add(result.number("fetch.nMsg.sec"))
            cp_runs.append(result)
            line.append(f"ConsumerPerformance {cp.values[-1]:,.0f}/s,")
        stack.groups.append(rep.projector_group)  # the bare consumer's (never committed)
        reading = _child("read", rep, stack, timeout=timeout).totals()
        read.add(_rate(reading))
        decode.add(reading["decoded"] / reading["decode_s"])
        seen["read"].append(reading)
        # Each a prefix of its own: a flip must not leave a live generation to the next.
        in_memory = _rebuilt("memory", stack, settings, f"r{n}-memory", events, timeout)[1]
        memory.add(_rate(in_memory))
        seen["memory"].append(in_memory)
        alone = _rebuilt("rebuild", stack, settings, f"r{n}-one", events, timeout)[1]
        one.add(_rate(alone))
        seen["one"].append(alone)
        finished, totals = _rebuilt(
            "rebuild", stack, settings, f"r{n}", events, timeout, workers=_WORKERS
        )
        rebuilt.add(_rate(totals))
        rss.add(_largest_process_kib(totals) / 1024)
        cpu.add((totals["cpu_s"] + totals["workers_cpu_s"]) / events * 1e6)
        startup.add(totals["assigned"] - finished.spawned)
        busy.append(finished.busy)
        seen["rebuild"].append(totals)
        if share is not None and cp is not None:
            share.add(rebuilt.values[-1] / cp.values[-1])
        if CLEAR in variants and n <= plan.clear_repetitions:
            # The twin, right after: the same rebuild of the same events published clear.
            clear = _rebuilt(
                "rebuild", stack, scenario[CLEAR], f"r{n}", clear_events, timeout, workers=_WORKERS
            )[1]
            twin.add(_rate(clear))
            seen["clear"].append(clear)
        line.append(
            f"Python consumer {read.values[-1]:,.0f}/s, decode {decode.values[-1]:,.0f}/s, "
            f"in memory {memory.values[-1]:,.0f}/s, rebuild in one process "
            f"{one.values[-1]:,.0f}/s, with {_WORKERS} workers {rebuilt.values[-1]:,.0f}/s "
            f"({rss.values[-1]:,.0f} MB peak, {cpu.values[-1]:.0f} µs CPU an event)"
            + (f"; sealing off {twin.values[-1]:,.0f}/s" if len(seen["clear"]) == n else "")
        )
        say(" ".join(line))
    report.notes.extend(
        _notes(
            plan,
            (events, prefill_s, processes),
            seen,
            cp_runs,
            busy,
            tools=tools.jars if tools is not None else None,
            missing=missing,
        )
    )


def _rebuilt(
    mode: str,
    stack: BenchStack,
    settings: Settings,
    rep: str,
    events: int,
    timeout: float,
    *,
    workers: int = 1,
) -> tuple[Finished, dict[str, Any]]:
    """One rebuild child (`mode` rebuild or memory) into repetition `rep`'s own prefix,
    with the writers' key directory copied in first, as deployed; its keys removed after."""
    into = stack.repetition(settings, rep)
    copy_key_directory(stack.redis, settings.redis_prefix, into.redis_prefix)
    finished = _child(mode, into, stack, timeout=timeout, workers=workers)
    stack.forget_keys(into.redis_prefix)
    totals = finished.totals()
    _check(totals, events)
    return finished, totals


def _check(totals: Mapping[str, Any], events: int) -> None:
    if totals["events"] != events or totals["dead_letters"]:
        raise AssertionError(
            f"the {totals['mode']} replay applied {totals['events']:,} of {events:,} events, "
            f"{totals['dead_letters']} dead letters"
        )


def _cpu_us(runs: Sequence[Mapping[str, Any]], events: int) -> float:
    """The median CPU an event of `runs`, their worker processes included, in µs."""
    if not runs:
        return float("nan")
    return statistics.median(
        (run["cpu_s"] + run.get("workers_cpu_s", 0.0)) / events * 1e6 for run in runs
    )


def _largest_process_kib(totals: Mapping[str, Any]) -> int:
    """The peak of the replay's largest process: the parent, or one of its workers."""
    return max([int(totals["peak_rss_kib"]), *totals.get("workers_peak_rss_kib", [])])


def _workers(runs: Sequence[Mapping[str, Any]]) -> str:
    """The worker processes' peaks (the largest, and all of them added), if `rebuild`
    started workers."""
    peaks = [run.get("workers_peak_rss_kib", []) for run in runs]
    if not any(peaks):
        return ""
    largest = statistics.median(max(p, default=0) for p in peaks) / 1024
    added = (
        statistics.median(sum(p) + run["peak_rss_kib"] for p, run in zip(peaks, runs, strict=True))
        / 1024
    )
    return (
        f"; its largest worker process {largest:,.0f} MB (VmHWM, sampled from /proc every "
        f"0.2 s), the parent and all its workers added {added:,.0f} MB"
    )


def _notes(
    plan: Plan,
    prefill: tuple[int, float, int],
    seen: Mapping[str, Sequence[Mapping[str, Any]]],
    cp_runs: Sequence[ConsumerPerformanceResult],
    busy: Sequence[dict[str, float]],
    *,
    tools: Path | None,
    missing: str,
) -> list[str]:
    def median(mode: str, key: str) -> float:
        values = [float(run[key]) for run in seen[mode] if run.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    def mb(mode: str, key: str) -> float:
        return median(mode, key) / 1024

    events, prefill_s, processes = prefill
    rebuild_calls = [run["returned"] - run["called"] for run in seen["rebuild"]]
    first_ms = [(run["first_batch"] - run["assigned"]) * 1000 for run in seen["rebuild"]]
    read_mb_s = [run["bytes"] / 2**20 / (run["done"] - run["assigned"]) for run in seen["read"]]
    notes = [
        f"replay: {events:,} events over {plan.replay_sessions:,} sessions, pre-filled once "
        f"by {processes} process{'es' if processes > 1 else ''} with publish_many, "
        f"{_CHUNK:,} at a time ({prefill_s:.0f} s, {events / prefill_s:,.0f} events/s, "
        f"building the events included); each repetition reads the whole topic from offset "
        f"0 once per reader, each in a process of its own, in the order of the table; every "
        f"rate is from the partitions assigned to the last record read or applied"
    ]
    peers = []
    if cp_runs:
        fetch_mb = statistics.median(r.number("fetch.MB.sec") for r in cp_runs)
        whole = statistics.median(r.number("nMsg.sec") for r in cp_runs)
        join = statistics.median(r.number("rebalance.time.ms") for r in cp_runs)
        peers.append(
            f"ConsumerPerformance ({CONSUMER_PERFORMANCE}, kafka-tools jars from Maven Central "
            f"in {tools}; "
            f"--num-records {events} --timeout 30000 --fetch-size "
            f"{REPLAY_FETCH['max.partition.fetch.bytes']} --command-property "
            f"fetch.max.bytes={REPLAY_FETCH['fetch.max.bytes']}, the replay consumer's "
            f"fetch sizes; {JVM_OPTIONS[0]} as kafka-consumer-perf-test.sh): "
            f"{fetch_mb:,.1f} MB/s (fetch.MB.sec), {whole:,.0f} events/s with its "
            f"{join:,.0f} ms group join counted (nMsg.sec)"
        )
    else:
        peers.append(f"ConsumerPerformance not run: {missing}")
    peers.append(
        f"Python consumer: {statistics.median(read_mb_s):,.1f} MB/s with the replay "
        f"consumer's fetch sizes, using {median('read', 'cpu_share'):.0%} of a core; decode "
        f"only: EventCodec.decode of the first {median('read', 'decoded'):,.0f} values it "
        f"read, after the reading"
    )
    notes.append("replay, the readers: " + "; ".join(peers))
    notes.append(
        f"replay, the rebuild: `rebuild(settings, handover_s=0, keep_old=False, "
        f"workers={_WORKERS})` into a fresh prefix per repetition (nothing live: no catch-up; "
        f"the writers' key directory copied into it first, as deployed), the phase's start "
        f"and end taken from its ReplayProgress reports (with workers, the parent's, from "
        f"their progress marks every 0.2 s); the whole call "
        f"{statistics.median(rebuild_calls):.1f} s (start-up and flip included); first "
        f"batch applied {statistics.median(first_ms):,.0f} ms after the assignment; peak "
        f"resident memory of the parent {mb('rebuild', 'peak_rss_kib'):,.0f} MB, of which "
        f"{mb('rebuild', 'peak_rss_before_kib'):,.0f} MB before it started (interpreter and "
        f"imports){_workers(seen['rebuild'])}; in one process "
        f"{mb('one', 'peak_rss_kib'):,.0f} MB; the in-memory variant's "
        f"{mb('memory', 'peak_rss_kib'):,.0f} MB (its store holds every view); CPU an event, "
        f"all processes, from the start of each process to its end: one process "
        f"{_cpu_us(seen['one'], events):.0f} µs, in-memory {_cpu_us(seen['memory'], events):.0f} "
        f"µs; CPU from the first batch to the last: one process "
        f"{median('one', 'cpu_share'):.0%} of a core, in-memory "
        f"{median('memory', 'cpu_share'):.0%}; over the rebuild's life with workers (100% = "
        f"one core): {CpuMeter.describe(median_shares(busy))}; garbage collector: one process "
        f"{GcPauses.describe(seen['one'])}; in-memory {GcPauses.describe(seen['memory'])}"
    )
    if seen["clear"]:
        notes.append(
            f"replay, sealing off (the twin): the same events published again without a "
            f"keyring (neither sealed nor redacted) into a topic of their own, rebuilt the "
            f"same way ({_WORKERS} workers) right after the sealed rebuild in the first "
            f"{len(seen['clear'])} repetition(s); CPU an event, all processes: "
            f"{_cpu_us(seen['clear'], events):.0f} µs (sealed: "
            f"{_cpu_us(seen['rebuild'], events):.0f} µs)"
        )
    return notes
