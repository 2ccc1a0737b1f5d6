"""Rolling summaries end to end: real Kafka, real Redis, the projector and the summarizer
as processes, and the real `openai` client talking to a local stand-in LLM."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest

from chatlog import wiring
from chatlog.producers.commands import new_event
from chatlog.projections.view import SessionView
from chatlog.schemas.events import SummaryUpdated
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from tests.llm_stub import LlmStub, derived_summary, ok, slow, status
from tests.processes import (
    log_events,
    opened,
    running_processor,
    running_projector,
    start_processor,
    stop,
    unique_settings,
    wait_for_group,
    wait_until,
)

pytestmark = pytest.mark.integration

SESSION = "long-session"
USER = "alice"
WINDOW = 20
THRESHOLD = 10


def content(n: int) -> str:
    # Each turn names an id of its own, which the stub LLM copies into its summary.
    return f"turn {n}: about order #ZZ-{n:04d}"


@pytest.fixture
def stub():
    with LlmStub() as server:
        yield server


@pytest.fixture
def llm_settings(kafka, redis_url, redis_prefix, stub) -> Callable[..., Settings]:
    def make(**overrides) -> Settings:
        fields = {
            "window": WINDOW,
            "summary_threshold": THRESHOLD,
            "summarizer_group": f"summarizer-{uuid.uuid4().hex[:8]}",
            "llm_base_url": stub.base_url,
            "llm_model": "stub-model",
            "llm_timeout_s": 5.0,
            "partitions": 3,
            **overrides,
        }
        return unique_settings(kafka, redis_url, redis_prefix, **fields)

    return make


def publish_turns(settings: Settings, turns: range) -> Position:
    """Append `turns` to the session; returns once the projection shows the last one."""
    reader = wiring.reader(settings)
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        position = None
        for n in turns:
            role = "user" if n % 2 == 0 else "assistant"
            position = producer.append(SESSION, user_id=USER, role=role, content=content(n))
    assert position is not None
    # Reads keep working whatever the summarizer is doing.
    context = reader.context(SESSION, user_id=USER, after=position, timeout=30)
    assert [m.content for m in context.window] == [
        content(n) for n in range(max(0, turns.stop - WINDOW), turns.stop)
    ]
    return position


def view_of(settings: Settings) -> SessionView:
    view = opened(settings, wiring.live_store(settings).load([SESSION])[SESSION])
    assert view is not None
    return view


def settled(settings: Settings, kafka, stub: LlmStub, quiet_s: float = 1.5) -> Callable[[], bool]:
    """True once the projection has applied every event of the session's partition (the
    summaries too), no further summary is due, and the LLM has been idle for `quiet_s`."""
    seen = {"requests": -1, "since": time.monotonic()}

    def check() -> bool:
        if len(stub.requests) != seen["requests"]:
            seen["requests"], seen["since"] = len(stub.requests), time.monotonic()
            return False
        view = view_of(settings)
        end = kafka.end_offsets(settings.topic)[view.partition]
        overflow = len(view.messages) - WINDOW
        return (
            view.last_offset == end - 1
            and overflow < THRESHOLD
            and time.monotonic() - seen["since"] >= quiet_s
        )

    return check


def summarized_turns(view: SessionView, stub: LlmStub) -> list[str]:
    """The turns behind the view's summary, oldest first, following the chain of requests
    from the applied summary back through each request's previous summary."""
    requests = {derived_summary(body): body for body in stub.requests}
    turns: list[str] = []
    summary = view.summary
    while summary is not None:
        document = json.loads(requests[summary]["messages"][1]["content"])
        turns[:0] = [t["content"] for t in document["turns"]]
        summary = document["previous_summary"]
    return turns


def summary_events(kafka, settings: Settings) -> list[SummaryUpdated]:
    events = [event for _, event in log_events(kafka, settings)]
    return [e.payload for e in events if isinstance(e.payload, SummaryUpdated)]


