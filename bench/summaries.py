"""The rolling-summary scenarios: what summaries cost, and how many sessions get one per second.

4. Summary cost (``summary_cost``): counted, not timed, and the same on every run. One
   scripted support session of N turns is fed, as Avro records, to the real
   `SummaryEngine` over an in-memory log: the view source folds the log with `evolve`,
   the publisher appends each summary to the log, and the engine reads it back as the
   next record, as it would from Kafka. A counting summarizer (the offline extractive one,
   plus a tally) counts the calls and the prompt an LLM would be sent for each: the exact
   chat messages of `chatlog.processors.openai_summarizer.summary_messages`. Beside it, the same
   session under two other strategies, with the same prompt and the same tally: the
   naive one that re-summarizes the whole history at every eviction, and LangChain's
   ConversationSummaryBufferMemory, which asks for (summary so far + the turns it just
   evicted) at every exchange that overflows its buffer.
5. Summary throughput (``summary_throughput``): the real `SummaryEngine` with a fake LLM
   whose every call takes 200 ms, publishing through the real producer to a Kafka topic
   of the run. Every session's overflow has just reached the threshold; the record of its
   last turn makes it due, and the clock runs until every summary is published. Measured
   for a few `max_in_flight` bounds, beside the ideal rate (max_in_flight / 0.2 s).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.infra import PARTITIONS, BenchStack
from bench.measure import CpuMeter, frozen_heap, median_shares, percentile
from bench.plan import Plan
from bench.report import Report, Table, say
from bench.workload import session_name, support_chat, user_of
from chatlog import wiring
from chatlog.processors.openai_summarizer import summary_messages
from chatlog.processors.projection import Record
from chatlog.processors.summarizers import ExtractiveSummarizer, SummaryRequest, SummaryResult
from chatlog.processors.summary_engine import SummaryEngine, SummaryPolicy, SummaryStats
from chatlog.producers.commands import append_message
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.context import Context, approx_tokens
from chatlog.projections.view import Message, SessionView, WindowPolicy, evolve
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.events import ConversationEvent, ProducerInfo
from chatlog.schemas.position import Position

__all__ = ["summary_cost", "summary_throughput"]

WINDOW = WindowPolicy(window=20, max_overflow=200)
THRESHOLDS = (10, 20)
LATENCY_S = 0.2
_CAP = SummaryPolicy().max_summary_tokens
_SESSION = "bench-summary-cost"
_USER = "bench-u-summary"
_LOG_TOPIC = "bench.summary_cost.in-memory"  # names the in-memory log; nothing is created
_DRAIN_S = 60.0


def prompt_tokens(request: SummaryRequest) -> int:
    """The prompt chatlog's LLM summarizer would send for `request`, in approximate tokens."""
    return _content_tokens(summary_messages(request))


def _content_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """Approximate tokens of the chat messages' contents."""
    return sum(approx_tokens(str(m.get("content") or "")) for m in messages)


async def _no_ack() -> None:
    """Nothing to commit: the records come from memory."""


async def _settle(engine: SummaryEngine, timeout: float) -> None:
    """Wait until the engine has no work under way, including work started meanwhile.

    `drain` waits for the tasks running when it is called; a load that finishes starts
    the session's summary, a new task, so it is called until none is left.
    """
    deadline = time.monotonic() + timeout
    while engine.in_flight:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"the summary engine still had {engine.in_flight} tasks after {timeout:g} s"
            )
        await engine.drain(left)


# -- 4. summary cost ---------------------------------------------------------------------


class CountingSummarizer:
    """The extractive summarizer, counting what an LLM behind the same prompt would bill."""

    def __init__(self) -> None:
        self.inner = ExtractiveSummarizer()
        self.calls = 0
        self.prompt_tokens = 0
        self.sent: list[int] = []  # offsets of the turns sent, in the order sent

    async def summarize(self, request: SummaryRequest) -> SummaryResult:
        """Count the call and its prompt, then summarize for real (offline)."""
        self.calls += 1
        self.prompt_tokens += prompt_tokens(request)
        self.sent += [turn.offset for turn in request.turns]
        return await self.inner.summarize(request)


class MemoryLog:
    """One partition of the events topic, in memory: Avro records in offset order."""

    def __init__(self, codec: EventCodec) -> None:
        self.codec = codec
        self.records: list[Record] = []

    def append(self, event: ConversationEvent) -> Position:
        """Append `event`; its position."""
        offset = len(self.records)
        self.records.append(
            Record(
                topic=_LOG_TOPIC,
                partition=0,
                offset=offset,
                key=event.session_id.encode(),
                value=self.codec.encode(event),
            )
        )
        return Position(0, offset)

    def view(self, session_id: str, through: int) -> SessionView | None:
        """The session's view as the projector has it after offset `through`."""
        view = None
        for record in self.records[: through + 1]:
            event = self.codec.decode(record.value or b"")
            if event.session_id == session_id:
                view = evolve(view, event, Position(record.partition, record.offset), WINDOW)
        return view


