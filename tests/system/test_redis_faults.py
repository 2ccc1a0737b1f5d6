"""Redis faults under a running projector: it waits them out, loses or doubles nothing,
and a reader polling all along never gets a partial session.

Each test runs its own redis-server on a free port (`tests.system.traffic.PrivateRedis`:
AOF on, fsync on every write, so a SIGKILL loses nothing acknowledged), never the
shared test Redis, and a real `chatlog run projector` process while a publisher keeps
appending. Redis is stalled for 20 s (SIGSTOP, which is what a frozen VM, a swap storm
or a long fork look like from the outside: connections accepted, nothing answered) or
killed and restarted on the same port. Afterwards the projector must still run, and
every appended message must be in the read-model once, in order.

Throughout, a reader polls every session's context (`tests.system.traffic.Reader`).
Each context it gets must hold exactly the session's messages up to the position it
reports, as the log has them; while Redis is out it may get only the errors that say
"no answer, retry later" (`StoreUnavailable`, `ReadTimeout`, `ReadModelLost`), and the
counts of each are printed. What makes this worth checking through a fault: the
projector retries a batch whose pipeline may have half-landed, and reconnects readers
and writers to a Redis that has just reloaded its AOF.

The recovery time printed is from Redis answering again until the read-model holds
every message published before that (and, for the reader, until its first context);
the bound asserted on it is only there so a projector that never recovers fails in a
minute rather than hanging. The retry backoff caps at 5 s, so recovery is normally
that at most plus a batch.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from chatlog import wiring
from chatlog.schemas.errors import ReadTimeout, StoreUnavailable
from chatlog.schemas.position import Position
from chatlog.wiring import live_store
from tests.processes import opened, running_projector, stop, unique_settings, wait_until
from tests.system.traffic import Log, Publisher, Reader

pytestmark = pytest.mark.system

SESSIONS = [f"s{n}" for n in range(8)]
REDIS_TIMEOUT_S = 0.5  # how long the projector's and readers' Redis calls may block
RECOVERY_BOUND_S = 60.0  # generous: see the module docstring
STALL_S = 20.0
# Every message stays in the context (none summarized, none dropped), so a reader's
# context can be compared with the whole log: ~10 appends a second per session.
MAX_OVERFLOW = 1000


def _settings(kafka, private_redis, partitions: int = 2):
    return unique_settings(
        kafka,
        private_redis.url,
        "faults",
        partitions=partitions,
        redis_timeout_s=REDIS_TIMEOUT_S,
        max_overflow=MAX_OVERFLOW,
    )


def _caught_up(settings, last: dict[str, int]) -> bool:
    try:
        views = live_store(settings).load(list(last))
    except StoreUnavailable:
        return False
    return all(v is not None and v.last_offset == last[s] for s, v in views.items())


def _assert_exactly_once_in_order(settings, log: Log) -> None:
    views = live_store(settings).load(list(log.sent))
    for session in log.sent:
        contents = log.contents(session)
        view = views[session]
        assert view is not None, f"{session} was never projected"
        assert [m.content for m in opened(settings, view).messages] == contents, (
            f"{session} lost or doubled"
        )
        assert view.message_count == len(contents)


def _ride_out(fault, settings, tmp_path: Path, name: str) -> None:
    """Run a projector, a publisher and a reader, apply `fault` (it returns once Redis
    answers again), then check the projector survived and projected everything once,
    and the reader was never served a partial session."""
    projector_log = tmp_path / "projector.log"
    log = Log()
    with running_projector(settings, log=projector_log) as projector:
        with Publisher(settings, log, SESSIONS) as publisher:
            wait_until(lambda: len(log.last()) == len(SESSIONS), timeout=30, what="appends")
            wait_until(lambda: _caught_up(settings, log.last()), timeout=60, what="projection")
            # Started once every session exists: from then on a "not found" is a lost one.
            with Reader(settings, log, SESSIONS) as reader:
                # Every session read both ways (with and without `after=`) before the fault.
                wait_until(
                    lambda: reader.outcomes["served"] >= 2 * len(SESSIONS),
                    timeout=30,
                    what="reads before the fault",
                )
                fault()
                back = time.monotonic()
                publisher.stop()
                wait_until(
                    lambda: _caught_up(settings, log.last()),
                    timeout=RECOVERY_BOUND_S,
                    what="the projection to catch up after Redis returned",
                )
                recovery = time.monotonic() - back
                served = reader.outcomes["served"]
                wait_until(
                    lambda: reader.outcomes["served"] >= served + 2 * len(SESSIONS),
                    timeout=30,
                    what="reads after the fault",
                )
        assert projector.poll() is None, "the projector exited during the fault"
    _assert_exactly_once_in_order(settings, log)
    checked = reader.check_against(log)
    failed = sum(n for outcome, n in reader.outcomes.items() if outcome != "served")
    assert failed > 0, "the reader never read while Redis was out"
    print(
        f"\n{name}: caught up {recovery:.1f} s after Redis answered again ({log.total()} "
        f"appends); the reader's first context came {reader.served_after(back):.2f} s after, "
        f"and it got {reader.summary()} ({checked} contexts checked whole)"
    )
    text = projector_log.read_text()
    # Logged once when the outage starts and once when it ends, not once per retry.
    assert text.count("consumption paused") == 1, text[-3000:]
    assert text.count("consumption resumed") == 1, text[-3000:]


def test_the_projector_rides_out_a_20_s_redis_stall_and_no_read_is_partial(
    kafka, private_redis, tmp_path
):
    settings = _settings(kafka, private_redis)

    def stall() -> None:
        private_redis.signal(signal.SIGSTOP)
        time.sleep(STALL_S)
        private_redis.signal(signal.SIGCONT)

    _ride_out(stall, settings, tmp_path, f"SIGSTOP {STALL_S:g} s")


def test_the_projector_rides_out_a_redis_restart_and_no_read_is_partial(
    kafka, private_redis, tmp_path
):
    settings = _settings(kafka, private_redis)

    def restart() -> None:
        private_redis.kill()
        time.sleep(3)  # connections refused meanwhile
        private_redis.start()

    _ride_out(restart, settings, tmp_path, "SIGKILL, 3 s down, restart")


def test_sigterm_while_redis_stalls_stops_promptly_and_stores_no_unfinished_batch(
    kafka, private_redis, tmp_path
):
    settings = _settings(kafka, private_redis)
    projector_log = tmp_path / "projector.log"
    log = Log()
    publisher = Publisher(settings, log, SESSIONS)
    with running_projector(settings, log=projector_log) as projector, publisher:
        wait_until(lambda: len(log.last()) == len(SESSIONS), timeout=30, what="first appends")
        wait_until(lambda: _caught_up(settings, log.last()), timeout=60, what="projection")
        private_redis.signal(signal.SIGSTOP)
        try:
            wait_until(
                lambda: "consumption paused" in projector_log.read_text(),
                timeout=20,
                what="a failed write",
            )
            asked = time.monotonic()
            status = stop(projector)
            took = time.monotonic() - asked
        finally:
            private_redis.signal(signal.SIGCONT)
        print(f"\nSIGTERM during a Redis stall: exited {status} in {took:.1f} s")
        assert status == 0
        assert took <= 10, f"took {took:.1f} s to stop"
        publisher.stop()

    # What the group committed is at most what Redis holds: nothing unfinished stored.
    marks = live_store(settings).progress()
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.projector_group}
    )
    try:
        committed = consumer.committed(
            [TopicPartition(settings.topic, p) for p in range(2)], timeout=10
        )
    finally:
        consumer.close()
    for tp in committed:
        assert tp.offset <= marks.get(tp.partition, -1) + 1, (tp, marks)

    with running_projector(settings, log=tmp_path / "restarted.log"):
        wait_until(lambda: _caught_up(settings, log.last()), timeout=60, what="the restart")
    _assert_exactly_once_in_order(settings, log)


def test_reads_honour_their_timeout_while_redis_stalls(kafka, private_redis):
    settings = unique_settings(
        kafka, private_redis.url, "faults", partitions=1, redis_timeout_s=REDIS_TIMEOUT_S
    )
    timeout = 2.0
    margin = 0.5  # scheduling on a loaded 2-core machine; a Redis call is bounded at 0.5 s
    never = Position(0, 10**9)  # waits for the whole timeout unless Redis fails first
    wiring.generations(settings).initialise("g1")  # as a projector's first start does
    reader, async_reader = wiring.reader(settings), wiring.async_reader(settings)
    with pytest.raises(ReadTimeout):  # Redis answering: the wait is the read's own
        reader.context("s1", user_id="u1", after=never, timeout=0.2)

    private_redis.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises((StoreUnavailable, ReadTimeout)):
            reader.context("s1", user_id="u1", after=never, timeout=timeout)
        blocking = time.monotonic() - started

        async def read() -> None:
            await async_reader.context("s1", user_id="u1", after=never, timeout=timeout)

        started = time.monotonic()
        with pytest.raises((StoreUnavailable, ReadTimeout)):
            asyncio.run(read())
        asynchronous = time.monotonic() - started
    finally:
        private_redis.signal(signal.SIGCONT)
    print(f"\nreads against a stalled Redis: {blocking:.2f} s, async {asynchronous:.2f} s")
    assert blocking <= timeout + margin
    assert asynchronous <= timeout + margin
