"""Publish-to-visible latency (`latency`): how soon a sent message is in the prompt.

A publisher thread paces `producer.send` at three steady rates while a projector process
runs; for a sample of the events a pool of waiter threads times from just before the send
until `reader.context(after=position)` returns. The pool is unbounded in queue length, so
slow reads never hold the publisher back. Beside it, the limit: Kafka's EndToEndLatency
(one record at a time, sent then polled back), run with the projector stopped.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from threading import Thread

from bench.infra import PARTITIONS, BenchStack, running
from bench.kafka_tools import KafkaTools, find_tools
from bench.measure import CpuMeter, frozen_heap, median_shares, percentile
from bench.plan import Plan
from bench.projector_child import gc_note
from bench.report import WHOLE_MS, Metric, Report, say
from bench.workload import chat_events, session_name
from chatlog import wiring
from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.projections.redis_reader import RedisReader
from chatlog.schemas.errors import ChatlogError
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.position import Position

__all__ = ["paced_run", "visibility"]

_WAITERS = 32


_READ_TIMEOUT_S = 5.0


TARGET_VISIBLE = "p99 <= 25 ms at 2,000 events/s"


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled event: when it was sent (perf_counter), and seconds from then until
    acknowledged and until visible (None: not visible in time)."""

    sent: float
    acked_s: float
    visible_s: float | None
    error: str | None = None


@dataclass
class _RateRows:
    """The rows one publishing rate fills."""

    p50: Metric
    p99: Metric
    p999: Metric
    mean: Metric
    achieved: Metric
    ack50: Metric
    ack99: Metric