class LogViews:
    """A `ViewSource` whose projector is always caught up: it folds the log on demand."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log

    async def projected_view(
        self, session_id: str, position: Position, *, timeout: float
    ) -> SessionView | None:
        """The view after `position`."""
        return self.log.view(session_id, position.offset)


class LogPublisher:
    """A `SummaryPublisher` that appends to the in-memory log (the engine reads it back)."""

    def __init__(self, log: MemoryLog) -> None:
        self.log = log

    async def publish(self, event: ConversationEvent) -> Position:
        """Append `event` to the log; its position."""
        return self.log.append(event)


@dataclass(frozen=True, slots=True)
class Cost:
    """What one strategy cost over one session."""

    strategy: str
    calls: int
    prompt_tokens: int
    context_tokens: int  # what the chat model is sent at the session's last turn
    waiting: int = 0  # evicted turns not summarized yet at the end (chatlog only)


def summary_cost(plan: Plan, report: Report) -> None:
    """Scenario 4: LLM calls and prompt tokens per 100 turns, chatlog beside its peers."""
    codec = EventCodec()
    table = Table(
        title="summary cost: LLM calls and prompt tokens per 100 turns (counted, one run)",
        columns=[
            "turns",
            "strategy",
            "LLM calls / 100 turns",
            "calls vs chatlog",
            "prompt tokens / 100 turns",
            "tokens vs chatlog",
            "context at the last turn (tokens)",
        ],
        labels=2,
    )
    started = time.perf_counter()
    words: list[int] = []
    waiting: dict[int, list[int]] = {}
    for turns in plan.summary_turns:
        chat = support_chat(turns)
        words += [len(content.split()) for _, content in chat]
        events = [
            append_message(_SESSION, user_id=_USER, role=role, content=content)
            for role, content in chat
        ]
        messages = [
            Message(offset=n, message_id=f"m{n}", role=role, content=content, occurred_at_ms=0)
            for n, (role, content) in enumerate(chat)
        ]
        costs = [asyncio.run(_chatlog(events, threshold=t, codec=codec)) for t in THRESHOLDS]
        waiting[turns] = [cost.waiting for cost in costs]
        costs += [_naive(messages), _summary_buffer(messages), _no_summary(messages)]
        base = costs[0]
        for cost in costs:
            table.rows.append(_cost_row(turns, cost, base))
        say(
            f"summary cost, {turns:,} turns: "
            + "; ".join(
                f"{c.strategy.split(':')[0]}: {c.calls:,} calls, {c.prompt_tokens:,} tokens"
                for c in costs
                if c.calls
            )
        )
    elapsed = time.perf_counter() - started
    table.notes += [
        f"The session: scripted customer-support turns, user and assistant alternating, "
        f"{statistics.mean(words):.0f} words a turn on average ({min(words)}-{max(words)}), "
        f"with names, order, ticket and tracking numbers, amounts, dates, promises and "
        f"questions; the {min(plan.summary_turns)}-turn session is the start of the longer "
        f"ones. Window {WINDOW.window} turns for every strategy; chatlog keeps up to "
        f"{WINDOW.max_overflow} evicted turns unsummarized.",
        "chatlog: the real SummaryEngine fed the session as Avro records from an in-memory "
        "log; its summaries (ExtractiveSummarizer, offline) are appended to the log and read "
        "back, and the next turn comes once the summary is back (turns come seconds apart, "
        "a summary call about a second), so each call carries exactly `threshold` turns "
        "plus the previous summary. Checked on every run (the run fails otherwise): every "
        "evicted turn was sent to the summarizer exactly once, oldest first, none was "
        "dropped, and the ones not sent yet are fewer than the threshold and still in the "
        f"view (waiting at the end, threshold {'/'.join(str(t) for t in THRESHOLDS)}: "
        + ", ".join(f"{n:,} turns {'/'.join(str(w) for w in ws)}" for n, ws in waiting.items())
        + ").",
        f"naive: the last {WINDOW.window} turns kept; at every eviction (one turn) the whole "
        "history older than the window is summarized again from scratch. One call per "
        "evicted turn; the prompt grows with the session, so the tokens per 100 turns grow "
        "with its length (quadratic in total).",
        "LangChain ConversationSummaryBufferMemory: `save_context` stores an exchange (the "
        "user's turn and the reply), and `prune()` then calls `predict_new_summary(pruned "
        "messages, moving_summary_buffer)` whenever the buffer is over its limit "
        "(langchain-ai/langchain, libs/langchain/langchain/memory/summary_buffer.py): an "
        "incremental summary like chatlog's, but one call per exchange. Modelled with the "
        f"same {WINDOW.window}-turn buffer (LangChain's limit is in tokens) and chatlog's "
        "prompt, so only the strategy differs; LangChain's own prompt adds a few-shot "
        "example to every call. Unlike what the issue says, it does not re-summarize the "
        "whole history; the naive row is what that would cost.",
        "Tokens: `chatlog.projections.context.approx_tokens` (4 characters a token) over the "
        "contents of every chat message sent, i.e. the system prompt and the JSON document "
        "of `summary_messages`; tiktoken is not installed here, so these are estimates, but "
        "every strategy is counted the same way: the ratios are what to read. Completion "
        f"tokens are left out: every call returns one summary of at most {_CAP} tokens, so "
        "they follow the calls column.",
        "Context at the last turn: tokens of `Context.to_openai()` (no system prompt of the "
        "caller's): the summary, the evicted turns not summarized yet (chatlog), and the "
        "window; the no-summary row sends the whole history instead. It stays flat as the "
        f"session grows, bounded by the summary cap ({_CAP} tokens, which this dense "
        "session's summaries reach whatever the strategy) and the window.",
        f"Counted in {elapsed:.1f} s.",
    ]
    report.tables.append(table)


async def _chatlog(
    events: Sequence[ConversationEvent], *, threshold: int, codec: EventCodec
) -> Cost:
    """The session through the real engine; checks every evicted turn was sent once."""
    log = MemoryLog(codec)
    summarizer = CountingSummarizer()
    engine = SummaryEngine(
        summarizer,
        LogViews(log),
        LogPublisher(log),
        window=WINDOW,
        policy=SummaryPolicy(threshold=threshold),
        codec=codec,
    )
    turns: list[int] = []
    fed = 0
    try:
        for event in events:
            turns.append(log.append(event).offset)
            # The engine consumes the log in order: this turn, then the summary it
            # published meanwhile, if any.
            while True:
                while fed < len(log.records):
                    await engine.accept(log.records[fed], _no_ack)
                    fed += 1
                if not engine.in_flight:
                    break
                await _settle(engine, _DRAIN_S)
    finally:
        await engine.aclose()
    view = log.view(_SESSION, len(log.records) - 1)
    if view is None:
        raise AssertionError("the session has no view")
    waiting = _check_sent_once(summarizer, engine.stats, turns, view, threshold=threshold)
    return Cost(
        strategy=f"chatlog, threshold {threshold}",
        calls=summarizer.calls,
        prompt_tokens=summarizer.prompt_tokens,
        context_tokens=_context_tokens(view),
        waiting=waiting,
    )


def _check_sent_once(
    summarizer: CountingSummarizer,
    stats: SummaryStats,
    turns: Sequence[int],
    view: SessionView,
    *,
    threshold: int,
) -> int:
    """Raise unless every evicted turn went to the summarizer once; returns those waiting.

    A correctness guard, not a measurement: a count of calls is only worth printing if
    they covered the session. The turns not sent yet must be the newest evicted ones,
    fewer than the threshold, and still in the view's overflow.
    """
    sent = summarizer.sent
    evicted = max(0, len(turns) - WINDOW.window)
    if len(set(sent)) != len(sent):
        raise AssertionError(f"turns sent to the summarizer more than once ({len(sent)} sent)")
    if sent != list(turns[: len(sent)]):
        raise AssertionError("the summarizer was not sent the oldest turns first, in order")
    waiting = evicted - len(sent)
    if not 0 <= waiting < threshold:
        raise AssertionError(f"{waiting} evicted turns never summarized (threshold {threshold})")
    if view.overflow_dropped or len(view.overflow(WINDOW)) != waiting:
        raise AssertionError(
            f"the view dropped {view.overflow_dropped} turns and holds "
            f"{len(view.overflow(WINDOW))} unsummarized, not {waiting}"
        )
    if stats.failed or stats.stale or stats.refused or stats.published != summarizer.calls:
        raise AssertionError(f"the engine's summaries did not all go through: {stats.line()}")
    return waiting


def _naive(messages: Sequence[Message]) -> Cost:
    """Re-summarize every turn older than the window, from scratch, at every eviction."""
    calls = tokens = 0
    request = None
    for evicted in range(1, len(messages) - WINDOW.window + 1):
        request = SummaryRequest(
            session_id=_SESSION,
            previous_summary=None,
            turns=tuple(messages[:evicted]),
            max_summary_tokens=_CAP,
        )
        calls += 1
        tokens += prompt_tokens(request)
    summary = ExtractiveSummarizer().summarize_now(request).summary if request else None
    return Cost(
        "naive: whole history re-summarized at every eviction",
        calls,
        tokens,
        _context_tokens(_view(summary, messages[-WINDOW.window :])),
    )


def _summary_buffer(messages: Sequence[Message]) -> Cost:
    """LangChain's summary-buffer memory: (summary + what it evicted) at every exchange."""
    extractive = ExtractiveSummarizer()
    summary: str | None = None
    buffer: list[Message] = []
    calls = tokens = 0
    for start in range(0, len(messages), 2):
        buffer += messages[start : start + 2]  # save_context: the user's turn and the reply
        if len(buffer) > WINDOW.window:
            pruned, buffer = buffer[: -WINDOW.window], buffer[-WINDOW.window :]
            request = SummaryRequest(
                session_id=_SESSION,
                previous_summary=summary,
                turns=tuple(pruned),
                max_summary_tokens=_CAP,
            )
            calls += 1
            tokens += prompt_tokens(request)
            summary = extractive.summarize_now(request).summary
    return Cost(
        "LangChain ConversationSummaryBufferMemory: summary + evicted exchange, per exchange",
        calls,
        tokens,
        _context_tokens(_view(summary, buffer)),
    )


