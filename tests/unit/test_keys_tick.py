"""Ticks on the keys topic: the record, its interval and its readers."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from chatlog.processors import kafka_key_log
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
    with caplog.at_level(logging.DEBUG, logger="chatlog.keys"):
        for partition in range(3):
            tick = KeysTick(partition, AT)
            kafka_key_log._apply(directory, tick.kafka_key.encode(), tick.encode(), counts)
    assert counts["ticks"] == 3
    assert counts["skipped"] == 0
    assert not caplog.records
