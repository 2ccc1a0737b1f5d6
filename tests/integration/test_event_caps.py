"""Caps on event parts against the real broker: a refused append publishes nothing, and an
event over a cap already in the log (written before the cap, or by another producer)
is still projected, as docs/event-schema.md#limits says."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import InvalidEvent
from chatlog.schemas.events import (
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_BYTES,
    MAX_NAME_CHARS,
    MAX_TOOL_CALLS,
    READ_FROM_LOG,
    ConversationEvent,
    MessageAppended,
    ToolCall,
    validated,
)
from tests.processes import running_projector

pytestmark = pytest.mark.integration


def test_an_append_over_a_cap_is_refused_and_publishes_nothing(kafka, settings, chat):
    first = chat.append("s-caps", user_id="u", role="user", content="before")
    before = kafka.end_offsets(settings.topic)
    assert before[first.partition] == first.offset + 1
    too_many = {f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}
    with pytest.raises(InvalidEvent, match=r"payload\.metadata has 65 keys; the limit is 64"):
        chat.append("s-caps", user_id="u", role="user", content="x", metadata=too_many)
    with pytest.raises(InvalidEvent, match="MAX_METADATA_VALUE_BYTES"):
        chat.append(
            "s-caps",
            user_id="u",
            role="user",
            content="x",
            metadata={"k": "v" * (MAX_METADATA_VALUE_BYTES + 1)},
        )
    with pytest.raises(InvalidEvent, match="MAX_TITLE_CHARS"):
        chat.start_session("s-caps-2", user_id="u", title="t" * 10_000)
    # The next append lands right after the first: nothing was written in between.
    after = chat.append("s-caps", user_id="u", role="user", content="after")
    assert after.offset == first.offset + 1
    assert kafka.end_offsets(settings.topic) == {
        **before,
        first.partition: first.offset + 2,
    }


def test_an_event_over_the_caps_already_in_the_log_is_projected(kafka, settings, chat):
    # What an older producer (or one in another language) wrote before the caps existed:
    # built as the decoder builds what it reads, encoded, and published raw.
    metadata = {f"k{i}": "v" * (MAX_METADATA_VALUE_BYTES + 1) for i in range(MAX_METADATA_KEYS + 1)}
    old = validated(
        ConversationEvent,
        {
            "session_id": "s-old",
            "user_id": "u",
            "payload": MessageAppended(
                role="assistant",
                content="from before the caps",
                name="n" * (MAX_NAME_CHARS + 1),
                tool_calls=tuple(
                    ToolCall(id=f"c{i}", name="lookup", arguments="{}")
                    for i in range(MAX_TOOL_CALLS + 1)
                ),
                metadata=metadata,
            ),
        },
        context=READ_FROM_LOG,
    )
    raw = Producer({"bootstrap.servers": kafka.bootstrap, "partitioner": "murmur2_random"})
    raw.produce(settings.topic, key=b"s-old", value=EventCodec().encode(old))
    assert raw.flush(10) == 0
    with running_projector(settings):
        marker = chat.append("s-old", user_id="u", role="user", content="after")
        context = chat.context("s-old", user_id="u", after=marker, timeout=30)
    [projected, _] = context.messages
    assert projected.content == "from before the caps"
    assert projected.name == old.payload.name
    assert len(projected.tool_calls) == MAX_TOOL_CALLS + 1
    assert dict(projected.metadata) == metadata
    assert kafka.consume_all(settings.dlq_topic, timeout=2) == []