def test_a_500_turn_session_keeps_a_window_and_summarizes_every_evicted_turn_once(
    kafka, llm_settings, stub, tmp_path
):
    # Summaries carry every id they cover, so the cap must hold 500 of them.
    settings = llm_settings(summary_max_tokens=6000)
    with (
        running_projector(settings),
        running_processor("summarizer", settings, log=tmp_path / "summarizer.log"),
    ):
        # Published before the summarizer runs, turns past max_overflow would be dropped.
        wait_for_group(kafka, settings.summarizer_group)
        policy = wiring.policy(settings)
        for start in range(0, 500, 50):
            # A chat pauses between bursts; the bound on the overflow is for a summarizer
            # that is down, not one that is merely slower than this loop on a busy machine.
            if start:
                wait_until(
                    lambda: len(view_of(settings).overflow(policy)) <= policy.max_overflow - 50,
                    timeout=60,
                    what="the summarizer to keep the overflow within its bound",
                )
            publish_turns(settings, range(start, start + 50))
        wait_until(settled(settings, kafka, stub), timeout=60, what="summaries to settle")
    view = view_of(settings)

    covered = view.summary_covered
    evicted = 500 - WINDOW
    assert view.message_count == 500
    assert view.overflow_dropped == 0
    # The window in full; evicted turns are in the summary, each exactly once and in
    # order, or (fewer than a threshold's worth, the newest) still held in full.
    assert [m.content for m in view.messages[-WINDOW:]] == [content(n) for n in range(480, 500)]
    assert summarized_turns(view, stub) == [content(n) for n in range(covered)]
    assert [m.content for m in view.messages[:-WINDOW]] == [
        content(n) for n in range(covered, evicted)
    ]
    assert evicted - covered < THRESHOLD
    # It never re-summarized the whole history: each request held only new turns.
    sent = [len(json.loads(r["messages"][1]["content"])["turns"]) for r in stub.requests]
    assert sum(sent) == covered
    assert len(stub.requests) == len(summary_events(kafka, settings))

    # Replay: a new projection of the same log rebuilds the same summary, asking no LLM.
    calls = len(stub.requests)
    replay = settings.model_copy(
        update={
            "redis_prefix": f"{settings.redis_prefix}-replay",
            "projector_group": f"replay-{uuid.uuid4().hex[:8]}",
        }
    )
    store = wiring.live_store(replay)

    def replayed() -> SessionView | None:
        return store.load([SESSION])[SESSION]

    with running_projector(replay):
        wait_until(
            lambda: getattr(replayed(), "last_offset", -1) == view.last_offset,
            timeout=60,
            what="the replayed projection to catch up",
        )
    # Sealed fields are stored as the log carries them: the replay is byte for byte the same.
    assert replayed() == wiring.live_store(settings).load([SESSION])[SESSION]
    assert opened(replay, replayed()) == view
    assert len(stub.requests) == calls


def test_a_summarizer_killed_mid_summary_is_asked_again_after_a_restart(
    kafka, llm_settings, stub, tmp_path
):
    settings = llm_settings()
    stub.default = slow(60)  # the first summarizer dies while its LLM call hangs
    log = tmp_path / "summarizer.log"
    with running_projector(settings):
        first = start_processor("summarizer", settings, log=log)
        try:
            publish_turns(settings, range(WINDOW + THRESHOLD))
            wait_until(lambda: len(stub.requests) == 1, timeout=60, what="a summary request")
        finally:
            stop(first, sig=9)
        stub.default = ok()
        with running_processor("summarizer", settings, log=log):
            wait_until(settled(settings, kafka, stub), timeout=60, what="summaries to settle")
        view = view_of(settings)
        assert view.summary_covered == THRESHOLD
        assert summarized_turns(view, stub) == [content(n) for n in range(THRESHOLD)]

        # A duplicate of the applied summary, and a stale one, change nothing.
        [applied] = [e for e in summary_events(kafka, settings) if e.summary == view.summary]
        stale = applied.model_copy(
            update={"summary": "stale", "through_offset": applied.through_offset - 1}
        )
        with wiring.producer(settings, flush_on_sigterm=False) as producer:
            for payload in (applied, stale):
                last = producer.publish(new_event(SESSION, user_id=USER, payload=payload))
        wait_until(lambda: view_of(settings).last_offset >= last.offset, timeout=30, what="apply")
    again = view_of(settings)
    assert (again.summary, again.summary_through, again.messages) == (
        view.summary,
        view.summary_through,
        view.messages,
    )


def test_while_the_llm_is_down_windows_work_and_overflow_stays_bounded_then_summaries_resume(
    kafka, llm_settings, stub, tmp_path
):
    settings = llm_settings(
        max_overflow=30, llm_breaker_reset_s=1.0, summary_retry_s=1.0, llm_timeout_s=2.0
    )
    stub.default = status(500)
    with (
        running_projector(settings),
        running_processor("summarizer", settings, log=tmp_path / "summarizer.log"),
    ):
        for start in range(0, 100, 25):
            publish_turns(settings, range(start, start + 25))  # checks every window
        wait_until(lambda: len(stub.requests) >= 5, timeout=60, what="summary attempts")
        down = view_of(settings)
        assert down.summary is None
        assert len(down.messages) == WINDOW + 30  # the overflow is bounded...
        assert down.overflow_dropped == 100 - WINDOW - 30  # ...and what it dropped is counted

        stub.default = ok()  # the LLM is back: the summarizer retries on its own
        wait_until(settled(settings, kafka, stub), timeout=60, what="summaries to resume")
    view = view_of(settings)
    assert view.summary is not None
    assert view.summary_covered + view.overflow_dropped + len(view.messages) == 100
    assert summarized_turns(view, stub) == [content(n) for n in range(50, 80)]
