"""Context reads (`reads`): how long reading a session's prompt context takes.

Sessions of 20, 100 and 1,000 messages are projected, and written to the peers
(`bench.peers`) as well; `ChatLog.context` is timed beside LangChain's
`RedisChatMessageHistory.messages` and a plain Redis list's LRANGE, with the bare Redis
round trip of chatlog's read as a detail row. The same sessions serve the memory scenario
(`bench.scenarios.memory`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.infra import (
    CLEAR,
    SEALED,
    BenchStack,
    ReadModelProbe,
    publish_bulk,
    running,
    sealing_variants,
    variant_producer,
    variant_settings,
)
from bench.measure import CpuMeter, frozen_heap, median_shares, percentile
from bench.peers import (
    LangChainHistory,
    PlainRedisList,
    langchain_available,
    langchain_peer,
    open_peers,
)
from bench.plan import Plan
from bench.report import Metric, Report, say
from bench.scenarios.memory import redis_memory
from bench.workload import Traffic, Turn, chat_events, last_positions, user_of
from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.projections.opening import CACHED_MESSAGES, ViewOpener
from chatlog.projections.redis_reader import opener_of
from chatlog.schemas.events import ConversationEvent, MessageAppended

__all__ = ["context_reads"]

TARGET_READ = "p99 <= 2 ms"
# The rows of a reader that keeps no opened message between reads.
COLD = "every message opened (a reader that keeps none)"


_LANGCHAIN_READ = "LangChain RedisChatMessageHistory.messages"


_PLAIN_READ = "plain Redis list: LRANGE + json.loads"


@dataclass
class _ReadRows:
    """The rows one session size fills: chatlog's and each peer's percentiles."""

    context: tuple[Metric, Metric]
    langchain: tuple[Metric, Metric]
    plain: tuple[Metric, Metric]
    raw: Metric
    # The same reads by a reader that keeps nothing opened between reads (every message
    # decoded and opened at every read, as at a session's first read in a process).
    cold: tuple[Metric, Metric]
    # The same reads of the same messages published with sealing off (`--sealing both`).
    clear: tuple[Metric, Metric] | None = None


def context_reads(
    stack: BenchStack, plan: Plan, report: Report, *, timed: bool = True, memory: bool = True
) -> None:
    """Scenario 3: reads of sessions of 20, 100 and 1,000 messages, and what Redis keeps.

    With `timed` False only the memory rows are filled; with `memory` False only the reads.
    """
    variants = sealing_variants(plan) if timed else (SEALED,)
    sizes = [size for size, _ in plan.reads]
    per_session = [size for size in sizes for _ in range(plan.read_sessions)]
    blocked = langchain_available()
    rows = _read_rows(report, sizes, blocked, clear=CLEAR in variants) if timed else {}
    scenario = {variant: variant_settings(stack, "reads", variant) for variant in variants}
    settings = scenario[SEALED]
    logs: dict[str, ChatLog] = {}
    langchain, plain = open_peers(settings, stack.redis, prefix=f"{stack.redis_root}:reads")
    try:
        for variant in variants:
            producer = variant_producer(scenario[variant], variant)
            logs[variant] = ChatLog(producer=producer, reader=wiring.reader(scenario[variant]))
        producer = logs[SEALED].producer
        # Built once, published by each variant's producer: the same messages sealed and clear.
        traffic = chat_events(
            sessions=len(per_session),
            count=0,
            record_bytes=plan.record_bytes,
            codec=producer.codec,
            info=producer.info,
            per_session=per_session,
        )
        if not report.value_sizes:
            report.value_sizes += [len(producer.encode(e)) for e in traffic.events[:1_000]]
        say(
            f"context read: projecting {len(traffic.events):,} events ({', '.join(variants)}), "
            f"and writing the peers"
        )
        for variant, log in logs.items():
            expected = last_positions(traffic.events, publish_bulk(log.producer, traffic.events))
            with running(scenario[variant], stack) as projector:
                projector.wait_assigned()
                if variant == SEALED:  # meanwhile, the same messages to the peers
                    for event in traffic.events:
                        turn = _turn(event)
                        plain.add(turn)
                        if langchain is not None:
                            langchain.add(turn)
                ReadModelProbe(stack.redis, scenario[variant].redis_prefix).wait_applied(
                    expected, projector, timeout=120
                )
        log = logs[SEALED]
        by_size = {size: [i for i, n in enumerate(per_session) if n == size] for size in sizes}
        kept = settings.window + settings.max_overflow
        for variant_log in logs.values():
            _check_reads(variant_log, langchain, plain, traffic, by_size, kept)
        if memory:
            redis_memory(report, log.reader, langchain, plain, traffic, by_size, blocked)
        if not timed:
            return
        meter = CpuMeter.for_stack(stack)
        busy: list[dict[str, float]] = []
        counts = dict(plan.reads)

        def chatlog_read(session_id: str, user_id: str) -> object:
            return log.context(session_id, user_id=user_id)

        def clear_read(session_id: str, user_id: str) -> object:
            return logs[CLEAR].context(session_id, user_id=user_id)

        # The same reader on the same connection, keeping nothing opened between reads.
        cold = ChatLog(producer=log.producer, reader=wiring.reader(settings, log.reader.client))
        cold.reader.opener = ViewOpener(opener_of(log.reader.opener).keyring, cached_messages=0)

        def cold_read(session_id: str, user_id: str) -> object:
            return cold.context(session_id, user_id=user_id)

        def plain_read(session_id: str, user_id: str) -> object:
            return plain.read(session_id)

        def langchain_read(session_id: str, user_id: str) -> object:
            return langchain.read(session_id) if langchain is not None else None

        keys = log.reader.keys()

        def round_trip(session_id: str, user_id: str) -> object:
            pipe = log.reader.client.pipeline(transaction=True)
            pipe.hgetall(keys.meta(session_id))
            pipe.lrange(keys.messages(session_id), 0, -1)
            return pipe.execute()

        with frozen_heap():
            for n in range(1, plan.repeat + 1):
                meter.start()
                for size, indexes in by_size.items():
                    calls = [(traffic.sessions[i], user_of(i)) for i in indexes]
                    reads, warmup = counts[size], max(10, counts[size] // 10)
                    row = rows[size]
                    _add(row.context, _time_calls(chatlog_read, calls, reads, warmup))
                    if row.clear is not None:
                        _add(row.clear, _time_calls(clear_read, calls, reads, warmup))
                    _add(row.cold, _time_calls(cold_read, calls, reads, warmup))
                    raw_ms = _time_calls(round_trip, calls, reads, warmup)
                    row.raw.add(percentile(raw_ms, 50))
                    if langchain is not None:
                        _add(row.langchain, _time_calls(langchain_read, calls, reads, warmup))
                    _add(row.plain, _time_calls(plain_read, calls, reads, warmup))
                    say(
                        f"context read r{n}, {size:,} msgs: chatlog p50 "
                        f"{row.context[0].values[-1]:.3f} ms; LangChain p50 "
                        f"{_last_ms(row.langchain[0])}; plain list p50 "
                        f"{row.plain[0].values[-1]:.3f} ms"
                    )
                busy.append(meter.busy())
    finally:
        for variant_log in logs.values():
            variant_log.close()
        if langchain is not None:
            langchain.close()
        stack.forget_keys(f"{stack.redis_root}:reads")
    report.notes.append(
        f"context read: {', '.join(f'{c:,} ({s:,} msgs)' for s, c in plan.reads)} timed "
        f"reads per store and repetition after a tenth as many warm-up reads, round-robin "
        f"over {plan.read_sessions} sessions per size, one thread, projector stopped. "
        f"chatlog keeps the window ({settings.window}) and up to {settings.max_overflow} "
        f"older messages not summarized yet in Redis, so `ChatLog.context` of the "
        f"1,000-message session returns {settings.window + settings.max_overflow} messages "
        f"(no summarizer ran; with one, they would be a summary and fewer than "
        f"{settings.summary_threshold} turns), the peers all 1,000. `ChatLog.context` is "
        f"a MULTI (HGETALL + LRANGE) and the messages decoded into a `Context`; the "
        f"round-trip row is the same MULTI without decoding. A reader keeps the messages "
        f"each session's last read opened (`OpenedMessages`, up to "
        f"{CACHED_MESSAGES:,}), so after the warm-up each timed read opens none; the rows "
        f"'{COLD}' are the same reads by a reader that keeps none (`cached_messages=0`), "
        f"timed in the same repetitions. LangChain: `.messages` (LRANGE, "
        f"json.loads, `messages_from_dict`); plain list: LRANGE and json.loads per item"
        + (
            "; sealing off (`--sealing both`): the same messages published without a keyring "
            "into a topic and read-model of their own, read in the same repetitions right "
            "after the sealed ones"
            if CLEAR in variants
            else ""
        )
        + (f"; LangChain blocked: {blocked}" if blocked else "")
        + (
            f"; CPU (median, 100% = one core): {CpuMeter.describe(median_shares(busy))}"
            if timed
            else ""
        )
    )


def _read_rows(
    report: Report, sizes: Sequence[int], blocked: str | None, *, clear: bool
) -> dict[int, _ReadRows]:
    rows: dict[int, _ReadRows] = {}
    for size in sizes:
        msgs = f"{size:,}-message session"
        context = (
            report.measure("context read", f"ChatLog.context p50, {msgs}", "ms"),
            report.metric("context read", f"ChatLog.context p99, {msgs}", "ms", TARGET_READ),
        )
        langchain = (
            report.measure("context read", f"LangChain p50, {msgs}", "ms"),
            report.measure("context read", f"LangChain p99, {msgs}", "ms"),
        )
        plain = (
            report.measure("context read", f"plain p50, {msgs}", "ms"),
            report.measure("context read", f"plain p99, {msgs}", "ms"),
        )
        raw = report.metric("context read", f"chatlog Redis round trip only, p50, {msgs}", "ms")
        twin = (
            (
                report.measure("context read", f"ChatLog.context p50, {msgs}, clear", "ms"),
                report.measure("context read", f"ChatLog.context p99, {msgs}, clear", "ms"),
            )
            if clear
            else None
        )
        cold = (
            report.measure("context read", f"ChatLog.context p50, {msgs}, cold", "ms"),
            report.measure("context read", f"ChatLog.context p99, {msgs}, cold", "ms"),
        )
        rows[size] = _ReadRows(context, langchain, plain, raw, cold, twin)
        for k, q in enumerate(("p50", "p99")):
            for metric, ours in ((f"{q}, {msgs}", context[k]), (f"{q}, {msgs}, {COLD}", cold[k])):
                report.compare(
                    "context read",
                    metric,
                    ours,
                    langchain_peer(_LANGCHAIN_READ, blocked),
                    langchain[k] if blocked is None else None,
                    better="lower",
                )
                if ours is context[k]:
                    report.compare(
                        "context read", metric, ours, _PLAIN_READ, plain[k], better="lower"
                    )
            if twin is not None:
                report.twin("context read", f"{q}, {msgs}", context[k], twin[k], better="lower")
        group = f"{size:,} msgs"
        for store, pair in (("chatlog", context), ("LangChain", langchain), ("plain list", plain)):
            if store != "LangChain" or blocked is None:
                for k, q in enumerate(("p50", "p99")):
                    report.chart("context read", group, f"{store} {q}", pair[k])
    return rows


def _turn(event: ConversationEvent) -> Turn:
    payload = event.payload
    if not isinstance(payload, MessageAppended):
        raise TypeError(f"not a message: {type(payload).__name__}")
    return Turn(event.session_id, event.user_id, payload.role.value, payload.content)


def _check_reads(
    log: ChatLog,
    langchain: LangChainHistory | None,
    plain: PlainRedisList,
    traffic: Traffic,
    by_size: dict[int, list[int]],
    kept: int,
) -> None:
    """Every store returns the session's messages (chatlog: the ones it keeps)."""
    for size, indexes in by_size.items():
        for i in indexes:
            session_id = traffic.sessions[i]
            got = len(log.context(session_id, user_id=user_of(i)).messages)
            if got != min(size, kept):
                raise AssertionError(f"{session_id}: {got} messages, not {min(size, kept)}")
            for name, store in (("LangChain", langchain), ("plain list", plain)):
                if store is not None and len(store.read(session_id)) != size:
                    raise AssertionError(f"{name} {session_id}: not {size} messages")


def _add(pair: tuple[Metric, Metric], timings: Sequence[float]) -> None:
    pair[0].add(percentile(timings, 50))
    pair[1].add(percentile(timings, 99))


def _last_ms(metric: Metric) -> str:
    return f"{metric.values[-1]:.3f} ms" if metric.values else "n/a"


def _time_calls(
    read: Callable[[str, str], object],
    calls: Sequence[tuple[str, str]],
    reads: int,
    warmup: int,
) -> list[float]:
    """`read(session, user)` round-robin over `calls`; each timed read in ms."""
    timings = []
    for n in range(warmup + reads):
        session_id, user_id = calls[n % len(calls)]
        started = time.perf_counter()
        read(session_id, user_id)
        if n >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
    return timings
