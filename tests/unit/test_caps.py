"""Caps on event parts: at the limit accepted, one over refused naming field and limit.

The caps bind what is written (`append_message`, `new_event`), never what is read back:
an event over a cap that is already in the log decodes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from chatlog.producers.commands import (
    LANGCHAIN_METADATA,
    append_message,
    append_owned_message,
    new_event,
)
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import InvalidEvent
from chatlog.schemas.events import (
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_BYTES,
    MAX_NAME_CHARS,
    MAX_REASON_CHARS,
    MAX_TITLE_CHARS,
    MAX_TOOL_CALL_ARGUMENTS_BYTES,
    MAX_TOOL_CALL_ID_CHARS,
    MAX_TOOL_CALLS,
    READ_FROM_LOG,
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Payload,
    SessionClosed,
    SessionStarted,
    ToolCall,
    UserErased,
    validated,
)


def _message(**fields: Any) -> ConversationEvent:
    return append_message("s1", user_id="u1", role="assistant", content="hi", **fields)


def _event(payload: Payload) -> ConversationEvent:
    return new_event("s1", user_id="u1", payload=payload)


def _calls(
    count: int, *, id: str = "c", name: str = "f", arguments: str = "{}"
) -> list[dict[str, str]]:
    return [
        {"id": f"{id}{i}" if count > 1 else id, "name": name, "arguments": arguments}
        for i in range(count)
    ]


@dataclass(frozen=True)
class Cap:
    """One cap: how to build an event whose part has `size`, and what a refusal says."""

    name: str
    limit: int
    build: Callable[[int], ConversationEvent]
    field: str
    unit: str


CAPS = [
    Cap(
        "MAX_METADATA_KEYS",
        MAX_METADATA_KEYS,
        lambda n: _message(metadata={f"k{i}": "v" for i in range(n)}),
        "payload.metadata",
        "keys",
    ),
    Cap(
        "MAX_METADATA_KEY_CHARS",
        MAX_METADATA_KEY_CHARS,
        lambda n: _message(metadata={"k" * n: "v"}),
        "payload.metadata key 'kkkk",
        "characters",
    ),
    Cap(
        "MAX_METADATA_VALUE_BYTES",
        MAX_METADATA_VALUE_BYTES,
        lambda n: _message(metadata={"order": "x" * n}),
        "payload.metadata.order",
        "bytes",
    ),
    Cap(
        "MAX_TOOL_CALLS",
        MAX_TOOL_CALLS,
        lambda n: _message(tool_calls=_calls(n)),
        "payload.tool_calls",
        "tool calls",
    ),
    Cap(
        "MAX_NAME_CHARS",
        MAX_NAME_CHARS,
        lambda n: _message(tool_calls=_calls(1, name="f" * n)),
        "payload.tool_calls.0.name",
        "characters",
    ),
    Cap(
        "MAX_TOOL_CALL_ID_CHARS",
        MAX_TOOL_CALL_ID_CHARS,
        lambda n: _message(tool_calls=_calls(1, id="c" * n)),
        "payload.tool_calls.0.id",
        "characters",
    ),
    Cap(
        "MAX_TOOL_CALL_ARGUMENTS_BYTES",
        MAX_TOOL_CALL_ARGUMENTS_BYTES,
        lambda n: _message(tool_calls=_calls(1, arguments="1" * n)),
        "payload.tool_calls.0.arguments",
        "bytes",
    ),
    Cap(
        "MAX_NAME_CHARS",
        MAX_NAME_CHARS,
        lambda n: _message(name="n" * n),
        "payload.name",
        "characters",
    ),
    Cap(
        "MAX_TOOL_CALL_ID_CHARS",
        MAX_TOOL_CALL_ID_CHARS,
        lambda n: append_message(
            "s1", user_id="u1", role="tool", content="42", tool_call_id="c" * n
        ),
        "payload.tool_call_id",
        "characters",
    ),
    Cap(
        "MAX_TITLE_CHARS",
        MAX_TITLE_CHARS,
        lambda n: _event(SessionStarted(title="t" * n)),
        "payload.title",
        "characters",
    ),
    Cap(
        "MAX_METADATA_KEYS",
        MAX_METADATA_KEYS,
        lambda n: _event(SessionStarted(metadata={f"k{i}": "v" for i in range(n)})),
        "payload.metadata",
        "keys",
    ),
    Cap(
        "MAX_METADATA_VALUE_BYTES",
        MAX_METADATA_VALUE_BYTES,
        lambda n: _event(SessionStarted(metadata={"topic": "x" * n})),
        "payload.metadata.topic",
        "bytes",
    ),
    Cap(
        "MAX_REASON_CHARS",
        MAX_REASON_CHARS,
        lambda n: _event(MessageRedacted(message_id="m1", reason="r" * n)),
        "payload.reason",
        "characters",
    ),
    Cap(
        "MAX_REASON_CHARS",
        MAX_REASON_CHARS,
        lambda n: _event(SessionClosed(reason="r" * n)),
        "payload.reason",
        "characters",
    ),
    Cap(
        "MAX_REASON_CHARS",
        MAX_REASON_CHARS,
        lambda n: _event(UserErased(reason="r" * n)),
        "payload.reason",
        "characters",
    ),
]
IDS = [f"{cap.field.split()[0]}-{cap.name}-{i}" for i, cap in enumerate(CAPS)]


@pytest.mark.parametrize("cap", CAPS, ids=IDS)
def test_a_part_at_its_cap_is_accepted(cap: Cap) -> None:
    event = cap.build(cap.limit)
    assert isinstance(event, ConversationEvent)


@pytest.mark.parametrize("cap", CAPS, ids=IDS)
def test_one_over_the_cap_is_refused_naming_field_limit_size_and_fix(cap: Cap) -> None:
    with pytest.raises(InvalidEvent) as caught:
        cap.build(cap.limit + 1)
    message = str(caught.value)
    assert message.startswith(cap.field)
    assert f"{cap.limit + 1} {cap.unit}" in message
    assert f"the limit is {cap.limit}" in message
    assert f"({cap.name})" in message
    assert "nothing was published" in message
    assert caught.value.context["limit"] == cap.limit
    assert caught.value.context["size"] == cap.limit + 1


def test_size_caps_count_utf8_bytes_not_characters() -> None:
    # "é" is two bytes: half the cap in characters is the whole cap in bytes.
    _message(metadata={"k": "é" * (MAX_METADATA_VALUE_BYTES // 2)})
    with pytest.raises(InvalidEvent, match=f"{MAX_METADATA_VALUE_BYTES + 2} bytes of UTF-8"):
        _message(metadata={"k": "é" * (MAX_METADATA_VALUE_BYTES // 2 + 1)})


def test_an_enormous_metadata_key_is_quoted_short_in_the_refusal() -> None:
    with pytest.raises(InvalidEvent) as caught:
        _message(metadata={"k" * 100_000: "v"})
    assert len(str(caught.value)) < 400
    assert "100000 characters long" in str(caught.value)


def test_the_issue_case_of_forty_thousand_metadata_keys_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="has 40000 keys; the limit is 64"):
        _message(metadata={f"k{i}": "v" for i in range(40_000)})


def test_the_owning_integration_s_reserved_values_are_exempt_from_the_value_cap() -> None:
    # LangChain keeps a message's content blocks and response metadata in one value.
    big = "x" * (MAX_METADATA_VALUE_BYTES * 4)
    event = append_owned_message(
        LANGCHAIN_METADATA,
        "s1",
        user_id="u1",
        role="assistant",
        content="hi",
        metadata={"langchain.fields": big},
    )
    assert isinstance(event.payload, MessageAppended)
    assert event.payload.metadata["langchain.fields"] == big
    # ... and not from the others, nor from the key count.
    with pytest.raises(InvalidEvent, match=r"payload\.metadata\.app "):
        append_owned_message(
            LANGCHAIN_METADATA,
            "s1",
            user_id="u1",
            role="assistant",
            content="hi",
            metadata={"langchain.fields": big, "app": big},
        )
    with pytest.raises(InvalidEvent, match="MAX_METADATA_KEYS"):
        append_owned_message(
            LANGCHAIN_METADATA,
            "s1",
            user_id="u1",
            role="assistant",
            content="hi",
            metadata={"langchain.fields": "{}", **{f"k{i}": "v" for i in range(MAX_METADATA_KEYS)}},
        )


def _over_every_cap() -> ConversationEvent:
    """An event over its caps, as an older producer (or another language) wrote it."""
    fields = {
        "session_id": "s1",
        "user_id": "u1",
        "payload": MessageAppended(
            role="assistant",
            content="hi",
            name="n" * (MAX_NAME_CHARS + 1),
            tool_calls=tuple(ToolCall(**call) for call in _calls(MAX_TOOL_CALLS + 1)),
            metadata={
                f"k{i}": "v" * (MAX_METADATA_VALUE_BYTES + 1) for i in range(MAX_METADATA_KEYS + 1)
            },
        ),
    }
    return validated(ConversationEvent, fields, context=READ_FROM_LOG)


def test_an_event_over_the_caps_already_in_the_log_still_decodes() -> None:
    old = _over_every_cap()
    codec = EventCodec()
    assert codec.decode(codec.encode(old)) == old


def test_the_caps_bind_an_event_built_without_the_read_context() -> None:
    old = _over_every_cap()
    with pytest.raises(InvalidEvent, match=r"^payload\.name "):
        validated(ConversationEvent, old.model_dump())
