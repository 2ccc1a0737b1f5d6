"""The codec: ConversationEvent <-> bytes on the topic, with fastavro.

Two framings, one decoder:

* Avro single-object encoding (the embedded default, no registry needed):
  ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema + body.
  The writer schema is found among the schema versions shipped in ``schemas/avro``.
* Confluent wire format (when a Schema Registry is configured):
  ``00`` + 4-byte big-endian schema id + body. The writer schema comes from the registry.

Either way the body is resolved against the newest schema version in the repo, so events
written by any older version decode (BACKWARD_TRANSITIVE evolution). The event models
stay free of Avro: `to_avro` and `from_avro` are the only places the two meet.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from chatlog.schemas.errors import ConfigError, DecodeError, InvalidInput, UnknownSchema
from chatlog.schemas.events import (
    CheckpointSaved,
    CheckpointWritesSaved,
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Payload,
    ProducerInfo,
    Sealed,
    SessionClosed,
    SessionStarted,
    SummaryUpdated,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    TaskStarted,
    UserErased,
)
from chatlog.schemas.registry import SchemaRegistry
from chatlog.schemas.typed import typed_builder

__all__ = [
    "CONFLUENT_MAGIC",
    "SINGLE_OBJECT_MAGIC",
    "EventCodec",
    "SchemaVersion",
    "from_avro",
    "schema_versions",
    "to_avro",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
NAMESPACE = "chatlog.events"
DEFAULT_SUBJECT = "chatlog.events-value"

_PAYLOADS: dict[str, type[Payload]] = {
    f"{NAMESPACE}.{cls.__name__}": cls
    for cls in (
        SessionStarted,
        MessageAppended,
        MessageRedacted,
        SummaryUpdated,
        SessionClosed,
        UserErased,
        CheckpointSaved,
        CheckpointWritesSaved,
        TaskStarted,
        TaskProgressed,
        TaskFinished,
        TaskFailed,
        TaskCancelled,
    )
}
_PAYLOAD_NAMES = {cls: name for name, cls in _PAYLOADS.items()}
_PAYLOAD_BUILDERS = {name: typed_builder(cls) for name, cls in _PAYLOADS.items()}
_build_event = typed_builder(ConversationEvent)
_build_producer = typed_builder(ProducerInfo)
_PRODUCERS: dict[tuple[Any, ...], ProducerInfo] = {}
_PRODUCERS_KEPT = 1024
_SEALED_NAME = f"{NAMESPACE}.{Sealed.__name__}"
_CONFLUENT_HEADER = struct.Struct(">bI")


@dataclass(frozen=True)
class SchemaVersion:
    """One released version of the ConversationEvent schema, as shipped in the repo."""

    version: int
    text: str
    parsed: Any
    fingerprint: bytes

    @classmethod
    def from_text(cls, version: int, text: str) -> SchemaVersion:
        """Parse Avro JSON text; the fingerprint is CRC-64-AVRO of its canonical form."""
        definition = json.loads(text)
        parsed = fastavro.parse_schema(definition)
        # fastavro prints the 64-bit CRC little-endian, as single-object encoding writes it.
        digest = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        return cls(version, text, parsed, digest)


@cache
def schema_versions() -> tuple[SchemaVersion, ...]:
    """Every ConversationEvent schema version in ``schemas/avro``, oldest first."""
    folder = resources.files("chatlog.schemas") / "avro"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith("ConversationEvent.v") and name.endswith(".avsc"):
            version = int(name.removeprefix("ConversationEvent.v").removesuffix(".avsc"))
            found.append(SchemaVersion.from_text(version, entry.read_text(encoding="utf-8")))
    return tuple(sorted(found, key=lambda v: v.version))


def to_avro(event: ConversationEvent) -> dict[str, Any]:
    """The event as the dict fastavro writes (payload and seal as named union branches)."""
    record = event.model_dump(mode="python")
    record["payload"] = (_PAYLOAD_NAMES[type(event.payload)], record["payload"])
    if record["sealed"] is not None:
        # Named, as the payload is: fastavro writes a named branch at once, where it
        # would first check the record against each branch of the union.
        record["sealed"] = (_SEALED_NAME, record["sealed"])
    return record


def from_avro(record: Mapping[str, Any]) -> ConversationEvent:
    """The event from a dict fastavro read with ``return_record_name=True``.

    The schema typed every value already, so only the models' own rules are applied
    (`chatlog.schemas.typed`): the ids, the content's length, the counters' bounds. The
    caps are not (`READ_FROM_LOG`): a cap added after an event was written must not turn
    it into a dead letter on the next replay.
    """
    name, body = record["payload"]
    build_payload = _PAYLOAD_BUILDERS.get(name)
    if build_payload is None:
        raise DecodeError(f"unknown payload type {name!r}")
    envelope = dict(record)
    envelope["payload"] = build_payload(body)
    envelope["producer"] = _producer(record["producer"])
    sealed = envelope.get("sealed")
    if isinstance(sealed, tuple):  # a union read with return_record_name: (name, record)
        envelope["sealed"] = sealed[1]
    return _build_event(envelope)


def _producer(fields: Mapping[str, Any]) -> ProducerInfo:
    # A handful of writers make every event of a log: their `ProducerInfo` (a frozen
    # value) is built once each and shared, one object fewer per event read.
    key = tuple(fields.values())
    found = _PRODUCERS.get(key)
    if found is None:
        if len(_PRODUCERS) >= _PRODUCERS_KEPT:
            _PRODUCERS.clear()
        found = _PRODUCERS[key] = _build_producer(fields)
    return found


class EventCodec:
    """Encodes events with the newest schema; decodes any known version and framing.

    Without a registry, events are written in single-object encoding. With one, the
    writer schema is registered under `subject` on first use and events carry its id.
    """

    def __init__(
        self,
        *,
        registry: SchemaRegistry | None = None,
        subject: str = DEFAULT_SUBJECT,
        versions: Sequence[SchemaVersion] | None = None,
    ) -> None:
        self._versions = tuple(versions) if versions is not None else schema_versions()
        if not self._versions:
            raise ConfigError("no ConversationEvent schema versions found in schemas/avro")
        self._writer = self._versions[-1]
        self._by_fingerprint = {v.fingerprint: v.parsed for v in self._versions}
        self._registry = registry
        self._subject = subject
        self._writer_id: int | None = None
        self._by_id: dict[int, Any] = {}

    @property
    def writer(self) -> SchemaVersion:
        """The schema version new events are written with (the newest)."""
        return self._writer

    def encode(self, event: ConversationEvent) -> bytes:
        """Serialize `event` with the newest schema and the configured framing."""
        out = io.BytesIO()
        if self._registry is None:
            out.write(SINGLE_OBJECT_MAGIC)
            out.write(self._writer.fingerprint)
        else:
            out.write(_CONFLUENT_HEADER.pack(0, self._registered_writer_id()))
        try:
            fastavro.schemaless_writer(out, self._writer.parsed, to_avro(event))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                f"event {event.event_id} does not fit schema v{self._writer.version}: {exc}",
                session_id=event.session_id,
            ) from exc
        return out.getvalue()

    def decode(self, data: bytes) -> ConversationEvent:
        """Deserialize bytes from the topic; `DecodeError` names what is wrong with them."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            writer = self._writer_by_fingerprint(data[2:10])
            body_start = 10
        elif data[:1] == CONFLUENT_MAGIC and len(data) >= _CONFLUENT_HEADER.size:
            _, schema_id = _CONFLUENT_HEADER.unpack_from(data)
            writer = self._writer_by_id(schema_id)
            body_start = _CONFLUENT_HEADER.size
        else:
            raise DecodeError(
                f"not a chatlog event: expected Avro single-object (C3 01) or Confluent (00) "
                f"framing, got {data[:4].hex(' ') or 'no bytes'} ({len(data)} bytes)"
            )
        return from_avro(self._read_body(data, body_start, writer))

    def _read_body(self, data: bytes, start: int, writer: Any) -> dict[str, Any]:
        body = io.BytesIO(data)
        body.seek(start)
        reader = None if writer is self._writer.parsed else self._writer.parsed
        try:
            record = fastavro.schemaless_reader(body, writer, reader, return_record_name=True)
        except Exception as exc:  # fastavro raises many kinds on corrupt input
            raise DecodeError(
                f"corrupt event body ({len(data)} bytes): {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(data):
            raise DecodeError(
                f"corrupt event: {len(data) - body.tell()} trailing bytes after the record"
            )
        if not isinstance(record, dict):
            raise DecodeError(f"corrupt event: decoded a {type(record).__name__}, not a record")
        return record

    def _writer_by_fingerprint(self, digest: bytes) -> Any:
        try:
            return self._by_fingerprint[digest]
        except KeyError:
            raise UnknownSchema(
                f"unknown writer schema fingerprint {digest.hex()}: the event was written with "
                f"a schema this chatlog does not ship (newer or foreign); upgrade chatlog or add "
                f"that version to schemas/avro",
                fingerprint=digest.hex(),
            ) from None

    def _writer_by_id(self, schema_id: int) -> Any:
        if schema_id in self._by_id:
            return self._by_id[schema_id]
        if self._registry is None:
            raise UnknownSchema(
                f"event uses Confluent framing (schema id {schema_id}) but no schema registry "
                f"is configured; set CHATLOG_SCHEMA_REGISTRY_URL",
                schema_id=schema_id,
            )
        parsed = fastavro.parse_schema(json.loads(self._registry.lookup(schema_id)))
        self._by_id[schema_id] = parsed
        return parsed

    def _registered_writer_id(self) -> int:
        if self._writer_id is None:
            assert self._registry is not None
            self._writer_id = self._registry.register(self._subject, self._writer.text)
            self._by_id[self._writer_id] = self._writer.parsed
        return self._writer_id
