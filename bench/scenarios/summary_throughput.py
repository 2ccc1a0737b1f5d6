"""Summary throughput (`summary_throughput`): how many sessions get a summary per second.

The real `SummaryEngine` with a fake LLM whose every call takes 200 ms, publishing
through the real producer to a Kafka topic of the run. Every session's overflow has just
reached the threshold; the record of its last turn makes it due, and the clock runs until
every summary is published. Measured for a few `max_in_flight` bounds, beside the ideal
rate (max_in_flight / 0.2 s): no peer does this, so the bound is the comparison.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bench.engine import THRESHOLDS, WINDOW, content_tokens, no_ack, settle
from bench.infra import PARTITIONS, BenchStack
from bench.measure import CpuMeter, frozen_heap, median_shares, percentile
from bench.plan import Plan
from bench.report import Report, say
from bench.workload import session_name, support_chat, user_of
from chatlog import wiring
from chatlog.processors.openai_summarizer import summary_messages
from chatlog.processors.projection import Record
from chatlog.processors.summarizers import Summarizer, SummaryRequest, SummaryResult
from chatlog.processors.summary_engine import SummaryEngine, SummaryPolicy
from chatlog.producers.commands import append_message
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.context import approx_tokens
from chatlog.projections.view import SessionView, evolve
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.events import ProducerInfo
from chatlog.schemas.position import Position

__all__ = ["Due", "MemoryViews", "due_sessions", "summarize_due", "summary_throughput"]

LATENCY_S = 0.2


class SlowLLM:
    """A fake LLM: every call takes `latency` s, then a short summary comes back.

    It builds the same chat messages a real client would send first, and tracks how many
    calls overlap, to show the engine's bound holds.
    """

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls = 0
        self.active = 0
        self.peak = 0

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        """Wait `latency` s, then summarize nothing in particular."""
        messages = summary_messages(request)
        self.calls += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.active -= 1
        summary = (
            f"The customer asked about an order across {len(request.turns)} turns; "
            f"a refund of $49.99 was promised."
        )
        return SummaryResult(
            summary=summary,
            model=f"fake-{self.latency * 1000:.0f}ms",
            prompt_tokens=content_tokens(messages),
            completion_tokens=approx_tokens(summary),
        )


class MemoryViews:
    """A `ViewSource` over views built beforehand (the read-model, without Redis)."""

    def __init__(self, views: Mapping[str, SessionView]) -> None:
        self.views = views

    async def projected_view(
        self, session_id: str, position: Position, *, timeout: float
    ) -> SessionView | None:
        """The stored view."""
        return self.views.get(session_id)


@dataclass(frozen=True, slots=True)
class Due:
    """Sessions whose overflow just reached the threshold, and the record of their last turn."""

    views: dict[str, SessionView]
    records: list[Record]
    threshold: int


def due_sessions(count: int, *, topic: str, codec: EventCodec, info: ProducerInfo) -> Due:
    """`count` sessions of window + threshold turns: each record is a session's last turn.

    The views already hold that turn (the projector is ahead of the engine, as it is when
    the engine loads a view), so folding the record changes nothing, and the overflow is
    exactly the threshold: one summary each.
    """
    threshold = THRESHOLDS[0]
    chat = support_chat(WINDOW.window + threshold)
    views: dict[str, SessionView] = {}
    records: list[Record] = []
    for index in range(count):
        session_id = session_name(index)
        partition, first = index % PARTITIONS, (index // PARTITIONS) * len(chat)
        events = [
            append_message(
                session_id, user_id=user_of(index), role=role, content=content, producer=info
            )
            for role, content in chat
        ]
        view: SessionView | None = None
        for n, event in enumerate(events):
            view = evolve(view, event, Position(partition, first + n), WINDOW)
        if view is None:
            raise AssertionError(f"no view for {session_id}")
        views[session_id] = view
        records.append(
            Record(
                topic=topic,
                partition=partition,
                offset=view.last_offset,
                key=session_id.encode(),
                value=codec.encode(events[-1]),
            )
        )
    return Due(views, records, threshold)


@dataclass(frozen=True, slots=True)
class _Run:
    rate: float
    peak: int
    latencies: list[float]


async def summarize_due(
    due: Due,
    count: int,
    publisher: AsyncConversationProducer,
    llm: Summarizer,
    *,
    in_flight: int,
    latency: float,
    codec: EventCodec,
    info: ProducerInfo,
) -> tuple[float, list[float]]:
    """Feed `count` due sessions' records to a real `SummaryEngine` over `llm`; time
    until every summary is published. Returns sessions/s and the seconds per summary."""
    engine = SummaryEngine(
        llm,
        MemoryViews(due.views),
        publisher,
        window=WINDOW,
        policy=SummaryPolicy(threshold=due.threshold, max_in_flight=in_flight),
        codec=codec,
        producer=info,
    )
    limit = 30 + 2 * latency * count / in_flight
    try:
        started = time.perf_counter()
        for record in due.records[:count]:
            await engine.accept(record, no_ack)
        await settle(engine, limit)
        elapsed = time.perf_counter() - started
    finally:
        await engine.aclose()
    stats = engine.stats
    if stats.published != count or stats.failed or stats.stale:
        raise AssertionError(f"{count} sessions due, but {stats.line()}")
    return count / elapsed, list(stats.latencies)


async def _summarize_all(
    due: Due,
    count: int,
    publisher: AsyncConversationProducer,
    *,
    in_flight: int,
    codec: EventCodec,
    info: ProducerInfo,
) -> _Run:
    """`summarize_due` with the fake LLM, checking its calls and the engine's bound."""
    llm = SlowLLM(LATENCY_S)
    rate, latencies = await summarize_due(
        due, count, publisher, llm, in_flight=in_flight, latency=LATENCY_S, codec=codec, info=info
    )
    if llm.calls != count:
        raise AssertionError(f"{count} sessions due, but {llm.calls} LLM calls")
    if llm.peak > in_flight:
        raise AssertionError(f"{llm.peak} LLM calls at once with max_in_flight {in_flight}")
    return _Run(rate, llm.peak, latencies)


