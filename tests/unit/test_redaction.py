"""Redaction: each mode's placeholders, the records it keeps, and reveal after sealing."""

from __future__ import annotations

import json

import pytest

from chatlog.producers.commands import (
    LANGCHAIN_METADATA,
    append_message,
    append_owned_message,
    new_event,
)
from chatlog.projections.encoding import encode_message
from chatlog.projections.opening import ViewOpener
from chatlog.projections.view import evolve
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.events import ConversationEvent, MessageAppended, SessionStarted
from chatlog.schemas.keyring import KeyEntries, Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key, wrap_data_key
from chatlog.schemas.pii import Detector
from chatlog.schemas.placeholders import reveal, revealed
from chatlog.schemas.position import Position
from chatlog.schemas.redaction import MAC_PURPOSE, Mode, RedactionPolicy, mask
from chatlog.schemas.sealing import DataKey, KeyScope, open_event, seal_event, verify_event

PROVIDER = LocalKeyProvider.from_spec(new_master_key("k1"))
# The data key of u1, the owner of `message`'s events: redactions are MACed under it.
OWNER_KEY = DataKey.new(KeyScope("default", "u1"))
CARD, EMAIL, KEY = "4111 1111 1111 1111", "ada@example.com", "sk-proj-a1B2c3D4e5F6g7H8i9J0kLmN"
CODEC = EventCodec()


def mac(data: bytes):
    return OWNER_KEY.mac(MAC_PURPOSE, data)


def redact(event: ConversationEvent, mode: Mode, **detector) -> ConversationEvent:
    return RedactionPolicy(mode=mode, redactor=Detector(**detector)).apply(event, mac)


def message(content: str, **fields) -> ConversationEvent:
    return append_message("s1", user_id="u1", role="user", content=content, **fields)


TEXT = f"card {CARD}, mail {EMAIL} and {EMAIL}, key {KEY}"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (Mode.OFF, TEXT),
        (Mode.REDACT, "card [CARD], mail [EMAIL] and [EMAIL], key [SECRET]"),
        (
            Mode.MASK,
            "card [CARD ••••1111], mail [EMAIL a•••@example.com] and "
            "[EMAIL a•••@example.com], key [SECRET]",
        ),
        (Mode.TOKENIZE, "card [CARD#1], mail [EMAIL#1] and [EMAIL#1], key [SECRET#1]"),
    ],
)
def test_each_mode_writes_its_placeholders(mode, expected):
    event = redact(message(TEXT), mode)
    assert isinstance(event.payload, MessageAppended)
    assert event.payload.content == expected
    if mode is Mode.TOKENIZE:
        assert event.tokens == {"CARD#1": CARD, "EMAIL#1": EMAIL, "SECRET#1": KEY}
    else:
        assert event.tokens == {}


def test_each_redaction_is_recorded_with_its_kind_field_and_keyed_hmac():
    event = redact(message(TEXT, metadata={"contact": EMAIL}), Mode.REDACT)
    records = [(r.field, r.kind, r.placeholder) for r in event.redactions]
    assert records == [
        ("content", "CARD", "[CARD]"),
        ("content", "EMAIL", "[EMAIL]"),
        ("content", "EMAIL", "[EMAIL]"),
        ("content", "SECRET", "[SECRET]"),
        ("metadata.contact", "EMAIL", "[EMAIL]"),
    ]
    card = event.redactions[0]
    assert (card.mac_key_id, card.mac) == (OWNER_KEY.key_id, mac(CARD.encode()).digest)
    # Keyed by the owner's own key: the same card typed by another user gets an unrelated
    # digest (the records link nobody), as it does under any other key; the record holds
    # no original.
    another_user = DataKey.new(KeyScope("default", "u2"))
    assert another_user.mac(MAC_PURPOSE, CARD.encode()).digest != card.mac
    assert PROVIDER.mac(MAC_PURPOSE, CARD.encode()).digest != card.mac
    assert CARD not in event.model_dump_json()
    assert EMAIL not in event.model_dump_json()


def test_masks_keep_only_what_a_person_recognises():
    assert mask("CARD", "5500-0000-0000-0004") == "[CARD ••••0004]"
    assert mask("IBAN", "DE89 3704 0044 0532 0130 00") == "[IBAN DE•• ••••3000]"
    assert mask("SSN", "078-05-1121") == "[SSN •••-••-1121]"
    assert mask("PHONE", "+49 30 901820") == "[PHONE ••••20]"
    assert mask("EMAIL", "j.smith@example.org") == "[EMAIL j•••@example.org]"
    assert mask("IP", "203.0.113.7") == "[IP 203.0.113.•]"
    assert mask("IP", "2001:db8::8a2e:370:7334") == "[IP 2001:db8::•]"
    assert mask("SECRET", KEY) == "[SECRET]"
    assert mask("EMPLOYEE", "EMP-123456") == "[EMPLOYEE]"