def visibility(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario 2: paced sends at three rates; sampled events read back with `context(after=)`."""
    settings = stack.scenario("latency")
    tools, missing = find_tools(stack, "publish→visible")
    limit = {
        name: report.measure("publish→visible", f"EndToEndLatency {name}", WHOLE_MS)
        for name in ("p50", "p99", "p99.9")
    }
    limit["mean"] = report.measure("publish→visible", "EndToEndLatency mean", "ms")
    peer = (
        "Kafka EndToEndLatency (limit; one record at a time)"
        if tools is not None
        else f"EndToEndLatency not run: {missing}"
    )
    rows: dict[float, _RateRows] = {}
    for rate, _ in plan.rates:
        at = f"at {rate:,.0f} events/s"
        rows[rate] = _RateRows(
            p50=report.measure("publish→visible", f"p50 {at}", "ms"),
            # At 2,000 events/s, the projection issue's target: in the details too.
            p99=(
                report.metric("publish→visible", f"p99 {at}", "ms", TARGET_VISIBLE)
                if rate == 2_000
                else report.measure("publish→visible", f"p99 {at}", "ms")
            ),
            p999=report.measure("publish→visible", f"p99.9 {at}", "ms"),
            mean=report.measure("publish→visible", f"mean {at}", "ms"),
            achieved=report.metric(
                "publish→visible", f"achieved send rate {at}", "events/s", f"{rate:,.0f} events/s"
            ),
            ack50=report.metric("publish→visible", f"of which send → broker ack, p50 {at}", "ms"),
            ack99=report.metric("publish→visible", f"of which send → broker ack, p99 {at}", "ms"),
        )
        for name in ("p50", "p99", "p99.9", "mean"):
            ours = getattr(rows[rate], name.replace(".", ""))
            report.compare(
                "publish→visible",
                f"{name} {at}",
                ours,
                peer,
                limit[name] if tools is not None else None,
                better="lower",
            )
            if name != "mean":
                report.chart("publish → visible", f"{rate:,.0f}/s", name, ours)
    for name in ("p50", "p99", "p99.9"):
        if tools is not None:
            report.chart("publish → visible", "Kafka EndToEndLatency", name, limit[name])
    failures = 0
    pooled: dict[float, list[float]] = {rate: [] for rate, _ in plan.rates}
    samples_total = {rate: 0 for rate, _ in plan.rates}
    busy: dict[float, list[dict[str, float]]] = {rate: [] for rate, _ in plan.rates}
    first = 0
    with (
        running(settings, stack) as projector,
        wiring.producer(settings, flush_on_sigterm=False) as producer,
    ):
        projector.wait_assigned()
        meter = CpuMeter.for_stack(stack, projector=projector.pid)
        reader = wiring.reader(settings)
        try:
            for n in range(1, plan.repeat + 1):
                for k, (rate, every) in enumerate(plan.rates):
                    row = rows[rate]
                    duration = max(plan.min_duration_s, plan.latency_samples * every / rate)
                    count = math.ceil(rate * (plan.warmup_s + duration))
                    sessions = max(100, count // 10)
                    # Sessions of their own for each rate and repetition: every read is of
                    # a session of a few messages, whatever ran before.
                    traffic = chat_events(
                        sessions=sessions,
                        count=count,
                        record_bytes=plan.record_bytes,
                        codec=producer.codec,
                        info=producer.info,
                        seed=100 * n + k,
                        first_session=first,
                    )
                    first += sessions
                    if not report.value_sizes:
                        report.value_sizes += [
                            len(producer.encode(e)) for e in traffic.events[:1_000]
                        ]
                    with frozen_heap():
                        meter.start()
                        achieved, samples = paced_run(
                            producer,
                            reader,
                            traffic.events,
                            rate=rate,
                            every=every,
                            warmup_s=plan.warmup_s,
                            publishers=plan.publishers,
                        )
                        busy[rate].append(meter.busy())
                    projector.check_alive()
                    visible = [s.visible_s * 1000 for s in samples if s.visible_s is not None]
                    acked = [s.acked_s * 1000 for s in samples if not math.isnan(s.acked_s)]
                    failures += sum(1 for s in samples if s.visible_s is None)
                    samples_total[rate] += len(samples)
                    pooled[rate] += visible
                    row.p50.add(percentile(visible, 50))
                    row.p99.add(percentile(visible, 99))
                    row.mean.add(statistics.fmean(visible) if visible else math.nan)
                    row.achieved.add(achieved)
                    row.ack50.add(percentile(acked, 50))
                    row.ack99.add(percentile(acked, 99))
                    say(
                        f"publish→visible r{n} at {rate:,.0f}/s: p50 {row.p50.values[-1]:.1f} ms, "
                        f"p99 {row.p99.values[-1]:.1f} ms, p99.9 {percentile(visible, 99.9):.1f} "
                        f"ms ({len(visible):,} samples), rate {achieved:,.0f}/s; "
                        f"CPU {CpuMeter.describe(busy[rate][-1])}"
                    )
        finally:
            reader.client.close()
    for rate, visible in pooled.items():
        # One p99.9 over every repetition's samples: a repetition alone has too few.
        rows[rate].p999.add(percentile(visible, 99.9))
    limit_note = _end_to_end(stack, plan, report, tools, limit) if tools is not None else missing
    per_rate = "; ".join(
        f"{rate:,.0f}/s: every {every} event(s) sampled, {samples_total[rate]:,} samples, "
        f"CPU {CpuMeter.describe(median_shares(busy[rate]))}"
        for rate, every in plan.rates
    )
    report.notes.append(
        f"publish→visible: per rate and repetition, a warm-up of {plan.warmup_s:g} s (not "
        f"measured), then at least {plan.min_duration_s:g} s and "
        f"{plan.latency_samples:,} sampled events, on sessions of their own; p50, p99 and the "
        f"mean per repetition, p99.9 once over the samples of all repetitions pooled; {failures} "
        f"sampled events not visible within {_READ_TIMEOUT_S:g} s; {plan.publishers} "
        f"publisher thread(s), {_WAITERS} waiter threads in the benchmark process, one "
        f"projector process; per rate (100% CPU = one core): {per_rate}"
        f"{gc_note([projector.totals])}. EndToEndLatency: {limit_note}"
    )


def _end_to_end(
    stack: BenchStack,
    plan: Plan,
    report: Report,
    tools: KafkaTools,
    limit: dict[str, Metric],
) -> str:
    """Kafka's EndToEndLatency, with the projector stopped; returns the note on it."""
    settings = stack.scenario("latency_limit")
    size = round(statistics.mean(report.value_sizes)) if report.value_sizes else 200
    key = len(session_name(0))
    # A first run warms the broker and the page cache; its numbers are not used.
    tools.end_to_end_latency(
        settings,
        records=max(100, plan.end_to_end_records // 10),
        record_size=size,
        key_size=key,
        timeout=120,
    )
    busy = []
    for n in range(1, plan.repeat + 1):
        result, finished = tools.end_to_end_latency(
            settings,
            records=plan.end_to_end_records,
            record_size=size,
            key_size=key,
            timeout=120 + plan.end_to_end_records / 100,
        )
        limit["p50"].add(result.p50_ms)
        limit["p99"].add(result.p99_ms)
        limit["p99.9"].add(result.p999_ms)
        limit["mean"].add(result.avg_ms)
        busy.append(finished.busy)
        say(
            f"publish→visible r{n}, EndToEndLatency: mean {result.avg_ms:.2f} ms, p50 "
            f"{result.p50_ms} ms, p99 {result.p99_ms} ms, p99.9 {result.p999_ms} ms "
            f"(whole ms)"
        )
    return (
        f"`--num-records {plan.end_to_end_records} --producer-acks all --record-size {size} "
        f"--record-key-size {key}` on a topic of {PARTITIONS} partitions, with no projector "
        f"running, after an unmeasured run of {max(100, plan.end_to_end_records // 10)}; "
        f"it sends one record (linger.ms 0, no compression), waits for the ack, then polls "
        f"it back (fetch.max.wait.ms 0) before sending the next, so it runs at whatever "
        f"rate that round trip allows (about 1,000/s here), not at a steady rate; its "
        f"percentiles are whole milliseconds, truncated (< 1 ms means under one; 6-7 ms "
        f"means it printed 6), its mean is exact, and its first records (connections, JIT) "
        f"are in its numbers; CPU (median, 100% = one core): "
        f"{CpuMeter.describe(median_shares(busy))}"
    )


def paced_run(
    producer: ConversationProducer,
    reader: RedisReader,
    events: Sequence[ConversationEvent],
    *,
    rate: float,
    every: int,
    warmup_s: float,
    publishers: int,
) -> tuple[float, list[Sample]]:
    """Send `events` on a fixed schedule; returns the achieved rate and measured samples.

    Event i is due at start + i/rate. A publisher that falls behind sends at once rather
    than skipping, and the time is taken just before each send, so a late send shows in
    the achieved rate, not as latency. Every `every`-th event is sampled; those sent in
    the first `warmup_s` seconds are not measured.
    """
    sent_at = [math.nan] * len(events)
    start = time.perf_counter() + 0.05
    waiters = ThreadPoolExecutor(max_workers=_WAITERS, thread_name_prefix="bench-wait")
    sampled: list[tuple[int, Future[Sample]]] = []
    failed: list[BaseException] = []

    def publish(first: int) -> None:
        try:
            for i in range(first, len(events), publishers):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                future = producer.send(events[i])
                sent_at[i] = sent
                if i % every == 0:
                    waiter = waiters.submit(_wait_visible, reader, events[i], future, sent)
                    sampled.append((i, waiter))
        except BaseException as exc:  # a thread's exception would vanish: hand it over
            failed.append(exc)

    threads = [Thread(target=publish, args=(k,), name=f"bench-pub-{k}") for k in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        waiters.shutdown(wait=True, cancel_futures=True)
        raise failed[0]
    measure_from = start + warmup_s
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
