"""What a person wrote is not in the broker's files: canaries searched in the segments.

Canary strings go into a message's content, name, tool call and metadata, a session
title and a summary, for two users, through the producer chatlog's processes use. Then
every segment file of the events and keys topics on the local broker's disk is searched
for them, byte for byte. Compression is turned off for the test (lz4 would hide the
canaries by itself), and a control record written in the clear by a plain Kafka
producer to a topic of its own must be found the same way, so the search is known to
look in the right place.

It needs the local stack's data directories, so it is skipped against services someone
else runs (``CHATLOG_KAFKA_BOOTSTRAP`` set, or testcontainers).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from chatlog import wiring
from chatlog.producers.commands import append_message, new_event
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


def _found(segments: list[Path], needle: str) -> list[Path]:
    return [s for s in segments if needle.encode() in s.read_bytes()]


def test_no_canary_reaches_the_brokers_disk_but_every_reader_sees_it(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix, window=2, max_overflow=50)
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
    control_topic = kafka.create_topic("control", partitions=1)
    clear = Producer({"bootstrap.servers": kafka.bootstrap, "compression.type": "none"})
    clear.produce(control_topic, key=b"control", value=control.encode())
    assert clear.flush(10) == 0

    segments = [
        *_segments(kafka.bootstrap, settings.topic),
        *_segments(kafka.bootstrap, settings.keys_topic),
    ]
    # The broker writes what it acknowledged to its page cache at once: the files hold it.
    wait_until(
        lambda: bool(_found(_segments(kafka.bootstrap, control_topic), control)),
        timeout=10,
        what="the control record in its segment",
    )
    fields = ("title", "session-meta", "content", "name", "arguments", "metadata", "summary")
    leaked = {
        (user, field): _found(segments, _canary(user, field)) for user in USERS for field in fields
    }
    assert {k: v for k, v in leaked.items() if v} == {}

    # And yet every reader of the log, and the projection, reads them back.
    opened = [e for _, e in log_events(kafka, settings) if e.session_id.startswith("s-")]
    texts = " ".join(str(e.payload) for e in opened)
    for user in USERS:
        for field in fields:
            assert _canary(user, field) in texts, (user, field)
    with running_projector(settings):
        wait_until(lambda: _projected(settings, lasts), timeout=60, what="the projection")
    view = wiring.live_store(settings).load(["s-xavier"])["s-xavier"]
    assert view is not None
    assert view.title == _canary("xavier", "title")
    assert view.summary == _canary("xavier", "summary")


def _projected(settings: Settings, lasts: dict[str, int]) -> bool:
    views = wiring.live_store(settings).load(list(lasts))
    return all(v is not None and v.last_offset >= lasts[s] for s, v in views.items())