def test_content_that_is_all_personal_data_becomes_placeholders():
    event = redact(message(f"{EMAIL} {CARD}"), Mode.REDACT)
    assert isinstance(event.payload, MessageAppended)
    assert event.payload.content == "[EMAIL] [CARD]"


def test_every_personal_field_is_redacted_but_a_tool_calls_function_name():
    event = message(
        "ok",
        name=EMAIL,
        tool_calls=[{"id": "c1", "name": "email_ada@example.com", "arguments": "{}"}],
        metadata={"email": EMAIL},
    )
    payload = redact(event, Mode.REDACT).payload
    assert isinstance(payload, MessageAppended)
    assert payload.name == "[EMAIL]"
    assert payload.metadata == {"email": "[EMAIL]"}
    assert payload.tool_calls[0].name == "email_ada@example.com"
    title = new_event("s1", user_id="u1", payload=SessionStarted(title=f"Refund to {EMAIL}"))
    started = redact(title, Mode.REDACT).payload
    assert isinstance(started, SessionStarted)
    assert started.title == "Refund to [EMAIL]"


def test_json_arguments_are_redacted_leaf_by_leaf_and_stay_json():
    arguments = json.dumps({"card": 4111111111111111, "to": EMAIL, "n": 3})
    event = message("", tool_calls=[{"id": "c1", "name": "pay", "arguments": arguments}])
    for mode in (Mode.REDACT, Mode.TOKENIZE):
        redacted = redact(event, mode)
        assert isinstance(redacted.payload, MessageAppended)
        call = redacted.payload.tool_calls[0]
        assert json.loads(call.arguments)["n"] == 3
        assert "4111" not in call.arguments
        assert EMAIL not in call.arguments
    tokenized = redact(event, Mode.TOKENIZE)
    assert isinstance(tokenized.payload, MessageAppended)
    assert json.loads(tokenized.payload.tool_calls[0].arguments) == {
        "card": "[CARD#1]",
        "to": "[EMAIL#1]",
        "n": 3,
    }
    back = revealed(tokenized).payload
    assert isinstance(back, MessageAppended)
    # The card comes back as the string it was found as (a number cannot hold a token).
    assert json.loads(back.tool_calls[0].arguments) == {
        "card": "4111111111111111",
        "to": EMAIL,
        "n": 3,
    }
    plain = "not json: " + EMAIL
    text = message("", tool_calls=[{"id": "c1", "name": "f", "arguments": plain}])
    assert redact(text, Mode.REDACT).payload.tool_calls[0].arguments == "not json: [EMAIL]"


def test_allow_list_custom_patterns_and_a_region():
    event = message("Write to help@shop.example or EMP-123456, or call 030 901820")
    kept = redact(
        event, Mode.REDACT, allow={"help@shop.example"}, custom={"EMPLOYEE": r"EMP-\d{6}"}
    )
    assert kept.payload.content == "Write to help@shop.example or [EMPLOYEE], or call 030 901820"
    german = redact(event, Mode.REDACT, region="DE")
    assert german.payload.content.endswith("call [PHONE]")


def test_a_sealed_or_redacted_event_and_one_without_findings_are_left_as_they_are():
    clean = message("Where is order #BW-48213?")
    assert redact(clean, Mode.TOKENIZE) is clean
    once = redact(message(TEXT), Mode.REDACT)
    assert redact(once, Mode.MASK) is once
    sealed = seal_event(message(TEXT), DataKey.new(KeyScope("default", "u1")))
    assert redact(sealed, Mode.REDACT) is sealed


def test_tokens_are_sealed_with_the_event_and_open_only_with_its_key():
    event = redact(message(TEXT), Mode.TOKENIZE)
    key = DataKey.new(KeyScope.of(event))
    sealed = seal_event(event, key)
    data = CODEC.encode(sealed)
    for original in (CARD, EMAIL, KEY):
        assert original.encode() not in data
    decoded = CODEC.decode(data)
    assert decoded.tokens == {"CARD#1": "", "EMAIL#1": "", "SECRET#1": ""}
    verify_event(decoded, key)
    assert open_event(decoded, key) == event
    assert revealed(open_event(decoded, key)).payload.content == TEXT