def summary_throughput(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario 5: sessions summarized per second with a 200 ms LLM, per max_in_flight."""
    settings = stack.scenario("summary_throughput")
    codec = wiring.codec(settings)
    bounds = plan.summary_in_flight
    # Whole rounds of calls: all of a round's calls start and end together, so a last,
    # partial round would take as long as a full one and lower the rate.
    counts = {
        k: max(1, min(plan.summary_sessions, plan.summary_rounds * k) // k) * k for k in bounds
    }
    rows = {
        k: report.metric(
            "summary throughput",
            f"max_in_flight {k}: sessions summarized/s ({counts[k]:,} sessions)",
            "sessions/s",
            f"ideal {k / LATENCY_S:,.0f}/s ({k} / {LATENCY_S:g} s)",
        )
        for k in bounds
    }
    top = max(bounds)
    p50 = report.metric(
        "summary throughput", f"max_in_flight {top}: LLM call + publish, per summary, p50", "ms"
    )
    p99 = report.metric(
        "summary throughput", f"max_in_flight {top}: LLM call + publish, per summary, p99", "ms"
    )
    producer = wiring.producer(settings, flush_on_sigterm=False)
    try:
        say(f"summary throughput: building {max(counts.values()):,} due sessions")
        due = due_sessions(
            max(counts.values()), topic=settings.topic, codec=codec, info=producer.info
        )
        publisher = AsyncConversationProducer(producer)
        meter = CpuMeter.for_stack(stack)
        busy: list[dict[str, float]] = []
        peaks: dict[int, int] = {}

        async def measure() -> None:
            # A warm-up round: the producer's first sends fetch the topic's metadata.
            await _summarize_all(
                due,
                min(top, counts[top]),
                publisher,
                in_flight=top,
                codec=codec,
                info=producer.info,
            )
            for n in range(1, plan.repeat + 1):
                for k in bounds:
                    meter.start()
                    run = await _summarize_all(
                        due, counts[k], publisher, in_flight=k, codec=codec, info=producer.info
                    )
                    rows[k].add(run.rate)
                    peaks[k] = max(peaks.get(k, 0), run.peak)
                    if k == top:
                        busy.append(meter.busy())
                        latencies = [s * 1000 for s in run.latencies]
                        p50.add(percentile(latencies, 50))
                        p99.add(percentile(latencies, 99))
                    say(
                        f"summary throughput r{n}, max_in_flight {k}: {run.rate:,.1f} "
                        f"sessions/s (ideal {k / LATENCY_S:,.0f}/s), peak {run.peak} calls"
                    )

        with frozen_heap():
            asyncio.run(measure())
    finally:
        producer.close()
    efficiency = ", ".join(
        f"{k}: {statistics.median(rows[k].values) / (k / LATENCY_S):.0%}"
        for k in bounds
        if rows[k].values
    )
    report.notes.append(
        f"summary throughput: the real SummaryEngine (threshold {due.threshold}, window "
        f"{WINDOW.window}) with a fake LLM that sleeps {LATENCY_S * 1000:.0f} ms per call; "
        f"each session's view holds {WINDOW.window} + {due.threshold} turns, so the record "
        f"of its last turn makes exactly one summary due; timed from the first record fed "
        f"to the last "
        f"summary acknowledged by Kafka (the real AsyncConversationProducer over the run's "
        f"topic: acks=all, idempotent, linger {settings.linger_ms} ms). The session views "
        f"come from memory (no Redis read) and the fed records are built in memory, not "
        f"consumed; each bound runs whole rounds of max_in_flight calls, "
        f"{plan.summary_rounds} rounds or as many as {plan.summary_sessions:,} sessions "
        f"make, after a warm-up round. Measured / ideal "
        f"(median): {efficiency}; the most calls seen at once never passed the bound "
        f"({', '.join(f'{k}: {p}' for k, p in peaks.items())}). CPU at max_in_flight {top} "
        f"(median, 100% = one core): {CpuMeter.describe(median_shares(busy))}"
    )
