"""Ticks on the keys topic: the record, its interval, its readers, and the ticker thread
against a stand-in producer (no broker)."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from chatlog.processors import kafka_key_log
from chatlog.processors.kafka_keys_tick import KafkaKeysTicker
from chatlog.producers.kafka_topics import keys_tick_interval_ms, keys_topic_config
from chatlog.schemas.errors import DecodeError
from chatlog.schemas.key_records import KeysTick, decode_key_record, tick_key
from tests.key_fakes import MemoryKeyDirectory

AT = datetime(2026, 12, 6, 16, 30, 0, 123000, tzinfo=UTC)
MINUTE_MS, DAY_MS = 60_000, 24 * 3600 * 1000


def test_a_tick_is_a_small_json_record_under_one_fixed_key_per_partition():
    tick = KeysTick(3, AT)
    assert tick.kafka_key == tick_key(3) == "tick:3"
    assert json.loads(tick.encode()) == {"v": 1, "kind": "tick", "at": 1796574600123}
    assert decode_key_record(tick.kafka_key.encode(), tick.encode()) == tick
    assert decode_key_record(tick.kafka_key, tick.encode()) == tick


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (b"tick:0", None, "ticks are never deleted"),
        (b"tick:0", b'{"v": 1, "kind": "key", "at": 1}', "not a tick"),
        (b"tick:0", b'{"v": 2, "kind": "tick", "at": 1}', "not a tick"),
        (b"tick:0", b'{"v": 1, "kind": "tick"}', "malformed"),
        (b"tick:x", b'{"v": 1, "kind": "tick", "at": 1}', "malformed"),
        (b"tick:0", b"not json", "not JSON"),
    ],
)
def test_a_bad_tick_is_a_decode_error_naming_the_problem(key, value, problem):
    with pytest.raises(DecodeError, match=problem):
        decode_key_record(key, value)


@pytest.mark.parametrize("bound_ms", [MINUTE_MS, 90 * MINUTE_MS, DAY_MS, 7 * DAY_MS + 1])
def test_the_interval_is_half_the_keys_topics_segment_ms(bound_ms):
    config = keys_topic_config(bound_ms)
    interval = keys_tick_interval_ms(bound_ms)
    assert interval == int(config["segment.ms"]) // 2
    # A segment rolls at the first append after segment.ms: with a tick at least every
    # `interval`, that is before the tombstone's segment is due for compaction.
    assert int(config["segment.ms"]) + interval < int(config["max.compaction.lag.ms"])


def test_the_interval_for_the_least_and_the_default_bound():
    assert keys_tick_interval_ms(MINUTE_MS) == 7_500
    assert keys_tick_interval_ms(DAY_MS) == 3 * 3600 * 1000


def test_a_catch_up_counts_ticks_and_skips_them_silently(caplog):
    counts = dict.fromkeys(("keys", "refused", "tombstones", "erasures", "ticks", "skipped"), 0)
    directory = MemoryKeyDirectory()
    counts["shredded"] = 0
    with caplog.at_level(logging.DEBUG, logger="chatlog.keys"):
        for partition in range(3):
            tick = KeysTick(partition, AT)
            kafka_key_log._apply(directory, tick.kafka_key.encode(), tick.encode(), counts, None)
    assert counts["ticks"] == 3
    assert counts["skipped"] == 0
    assert not caplog.records


class FakeProducer:
    """A producer that records what it is asked to send; `down` makes the broker silent."""

    def __init__(self, partitions: int = 2) -> None:
        self.partitions = partitions
        self.down = False
        self.undeliverable = False
        self.sent: list[tuple[str, str, bytes, int]] = []
        self._reports: list = []
        self.purged = False

    def list_topics(self, topic=None, timeout=-1):
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))
        found = SimpleNamespace(error=None, partitions=dict.fromkeys(range(self.partitions)))
        return SimpleNamespace(topics={topic: found})

    def produce(self, topic, *, value=None, key=None, partition=-1, on_delivery=None):
        self.sent.append((topic, key, value, partition))
        error = KafkaError(KafkaError._MSG_TIMED_OUT) if self.undeliverable else None
        message = SimpleNamespace(partition=lambda: partition)
        self._reports.append(lambda: on_delivery(error, message))

    def poll(self, timeout=-1):
        reports, self._reports = self._reports, []
        for report in reports:
            report()
        time.sleep(min(timeout, 0.01) if timeout > 0 else 0)
        return len(reports)

    def purge(self, in_queue=True, in_flight=True, blocking=True):
        self.purged = True
        self._reports.clear()

    def flush(self, timeout=-1):
        return 0


def _ticker(producer: FakeProducer, interval_s: float = 60.0) -> KafkaKeysTicker:
    return KafkaKeysTicker(
        producer,
        topic="keys",
        interval_s=interval_s,
        bootstrap_servers="127.0.0.1:1",
        clock=lambda: AT,
    )


def test_a_round_ticks_every_partition_explicitly_under_its_own_key():
    producer = FakeProducer(partitions=3)
    ticker = _ticker(producer)
    assert ticker.tick() == 3
    assert [(t, k, p) for t, k, _, p in producer.sent] == [
        ("keys", "tick:0", 0),
        ("keys", "tick:1", 1),
        ("keys", "tick:2", 2),
    ]
    assert all(decode_key_record(k, v) == KeysTick(p, AT) for _, k, v, p in producer.sent)
    producer.poll(0)
    assert ticker.ticks == 3


def test_a_broker_that_does_not_answer_costs_one_round_with_a_warning(caplog):
    producer = FakeProducer()
    producer.down = True
    ticker = _ticker(producer)
    with caplog.at_level(logging.WARNING, logger="chatlog.projector"):
        assert ticker.tick() == 0
    assert ticker.failed_rounds == 1
    assert "no tick on keys this round" in caplog.text
    producer.down = False
    assert ticker.tick() == 2  # the next round works


def test_an_undelivered_tick_is_a_warning_not_an_error(caplog):
    producer = FakeProducer()
    producer.undeliverable = True
    ticker = _ticker(producer)
    with caplog.at_level(logging.WARNING, logger="chatlog.projector"):
        ticker.tick()
        producer.poll(0)
    assert ticker.ticks == 0
    assert "a tick to keys[0] was not delivered" in caplog.text


def test_the_thread_ticks_each_interval_and_stops_promptly_with_the_projector():
    producer = FakeProducer(partitions=1)
    ticker = _ticker(producer, interval_s=0.05)
    stop = threading.Event()
    ticker.start(stop)
    deadline = time.monotonic() + 5
    while len(producer.sent) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(producer.sent) >= 3  # one at the start, then one per interval

    slow = _ticker(FakeProducer(), interval_s=3600)
    slow_stop = threading.Event()
    slow.start(slow_stop)
    for each, event in ((ticker, stop), (slow, slow_stop)):
        event.set()
        started = time.monotonic()
        each.close(timeout=2)
        assert time.monotonic() - started < 1.0
        assert each._thread is not None
        assert not each._thread.is_alive()
        assert each._producer.purged


def test_an_interval_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        _ticker(FakeProducer(), interval_s=0)
