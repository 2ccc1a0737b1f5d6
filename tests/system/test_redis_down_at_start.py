"""A projector started while Redis is down waits for it, rather than exiting.

Supervisors restart a process that exits 75, but a restart loop during a Redis outage
only adds noise and delay: the projector instead joins its group, holds the partitions
it is given (paused: it cannot know where to start them without Redis) and starts them
once Redis answers, as it does for a Redis fault while running.

Two starts are checked, each against its own redis-server (`PrivateRedis`, AOF on):

* a fresh deployment (no read-model yet): the first generation is created once Redis
  answers, and everything published meanwhile is projected;
* a restart of both (Redis and the projector down at once, say a host reboot): the
  projector finds the existing generation once Redis answers and continues from its
  progress marks, so nothing is projected twice or skipped.

The time printed is from Redis answering until the read-model held every message.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.schemas.errors import StoreUnavailable
from chatlog.settings import Settings
from chatlog.wiring import live_store
from tests.processes import opened, start_projector, stop, unique_settings, wait_until
from tests.system.traffic import PrivateRedis

pytestmark = pytest.mark.system

SESSIONS = 6
DOWN_S = 4.0  # long enough for the projector to join its group and be assigned
CATCH_UP_BOUND_S = 60.0  # only so that a projector that never starts fails, not hangs


def _publish(settings: Settings, sent: dict[str, list[str]], last: dict[str, int]) -> None:
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        for s in range(SESSIONS):
            session = f"s{s}"
            contents = sent.setdefault(session, [])
            content = f"{session}:{len(contents)}"
            position = producer.publish(
                append_message(session, user_id="u1", role="user", content=content)
            )
            contents.append(content)
            last[session] = position.offset


def _caught_up(settings: Settings, last: dict[str, int]) -> bool:
    try:
        views = live_store(settings).load(list(last))
    except StoreUnavailable:
        return False
    return all(v is not None and v.last_offset == last[s] for s, v in views.items())


def _start_during_an_outage(
    settings: Settings, server: PrivateRedis, log: Path, sent: dict[str, list[str]]
) -> float:
    """Start a projector while `server` is down, publish, bring Redis back; returns how
    long after Redis answered the read-model held everything, the projector stopped."""
    last: dict[str, int] = {}
    projector = start_projector(settings, log=log)
    try:
        _publish(settings, sent, last)
        wait_until(
            lambda: "consumption paused" in log.read_text(),
            timeout=60,
            what="the projector to find Redis down",
        )
        time.sleep(DOWN_S)
        assert projector.poll() is None, log.read_text()[-3000:]
        server.start()
        back = time.monotonic()
        wait_until(
            lambda: _caught_up(settings, last),
            timeout=CATCH_UP_BOUND_S,
            what="the projection once Redis answered",
        )
        took = time.monotonic() - back
    finally:
        status = stop(projector)
    assert status == 0, log.read_text()[-3000:]
    text = log.read_text()
    # One outage, logged when it starts and when it ends, not a false "working again".
    assert text.count("consumption paused") == 1, text[-3000:]
    assert text.count("consumption resumed") == 1, text[-3000:]
    return took


def _assert_exactly_once_in_order(settings: Settings, sent: dict[str, list[str]]) -> None:
    views = live_store(settings).load(list(sent))
    for session, contents in sent.items():
        view = views[session]
        assert view is not None, f"{session} was never projected"
        assert [m.content for m in opened(settings, view).messages] == contents, (
            f"{session} lost or doubled"
        )


def test_a_projector_started_while_redis_is_down_waits_and_then_projects(
    kafka, private_redis: PrivateRedis, tmp_path: Path
):
    settings = unique_settings(
        kafka, private_redis.url, "atstart", partitions=2, redis_timeout_s=0.5
    )
    sent: dict[str, list[str]] = {}

    private_redis.kill()
    fresh = _start_during_an_outage(settings, private_redis, tmp_path / "fresh.log", sent)
    generation = wiring.generations(settings).live()
    assert generation is not None, "no generation was created"
    _assert_exactly_once_in_order(settings, sent)

    private_redis.kill()  # AOF on: it comes back with the read-model, marks and all
    restart = _start_during_an_outage(settings, private_redis, tmp_path / "restart.log", sent)
    assert wiring.generations(settings).live() == generation, "the restart made a new generation"
    _assert_exactly_once_in_order(settings, sent)
    print(
        f"\nRedis down at start: projected everything {fresh:.1f} s after Redis answered "
        f"(fresh deployment), {restart:.1f} s (restart of both)"
    )
