"""Redis losing the read-model under a running projector: detected, never served partial.

Each test runs its own redis-server (`PrivateRedis` of `test_redis_faults`) and a real
`chatlog run projector` process while a publisher appends to every session and a reader
polls every session's context throughout. Redis is then emptied with FLUSHALL, which is
what a restart without persistence, or a failover to an empty replica, looks like too.

The reader must never receive a partial session: every context it gets is compared with
the log, and must hold exactly the session's messages up to the position it reports (no
summarizer runs and the overflow holds them all, so that is every message). Meanwhile it
may get `ReadModelLost`, and nothing else. With ``CHATLOG_ON_DATA_LOSS=rebuild`` every
session must be whole again at the end, with no restart; with ``stop`` the projector
exits 1, refuses to start again, and starts once `chatlog replay` has rebuilt it.

The same holds for a Redis restarted empty (its data directory gone: no persistence)
and for one restarted from an older copy of its data (a restored snapshot: the epoch is
there, the progress marks are behind what the projector had projected).

The times printed are from the fault: until the projector noticed, and until reads were
served again (every session is then checked whole).
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from chatlog import wiring
from chatlog.processors.replay import rebuild
from chatlog.producers.commands import append_message
from chatlog.schemas.errors import ReadModelLost, SessionNotFound, StoreUnavailable
from tests.processes import running_projector, start_projector, stop, unique_settings, wait_until
from tests.system.test_redis_faults import PrivateRedis, private_redis  # noqa: F401 - fixture

pytestmark = pytest.mark.system

SESSIONS = 30
HISTORY = 20  # messages per session before the flush: what a partial view would lack
REDIS_TIMEOUT_S = 0.5


@dataclass
class Log:
    """What the publisher appended: per session, (offset, content) in order."""

    sent: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, session: str, offset: int, content: str) -> None:
        with self.lock:
            self.sent.setdefault(session, []).append((offset, content))

    def last(self) -> dict[str, int]:
        with self.lock:
            return {s: entries[-1][0] for s, entries in self.sent.items()}


class Publisher(threading.Thread):
    """Appends one message to every session every 0.1 s until stopped."""

    def __init__(self, settings, log: Log, start: int) -> None:
        super().__init__(name="publisher")
        self.settings, self.log, self.n = settings, log, start
        self.halt = threading.Event()

    def run(self) -> None:
        with wiring.producer(self.settings, flush_on_sigterm=False) as producer:
            while not self.halt.is_set():
                publish_round(producer, self.log, self.n)
                self.n += 1
                self.halt.wait(0.1)

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        assert not self.is_alive()


def publish_round(producer, log: Log, n: int) -> None:
    sessions = [f"s{k}" for k in range(SESSIONS)]
    events = [append_message(s, user_id="u1", role="user", content=f"{s}:{n}") for s in sessions]
    for session, position in zip(sessions, producer.publish_many(events), strict=True):
        log.add(session, position.offset, f"{session}:{n}")


class Reader(threading.Thread):
    """Reads random sessions' contexts in a loop; keeps what it got."""

    def __init__(self, settings) -> None:
        super().__init__(name="reader")
        self.reader = wiring.reader(settings)
        self.halt = threading.Event()
        self.got: list[tuple[str, int, tuple[str, ...]]] = []
        self.lost = 0
        self.errors: list[BaseException] = []
        self.served_at: list[float] = []

    def run(self) -> None:
        rng = random.Random(7)
        while not self.halt.is_set():
            session = f"s{rng.randrange(SESSIONS)}"
            try:
                context = self.reader.context(session, user_id="u1")
            except ReadModelLost:
                self.lost += 1
            except StoreUnavailable:  # Redis restarting: an outage, not data
                pass
            except Exception as exc:
                self.errors.append(exc)
            else:
                self.served_at.append(time.monotonic())
                contents = tuple(m.content for m in context.messages)
                self.got.append((session, context.position.offset, contents))
            time.sleep(0.002)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)

    def check_against(self, log: Log) -> None:
        """Every context it got holds every message of its session up to its position."""
        assert not self.errors, self.errors[:3]
        for session, offset, contents in self.got:
            expected = tuple(c for o, c in log.sent[session] if o <= offset)
            assert contents == expected, (
                f"{session} at offset {offset} was served {len(contents)} messages, "
                f"the log has {len(expected)}: a partial view"
            )


def whole(settings, log: Log, last: dict[str, int]) -> bool:
    """Every session is served, whole, up to `last`."""
    reader = wiring.reader(settings)
    try:
        for session, offset in last.items():
            context = reader.context(session, user_id="u1")
            if context.position.offset < offset:
                return False
            expected = tuple(c for o, c in log.sent[session] if o <= context.position.offset)
            assert tuple(m.content for m in context.messages) == expected
    except (ReadModelLost, SessionNotFound, StoreUnavailable):  # not yet, or not again yet
        return False
    return True


def scenario(kafka, private_redis, on_data_loss: str):  # noqa: F811
    settings = unique_settings(
        kafka,
        private_redis.url,
        "loss",
        partitions=3,
        redis_timeout_s=REDIS_TIMEOUT_S,
        on_data_loss=on_data_loss,
        max_overflow=1000,
    )
    log = Log()
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        for n in range(HISTORY):
            publish_round(producer, log, n)
    return settings, log


