"""Event models: frozen values that refuse what the contract refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pydantic
import pytest

from chatlog.producers.commands import append_message, new_event
from chatlog.schemas.errors import InvalidEvent, InvalidId
from chatlog.schemas.events import (
    MAX_CONTENT_CHARS,
    ConversationEvent,
    MessageAppended,
    Role,
    SessionClosed,
    epoch_millis,
    from_epoch_millis,
    validated,
)


def test_events_are_frozen():
    event = append_message("s1", user_id="u1", role="user", content="hi")
    with pytest.raises(pydantic.ValidationError):
        event.session_id = "s2"  # type: ignore[misc]


def test_append_message_fills_ids_and_time():
    before = datetime.now(UTC)
    event = append_message("s1", user_id="u1", role=Role.USER, content="hi")
    assert isinstance(event.payload, MessageAppended)
    assert event.payload.message_id != event.event_id
    assert before.replace(microsecond=0) <= event.occurred_at <= datetime.now(UTC)
    # Avro keeps milliseconds; the model keeps exactly what survives a round trip.
    assert event.occurred_at.microsecond % 1000 == 0


@pytest.mark.parametrize("field", ["session_id", "user_id", "tenant"])
def test_bad_envelope_ids_raise_invalid_id_naming_the_field(field):
    kwargs = {"user_id": "u1", "tenant": "default"}
    session = "s1"
    if field == "session_id":
        session = "a:b"
    else:
        kwargs[field] = "a:b"
    with pytest.raises(InvalidId, match=rf"^{field} contains ':'"):
        new_event(session, payload=SessionClosed(), **kwargs)


def test_unknown_role_names_the_field_and_the_choices():
    with pytest.raises(InvalidEvent) as caught:
        append_message("s1", user_id="u1", role="robot", content="hi")
    message = str(caught.value)
    assert message.startswith("invalid MessageAppended: role:")
    assert "'user'" in message


def test_oversized_content_is_refused_before_publishing():
    with pytest.raises(InvalidEvent, match="content"):
        append_message("s1", user_id="u1", role="user", content="x" * (MAX_CONTENT_CHARS + 1))


def test_naive_timestamps_are_refused():
    fields = {
        "session_id": "s1",
        "user_id": "u1",
        "occurred_at": datetime(2026, 1, 1),  # naive on purpose
        "payload": SessionClosed(),
    }
    with pytest.raises(InvalidEvent, match="timezone-aware"):
        validated(ConversationEvent, fields)


def test_unknown_fields_are_refused():
    with pytest.raises(InvalidEvent, match="colour"):
        validated(MessageAppended, {"role": "user", "content": "x", "colour": "red"})


def test_epoch_milliseconds_round_trip_exactly():
    at = datetime(2025, 6, 1, 12, 30, 0, 123000, tzinfo=UTC)
    assert from_epoch_millis(epoch_millis(at)) == at
    assert from_epoch_millis(1748781000000) == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    assert from_epoch_millis(0).tzinfo is UTC
