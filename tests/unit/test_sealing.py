"""Sealing: personal fields encrypted per user, bound to their event and field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import Undecryptable
from chatlog.schemas.events import ConversationEvent, MessageAppended, Sealed
from chatlog.schemas.sealing import (
    DataKey,
    KeyScope,
    field_context,
    open_event,
    seal_event,
    verify_event,
)
from tests.samples import VECTOR_KEY, sample_events, sealed_sample

CODEC = EventCodec()
CANARY = "canary-4111-1111-1111-1111"


def _key_of(event: ConversationEvent) -> DataKey:
    return DataKey.new(KeyScope.of(event))


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e.payload).__name__)
def test_every_event_type_seals_and_opens_back_to_itself(event):
    key = _key_of(event)
    sealed = seal_event(event, key)
    assert CODEC.decode(CODEC.encode(sealed)) == sealed
    assert open_event(CODEC.decode(CODEC.encode(sealed)), key) == event


def _message(**fields) -> ConversationEvent:
    payload = MessageAppended(role="user", content=f"my card is {CANARY}", **fields)
    return ConversationEvent(session_id="s1", user_id="u1", tenant="t1", payload=payload)


def test_no_personal_field_is_left_in_the_clear_and_ids_stay_readable():
    event = _message(
        name=f"name {CANARY}",
        metadata={"order": f"order {CANARY}"},
        tool_calls=({"id": "call_1", "name": f"fn_{CANARY}", "arguments": CANARY},),
    )
    data = CODEC.encode(seal_event(event, _key_of(event)))
    assert CANARY.encode() not in data
    for clear in (event.event_id, "s1", "u1", "t1", "call_1", "order"):
        assert clear.encode() in data  # routing needs ids; metadata keys stay names


def test_the_vector_opens_with_its_key():
    opened = open_event(sealed_sample(), VECTOR_KEY)
    assert opened.payload.content == "My card is 4111 1111 1111 1111"
    assert opened.payload.name == "Ada"
    assert opened.payload.tool_calls[0].arguments == '{"order": 7731}'
    assert opened.payload.metadata == {"order": "7731"}
    assert opened.sealed is None


def test_a_ciphertext_moved_into_another_event_does_not_open():
    key = DataKey.new(KeyScope("t1", "u1"))
    first, second = seal_event(_message(), key), seal_event(_message(), key)
    assert first.sealed is not None
    assert second.sealed is not None
    moved = second.model_copy(update={"sealed": first.sealed})
    with pytest.raises(Undecryptable, match="field content of event"):
        open_event(moved, key)


def test_a_ciphertext_moved_into_another_field_does_not_open():
    key = DataKey.new(KeyScope("t1", "u1"))
    event = seal_event(_message(name="Ada"), key)
    assert event.sealed is not None
    fields = dict(event.sealed.fields)
    fields["name"], fields["content"] = fields["content"], fields["name"]
    swapped = event.model_copy(update={"sealed": Sealed(key_id=key.key_id, fields=fields)})
    with pytest.raises(Undecryptable):
        open_event(swapped, key)


def test_a_flipped_bit_or_another_key_does_not_open():
    key = DataKey.new(KeyScope("t1", "u1"))
    event = seal_event(_message(), key)
    assert event.sealed is not None
    blob = bytearray(event.sealed.fields["content"])
    blob[-1] ^= 1
    tampered = event.model_copy(
        update={"sealed": Sealed(key_id=key.key_id, fields={"content": bytes(blob)})}
    )
    with pytest.raises(Undecryptable, match="altered"):
        open_event(tampered, key)
    impostor = DataKey(key.key_id, key.scope, bytes(32))
    with pytest.raises(Undecryptable):
        open_event(event, impostor)


def test_a_sealed_field_the_payload_has_no_place_for_is_refused():
    key = DataKey.new(KeyScope("t1", "u1"))
    event = seal_event(_message(), key)
    assert event.sealed is not None
    # Sealed by the right key for this very event: it opens, but a message has no summary.
    context = field_context(
        event_id=event.event_id,
        session_id=event.session_id,
        user_id=event.user_id,
        tenant=event.tenant,
        field="summary",
    )
    extra = {**event.sealed.fields, "summary": key.seal(b"planted", context)}
    forged = event.model_copy(update={"sealed": Sealed(key_id=key.key_id, fields=extra)})
    with pytest.raises(Undecryptable, match="no place for: summary"):
        open_event(forged, key)
    # The projector's check, which builds nothing, refuses it too: stored, it would fail
    # every read of the session.
    with pytest.raises(Undecryptable, match="no place for: summary"):
        verify_event(forged, key)
    verify_event(event, key)
    # Copied from another field, it does not even open.
    moved = {**event.sealed.fields, "summary": event.sealed.fields["content"]}
    forged = event.model_copy(update={"sealed": Sealed(key_id=key.key_id, fields=moved)})
    with pytest.raises(Undecryptable, match=r"field summary .* failed authentication"):
        open_event(forged, key)


def test_a_key_seals_only_its_own_users_events():
    with pytest.raises(ValueError, match="is not the key of"):
        seal_event(_message(), DataKey.new(KeyScope("t1", "someone-else")))


def test_a_key_never_shows_its_secret():
    key = DataKey.new(KeyScope("t1", "u1"))
    assert key.secret.hex() not in repr(key)
    assert key.key_id in repr(key)


@given(
    content=st.text(max_size=200),
    metadata=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=30), max_size=4),
)
def test_any_text_round_trips(content, metadata):
    event = ConversationEvent(
        session_id="s1",
        user_id="u1",
        payload=MessageAppended(role="user", content=content, metadata=metadata),
    )
    key = _key_of(event)
    assert open_event(CODEC.decode(CODEC.encode(seal_event(event, key))), key) == event
