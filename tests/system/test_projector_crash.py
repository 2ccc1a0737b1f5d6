"""Crashes replay, never duplicate or drop: SIGKILL the projector mid-stream and compare.

A producer publishes a stream of sessions while a projector runs. The projector is
killed with SIGKILL halfway (no shutdown hook, no commit), restarted, and left to catch
up. A second, uninterrupted projector builds the same topic into another key prefix.
Both read-models must be identical, session by session, and each must hold exactly the
published messages in order.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.wiring import live_store
from tests.processes import opened, start_projector, stop, unique_settings, wait_until

pytestmark = pytest.mark.system

SESSIONS = 120
PER_SESSION = 40


def _publish_stream(settings, expected: dict[str, int], halfway: threading.Event) -> None:
    sessions = [f"s{s:03d}" for s in range(SESSIONS)]
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        for n in range(PER_SESSION):
            events = [
                append_message(s, user_id=f"u{i % 17}", role="user", content=f"{s}:{n}")
                for i, s in enumerate(sessions)
            ]
            for session, position in zip(sessions, producer.publish_many(events), strict=True):
                expected[session] = position.offset
            if n >= PER_SESSION // 2:
                halfway.set()
            time.sleep(0.05)  # a stream, not one burst: the kill lands mid-flight


def _caught_up(settings, expected: dict[str, int]) -> bool:
    views = live_store(settings).load(list(expected))
    return all(v is not None and v.last_offset == expected[s] for s, v in views.items())


def test_sigkill_mid_stream_then_restart_equals_an_uninterrupted_run(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=4)
    reference = settings.model_copy(
        update={
            "redis_prefix": redis_prefix + "ref",
            "projector_group": settings.projector_group + "-ref",
        }
    )
    expected: dict[str, int] = {}
    halfway = threading.Event()
    publisher = threading.Thread(target=_publish_stream, args=(settings, expected, halfway))

    victim = start_projector(settings, log=tmp_path / "victim.log")
    publisher.start()
    assert halfway.wait(120), "the publisher never reached half of the stream"
    time.sleep(0.3)
    assert stop(victim, sig=signal.SIGKILL) == -signal.SIGKILL
    publisher.join(120)
    assert not publisher.is_alive()
    assert len(expected) == SESSIONS

    survivor = start_projector(settings, log=tmp_path / "survivor.log")
    uninterrupted = start_projector(reference, log=tmp_path / "reference.log")
    try:
        wait_until(lambda: _caught_up(settings, expected), timeout=120, what="the restart")
        wait_until(lambda: _caught_up(reference, expected), timeout=120, what="the reference")
    finally:
        assert stop(survivor) == 0
        assert stop(uninterrupted) == 0

    crashed_views = live_store(settings).load(list(expected))
    reference_views = live_store(reference).load(list(expected))
    for session in sorted(expected):
        crashed, clean = crashed_views[session], reference_views[session]
        assert crashed == clean, f"{session} differs after the crash"
        assert crashed.message_count == PER_SESSION, f"{session} lost or duplicated a message"
        assert [m.content for m in opened(settings, crashed).messages] == [
            f"{session}:{n}" for n in range(PER_SESSION)
        ]
