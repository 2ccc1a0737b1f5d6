"""Redis faults under a running projector: it waits them out, and loses or doubles nothing.

Each test runs its own redis-server on a free port (`tests.system.traffic.PrivateRedis`:
AOF on, fsync on every write, so a SIGKILL loses nothing acknowledged), never the
shared test Redis, and a real `chatlog run projector` process while a publisher keeps
appending. Redis is stalled (SIGSTOP, which is what a frozen VM, a swap storm or a long
fork look like from the outside: connections accepted, nothing answered) or killed and
restarted on the same port. Afterwards the projector must still run, and every
appended message must be in the read-model once, in order.

The recovery time printed is from Redis answering again until the read-model holds
every message published before that; the bound asserted on it is only there so a
projector that never recovers fails in a minute rather than hanging. The retry backoff
caps at 5 s, so recovery is normally that at most plus a batch.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.schemas.errors import ReadTimeout, StoreUnavailable
from chatlog.schemas.position import Position
from chatlog.wiring import live_store
from tests.processes import running_projector, stop, unique_settings, wait_until

pytestmark = pytest.mark.system

SESSIONS = 8
REDIS_TIMEOUT_S = 0.5  # how long the projector's and readers' Redis calls may block
RECOVERY_BOUND_S = 60.0  # generous: see the module docstring


class Publisher:
    """Appends to `SESSIONS` sessions, one message each every 0.1 s, until stopped."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.sent: dict[str, list[str]] = {f"s{n}": [] for n in range(SESSIONS)}
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher")

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the publisher did not stop"

    def _run(self) -> None:
        with wiring.producer(self.settings, flush_on_sigterm=False) as producer:
            n = 0
            while not self._stop.is_set():
                sessions = list(self.sent)
                events = [
                    append_message(s, user_id="u1", role="user", content=f"{s}:{n}")
                    for s in sessions
                ]
                for session, position in zip(sessions, producer.publish_many(events), strict=True):
                    self.sent[session].append(f"{session}:{n}")
                    self.last[session] = position.offset
                n += 1
                self._stop.wait(0.1)


def _caught_up(settings, last: dict[str, int]) -> bool:
    try:
        views = live_store(settings).load(list(last))
    except StoreUnavailable:
        return False
    return all(v is not None and v.last_offset == last[s] for s, v in views.items())


def _assert_exactly_once_in_order(settings, sent: dict[str, list[str]]) -> None:
    views = live_store(settings).load(list(sent))
    for session, contents in sent.items():
        view = views[session]
        assert view is not None, f"{session} was never projected"
        assert [m.content for m in view.messages] == contents, f"{session} lost or doubled"
        assert view.message_count == len(contents)


def _ride_out(fault, settings, tmp_path: Path, name: str) -> None:
    """Run a projector and a publisher, apply `fault` (it returns once Redis answers
    again), then check the projector survived and projected everything once."""
    log = tmp_path / "projector.log"
    with running_projector(settings, log=log) as projector, Publisher(settings) as publisher:
        wait_until(lambda: len(publisher.last) == SESSIONS, timeout=30, what="first appends")
        wait_until(
            lambda: _caught_up(settings, dict(publisher.last)), timeout=60, what="projection"
        )
        fault()
        back = time.monotonic()
        publisher.stop()
        wait_until(
            lambda: _caught_up(settings, publisher.last),
            timeout=RECOVERY_BOUND_S,
            what="the projection to catch up after Redis returned",
        )
        recovery = time.monotonic() - back
        assert projector.poll() is None, "the projector exited during the fault"
        _assert_exactly_once_in_order(settings, publisher.sent)
        sent = sum(len(c) for c in publisher.sent.values())
        print(f"\n{name}: caught up {recovery:.1f} s after Redis answered again ({sent} appends)")
    text = log.read_text()
    # Logged once when the outage starts and once when it ends, not once per retry.
    assert text.count("consumption paused") == 1, text[-3000:]
    assert text.count("consumption resumed") == 1, text[-3000:]


def test_the_projector_rides_out_a_10_s_redis_stall(kafka, private_redis, tmp_path):
    settings = unique_settings(
        kafka, private_redis.url, "faults", partitions=2, redis_timeout_s=REDIS_TIMEOUT_S
    )

    def stall() -> None:
        private_redis.signal(signal.SIGSTOP)
        time.sleep(10)
        private_redis.signal(signal.SIGCONT)

    _ride_out(stall, settings, tmp_path, "SIGSTOP 10 s")


def test_the_projector_rides_out_a_redis_restart(kafka, private_redis, tmp_path):
    settings = unique_settings(
        kafka, private_redis.url, "faults", partitions=2, redis_timeout_s=REDIS_TIMEOUT_S
    )

    def restart() -> None:
        private_redis.kill()
        time.sleep(3)  # connections refused meanwhile
        private_redis.start()

    _ride_out(restart, settings, tmp_path, "SIGKILL, 3 s down, restart")


def test_sigterm_while_redis_stalls_stops_promptly_and_stores_no_unfinished_batch(
    kafka, private_redis, tmp_path
):
    settings = unique_settings(
        kafka, private_redis.url, "faults", partitions=2, redis_timeout_s=REDIS_TIMEOUT_S
    )
    log = tmp_path / "projector.log"
    with running_projector(settings, log=log) as projector, Publisher(settings) as publisher:
        wait_until(lambda: len(publisher.last) == SESSIONS, timeout=30, what="first appends")
        wait_until(
            lambda: _caught_up(settings, dict(publisher.last)), timeout=60, what="projection"
        )
        private_redis.signal(signal.SIGSTOP)
        try:
            wait_until(
                lambda: "consumption paused" in log.read_text(), timeout=20, what="a failed write"
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
        wait_until(lambda: _caught_up(settings, publisher.last), timeout=60, what="the restart")
    _assert_exactly_once_in_order(settings, publisher.sent)


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