def flushall(server: PrivateRedis, snapshot: Path) -> None:
    redis.Redis.from_url(server.url).flushall()


def restart_empty(server: PrivateRedis, snapshot: Path) -> None:
    server.kill()
    shutil.rmtree(server.data_dir / "appendonlydir")
    server.start()


def restart_from_an_older_copy(server: PrivateRedis, snapshot: Path) -> None:
    # Served as it was until the projector's next write finds the marks behind: old
    # views, each whole up to the position it reports.
    server.kill()
    shutil.rmtree(server.data_dir / "appendonlydir")
    shutil.copytree(snapshot, server.data_dir / "appendonlydir")
    server.start()


@pytest.mark.parametrize("fault", [flushall, restart_empty, restart_from_an_older_copy])
def test_rebuild_mode_rebuilds_every_session_whole_and_never_serves_a_partial_one(
    kafka,
    private_redis,  # noqa: F811
    tmp_path: Path,
    fault,
):
    settings, log = scenario(kafka, private_redis, "rebuild")
    projector_log = tmp_path / "projector.log"
    snapshot = tmp_path / "snapshot"
    with running_projector(settings, log=projector_log) as projector:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="projection")
        # Every write is fsynced: a copy now is the data as it was (an older snapshot later).
        shutil.copytree(private_redis.data_dir / "appendonlydir", snapshot)
        publisher = Publisher(settings, log, HISTORY)
        reader = Reader(settings)
        publisher.start()
        reader.start()
        try:
            time.sleep(1.5)  # more projected (and committed) than the copy holds
            served_before = len(reader.got)
            faulted = time.monotonic()
            fault(private_redis, snapshot)
            wait_until(
                lambda: "rebuilding the whole read-model" in projector_log.read_text(),
                timeout=20,
                what="the projector to notice",
            )
            noticed = time.monotonic() - faulted
            wait_until(
                lambda: "is whole again" in projector_log.read_text(),
                timeout=60,
                what="the rebuild",
            )
            rebuilt = time.monotonic() - faulted
            time.sleep(1.0)  # live traffic on top of the rebuilt generation
        finally:
            publisher.stop()
            reader.stop()
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="every session")
        assert projector.poll() is None, "the projector exited"
    reader.check_against(log)
    assert served_before > 0
    assert len(reader.got) > served_before, "no read after the rebuild"
    print(
        f"\n{fault.__name__}, rebuild mode: noticed after {noticed:.1f} s, rebuilt and live "
        f"after {rebuilt:.1f} s; {len(reader.got)} contexts checked whole, "
        f"{reader.lost} ReadModelLost"
    )


def test_stop_mode_stops_refuses_to_restart_and_starts_after_a_replay(
    kafka,
    private_redis,  # noqa: F811
    tmp_path: Path,
):
    settings, log = scenario(kafka, private_redis, "stop")
    projector_log = tmp_path / "projector.log"
    projector = start_projector(settings, log=projector_log)
    try:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="projection")
        time.sleep(1.5)  # the group commits its offsets every second
        publisher = Publisher(settings, log, HISTORY)
        reader = Reader(settings)
        publisher.start()
        reader.start()
        try:
            time.sleep(1.0)
            redis.Redis.from_url(private_redis.url).flushall()
            flushed = time.monotonic()
            assert projector.wait(30) == 1
            stopped = time.monotonic() - flushed
            time.sleep(1.0)  # the reader keeps reading a flushed Redis
        finally:
            publisher.stop()
            reader.stop()
    finally:
        stop(projector)
    reader.check_against(log)
    assert reader.lost > 0
    text = projector_log.read_text()
    assert "Redis has lost" in text, text[-3000:]
    assert "chatlog replay" in text
    assert "CHATLOG_ON_DATA_LOSS=rebuild" in text

    restarted_log = tmp_path / "restarted.log"
    restarted = start_projector(settings, log=restarted_log)
    try:
        assert restarted.wait(60) == 1, "a restart accepted the lost read-model"
    finally:
        stop(restarted)
    assert "chatlog replay" in restarted_log.read_text()
    with pytest.raises(ReadModelLost):
        wiring.reader(settings).context("s0", user_id="u1")

    started = time.monotonic()
    report = rebuild(wiring.replay_parts(settings), handover_s=0.0)
    replayed = time.monotonic() - started
    with running_projector(settings, log=tmp_path / "after-replay.log") as after:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="every session")
        assert after.poll() is None
    print(
        f"\nFLUSHALL, stop mode: exited 1 after {stopped:.1f} s; restart refused; "
        f"`chatlog replay` into {report.generation} took {replayed:.1f} s, then served whole"
    )


def test_a_fresh_deployment_still_just_starts(kafka, private_redis, tmp_path: Path):  # noqa: F811
    settings, log = scenario(kafka, private_redis, "stop")
    with running_projector(settings, log=tmp_path / "projector.log") as projector:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="projection")
        assert projector.poll() is None
    # And a restart on the same, intact read-model continues it.
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        publish_round(producer, log, HISTORY)
    with running_projector(settings, log=tmp_path / "restarted.log") as projector:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="restart")
        assert projector.poll() is None
