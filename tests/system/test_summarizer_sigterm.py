"""SIGTERM stops the summarizer within its bound, whatever it waits for, committing only
what it finished; a restarted summarizer then summarizes each turn once. And the last
resort every processor shares: a clean stop that hangs is cut short at the deadline.

The fault that found it: with no projector running, the summarizer waits to load a
session for ever, and faust waited (with no limit) for the records the agent held before
it would stop; a minute after SIGTERM it still ran. The same holds for a summary whose
LLM call hangs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from chatlog import wiring
from chatlog.schemas.events import SummaryUpdated
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from tests.llm_stub import LlmStub, ok, slow
from tests.processes import (
    ROOT,
    log_events,
    running_processor,
    running_projector,
    start_processor,
    unique_settings,
    wait_for_group,
    wait_until,
)

pytestmark = pytest.mark.system

SESSION = "stuck-session"
USER = "alice"
WINDOW = 6
THRESHOLD = 4
TURNS = WINDOW + 2 * THRESHOLD
STOP_BOUND_S = 10.0  # docs/operations.md, "Supervision"


def content(n: int) -> str:
    return f"turn {n}: about order #ST-{n:04d}"


@pytest.fixture
def stub():
    with LlmStub() as server:
        yield server


def _settings(kafka, redis_url, redis_prefix, stub: LlmStub) -> Settings:
    return unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        partitions=3,
        window=WINDOW,
        summary_threshold=THRESHOLD,
        summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
        llm_base_url=stub.base_url,
        llm_model="stub-model",
        llm_timeout_s=60.0,
    )


def _append(settings: Settings, turns: range) -> Position:
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        positions = [
            producer.append(
                SESSION,
                user_id=USER,
                role="user" if n % 2 == 0 else "assistant",
                content=content(n),
            )
            for n in turns
        ]
    return positions[-1]


def _committed(settings: Settings, partition: int) -> int:
    """The summarizer group's committed offset of `partition` (negative: none)."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.summarizer_group}
    )
    try:
        [tp] = consumer.committed([TopicPartition(settings.topic, partition)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def _sigterm(process: subprocess.Popen[bytes], log: Path) -> tuple[int, float]:
    """SIGTERM `process`; (its exit status, seconds it took), or fail past the bound."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        tail = log.read_text(errors="replace").splitlines()[-40:]
        pytest.fail(f"still running {STOP_BOUND_S} s after SIGTERM:\n" + "\n".join(tail))
    return status, time.monotonic() - started


def _summarized_once(kafka, settings: Settings, stub: LlmStub) -> list[SummaryUpdated]:
    """The session's summaries in the log, checked to cover each evicted turn once."""
    events = [event for _, event in log_events(kafka, settings)]
    summaries = [e.payload for e in events if isinstance(e.payload, SummaryUpdated)]
    assert len(events) - len(summaries) == TURNS
    # Each summary covers the turns after the one before it: through_offsets and the
    # cumulative count only grow, and the LLM was sent each turn once, in order.
    throughs = [s.through_offset for s in summaries]
    assert throughs == sorted(set(throughs)), throughs
    covered = [s.covered_messages for s in summaries]
    assert covered == sorted(set(covered)), covered
    sent = [
        t["content"]
        for body in stub.requests
        for t in json.loads(body["messages"][1]["content"])["turns"]
    ]
    assert sent == [content(n) for n in range(covered[-1])]
    assert len(stub.requests) == len(summaries)
    return summaries


@pytest.mark.parametrize("stuck_in", ["loading the session", "the LLM call"])
def test_sigterm_stops_a_stuck_summarizer_within_its_bound_and_a_restart_loses_nothing(
    kafka, redis_url, redis_prefix, stub, tmp_path, stuck_in
):
    settings = _settings(kafka, redis_url, redis_prefix, stub)
    log = tmp_path / "summarizer.log"
    stub.default = slow(120)
    if stuck_in == "loading the session":
        # No projector: the session's view never gets to the record, so it waits to load.
        first = start_processor("summarizer", settings, log=log)
        wait_for_group(kafka, settings.summarizer_group)
        last = _append(settings, range(TURNS))
        wait_until(
            lambda: "waiting to load session" in log.read_text(errors="replace"),
            timeout=60,
            what="the summarizer to wait for the projection",
        )
        requests_before = 0
    else:
        with running_projector(settings):
            first = start_processor("summarizer", settings, log=log)
            wait_for_group(kafka, settings.summarizer_group)
            last = _append(settings, range(TURNS))
            wait_until(lambda: len(stub.requests) == 1, timeout=60, what="a summary request")
        requests_before = 1
    partition = last.partition

    status, took = _sigterm(first, log)
    print(f"\nSIGTERM while stuck in {stuck_in}: exited {status} in {took:.1f} s")
    assert status == 0
    assert len(stub.requests) == requests_before
    # Nothing that was unfinished is committed: the trigger is the first turn past the
    # window plus a threshold's worth, and neither it nor anything after it is done.
    trigger = last.offset - TURNS + WINDOW + THRESHOLD
    assert _committed(settings, partition) <= trigger

    stub.requests.clear()
    stub.default = ok()
    store = wiring.live_store(settings)

    def summarized() -> bool:
        view = store.load([SESSION])[SESSION]
        return view is not None and view.summary_covered == TURNS - WINDOW

    with (
        running_projector(settings),
        running_processor("summarizer", settings, log=log),
    ):
        wait_until(summarized, timeout=90, what="the restarted summarizer to summarize")
        time.sleep(2)  # a duplicate would be asked for now, if at all
    summaries = _summarized_once(kafka, settings, stub)
    assert summaries[-1].covered_messages == TURNS - WINDOW


HANGING_STOP = """
import time
from chatlog.cli.common import stop_on_signals
with stop_on_signals(deadline_s=1.0) as stop:
    print("ready", flush=True)
    stop.wait()
    time.sleep(60)  # a clean stop that hangs, as a consumer closing against a dead broker
"""


def test_a_stop_that_hangs_is_cut_short_at_the_deadline_with_exit_75():
    process = subprocess.Popen(
        [sys.executable, "-c", HANGING_STOP],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with process:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
        took = time.monotonic() - started
    assert process.returncode == 75
    assert 1.0 <= took < 5.0, took
    assert "still stopping 1 s after the signal" in err
