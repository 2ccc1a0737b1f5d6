"""The codec: round trips, both framings, schema evolution, and refusal of bad bytes."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatlog.schemas.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    EventCodec,
    SchemaVersion,
    from_avro,
    schema_versions,
    to_avro,
)
from chatlog.schemas.errors import DecodeError, UnknownSchema
from chatlog.schemas.events import ConversationEvent, MessageAppended
from chatlog.schemas.registry import InMemorySchemaRegistry
from tests.samples import PAYLOADS, sample_events, vector_events, vector_file

CODEC = EventCodec()


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e.payload).__name__)
def test_single_object_round_trip_of_every_event_type(event):
    data = CODEC.encode(event)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == CODEC.writer.fingerprint
    assert CODEC.decode(data) == event


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e.payload).__name__)
def test_confluent_round_trip_of_every_event_type(event):
    registry = InMemorySchemaRegistry()
    codec = EventCodec(registry=registry)
    data = codec.encode(event)
    assert data[:1] == CONFLUENT_MAGIC
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert registry.subjects == {"chatlog.events-value": [schema_id]}
    assert codec.decode(data) == event
    # A fresh codec (another process) resolves the id through the registry.
    assert EventCodec(registry=registry).decode(data) == event


def test_every_payload_type_is_covered_by_the_samples():
    union = _field(json.loads(CODEC.writer.text), "payload")["type"]
    assert {branch["name"] for branch in union} == {type(p).__name__ for p in PAYLOADS}


def test_a_registry_codec_reads_single_object_events_too():
    event = sample_events()[2]
    assert EventCodec(registry=InMemorySchemaRegistry()).decode(CODEC.encode(event)) == event


@pytest.mark.parametrize("version", [v.version for v in schema_versions()])
def test_every_released_version_still_decodes(version):
    rows = json.loads(vector_file(version).read_text(encoding="utf-8"))
    # Every payload type of its day: the union grows (v4 added the LangGraph checkpoints),
    # and the newest version's vectors hold every one.
    held, known = {row["payload_type"] for row in rows}, {type(p).__name__ for p in PAYLOADS}
    assert held == known if version == schema_versions()[-1].version else held <= known
    for row in rows:
        decoded = CODEC.decode(bytes.fromhex(row["bytes"]))
        assert type(decoded.payload).__name__ == row["payload_type"]
        dumped = decoded.model_dump(mode="json")
        # Envelope fields added since the version was released read as their default.
        added = {name: dumped.pop(name) for name in set(dumped) - set(row["event"])}
        # So do payload fields added since (v3's SummaryUpdated.redactions_through).
        payload, fields = dumped["payload"], type(decoded.payload).model_fields
        added_to_payload = {
            name: payload.pop(name) for name in set(payload) - set(row["event"]["payload"])
        }
        assert dumped == row["event"]
        defaults = sample_events()[0].model_dump(mode="json")  # every optional one unset
        assert added == {name: defaults[name] for name in added}
        assert added_to_payload == {name: fields[name].default for name in added_to_payload}


def test_the_newest_version_reproduces_its_vectors_byte_for_byte():
    newest = schema_versions()[-1].version
    rows = json.loads(vector_file(newest).read_text(encoding="utf-8"))
    for event, row in zip(vector_events(), rows, strict=True):
        assert CODEC.encode(event).hex() == row["bytes"]


def _v2_text() -> str:
    """v1 with a defaulted field added to MessageAppended: a legal evolution."""
    definition = json.loads(schema_versions()[-1].text)
    payloads = _field(definition, "payload")["type"]
    appended = next(p for p in payloads if p["name"] == "MessageAppended")
    appended["fields"].append({"name": "language", "type": "string", "default": "und"})
    return json.dumps(definition)


def test_evolution_new_reader_reads_old_bytes_and_old_reader_reads_new_bytes():
    v1 = schema_versions()[-1]
    v2 = SchemaVersion.from_text(v1.version + 1, _v2_text())
    assert v2.fingerprint != v1.fingerprint
    event = sample_events()[2]

    # v2 reads v1 bytes: the added field takes its default, the rest is the v1 event.
    body = io.BytesIO(CODEC.encode(event)[10:])
    record = fastavro.schemaless_reader(body, v1.parsed, v2.parsed, return_record_name=True)
    _, payload = record["payload"]
    assert payload.pop("language") == "und"
    assert from_avro(record) == event

    # v1 reads v2 bytes: an old consumer finds the new writer schema in the registry.
    registry = InMemorySchemaRegistry()
    v2_id = registry.register("chatlog.events-value", v2.text)
    v2_bytes = CONFLUENT_MAGIC + struct.pack(">I", v2_id) + _body(v2, event, language="de")
    old_codec = EventCodec(registry=registry, versions=[v1])
    assert old_codec.writer is v1
    assert old_codec.decode(v2_bytes) == event


def test_an_old_reader_without_the_new_schema_refuses_with_the_fingerprint():
    v2 = SchemaVersion.from_text(99, _v2_text())
    data = SINGLE_OBJECT_MAGIC + v2.fingerprint + _body(v2, sample_events()[2], language="de")
    with pytest.raises(UnknownSchema, match=f"fingerprint {v2.fingerprint.hex()}"):
        CODEC.decode(data)


def _body(version: SchemaVersion, event: ConversationEvent, **extra: str) -> bytes:
    """The Avro body of `event` written with `version`, plus `extra` payload fields."""
    record = to_avro(event)
    name, payload = record["payload"]
    record["payload"] = (name, {**payload, **extra})
    out = io.BytesIO()
    fastavro.schemaless_writer(out, version.parsed, record)
    return out.getvalue()


GOOD = CODEC.encode(sample_events()[2])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "got no bytes"),
        (b"{}", "expected Avro single-object (C3 01) or Confluent (00) framing, got 7b 7d"),
        (b"\xc3\x02" + GOOD[2:], "got c3 02"),
        (GOOD[:-1], "corrupt event body"),
        (GOOD[:12], "corrupt event body"),
        (GOOD + b"\x00", "1 trailing bytes"),
        (GOOD[:10], "corrupt event body"),
    ],
    ids=["empty", "json", "bad-magic", "truncated-by-1", "truncated", "trailing", "no-body"],
)
def test_corrupt_bytes_raise_decode_error_naming_the_problem(data, expected):
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(data)
    assert expected in str(caught.value)


def test_unknown_fingerprint_is_named():
    data = SINGLE_OBJECT_MAGIC + bytes(8) + GOOD[10:]
    with pytest.raises(UnknownSchema, match="unknown writer schema fingerprint 0000000000000000"):
        CODEC.decode(data)


def test_confluent_framing_without_a_registry_says_how_to_fix_it():
    data = CONFLUENT_MAGIC + struct.pack(">I", 7) + GOOD[10:]
    with pytest.raises(UnknownSchema, match="set CHATLOG_SCHEMA_REGISTRY_URL"):
        CODEC.decode(data)


def test_unknown_registry_id_is_named():
    data = CONFLUENT_MAGIC + struct.pack(">I", 7) + GOOD[10:]
    with pytest.raises(UnknownSchema, match="schema id 7"):
        EventCodec(registry=InMemorySchemaRegistry()).decode(data)


def test_bytes_that_decode_to_an_invalid_id_are_refused():
    event = sample_events()[2]
    record_bytes = bytearray(CODEC.encode(event))
    # session-2 -> session:2 keeps the length, so the Avro body stays well formed.
    index = record_bytes.index(event.session_id.encode())
    record_bytes[index + 7] = ord(":")
    with pytest.raises(ValueError, match="session_id contains ':'"):
        CODEC.decode(bytes(record_bytes))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_anything_but_a_chatlog_error(data):
    try:
        decoded = CODEC.decode(SINGLE_OBJECT_MAGIC + CODEC.writer.fingerprint + data)
    except (DecodeError, ValueError):
        return
    assert isinstance(decoded, ConversationEvent)


@given(st.text(max_size=200), st.sampled_from(["system", "user", "assistant", "tool"]))
def test_any_text_content_round_trips(content, role):
    event = sample_events()[2].model_copy(
        update={"payload": MessageAppended(message_id="m", role=role, content=content)}
    )
    assert CODEC.decode(CODEC.encode(event)) == event


def _field(record: dict, name: str) -> dict:
    return next(f for f in record["fields"] if f["name"] == name)
