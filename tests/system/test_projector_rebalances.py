"""Rebalances under traffic: partitions move between projectors, and no reader notices.

Two projectors of one group (each its own `instance_id`) project while a publisher
appends to sessions on every partition and a reader polls every session's context
(`tests.system.traffic.Reader`, which checks each context against the log). Partitions
are then moved again and again, the ways they move in production:

* a third projector joins (a scale-up: it takes partitions from both), and is stopped
  with SIGTERM (a scale-down: a static member does not leave the group, so its
  partitions go back to the others when its session times out);
* meanwhile one of the two is SIGKILLed and restarted under its id (a crash under a
  supervisor: it takes its own place back).

A partition's owner changes while batches are in flight, offsets are committed on
revoke, and the new owner starts from what was committed and replays what was not: the
place where a message could be skipped, doubled, or half-written for a reader to see.
Afterwards every session must hold exactly the published messages once, in order, and
the reader must never have been served a partial session. A probe appends to a session
on each partition all along and times how long each append takes to become visible: the
longest is the longest projection pause, printed with the number of rebalances (each
one a new generation of the group, counted from the assignments the projectors log).

Then the same during a Redis outage: while Redis is stalled or down, one of two
projectors is stopped with SIGTERM, so its partitions move to the other, which cannot
ask Redis where to start them and holds them, paused, until it can. The stopped one
must exit 0 within the 10 s that `chatlog run projector` promises, and the survivor,
once Redis returns, must start them and project everything exactly once. (It once
left them paused for good: `tests/integration/test_projector_held_partitions.py`.)

The session timeout is the broker's minimum (6 s), the pause a scale-down costs. The
bound on the pause only fails a return to waiting out a whole default session (45 s
before static membership) or a hang, not a slow run.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.schemas.errors import StoreUnavailable
from chatlog.settings import Settings
from tests.processes import (
    LOG_TAIL_LINES,
    owners,
    start_projector,
    stop,
    unique_settings,
    wait_until,
)
from tests.system.traffic import (
    Log,
    PrivateRedis,
    Publisher,
    Reader,
    sessions_on_every_partition,
    whole,
)

pytestmark = pytest.mark.system

PARTITIONS = 4
SESSIONS = sessions_on_every_partition(PARTITIONS, per_partition=2)
SESSION_TIMEOUT_S = 6.0  # the broker's group.min.session.timeout.ms
HEARTBEAT_S = 3.0  # librdkafka's heartbeat.interval.ms, which chatlog leaves as it is
CYCLES = 3  # of scale-up, crash and scale-down
# Only a hang or a whole default session fails it: a scale-down costs the session
# timeout plus a heartbeat, and a crash on top of it a rejoin.
PAUSE_BOUND_S = 2 * SESSION_TIMEOUT_S + HEARTBEAT_S + 10.0
STOP_BOUND_S = 10.0  # what `chatlog run projector` promises after SIGTERM
RECOVERY_BOUND_S = 60.0
MAX_OVERFLOW = 1000  # every message stays in the context, to be compared with the log


def _settings(kafka, redis_url: str, redis_prefix: str, **overrides) -> Settings:
    return unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        partitions=PARTITIONS,
        session_timeout_s=SESSION_TIMEOUT_S,
        max_overflow=MAX_OVERFLOW,
        **overrides,
    )


class Projectors:
    """Projector processes of one group by instance id, each logging to `<id>.log`."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, instance_id: str) -> None:
        settings = self.settings.model_copy(update={"instance_id": instance_id})
        self.running[instance_id] = start_projector(settings, log=self.log(instance_id))

    def stop(self, instance_id: str, *, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Signal it and reap it; its exit status and how long it took."""
        asked = time.monotonic()
        status = stop(self.running.pop(instance_id), sig=sig)
        return status, time.monotonic() - asked

    def log(self, instance_id: str) -> Path:
        return self.logs / f"{instance_id}.log"

    def assignments(self, instance_id: str) -> list[list[int]]:
        """Every assignment the projector's rebalance callback was given, in order
        (cooperative: only what was added, empty when nothing was)."""
        text = self.log(instance_id).read_text() if self.log(instance_id).exists() else ""
        return [
            [int(p) for p in found.split(",") if p.strip()]
            for found in re.findall(r"assigned partitions \[([\d, ]*)\]", text)
        ]

    def rebalances(self, instance_id: str) -> int:
        """How many rebalances the projector went through, from its log.

        Its rebalance callback runs once in every generation of the group it is in; a
        restart (a static member taking its place back) gets one more, at once, which
        is no rebalance: the others are not called, the generation stays the same."""
        starts = self.log(instance_id).read_text().count(f"member {instance_id} (CHATLOG_")
        restarts = starts - 1
        return len(self.assignments(instance_id)) - restarts

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.running.values())

    def close(self) -> None:
        for instance_id in list(self.running):
            self.stop(instance_id)

    def tails(self) -> None:
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print(f"--- the last lines of {log.name} ---", *tail, sep="\n")


@contextmanager
def projectors(settings: Settings, logs: Path) -> Iterator[Projectors]:
    """`Projectors` for the block: all stopped after it, their logs printed if it failed."""
    group = Projectors(settings, logs)
    try:
        yield group
    except BaseException:
        group.close()
        group.tails()
        raise
    group.close()


def own_everything(kafka, group: str, members: set[str]) -> bool:
    """Whether the group is stable with exactly `members`, each owning partitions, and
    every partition owned by one of them."""
    found = owners(kafka, group, stable=True)
    owned = [p for partitions in found.values() for p in partitions]
    return (
        set(found) == members and all(found.values()) and sorted(owned) == list(range(PARTITIONS))
    )


class Probe(threading.Thread):
    """Appends to one session per partition, waits until every append is visible, and
    again, all along; the longest wait is the longest pause of the projection."""

    def __init__(self, settings: Settings, log: Log) -> None:
        super().__init__(name="probe")
        self.settings, self.log = settings, log
        self.sessions = sessions_on_every_partition(PARTITIONS, prefix="probe-")
        self.halt = threading.Event()
        self.longest = 0.0
        self.rounds = 0

    def __enter__(self) -> Probe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(60)
        assert not self.is_alive(), "the probe did not stop"

    def run(self) -> None:
        store = wiring.live_store(self.settings)
        with wiring.producer(self.settings, flush_on_sigterm=False) as producer:
            while not self.halt.is_set():
                events = [
                    append_message(s, user_id="u1", role="user", content=f"{s}:{self.rounds}")
                    for s in self.sessions
                ]
                pending = {}
                for session, position in zip(
                    self.sessions, producer.publish_many(events), strict=True
                ):
                    self.log.add(session, position, f"{session}:{self.rounds}")
                    pending[session] = position.offset
                sent = time.monotonic()
                while pending and not self.halt.is_set():
                    try:
                        views = store.load(list(pending))
                    except StoreUnavailable:  # Redis out: the pause goes on
                        views = {}
                    for session, view in views.items():
                        if view is not None and view.last_offset >= pending[session]:
                            del pending[session]
                    self.longest = max(self.longest, time.monotonic() - sent)
                    self.halt.wait(0.02)
                self.rounds += 1
                self.halt.wait(0.2)


def test_rebalances_under_traffic_lose_nothing_and_never_serve_a_partial_session(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = _settings(kafka, redis_url, redis_prefix)
    group = settings.projector_group
    log = Log()
    with projectors(settings, tmp_path) as running:
        running.start("projector-a")
        running.start("projector-b")
        wait_until(
            lambda: own_everything(kafka, group, {"projector-a", "projector-b"}),
            timeout=60,
            what="both projectors to own partitions",
        )
        with Publisher(settings, log, SESSIONS):
            wait_until(lambda: len(log.last()) == len(SESSIONS), timeout=30, what="appends")
            wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="projection")
            # Started once every session exists: from then on a "not found" is a lost one.
            with Reader(settings, log, SESSIONS) as reader, Probe(settings, log) as probe:
                # projector-b is in the group from here to the end (its restart keeps its
                # place), so it goes through every rebalance the cycles cause.
                before = running.rebalances("projector-b")
                stopped_in: list[float] = []
                for cycle in range(CYCLES):
                    joining = f"projector-c{cycle}"
                    running.start(joining)
                    wait_until(
                        lambda joining=joining: bool(owners(kafka, group).get(joining)),
                        timeout=60,
                        what=f"{joining} to take partitions",
                    )
                    time.sleep(1.0)  # projecting, with offsets not yet committed
                    crashed = "projector-a" if cycle % 2 == 0 else "projector-b"
                    status, _ = running.stop(crashed, sig=signal.SIGKILL)
                    assert status == -signal.SIGKILL
                    running.start(crashed)
                    time.sleep(1.0)
                    status, took = running.stop(joining)
                    assert status == 0, f"{joining} exited {status}"
                    stopped_in.append(took)
                    wait_until(
                        lambda: own_everything(kafka, group, {"projector-a", "projector-b"}),
                        timeout=SESSION_TIMEOUT_S + HEARTBEAT_S + 30,
                        what=f"the partitions of {joining} to go back",
                    )
                    assert running.alive(), "a projector exited"
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="every session")
        assert running.alive(), "a projector exited"
        rebalances = running.rebalances("projector-b") - before
    checked = reader.check_against(log)
    print(
        f"\n{CYCLES} scale-ups, crashes and scale-downs under traffic: {rebalances} "
        f"rebalances (seen by projector-b); the longest projection pause a probe saw was "
        f"{probe.longest:.1f} s ({probe.rounds} probe rounds, bound {PAUSE_BOUND_S:g} s); "
        f"SIGTERM took {', '.join(f'{t:.1f}' for t in stopped_in)} s; {log.total()} appends; "
        f"the reader got {reader.summary()} ({checked} contexts checked whole)"
    )
    assert rebalances >= 2 * CYCLES, "the partitions did not move"
    assert max(stopped_in) <= STOP_BOUND_S, stopped_in
    assert probe.longest < PAUSE_BOUND_S, probe.longest


def _stall(server: PrivateRedis) -> None:
    server.signal(signal.SIGSTOP)


def _resume(server: PrivateRedis) -> None:
    server.signal(signal.SIGCONT)


def _down(server: PrivateRedis) -> None:
    server.kill()


@pytest.mark.parametrize(
    ("fault", "end"),
    [(_stall, _resume), (_down, PrivateRedis.start)],
    ids=["stalled", "down"],
)
def test_a_rebalance_during_a_redis_outage_loses_nothing_and_the_stopped_projector_exits(
    kafka, private_redis, tmp_path, fault, end
):
    settings = _settings(kafka, private_redis.url, "outage", redis_timeout_s=0.5)
    group = settings.projector_group
    log = Log()
    with projectors(settings, tmp_path) as running:
        running.start("projector-a")
        running.start("projector-b")
        wait_until(
            lambda: own_everything(kafka, group, {"projector-a", "projector-b"}),
            timeout=60,
            what="both projectors to own partitions",
        )
        orphaned = owners(kafka, group)["projector-b"]
        with Publisher(settings, log, SESSIONS) as publisher:
            wait_until(lambda: len(log.last()) == len(SESSIONS), timeout=30, what="appends")
            wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="projection")
            with Reader(settings, log, SESSIONS) as reader:
                wait_until(
                    lambda: reader.outcomes["served"] >= 2 * len(SESSIONS),
                    timeout=30,
                    what="reads before the outage",
                )
                fault(private_redis)
                try:
                    # Both are retrying a batch (there is traffic on every partition).
                    for instance_id in ("projector-a", "projector-b"):
                        text = running.log(instance_id).read_text
                        wait_until(
                            lambda text=text: "consumption paused" in text(),
                            timeout=20,
                            what=f"{instance_id} to find Redis out",
                        )
                    status, took = running.stop("projector-b")
                    stopped = time.monotonic()
                    wait_until(
                        lambda: own_everything(kafka, group, {"projector-a"}),
                        timeout=SESSION_TIMEOUT_S + HEARTBEAT_S + 30,
                        what="projector-a to take the partitions of projector-b",
                    )
                    # Given them while Redis cannot say where to start them: held.
                    survivor = running.log("projector-a").read_text
                    wait_until(
                        lambda: f"partitions {sorted(orphaned)} held" in survivor(),
                        timeout=30,
                        what="projector-a to hold them",
                    )
                    taken = time.monotonic() - stopped
                finally:
                    end(private_redis)
                back = time.monotonic()
                publisher.stop()
                wait_until(
                    lambda: whole(settings, log, log.last()),
                    timeout=RECOVERY_BOUND_S,
                    what="projector-a to catch up after Redis returned",
                )
                recovery = time.monotonic() - back
                served = reader.outcomes["served"]
                wait_until(
                    lambda: reader.outcomes["served"] >= served + 2 * len(SESSIONS),
                    timeout=30,
                    what="reads after the outage",
                )
        assert running.alive(), "projector-a exited"
        text = survivor()
    checked = reader.check_against(log)
    print(
        f"\nRedis {fault.__name__.strip('_')}, projector-b stopped: it exited {status} in "
        f"{took:.1f} s; projector-a held its partitions {sorted(orphaned)} {taken:.1f} s "
        f"later, and caught up {recovery:.1f} s after Redis returned ({log.total()} appends); "
        f"the reader got {reader.summary()} ({checked} contexts checked whole)"
    )
    assert status == 0
    assert took <= STOP_BOUND_S, f"took {took:.1f} s to stop"
    assert f"held partitions {sorted(orphaned)} started" in text, text[-3000:]
    # Its outage is one, however many steps failed and partitions came during it.
    assert text.count("consumption paused") == 1, text[-3000:]
    assert text.count("consumption resumed") == 1, text[-3000:]
