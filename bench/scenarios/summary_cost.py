"""Summary cost (`summary_cost`): the LLM calls and prompt tokens rolling summaries cost.

Counted, not timed, and the same on every run. One scripted support session of N turns
is fed, as Avro records, to the real `SummaryEngine` over an in-memory log: the view
source folds the log with `evolve`, the publisher appends each summary to the log, and
the engine reads it back as the next record, as it would from Kafka. A counting
summarizer (the offline extractive one, plus a tally) counts the calls and the prompt an
LLM would be sent for each: the exact chat messages of
`chatlog.processors.openai_summarizer.summary_messages`. Beside it, the same session under
the strategies a chat app would use instead, with the same prompt and the same tally:
LangChain's ConversationSummaryBufferMemory, which asks for (summary so far + the turns
it just evicted) at every exchange that overflows its buffer; the naive one that
re-summarizes the whole history at every eviction; and no summary at all.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.engine import THRESHOLDS, WINDOW, content_tokens, no_ack, prompt_tokens, settle
from bench.plan import Plan
from bench.report import Report, Table, say
from bench.workload import support_chat
from chatlog.processors.extractive import ExtractiveSummarizer
from chatlog.processors.projection import Record
from chatlog.processors.summarizers import SummaryRequest, SummaryResult
from chatlog.processors.summary_engine import SummaryEngine, SummaryPolicy, SummaryStats
from chatlog.producers.commands import append_message
from chatlog.projections.context import Context
from chatlog.projections.view import Message, SessionView, evolve
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.position import Position

__all__ = ["summary_cost"]

_CAP = SummaryPolicy().max_summary_tokens


_SESSION = "bench-summary-cost"


_USER = "bench-u-summary"


_LOG_TOPIC = "bench.summary_cost.in-memory"  # names the in-memory log; nothing is created


_DRAIN_S = 60.0


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
                    await engine.accept(log.records[fed], no_ack)
                    fed += 1
                if not engine.in_flight:
                    break
                await settle(engine, _DRAIN_S)
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
    return content_tokens(Context.from_view(view, window_size=WINDOW.window).to_openai())


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
