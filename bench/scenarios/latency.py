"""Publish-to-visible latency (`latency`): how soon a sent message is in the prompt.

A publisher process sends at three steady rates while a projector process runs; for a
sample of the events a pool of waiter threads in the benchmark process times from just
before the send until `reader.context(after=position)` returns. The pool is unbounded in
queue length, so slow reads never hold the publisher back. Then a sweep of rising rates
finds the saturation rate: where p99 passes 100 ms. Beside it, the limit: Kafka's
EndToEndLatency (one record at a time, sent then polled back), run with the projector
stopped.

Why a publisher process? Sending costs the Python client about 75 µs of CPU an event,
and building, sealing and encoding it about 90 µs more (measured on the 2-core machine):
one thread in the benchmark's process, sharing its GIL with the waiters, reached about
2,000 events/s, not the 4,000 it was asked for. So the events are built and encoded
(sealed) before each run, as EndToEndLatency's records are made before its clock starts
(the append scenario measures that part), and a process of its own hands the encoded
records to the producer on schedule; the achieved rate is reported beside each offered
one.

With `--sealing both` (the default), the first `Plan.clear_repetitions` repetitions end
with the sealing-off twin: the rates the goals name (`TARGETS`: 2,000 and 4,000 events/s)
and the sweep again, on events built the same way but encoded without a keyring, sent by
a publisher process of their own into a topic of their own, and projected by a projector
of its own, started for that part of the repetition only (so that it never runs beside
the sealed measurements).
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from threading import Thread
from typing import Any

from bench.infra import (
    CLEAR,
    PARTITIONS,
    SEALED,
    Alive,
    BenchStack,
    ProjectorProcess,
    ReadModelProbe,
    clear_producer,
    running,
    sealing_variants,
    variant_producer,
    variant_settings,
)
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
from chatlog.settings import Settings

__all__ = ["PublisherProcess", "paced_run", "visibility"]

_WAITERS = 32


_READ_TIMEOUT_S = 5.0


# Issue 19, goal 2.
TARGETS = {
    2_000.0: "p99 <= 3x EndToEndLatency's p99 at 2,000 events/s",
    4_000.0: "p99 <= 25 ms at 4,000 events/s",
}
SATURATED_MS = 100.0  # the sweep's bound: the rate where p99 passes it is the saturation
_SAMPLES_PER_S = 200  # as the plan's rates: measuring costs the same at every rate


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
    cpu: Metric


@dataclass
class _Lane:
    """What one variant's runs go through: the producer that encodes its events, its
    publisher process, projector, reader, CPU meter and progress marks."""

    producer: ConversationProducer
    publisher: PublisherProcess
    projector: ProjectorProcess
    reader: RedisReader
    meter: CpuMeter
    progress: _Progress
    first: int = 0  # the next run's first session number: each run has sessions of its own


def visibility(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario 2: paced sends at three rates; sampled events read back with `context(after=)`."""
    variants = sealing_variants(plan)
    scenario = {variant: variant_settings(stack, "latency", variant) for variant in variants}
    settings = scenario[SEALED]
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
            # Where the issue sets a target: in the details too.
            p99=(
                report.metric("publish→visible", f"p99 {at}", "ms", TARGETS[rate])
                if rate in TARGETS
                else report.measure("publish→visible", f"p99 {at}", "ms")
            ),
            p999=report.measure("publish→visible", f"p99.9 {at}", "ms"),
            mean=report.measure("publish→visible", f"mean {at}", "ms"),
            achieved=report.metric(
                "publish→visible", f"achieved send rate {at}", "events/s", f"{rate:,.0f} events/s"
            ),
            ack50=report.metric("publish→visible", f"of which send → broker ack, p50 {at}", "ms"),
            ack99=report.metric("publish→visible", f"of which send → broker ack, p99 {at}", "ms"),
            cpu=report.metric(
                "publish→visible",
                f"projector CPU per event {at} (the run and its catch-up)",
                "µs",
            ),
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
    saturation = report.metric(
        "publish→visible",
        f"saturation: the offered rate where p99 passes {SATURATED_MS:g} ms (sweep)",
        "events/s",
        "above 4,000 events/s",
    )
    # The twins: the rates the goals name, p50 and p99, and the saturation rate.
    twins: dict[float, tuple[Metric, Metric]] = {}
    clear_saturation = report.measure("publish→visible", f"saturation, {CLEAR}", "events/s")
    if CLEAR in variants:
        for rate in (rate for rate, _ in plan.rates if rate in TARGETS):
            at = f"at {rate:,.0f} events/s"
            twins[rate] = (
                report.measure("publish→visible", f"p50 {at}, {CLEAR}", "ms"),
                report.measure("publish→visible", f"p99 {at}, {CLEAR}", "ms"),
            )
            for sealed, clear in zip((rows[rate].p50, rows[rate].p99), twins[rate], strict=True):
                report.twin("publish→visible", sealed.name, sealed, clear, better="lower")
        report.twin("publish→visible", saturation.name, saturation, clear_saturation)
    clear_runs: list[str] = []
    failures = 0
    pooled: dict[float, list[float]] = {rate: [] for rate, _ in plan.rates}
    samples_total = {rate: 0 for rate, _ in plan.rates}
    busy: dict[float, list[dict[str, float]]] = {rate: [] for rate, _ in plan.rates}
    sweeps: list[str] = []
    with (
        running(settings, stack) as projector,
        variant_producer(settings, SEALED) as producer,
        PublisherProcess(settings) as publisher,
        contextlib.ExitStack() as twin_stack,
    ):
        projector.wait_assigned()
        meter = CpuMeter.for_stack(stack, projector=projector.pid, publisher=publisher.pid)
        progress = _Progress(ReadModelProbe(stack.redis, settings.redis_prefix))
        sealed = _Lane(producer, publisher, projector, wiring.reader(settings), meter, progress)
        if CLEAR in variants:
            # Idle until its part of a repetition: it waits on its pipe, using no CPU.
            clear_settings = scenario[CLEAR]
            clear_publisher = twin_stack.enter_context(PublisherProcess(clear_settings))
            clear_encoder = twin_stack.enter_context(variant_producer(clear_settings, CLEAR))
            clear_reader = wiring.reader(clear_settings)
            twin_stack.callback(clear_reader.client.close)
            clear_progress = _Progress(ReadModelProbe(stack.redis, clear_settings.redis_prefix))
            clear_first = 0

        def offer(
            lane: _Lane, rate: float, every: int, warmup_s: float, measured_s: float, seed: int
        ) -> Run:
            count = math.ceil(rate * (warmup_s + measured_s))
            sessions = max(100, count // 10)
            # Sessions of their own for each run: every read is of a session of a few
            # messages, whatever ran before.
            traffic = chat_events(
                sessions=sessions,
                count=count,
                record_bytes=plan.record_bytes,
                codec=producer.codec,
                info=producer.info,
                seed=seed,
                first_session=lane.first,
            )
            lane.first += sessions
            values = [lane.producer.encode(event) for event in traffic.events]
            if not report.value_sizes:
                report.value_sizes += [len(value) for value in values[:1_000]]
            with frozen_heap():
                lane.meter.start()
                achieved, samples = lane.publisher.run(
                    lane.reader, traffic.events, values, rate=rate, every=every, warmup_s=warmup_s
                )
                used = lane.meter.busy()
            lane.projector.check_alive()
            # The next run starts on a projector that has caught up, not on this one's
            # backlog.
            lane.progress.wait_for(lane.publisher.ends, lane.projector)
            # The projector's CPU for this run's events, whenever it projected them.
            cpu_s = lane.meter.seconds().get("projector", math.nan)
            return Run(achieved, samples, used, cpu_s / count * 1e6)

        def at_rate(lane: _Lane, n: int, k: int) -> Run:
            """Repetition `n`'s run at the plan's `k`-th rate (a twin's seed is the sealed
            run's: events built alike)."""
            rate, every = plan.rates[k]
            duration = max(plan.min_duration_s, plan.latency_samples * every / rate)
            return offer(lane, rate, every, plan.warmup_s, duration, seed=100 * n + k)

        def sweep(lane: _Lane, n: int) -> tuple[float, str]:
            """Repetition `n`'s sweep: the saturation rate (never over the bound within
            it: infinite, "not reached", a measurement rather than a missing one; the note
            gives the highest rate offered) and its steps."""
            crossing, steps = _sweep(
                functools.partial(offer, lane, warmup_s=plan.warmup_s / 2, measured_s=plan.sweep_s),
                plan.sweep_rates,
                seed=1_000 * n,
            )
            return math.inf if crossing is None else crossing, steps

        def twin_runs(n: int) -> str:
            """Repetition `n`'s sealing-off part: the goals' rates, then the sweep, by a
            projector started for it; what it saw, for the note."""
            nonlocal clear_first
            with running(clear_settings, stack) as clear_projector:
                clear_projector.wait_assigned()
                lane = _Lane(
                    clear_encoder,
                    clear_publisher,
                    clear_projector,
                    clear_reader,
                    CpuMeter.for_stack(
                        stack, projector=clear_projector.pid, publisher=clear_publisher.pid
                    ),
                    clear_progress,
                    clear_first,
                )
                steps = []
                for k, (rate, _) in enumerate(plan.rates):
                    if rate not in twins:
                        continue
                    run = at_rate(lane, n, k)
                    visible = run.visible_ms()
                    twins[rate][0].add(percentile(visible, 50))
                    twins[rate][1].add(percentile(visible, 99))
                    steps.append(
                        f"{rate:,.0f}: p50 {twins[rate][0].values[-1]:.1f} ms, p99 "
                        f"{twins[rate][1].values[-1]:.1f} ms, {run.achieved:,.0f}/s, projector "
                        f"{run.cpu_us:.0f} µs"
                    )
                crossing, swept = sweep(lane, n)
                clear_saturation.add(crossing)
                clear_first = lane.first
            return f"r{n}: {'; '.join(steps)}; sweep {swept}"

        try:
            for n in range(1, plan.repeat + 1):
                for k, (rate, _) in enumerate(plan.rates):
                    row = rows[rate]
                    run = at_rate(sealed, n, k)
                    busy[rate].append(run.busy)
                    visible = run.visible_ms()
                    acked = [s.acked_s * 1000 for s in run.samples if not math.isnan(s.acked_s)]
                    failures += len(run.samples) - len(visible)
                    samples_total[rate] += len(run.samples)
                    pooled[rate] += visible
                    row.p50.add(percentile(visible, 50))
                    row.p99.add(percentile(visible, 99))
                    row.mean.add(statistics.fmean(visible) if visible else math.nan)
                    row.achieved.add(run.achieved)
                    row.ack50.add(percentile(acked, 50))
                    row.ack99.add(percentile(acked, 99))
                    row.cpu.add(run.cpu_us)
                    say(
                        f"publish→visible r{n} at {rate:,.0f}/s: p50 {row.p50.values[-1]:.1f} ms, "
                        f"p99 {row.p99.values[-1]:.1f} ms, p99.9 {percentile(visible, 99.9):.1f} "
                        f"ms ({len(visible):,} samples), rate {run.achieved:,.0f}/s, projector "
                        f"{run.cpu_us:.0f} µs CPU an event; "
                        f"CPU {CpuMeter.describe(run.busy)}"
                    )
                crossing, steps = sweep(sealed, n)
                saturation.add(crossing)
                sweeps.append(f"r{n}: {steps}")
                say(f"publish→visible r{n}, sweep: {steps}")
                if CLEAR in variants and n <= plan.clear_repetitions:
                    clear_runs.append(twin_runs(n))
                    say(f"publish→visible, sealing off: {clear_runs[-1]}")
        finally:
            sealed.reader.client.close()
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
        f"sampled events not visible within {_READ_TIMEOUT_S:g} s; one publisher process "
        f"sending events built, sealed and encoded before the run, {_WAITERS} waiter threads "
        f"in the benchmark process, one projector process; per rate (100% CPU = one core): "
        f"{per_rate}{gc_note([projector.totals])}; after each run the benchmark waits "
        f"until the projector has caught up (its progress marks at the last offsets sent: "
        f"{_seconds(progress.waited_s)}), so that no run starts on the last one's backlog. "
        f"The sweep, once a repetition after the "
        f"rates above: offered rates {', '.join(f'{r:,.0f}' for r in plan.sweep_rates)}/s "
        f"in turn, each a warm-up of {plan.warmup_s / 2:g} s and {plan.sweep_s:g} s "
        f"measured (about {_SAMPLES_PER_S} events a second sampled), until p99 passes "
        f"{SATURATED_MS:g} ms (an event not visible within {_READ_TIMEOUT_S:g} s counts as "
        f"later than any); the saturation rate is interpolated linearly between the last "
        f"rate under the bound and the first over it (offered rate: p99, achieved rate, "
        f"projector CPU an event): "
        f"{'; '.join(sweeps)}. "
        + (
            f"Sealing off (the twins): in the first {len(clear_runs)} repetition(s), after "
            f"the sweep, the rates {', '.join(f'{r:,.0f}' for r in twins)}/s and the sweep "
            f"again, the same way, on events built alike (the same seeds) but encoded "
            f"without a keyring (neither sealed nor redacted), sent by a publisher process of "
            f"their own into a topic of their own and projected by a projector process "
            f"started for that part only (the sealed one idles meanwhile): "
            f"{' '.join(clear_runs)}. "
            if clear_runs
            else ""
        )
        + f"EndToEndLatency: {limit_note}"
    )


