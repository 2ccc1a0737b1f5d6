"""Failover in seconds: how long projection stops when a projector dies, measured.

The projector is a static group member (CHATLOG_INSTANCE_ID) with a short session
(CHATLOG_SESSION_TIMEOUT_S). Two ways a projector dies, two bounds:

* killed and restarted at once (a crash under a supervisor): the restart takes the dead
  member's place and partitions without waiting for its session, so projection resumes
  within `RESUME_BOUND_S` of the restart, which covers the Python start-up, the join and
  the replay of the uncommitted tail. Without static membership this took ~45 s.
* killed for good: a second projector of the group takes its partitions once the dead
  member's session expires, within the session timeout plus one heartbeat (librdkafka's
  3 s) and `TAKEOVER_MARGIN_S` for the rebalance and the projection itself.

The bounds are generous on purpose (measured times are printed, and are well below):
they fail only when failover is back to waiting out a whole session, not on a slow run.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.producers.partitioning import partition_for
from chatlog.settings import Settings
from chatlog.wiring import live_store
from tests.processes import (
    opened,
    owners,
    running_projector,
    start_projector,
    stop,
    unique_settings,
    wait_until,
)
from tests.system.traffic import sessions_on_every_partition

pytestmark = pytest.mark.system

PARTITIONS = 4
RESTARTS = 5
RESUME_BOUND_S = 5.0
HEARTBEAT_S = 3.0  # librdkafka's heartbeat.interval.ms, which chatlog leaves as it is
TAKEOVER_MARGIN_S = 5.0


class Appender:
    """Appends to a set of sessions from a thread, remembering what each must hold."""

    def __init__(self, settings: Settings, *, sessions: int = 30, every_s: float = 0.02) -> None:
        self.settings = settings
        self.sessions = [f"s{n:02d}" for n in range(sessions)]
        self.every_s = every_s
        self.expected: dict[str, list[str]] = {}
        self.last_offset: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="appender")
        self._producer = wiring.producer(settings, flush_on_sigterm=False)

    def append(self, session: str) -> int:
        """Append one message to `session` now; returns its offset."""
        with self._lock:
            content = f"{session}:{len(self.expected.setdefault(session, []))}"
            position = self._producer.publish(
                append_message(session, user_id="u", role="user", content=content)
            )
            self.expected[session].append(content)
            self.last_offset[session] = position.offset
            return position.offset

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.every_s):
            self.append(self.sessions[n % len(self.sessions)])
            n += 1

    def __enter__(self) -> Appender:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._producer.close()


def _probe_sessions() -> dict[int, str]:
    """A session on each partition, so that a probe per partition covers them all."""
    probes = sessions_on_every_partition(PARTITIONS, prefix="probe-")
    return {partition_for(s, PARTITIONS): s for s in probes}


def _visible(settings: Settings, offsets: dict[str, int]) -> bool:
    views = live_store(settings).load(list(offsets))
    return all(v is not None and v.last_offset >= offsets[s] for s, v in views.items())


def _assert_exactly_once(settings: Settings, appender: Appender) -> None:
    wait_until(lambda: _visible(settings, appender.last_offset), timeout=60, what="the projection")
    views = live_store(settings).load(list(appender.expected))
    for session, contents in sorted(appender.expected.items()):
        view = views[session]
        assert view is not None, f"{session} is missing"
        assert view.message_count == len(contents), f"{session} lost or duplicated a message"
        assert [m.content for m in opened(settings, view).messages] == contents, (
            f"{session} differs"
        )


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:])


def test_a_projector_killed_and_restarted_at_once_resumes_within_seconds(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=PARTITIONS)
    log = tmp_path / "projector.log"
    probes = _probe_sessions()
    resumed_after: list[float] = []
    projector = start_projector(settings, log=log)
    try:
        with Appender(settings) as appender:
            first = {s: appender.append(s) for s in probes.values()}
            wait_until(lambda: _visible(settings, first), timeout=60, what="the first start")
            for _ in range(RESTARTS):
                time.sleep(1.5)  # mid-stream, with a second of offsets not yet committed
                assert stop(projector, sig=signal.SIGKILL) == -signal.SIGKILL
                restarted = time.monotonic()
                projector = start_projector(settings, log=log)
                fresh = {s: appender.append(s) for s in probes.values()}
                wait_until(
                    lambda fresh=fresh: _visible(settings, fresh),
                    timeout=60,
                    what="projection after the restart",
                )
                resumed_after.append(time.monotonic() - restarted)
        print(
            f"projection resumed {', '.join(f'{t:.2f}' for t in resumed_after)} s "
            f"after each restart (bound {RESUME_BOUND_S:g} s)"
        )
        _assert_exactly_once(settings, appender)
    finally:
        assert stop(projector) == 0, _tail(log)
    assert max(resumed_after) < RESUME_BOUND_S, resumed_after


def test_a_projector_that_died_for_good_is_taken_over_within_the_session_timeout(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=PARTITIONS)
    survivor = settings.model_copy(update={"instance_id": "projector-a"})
    doomed = settings.model_copy(update={"instance_id": "projector-b"})
    bound = settings.session_timeout_s + HEARTBEAT_S + TAKEOVER_MARGIN_S
    probes = _probe_sessions()
    group = settings.projector_group
    with running_projector(survivor, log=tmp_path / "survivor.log"):
        victim = start_projector(doomed, log=tmp_path / "victim.log")
        try:
            wait_until(
                lambda: all(owners(kafka, group).get(i) for i in ("projector-a", "projector-b")),
                timeout=60,
                what="both projectors to own partitions",
            )
            orphaned = owners(kafka, group)["projector-b"]
        finally:
            assert stop(victim, sig=signal.SIGKILL) == -signal.SIGKILL
        died = time.monotonic()
        with Appender(settings) as appender:
            fresh = {probes[p]: appender.append(probes[p]) for p in orphaned}
            wait_until(lambda: _visible(settings, fresh), timeout=bound + 30, what="the takeover")
            took = time.monotonic() - died
        print(
            f"partitions {sorted(orphaned)} of the dead projector were projected again "
            f"{took:.2f} s after it died (session timeout {settings.session_timeout_s:g} s, "
            f"bound {bound:g} s)"
        )
        assert owners(kafka, group) == {"projector-a": set(range(PARTITIONS))}
    assert took < bound, took


def test_a_second_projector_with_the_same_instance_id_stops_the_first_naming_the_setting(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=PARTITIONS)
    log = tmp_path / "first.log"
    first = start_projector(settings, log=log)
    try:
        wait_until(
            lambda: bool(owners(kafka, settings.projector_group).get(settings.instance_id)),
            timeout=60,
            what="the first projector to own partitions",
        )
        with running_projector(settings, log=tmp_path / "second.log") as second:
            assert first.wait(30) == 1, _tail(log)
            assert second.poll() is None, "the newer projector keeps projecting"
    finally:
        stop(first)
    assert "give each projector of the group its own CHATLOG_INSTANCE_ID" in log.read_text()
