"""The schema registry role: where Confluent-framed events find their writer schema.

With a Schema Registry URL configured, events carry a 4-byte schema id instead of a
fingerprint, and the codec needs somewhere to register the writer schema and to look ids
up. `SchemaRegistry` is that role; `InMemorySchemaRegistry` is the tiny stand-in beside
it for the pure core's tests; `chatlog.schemas.kafka_registry.ConfluentSchemaRegistry` talks to a
real Confluent-compatible registry.
"""

from __future__ import annotations

from typing import Protocol

from chatlog.schemas.errors import UnknownSchema

__all__ = ["InMemorySchemaRegistry", "SchemaRegistry"]


class SchemaRegistry(Protocol):
    """Registers Avro schemas under a subject and returns them by id."""

    def register(self, subject: str, schema: str) -> int:
        """Register `schema` (Avro JSON text) under `subject`; return its global id."""
        ...

    def lookup(self, schema_id: int) -> str:
        """The Avro JSON text registered under `schema_id`; `UnknownSchema` if none."""
        ...


class InMemorySchemaRegistry:
    """A registry in a dict: same id for the same schema text, ids from 1."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}

    def register(self, subject: str, schema: str) -> int:
        schema_id = self._ids.setdefault(schema, len(self._ids) + 1)
        self._schemas[schema_id] = schema
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def lookup(self, schema_id: int) -> str:
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise UnknownSchema(
                f"schema id {schema_id} is not in the registry", schema_id=schema_id
            ) from None