def _no_summary(messages: Sequence[Message]) -> Cost:
    """No summary at all: every prompt carries the whole history."""
    return Cost(
        "no summary: the whole history in every prompt",
        0,
        0,
        _context_tokens(_view(None, messages)),
    )


def _view(summary: str | None, messages: Sequence[Message]) -> SessionView:
    return SessionView(
        session_id=_SESSION,
        user_id=_USER,
        tenant="default",
        partition=0,
        last_offset=messages[-1].offset if messages else -1,
        created_at_ms=0,
        updated_at_ms=0,
        messages=tuple(messages),
        summary=summary,
    )


def _context_tokens(view: SessionView) -> int:
    """Tokens of what `Context.to_openai()` sends the chat model for `view`."""
    return _content_tokens(Context.from_view(view, window_size=WINDOW.window).to_openai())


def _cost_row(turns: int, cost: Cost, base: Cost) -> list[str]:
    per_100 = 100 / turns

    def times(value: int, of: int) -> str:
        if not value or not of:
            return "—"
        ratio = value / of
        return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.1f}x"

    return [
        f"{turns:,}",
        cost.strategy,
        f"{cost.calls * per_100:.1f}",
        times(cost.calls, base.calls),
        f"{cost.prompt_tokens * per_100:,.0f}",
        times(cost.prompt_tokens, base.prompt_tokens),
        f"{cost.context_tokens:,}",
    ]


