"""Redis losing the read-model under a running projector: detected, never served partial.

Each test runs its own redis-server (`tests.system.traffic.PrivateRedis`) and a real
`chatlog run projector` process while a publisher appends to every session and a reader
polls every session's context throughout. Redis is then emptied with FLUSHALL, which is
what a restart without persistence, or a failover to an empty replica, looks like too.

The reader must never receive a partial session: every context it gets is compared with
the log, and must hold exactly the session's messages up to the position it reports (no
summarizer runs and the overflow holds them all, so that is every message). Meanwhile it
may get `ReadModelLost`, `StoreUnavailable` while Redis restarts, and `ReadTimeout` on a
read that waits for its own write (`after=`), and nothing else. With
``CHATLOG_ON_DATA_LOSS=rebuild`` every session must be whole again at the end, with no
restart; with ``stop`` the projector exits 1, refuses to start again, and starts once
`chatlog replay` has rebuilt it.

The same holds for a Redis restarted empty (its data directory gone: no persistence)
and for one restarted from an older copy of its data (a restored snapshot: the epoch is
there, the progress marks are behind what the projector had projected).

The times printed are from the fault: until the projector noticed, and until reads were
served again (every session is then checked whole).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import redis

from chatlog import wiring
from chatlog.processors.replay import rebuild
from chatlog.schemas.errors import ReadModelLost
from tests.processes import running_projector, start_projector, stop, unique_settings, wait_until
from tests.system.traffic import Log, PrivateRedis, Publisher, Reader, publish_round, whole

pytestmark = pytest.mark.system

SESSIONS = [f"s{k}" for k in range(30)]
HISTORY = 20  # messages per session before the flush: what a partial view would lack
REDIS_TIMEOUT_S = 0.5


def scenario(kafka, private_redis, on_data_loss: str):
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
            publish_round(producer, log, SESSIONS, n)
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
    private_redis,
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
        publisher = Publisher(settings, log, SESSIONS, start=HISTORY)
        reader = Reader(settings, log, SESSIONS)
        publisher.start()
        reader.start()
        try:
            time.sleep(1.5)  # more projected (and committed) than the copy holds
            served_before = reader.outcomes["served"]
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
    # A restored copy serves its older views (each whole) until the projector notices.
    checked = reader.check_against(log, never_back=fault is not restart_from_an_older_copy)
    assert served_before > 0
    assert reader.outcomes["served"] > served_before, "no read after the rebuild"
    print(
        f"\n{fault.__name__}, rebuild mode: noticed after {noticed:.1f} s, rebuilt and live "
        f"after {rebuilt:.1f} s; {checked} contexts checked whole; the reader got "
        f"{reader.summary()}"
    )


def test_stop_mode_stops_refuses_to_restart_and_starts_after_a_replay(
    kafka,
    private_redis,
    tmp_path: Path,
):
    settings, log = scenario(kafka, private_redis, "stop")
    projector_log = tmp_path / "projector.log"
    projector = start_projector(settings, log=projector_log)
    try:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="projection")
        time.sleep(1.5)  # the group commits its offsets every second
        publisher = Publisher(settings, log, SESSIONS, start=HISTORY)
        reader = Reader(settings, log, SESSIONS)
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
    assert reader.outcomes["ReadModelLost"] > 0
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


def test_a_fresh_deployment_still_just_starts(kafka, private_redis, tmp_path: Path):
    settings, log = scenario(kafka, private_redis, "stop")
    with running_projector(settings, log=tmp_path / "projector.log") as projector:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="projection")
        assert projector.poll() is None
    # And a restart on the same, intact read-model continues it.
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        publish_round(producer, log, SESSIONS, HISTORY)
    with running_projector(settings, log=tmp_path / "restarted.log") as projector:
        wait_until(lambda: whole(settings, log, log.last()), timeout=60, what="restart")
        assert projector.poll() is None