def test_a_stored_view_reveals_tokens_only_when_asked():
    event = redact(message(TEXT, metadata={"contact": EMAIL}), Mode.TOKENIZE)
    key = DataKey.new(KeyScope.of(event))
    sealed = seal_event(event, key)
    view = evolve(None, sealed, Position(0, 7))
    assert view is not None
    entries = KeyEntries({key.key_id: wrap_data_key(PROVIDER, key)})
    opener = ViewOpener(Keyring(PROVIDER))
    hidden = opener.open(view, entries)
    assert hidden.messages[0].content == event.payload.content
    shown = opener.open(view, entries, reveal=True)
    assert shown.messages[0].content == TEXT
    assert shown.messages[0].metadata == {"contact": EMAIL}
    # The same through a read's hot path (stored JSON decoded and opened at once).
    raw = [encode_message(m) for m in view.messages]
    opened = opener.open_stored(view, raw, entries, reveal=True)
    assert opened.messages[0].content == TEXT


def test_a_tokenized_title_is_revealed_with_the_session():
    started = SessionStarted(title=f"Refund to {EMAIL}")
    event = redact(new_event("s1", user_id="u1", payload=started), Mode.TOKENIZE)
    key = DataKey.new(KeyScope.of(event))
    view = evolve(None, seal_event(event, key), Position(0, 1))
    assert view is not None
    entries = KeyEntries({key.key_id: wrap_data_key(PROVIDER, key)})
    opener = ViewOpener(Keyring(PROVIDER))
    assert opener.open(view, entries).title == "Refund to [EMAIL#1]"
    assert opener.open(view, entries, reveal=True).title == f"Refund to {EMAIL}"


def test_reveal_leaves_unknown_placeholders_and_escapes_into_json():
    assert reveal("[EMAIL#2] [CARD]", {"EMAIL#1": EMAIL}) == "[EMAIL#2] [CARD]"
    pem = "-----BEGIN PRIVATE KEY-----\nAB\n-----END PRIVATE KEY-----"
    assert json.loads(reveal('{"k": "[SECRET#1]"}', {"SECRET#1": pem}, json_text=True)) == {
        "k": pem
    }


def test_a_metadata_value_holding_json_stays_json_both_ways():
    fields = json.dumps({"additional_kwargs": {"card": 4111111111111111, "note": f"to {EMAIL}"}})
    # As the LangChain integration writes it: its reserved key holds a message's fields.
    owned = append_owned_message(
        LANGCHAIN_METADATA,
        "s1",
        user_id="u1",
        role="user",
        content="hi",
        metadata={"langchain.fields": fields, "plain": "7731"},
    )
    event = redact(owned, Mode.TOKENIZE)
    assert isinstance(event.payload, MessageAppended)
    stored = json.loads(event.payload.metadata["langchain.fields"])
    assert stored == {"additional_kwargs": {"card": "[CARD#1]", "note": "to [EMAIL#1]"}}
    assert event.payload.metadata["plain"] == "7731"
    back = revealed(event).payload
    assert isinstance(back, MessageAppended)
    assert (
        json.loads(back.metadata["langchain.fields"])["additional_kwargs"]["note"] == f"to {EMAIL}"
    )


def test_an_event_that_says_it_was_redacted_is_searched_all_the_same():
    # Built by hand with a redaction record (or read back and published again): what it
    # still holds is found; its own records and tokens stay, new tokens come after them.
    once = redact(message(f"card {CARD}"), Mode.TOKENIZE)
    assert isinstance(once.payload, MessageAppended)
    assert once.payload.content == "card [CARD#1]"
    forged = once.model_copy(
        update={"payload": once.payload.model_copy(update={"content": f"[CARD#1] and {EMAIL}"})}
    )
    again = redact(forged, Mode.TOKENIZE)
    assert isinstance(again.payload, MessageAppended)
    assert again.payload.content == "[CARD#1] and [EMAIL#1]"
    assert again.tokens == {"CARD#1": CARD, "EMAIL#1": EMAIL}
    assert [r.kind for r in again.redactions] == ["CARD", "EMAIL"]
    # A second card is numbered after the event's own; the same card keeps its name.
    more = forged.model_copy(
        update={
            "payload": forged.payload.model_copy(update={"content": f"{CARD} 4000 0566 5566 5556"})
        }
    )
    numbered = redact(more, Mode.TOKENIZE)
    assert isinstance(numbered.payload, MessageAppended)
    assert numbered.payload.content == "[CARD#1] [CARD#2]"
    # Placeholders are not personal data: redacting a redacted event changes nothing.
    assert redact(again, Mode.TOKENIZE) == again
    assert (
        redact(message(f"x {EMAIL}"), Mode.REDACT).redactions
        == redact(redact(message(f"x {EMAIL}"), Mode.REDACT), Mode.REDACT).redactions
    )