# -- 5. summary throughput ---------------------------------------------------------------


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
            prompt_tokens=_content_tokens(messages),
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
class _Due:
    """Sessions whose overflow just reached the threshold, and the record of their last turn."""

    views: dict[str, SessionView]
    records: list[Record]
    threshold: int


def _due_sessions(count: int, *, topic: str, codec: EventCodec, info: ProducerInfo) -> _Due:
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
    return _Due(views, records, threshold)


@dataclass(frozen=True, slots=True)
class _Run:
    rate: float
    peak: int
    latencies: list[float]


async def _summarize_all(
    due: _Due,
    count: int,
    publisher: AsyncConversationProducer,
    *,
    in_flight: int,
    codec: EventCodec,
    info: ProducerInfo,
) -> _Run:
    """Feed `count` due sessions' records; time until every summary is published."""
    llm = SlowLLM(LATENCY_S)
    engine = SummaryEngine(
        llm,
        MemoryViews(due.views),
        publisher,
        window=WINDOW,
        policy=SummaryPolicy(threshold=due.threshold, max_in_flight=in_flight),
        codec=codec,
        producer=info,
    )
    limit = 30 + 2 * LATENCY_S * count / in_flight
    try:
        started = time.perf_counter()
        for record in due.records[:count]:
            await engine.accept(record, _no_ack)
        await _settle(engine, limit)
        elapsed = time.perf_counter() - started
    finally:
        await engine.aclose()
    stats = engine.stats
    if stats.published != count or llm.calls != count or stats.failed or stats.stale:
        raise AssertionError(f"{count} sessions due, but {stats.line()} ({llm.calls} LLM calls)")
    if llm.peak > in_flight:
        raise AssertionError(f"{llm.peak} LLM calls at once with max_in_flight {in_flight}")
    return _Run(count / elapsed, llm.peak, list(stats.latencies))


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
        due = _due_sessions(
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
