"""What a person wrote is not in the broker's files nor in Redis's: canaries searched.

Canary strings go into a message's content, name, tool call and metadata, a session
title and a summary, for two users, through the producer chatlog's processes use, and
one altered copy of a message is dead-lettered by the projector. Then every segment file
of every topic on the local broker's disk (events, keys, dead letters, consumer offsets)
is searched for them, byte for byte. Compression is turned off for the test (lz4 would hide the
canaries by itself), and a control record written in the clear by a plain Kafka
producer to a topic of its own must be found the same way, so the search is known to
look in the right place.

The projection is then searched the same way: Redis writes an RDB dump with compression
off, and no canary may be in it, while a control value set in the clear is.

It needs the local stack's data directories, so it is skipped against services someone
else runs (``CHATLOG_KAFKA_BOOTSTRAP`` set, or testcontainers).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from confluent_kafka import Producer

from chatlog import wiring
from chatlog.producers.commands import append_message, new_event
from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.schemas.events import SessionStarted, SummaryUpdated, ToolCall
from chatlog.settings import Settings
from dev.services.state import read_state
from tests.processes import log_events, running_projector, unique_settings, wait_until

pytestmark = pytest.mark.integration

USERS = ("xavier", "yvonne")


def _canary(user: str, field: str) -> str:
    return f"canary-{user}-{field}-4111111111111111"


def _segments(kafka_bootstrap: str, topic: str) -> list[Path]:
    state = read_state(state_dir=Path(".chatlog").resolve())
    if state is None or state.kafka.bootstrap != kafka_bootstrap:
        pytest.skip("needs the local stack's data directories (services run by someone else)")
    return [
        segment
        for data_dir in state.kafka.data_dirs
        for segment in Path(data_dir, "data").glob(f"{topic}-*/*.log")
    ]


def _altered(producer: ConversationProducer, session: str, content: str) -> bytes:
    """A message of `session`, sealed, with one byte of its sealed content flipped."""
    sealed = producer.codec.decode(
        producer.encode(append_message(session, user_id="xavier", role="user", content=content))
    )
    assert sealed.sealed is not None
    fields = dict(sealed.sealed.fields)
    fields["content"] = fields["content"][:-1] + bytes([fields["content"][-1] ^ 1])
    update = {"sealed": sealed.sealed.model_copy(update={"fields": fields})}
    return producer.codec.encode(sealed.model_copy(update=update))


def _found(segments: list[Path], needle: str) -> list[Path]:
    return [s for s in segments if needle.encode() in s.read_bytes()]


def test_no_canary_reaches_the_brokers_disk_but_every_reader_sees_it(
    kafka, redis_url, redis_prefix
):
    # Sealing is what is tested: the canaries must reach it as written, whatever a
    # detector would make of them (redaction has tests of its own).
    settings = unique_settings(
        kafka, redis_url, redis_prefix, window=2, max_overflow=50, pii_mode="off"
    )
    settings = settings.model_copy(update={"kafka": {"compression.type": "none"}})
    control = f"control-{time.time_ns()}"
    lasts: dict[str, int] = {}
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        for user in USERS:
            session = f"s-{user}"
            started = SessionStarted(
                title=_canary(user, "title"), metadata={"ref": _canary(user, "session-meta")}
            )
            producer.publish(new_event(session, user_id=user, payload=started))
            producer.publish(
                append_message(
                    session,
                    user_id=user,
                    role="assistant",
                    content=_canary(user, "content"),
                    name=_canary(user, "name"),
                    tool_calls=(
                        ToolCall(id="c1", name="lookup", arguments=_canary(user, "arguments")),
                    ),
                    metadata={"note": _canary(user, "metadata")},
                )
            )
            summary = SummaryUpdated(
                summary=_canary(user, "summary"), through_offset=0, model="test"
            )
            lasts[session] = producer.publish(
                new_event(session, user_id=user, payload=summary)
            ).offset
        # One altered copy of a message, for the projector to dead-letter: the dead-letter
        # topic then holds a copy of every other field, still sealed.
        altered = _altered(producer, "s-xavier", _canary("xavier", "dead-letter"))
        producer.send_record(settings.topic, key="s-xavier", value=altered, user_id="xavier")
        assert producer.flush(10) == 0
    control_topic = kafka.create_topic("control", partitions=1)
    clear = Producer({"bootstrap.servers": kafka.bootstrap, "compression.type": "none"})
    clear.produce(control_topic, key=b"control", value=control.encode())
    assert clear.flush(10) == 0

    # The broker writes what it acknowledged to its page cache at once: the files hold it.
    wait_until(
        lambda: bool(_found(_segments(kafka.bootstrap, control_topic), control)),
        timeout=10,
        what="the control record in its segment",
    )
    fields = ("title", "session-meta", "content", "name", "arguments", "metadata", "summary")
    # And yet every reader of the log, and the projection, reads them back.
    opened = [e for _, e in log_events(kafka, settings) if e.session_id.startswith("s-")]
    texts = " ".join(str(e.payload) for e in opened)
    for user in USERS:
        for field in fields:
            assert _canary(user, field) in texts, (user, field)
    with running_projector(settings):
        wait_until(lambda: _projected(settings, lasts), timeout=60, what="the projection")
    dead = _segments(kafka.bootstrap, settings.dlq_topic)
    wait_until(lambda: bool(_found(dead, "undecryptable")), timeout=10, what="the dead letter")

    # Every segment of every topic on the broker: events, keys, dead letters, offsets.
    segments = _segments(kafka.bootstrap, "*")
    leaked = {
        (user, field): _found(segments, _canary(user, field))
        for user in USERS
        for field in (*fields, "dead-letter")
    }
    assert {k: v for k, v in leaked.items() if v} == {}
    for user in USERS:
        context = wiring.reader(settings).context(f"s-{user}", user_id=user)
        shown = str(context.to_openai()) + str(context.title)
        for field in ("title", "content", "name", "arguments", "summary"):
            assert _canary(user, field) in shown, (user, field)
        assert context.messages[-1].metadata == {"note": _canary(user, "metadata")}

    dump = _rdb_dump(wiring.redis_client(settings), control)
    assert control.encode() in dump
    in_redis = [(u, f) for u in USERS for f in fields if _canary(u, f).encode() in dump]
    assert in_redis == []


def _rdb_dump(client: redis.Redis, control: str) -> bytes:
    """The server's RDB file, saved now with compression off and `control` in the clear."""
    client.set(f"control:{control}", control)
    compression = client.config_get("rdbcompression")["rdbcompression"]
    client.config_set("rdbcompression", "no")
    try:
        client.save()
    finally:
        client.config_set("rdbcompression", compression)
    where = client.config_get("dir")["dir"], client.config_get("dbfilename")["dbfilename"]
    return Path(*where).read_bytes()


def _projected(settings: Settings, lasts: dict[str, int]) -> bool:
    views = wiring.live_store(settings).load(list(lasts))
    return all(v is not None and v.last_offset >= lasts[s] for s, v in views.items())
