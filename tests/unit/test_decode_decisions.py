"""The decoder's decisions: every record the full pydantic validation refused is refused.

`from_avro` builds events with `chatlog.schemas.typed` (the models' own rules only; the
Avro schema typed the values) instead of `validated(..., READ_FROM_LOG)`. The oracle
below is that former path, kept here only to compare: a corpus of good events from
every schema version, and of bad ones (ids, lengths, bounds, enum symbols, payload
branches, trailing bytes), must get the same answer from both, the same event or the
same kind of error, so a replay dead-letters exactly what the live projector did.
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Callable, Mapping
from typing import Any
from unittest import mock

import fastavro
import pytest

from chatlog.schemas import codec as codec_module
from chatlog.schemas import typed
from chatlog.schemas.codec import _PAYLOADS, SINGLE_OBJECT_MAGIC, EventCodec, to_avro
from chatlog.schemas.errors import ChatlogError, DecodeError, InvalidEvent, InvalidId
from chatlog.schemas.events import (
    MAX_CONTENT_CHARS,
    MAX_METADATA_KEYS,
    MAX_NAME_CHARS,
    READ_FROM_LOG,
    ConversationEvent,
    ProducerInfo,
    Sealed,
    validated,
)
from tests.samples import sample_events, sealed_sample, vector_file

CODEC = EventCodec()
WRITER = CODEC.writer


def _oracle(data: bytes) -> ConversationEvent:
    """The decoder as it was before `chatlog.schemas.typed`: the same framing and Avro
    read, then a full pydantic pass over the record."""
    with mock.patch.object(codec_module, "from_avro", _validated_from_avro):
        return CODEC.decode(data)


def _validated_from_avro(record: Mapping[str, Any]) -> ConversationEvent:
    name, body = record["payload"]
    if name not in _PAYLOADS:
        raise DecodeError(f"unknown payload type {name!r}")
    envelope = dict(record)
    envelope["payload"] = validated(_PAYLOADS[name], body, context=READ_FROM_LOG)
    sealed = envelope.get("sealed")
    if isinstance(sealed, tuple):
        envelope["sealed"] = Sealed.model_construct(**sealed[1])
    return validated(ConversationEvent, envelope, context=READ_FROM_LOG)


def _decision(decode: Callable[[bytes], ConversationEvent], data: bytes) -> Any:
    try:
        event = decode(data)
    except ChatlogError as exc:
        # The kind decides the dead letter's reason (`dead_letter_reason`).
        kind = DecodeError if isinstance(exc, DecodeError) else type(exc)
        return ("refused", kind)
    return ("decoded", event.model_dump(), _fields_set(event))


def _fields_set(event: ConversationEvent) -> list[set[str]]:
    parts = [event, event.producer, event.payload, *event.redactions]
    parts += [event.sealed] if event.sealed is not None else []
    return [set(part.model_fields_set) for part in parts]


def _framed(record: Mapping[str, Any], schema: Any = None) -> bytes:
    out = io.BytesIO()
    out.write(SINGLE_OBJECT_MAGIC + WRITER.fingerprint)
    fastavro.schemaless_writer(out, schema or WRITER.parsed, record)
    return out.getvalue()


def _schema_with(change: Callable[[dict[str, Any]], None]) -> Any:
    """The newest schema with `change` made to its JSON (a writer this reader lacks)."""
    definition = json.loads(WRITER.text)
    change(definition)
    return fastavro.parse_schema(definition)


def _field(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(field for field in record["fields"] if field["name"] == name)


def _good() -> list[bytes]:
    found = [CODEC.encode(event) for event in [*sample_events(), sealed_sample()]]
    for version in range(1, WRITER.version + 1):
        rows = json.loads(vector_file(version).read_text(encoding="utf-8"))
        found += [bytes.fromhex(row["bytes"]) for row in rows]
    return found


def _mutated(payload_type: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    event = next(e for e in sample_events() if type(e.payload).__name__ == payload_type)
    record = copy.deepcopy(to_avro(event))
    change(record)
    return _framed(record)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = record
        for part in parents:
            target = target[part][1] if part == "payload" else target[part]
        if last == "*":  # every value of a map (metadata)
            target.clear()
            target.update(value)
        else:
            target[last] = value

    return change


BAD_IDS = ["", "x" * 129, "a:b", "a b", "{tag}", "é", "a\nb"]
ID_FIELDS = [
    ("MessageAppended", "event_id"),
    ("MessageAppended", "session_id"),
    ("MessageAppended", "user_id"),
    ("MessageAppended", "tenant"),
    ("MessageAppended", "payload.message_id"),
    ("MessageRedacted", "payload.message_id"),
    ("TaskStarted", "payload.task_id"),
    ("TaskProgressed", "payload.task_id"),
    ("TaskFinished", "payload.task_id"),
    ("TaskFailed", "payload.task_id"),
    ("TaskCancelled", "payload.task_id"),
]
VALUES = [
    ("MessageAppended", "payload.content", "x" * (MAX_CONTENT_CHARS + 1)),
    ("MessageAppended", "payload.content", "x" * MAX_CONTENT_CHARS),
    # Caps bind writes, not reads: over them, an event in the log still decodes.
    ("MessageAppended", "payload.name", "n" * (MAX_NAME_CHARS + 1)),
    ("MessageAppended", "payload.metadata.*", {f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}),
    ("MessageAppended", "payload.tool_call_id", "t" * 300),
    ("SummaryUpdated", "payload.through_offset", -1),
    ("SummaryUpdated", "payload.through_offset", 0),
    ("SummaryUpdated", "payload.prompt_tokens", -5),
    ("SummaryUpdated", "payload.completion_tokens", -1),
    ("SummaryUpdated", "payload.covered_messages", -1),
    ("SummaryUpdated", "payload.redactions_through", -2),
    ("SummaryUpdated", "payload.redactions_through", -1),
    ("TaskProgressed", "payload.progress", 1.5),
    ("TaskProgressed", "payload.progress", -0.1),
    ("TaskProgressed", "payload.progress", math.nan),
    ("TaskProgressed", "payload.progress", math.inf),
    ("TaskProgressed", "payload.progress", 1.0),
    ("TaskProgressed", "payload.progress", None),
    ("SessionStarted", "payload.title", "t" * 10_000),
    ("TaskStarted", "payload.kind", "k" * 1_000),
]


def _bad_role() -> bytes:
    # A writer whose Role enum has a fifth symbol: its index is out of this reader's range.
    def change(schema: dict[str, Any]) -> None:
        appended = next(
            b for b in _field(schema, "payload")["type"] if b["name"] == "MessageAppended"
        )
        _field(appended, "role")["type"]["symbols"].append("robot")

    event = next(e for e in sample_events() if type(e.payload).__name__ == "MessageAppended")
    record = to_avro(event)
    record["payload"][1]["role"] = "robot"
    return _framed(record, _schema_with(change))


def _unknown_payload() -> bytes:
    # A writer with a fourteenth payload branch, unknown here.
    def change(schema: dict[str, Any]) -> None:
        branch = {
            "type": "record",
            "name": "Teleported",
            "fields": [{"name": "to", "type": "string"}],
        }
        _field(schema, "payload")["type"].append(branch)

    event = sample_events()[0]
    record = to_avro(event)
    record["payload"] = ("chatlog.events.Teleported", {"to": "mars"})
    return _framed(record, _schema_with(change))


def _bytes_level() -> list[bytes]:
    good = CODEC.encode(sample_events()[1])
    return [
        _bad_role(),
        _unknown_payload(),
        good + b"\x00",  # trailing bytes
        good[:-3],  # cut short
        good[:10],  # a header, no body
        b"",
        b"\xc3\x01" + b"\x00" * 8 + good[10:],  # an unknown fingerprint
    ]


CORPUS = (
    [pytest.param(data, id=f"good-{n}") for n, data in enumerate(_good())]
    + [
        pytest.param(_mutated(kind, _set(path, bad)), id=f"id-{kind}-{path}-{n}")
        for kind, path in ID_FIELDS
        for n, bad in enumerate(BAD_IDS)
    ]
    + [
        pytest.param(_mutated(kind, _set(path, value)), id=f"value-{kind}-{path}-{n}")
        for n, (kind, path, value) in enumerate(VALUES)
    ]
    + [pytest.param(data, id=f"bytes-{n}") for n, data in enumerate(_bytes_level())]
)


@pytest.mark.parametrize("data", CORPUS)
def test_the_decoder_decides_as_the_full_validation_did(data):
    assert _decision(CODEC.decode, data) == _decision(_oracle, data)


def test_the_corpus_holds_refusals_of_every_kind():
    decisions = [_decision(_oracle, param.values[0]) for param in CORPUS]
    assert {InvalidId, InvalidEvent, DecodeError} <= {d[1] for d in decisions if d[0] == "refused"}
    # Besides the good events, the values within their rules (and over the write caps).
    assert sum(d[0] == "decoded" for d in decisions) >= len(_good()) + 10


def test_a_refusal_names_the_model_and_the_field():
    with pytest.raises(InvalidEvent, match=r"MessageAppended\.content: has 262145 characters"):
        CODEC.decode(_mutated("MessageAppended", _set("payload.content", "x" * 262_145)))
    with pytest.raises(InvalidId, match="session_id contains ':'"):
        CODEC.decode(_mutated("MessageAppended", _set("session_id", "a:b")))
    with pytest.raises(InvalidEvent, match=r"TaskProgressed\.progress: nan is below 0"):
        CODEC.decode(_mutated("TaskProgressed", _set("payload.progress", math.nan)))


def test_fields_missing_or_unknown_to_the_model_are_handled_as_pydantic_does():
    build = typed.typed_builder(ProducerInfo)
    assert build({"client": "c"}) == ProducerInfo.model_validate({"client": "c"})
    assert build({"client": "c"}).model_fields_set == {"client"}
    with pytest.raises(InvalidEvent, match="surprise: Extra inputs are not permitted"):
        build({"client": "c", "surprise": 1})
    with pytest.raises(InvalidEvent, match=r"ConversationEvent\.session_id: Field required"):
        typed.from_typed(ConversationEvent, {"user_id": "u"})


def test_a_model_with_a_rule_the_builder_cannot_apply_is_refused_at_build_time():
    from pydantic import BaseModel, Field

    class Odd(BaseModel):
        text: str = Field(pattern="^a")

    with pytest.raises(TypeError, match="cannot apply the rule"):
        typed.typed_builder(Odd)


def test_decoded_events_copy_as_validated_ones_do():
    # `model_copy(update=...)` adds to the copy's fields_set in place (sealing does it).
    event = CODEC.decode(CODEC.encode(sealed_sample()))
    copied = event.model_copy(update={"tenant": "other", "sealed": None})
    assert (copied.tenant, copied.sealed, copied.event_id) == ("other", None, event.event_id)
    assert copied.payload.model_copy(update={"content": "x"}).model_fields_set >= {"content"}