@dataclass(frozen=True, slots=True)
class Run:
    """One offered rate's run: the achieved rate, the samples, who used the CPU."""

    achieved: float
    samples: list[Sample]
    busy: dict[str, float]
    cpu_us: float  # the projector's CPU per event sent, until it had caught up

    def visible_ms(self) -> list[float]:
        """The sampled events' latencies (ms), those not visible in time left out."""
        return [s.visible_s * 1000 for s in self.samples if s.visible_s is not None]


def _seconds(waits: Sequence[float]) -> str:
    """`median X s, longest Y s` of waits."""
    if not waits:
        return "no run"
    return f"median {statistics.median(waits):.2f} s, longest {max(waits):.2f} s"


@dataclass
class _Progress:
    """Waits until the projector has caught up with a run (its progress marks)."""

    probe: ReadModelProbe
    waited_s: list[float] = field(default_factory=list)

    def wait_for(self, ends: Mapping[int, int], projector: Alive, timeout: float = 120.0) -> None:
        """Until every partition's mark reaches `ends` (partition -> last offset)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            raw = self.probe.client.hgetall(self.probe.keys().progress)
            marks = {int(p): int(o) for p, o in raw.items()}
            if all(marks.get(p, -1) >= offset for p, offset in ends.items()):
                self.waited_s.append(time.monotonic() - started)
                return
            projector.check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"the projector did not catch up within {timeout:g} s")


def _sweep(
    offer: Callable[..., Run], rates: Sequence[float], *, seed: int
) -> tuple[float | None, str]:
    """Offer `rates` in turn until p99 passes `SATURATED_MS`; returns the rate where it
    did (interpolated; None if it never did) and each step, for the note."""
    steps: list[str] = []
    below: tuple[float, float] | None = None  # (rate, p99 ms) of the last step under
    for k, rate in enumerate(rates):
        run = offer(rate, max(1, round(rate / _SAMPLES_PER_S)), seed=seed + k)
        # Not visible in time: later than any visible one.
        late = [math.inf] * (len(run.samples) - len(run.visible_ms()))
        p99 = percentile(run.visible_ms() + late, 99)
        steps.append(
            f"{rate:,.0f}: {p99:.1f} ms, {run.achieved:,.0f}/s, projector {run.cpu_us:.0f} µs"
        )
        if p99 > SATURATED_MS:
            if below is None:
                # Over at the first rate already: it is a bound, the crossing is below it.
                steps.append(f"over at the first rate: saturated at {rate:,.0f}/s or below")
                return rate, ", ".join(steps)
            low_rate, low_p99 = below
            if math.isinf(p99):
                return rate, ", ".join(steps)
            share = (SATURATED_MS - low_p99) / (p99 - low_p99)
            return low_rate + share * (rate - low_rate), ", ".join(steps)
        below = (rate, p99)
    steps.append(f"p99 under {SATURATED_MS:g} ms up to {rates[-1]:,.0f}/s")
    return None, ", ".join(steps)


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


class PublisherProcess:
    """A process of its own that sends encoded records on a schedule (see the module
    docstring for why); the acknowledgements of sampled ones come back as they arrive."""

    def __init__(self, settings: Settings, *, start_timeout_s: float = 120.0) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of librdkafka's threads
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_publish_on_schedule, args=(child, settings), name="bench-publisher"
        )
        self._process.start()
        child.close()
        # The last offset each partition's records reached in the last run.
        self.ends: dict[int, int] = {}
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise TimeoutError(f"the publisher process did not start in {start_timeout_s:g} s")
        self._conn.recv()  # ready

    @property
    def pid(self) -> int:
        """The publisher's process id."""
        return self._process.pid or 0

    def run(
        self,
        reader: RedisReader,
        events: Sequence[ConversationEvent],
        values: Sequence[bytes],
        *,
        rate: float,
        every: int,
        warmup_s: float,
    ) -> tuple[float, list[Sample]]:
        """Send `values` (the encoded `events`) at `rate`; returns the achieved rate and
        the measured samples, as `paced_run` does."""
        records = [(e.session_id, v) for e, v in zip(events, values, strict=True)]
        self._conn.send((records, rate, every))
        waiters = ThreadPoolExecutor(max_workers=_WAITERS, thread_name_prefix="bench-wait")
        sampled: list[tuple[float, Future[Sample]]] = []
        try:
            while True:
                if not self._conn.poll(60):
                    raise TimeoutError("the publisher process said nothing for 60 s")
                message = self._conn.recv()
                if message[0] == "done":
                    _, sent_at, start, self.ends = message
                    break
                _, i, sent, acked, where = message
                if isinstance(where, str):  # not delivered: the error's name
                    failed: Future[Sample] = Future()
                    failed.set_result(Sample(sent, math.nan, None, where))
                    sampled.append((sent, failed))
                    continue
                position = Position(*where)
                waiter = waiters.submit(_wait_read, reader, events[i], position, sent, acked)
                sampled.append((sent, waiter))
        finally:
            waiters.shutdown(wait=True)
        measure_from = start + warmup_s
        samples = [future.result() for sent, future in sampled if sent >= measure_from]
        measured = sorted(t for t in sent_at if t >= measure_from)
        span = measured[-1] - measured[0] if len(measured) > 1 else math.nan
        return (len(measured) - 1) / span, samples

    def close(self) -> None:
        """Stop the process (it flushes and closes its producer first)."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self) -> PublisherProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Sleeping costs a wake-up each: below this, the next record goes out at once, at most
# this early (its time is taken when it is sent, so no latency is misread).
_SLEEP_FROM_S = 0.0005


def _publish_on_schedule(conn: Connection, settings: Settings) -> None:
    """The publisher process: for each run it is sent, record i goes out at
    start + i/rate (a late one at once, never skipped), by `send_record`; the delivery
    of every `every`-th is reported back as (i, sent, seconds to the ack, (partition,
    offset) or the error's name), and at the end every send time and the start."""
    # The records come sealed and encoded: no keyring needed, chatlog's settings else.
    producer = clear_producer(settings)
    lock = threading.Lock()  # acknowledgements come from the producer's poller thread

    def tell(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    def delivered(i: int, sent: float, future: Future[Position]) -> None:
        acked = time.perf_counter() - sent
        try:
            position = future.result()
        except ChatlogError as exc:
            tell(("ack", i, sent, math.nan, type(exc).__name__))
            return
        tell(("ack", i, sent, acked, (position.partition, position.offset)))

    tell(("ready",))
    try:
        while (job := conn.recv()) is not None:
            records, rate, every = job
            sent_at = [math.nan] * len(records)
            futures: list[Future[Position]] = []
            start = time.perf_counter() + 0.01
            for i, (key, value) in enumerate(records):
                delay = start + i / rate - time.perf_counter()
                if delay > _SLEEP_FROM_S:
                    time.sleep(delay)
                sent = time.perf_counter()
                future = producer.send_record(settings.topic, key=key, value=value)
                sent_at[i] = sent
                futures.append(future)
                if i % every == 0:
                    future.add_done_callback(functools.partial(delivered, i, sent))
            producer.flush(60)
            ends: dict[int, int] = {}
            for future in futures:
                with contextlib.suppress(ChatlogError, TimeoutError):
                    position = future.result(0)
                    ends[position.partition] = max(
                        ends.get(position.partition, -1), position.offset
                    )
            tell(("done", sent_at, start, ends))
    finally:
        producer.close(10)


def _wait_read(
    reader: RedisReader, event: ConversationEvent, position: Position, sent: float, acked: float
) -> Sample:
    try:
        reader.context(
            event.session_id, user_id=event.user_id, after=position, timeout=_READ_TIMEOUT_S
        )
        return Sample(sent, acked, time.perf_counter() - sent)
    except ChatlogError as exc:
        return Sample(sent, acked, None, type(exc).__name__)
