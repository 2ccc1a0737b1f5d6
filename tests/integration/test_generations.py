"""The generation pointer and its tools, against a real Redis."""

from __future__ import annotations

import io
import logging

import pytest
import redis

from chatlog.cli.replay import ProgressPrinter
from chatlog.processors.kafka_replay import ReplayProgress
from chatlog.projections.keys import LAYOUT, LEGACY_LAYOUT, KeySpace
from chatlog.projections.redis_generations import GenerationStore, next_generation
from chatlog.schemas.position import Position

pytestmark = pytest.mark.integration


@pytest.fixture
def generations(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    yield GenerationStore(client, prefix=redis_prefix)
    client.close()


def test_next_generation_counts_up_and_starts_over_from_a_name_it_does_not_know():
    assert next_generation("g1") == "g2"
    assert next_generation("g41") == "g42"
    assert next_generation("blue") == "g2"


def test_flip_is_a_compare_and_set(generations):
    assert generations.live() is None
    assert generations.flip(None, "g1")
    assert not generations.flip(None, "g2")  # someone else already made g1 live
    assert not generations.flip("g7", "g2")
    assert generations.live() == "g1"
    assert generations.flip("g1", "g2")
    assert generations.live() == "g2"


def test_delete_unlinks_one_generation_in_batches_and_refuses_the_live_one(generations):
    client = generations.client
    for generation in ("g1", "g2", "g10"):
        keys = KeySpace(generations.keys.prefix, generation)
        for n in range(1_203):
            client.hset(keys.meta(f"s{n}"), "session_id", f"s{n}")
    generations.flip(None, "g2")
    with pytest.raises(ValueError, match="live"):
        generations.delete("g2")
    assert generations.delete("g1", batch=100) == 1_203
    assert not generations.exists("g1")
    assert generations.exists("g2")
    assert generations.exists("g10")  # g1's pattern does not reach g10


@pytest.mark.parametrize(("layout", "owner"), [(LAYOUT, "acme:alice"), (LEGACY_LAYOUT, "alice")])
def test_compare_finds_sessions_and_user_indexes_that_differ(generations, layout, owner):
    client = generations.client
    a, b = (KeySpace(generations.keys.prefix, g) for g in ("g1", "g2"))
    for keys in (a, b):
        generations.create(keys.generation, layout=layout)
        client.hset(keys.meta("same"), mapping={"session_id": "same", "last_offset": 3})
        client.rpush(keys.messages("same"), "m1", "m2")
        client.zadd(keys.user_sessions("acme", "alice", layout=layout), {"same": 10})
        client.zadd(keys.user_sessions("acme", "bob", layout=layout), {"bobs": 10})
    client.hset(a.meta("only-in-g1"), "session_id", "only-in-g1")
    client.rpush(b.messages("same"), "m3")
    client.zadd(b.user_sessions("acme", "alice", layout=layout), {"other": 11})
    comparison = generations.compare("g1", "g2")
    assert (comparison.sessions, comparison.users) == (2, 2)
    assert sorted((d.kind, d.name) for d in comparison.differences) == [
        ("session", "only-in-g1"),
        ("session", "same"),
        ("user index", owner),
    ]


def test_generations_of_two_key_layouts_differ_in_that_and_name_the_fix(generations):
    client = generations.client
    old, new = (KeySpace(generations.keys.prefix, g) for g in ("g1", "g2"))
    generations.create("g1", layout=LEGACY_LAYOUT)
    generations.create("g2")
    assert (generations.layout("g1"), generations.layout("g2")) == (LEGACY_LAYOUT, LAYOUT)
    assert generations.layout("g3") is None
    for keys in (old, new):
        client.hset(keys.meta("s1"), mapping={"session_id": "s1", "last_offset": 3})
        client.zadd(
            keys.user_sessions("acme", "alice", layout=generations.layout(keys.generation)),
            {"s1": 1},
        )
    comparison = generations.compare("g1", "g2")
    [difference] = comparison.differences
    assert (difference.kind, difference.name) == ("layout", "g1")
    assert "key layout 1" in difference.detail
    assert "chatlog replay" in difference.detail


def test_session_position_reads_the_meta_alone_of_one_generation(generations):
    client = generations.client
    g1, g2 = (KeySpace(generations.keys.prefix, g) for g in ("g1", "g2"))
    client.hset(g1.meta("s1"), mapping={"session_id": "s1", "partition": 2, "last_offset": 41})
    client.rpush(g1.messages("s1"), b'{"forged": true}')  # unreadable as a message
    client.hset(g2.meta("s1"), mapping={"session_id": "s1", "partition": 2, "last_offset": 7})
    assert generations.session_position("g1", "s1") == Position(2, 41)
    assert generations.session_position("g2", "s1") == Position(2, 7)
    assert generations.session_position("g1", "s2") is None


def test_progress_is_a_log_line_every_few_seconds_when_not_on_a_terminal(caplog):
    out = io.StringIO()
    printer = ProgressPrinter(out, every_s=0)
    with caplog.at_level(logging.INFO, logger="chatlog.replay"):
        printer(ReplayProgress("rebuild", done=250, total=1_000))
        printer.done()
    assert out.getvalue() == ""  # nothing rewritten in place: a log line instead
    [record] = [r for r in caplog.records if r.name == "chatlog.replay"]
    assert "rebuild: 250 / 1,000 events  25%" in record.getMessage()
