"""The `SchemaRegistry` role on a Confluent-compatible Schema Registry.

Used when `CHATLOG_SCHEMA_REGISTRY_URL` is set: events then carry the registry's schema id
(Confluent wire format) so that other Confluent clients can read the topic. Needs the
``schema-registry`` extra (``pip install 'chatlog-memory[schema-registry]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatlog.schemas.errors import ConfigError, MissingExtra, UnknownSchema

__all__ = ["ConfluentSchemaRegistry"]


class ConfluentSchemaRegistry:
    """Registers and looks up Avro schemas over the registry's REST API."""

    def __init__(self, url: str, *, config: Mapping[str, Any] | None = None) -> None:
        try:
            from confluent_kafka.schema_registry import (  # noqa: PLC0415 - optional extra
                SchemaRegistryClient,
            )
        except ImportError as missing:
            raise MissingExtra.needs(
                "schema-registry",
                "CHATLOG_SCHEMA_REGISTRY_URL",
                missing,
                instead="unset it for single-object encoding",
                setting="CHATLOG_SCHEMA_REGISTRY_URL",
            ) from missing
        try:
            self._client = SchemaRegistryClient({"url": url, **(config or {})})
        except ValueError as exc:  # its own check: unknown or conflicting properties
            raise ConfigError(
                f"the Schema Registry client refused its settings ({exc}); check "
                f"CHATLOG_SCHEMA_REGISTRY_URL and CHATLOG_SCHEMA_REGISTRY_*",
                setting="CHATLOG_SCHEMA_REGISTRY_URL",
            ) from exc

    def register(self, subject: str, schema: str) -> int:
        from confluent_kafka.schema_registry import Schema  # noqa: PLC0415 - optional extra

        return int(self._client.register_schema(subject, Schema(schema, "AVRO")))

    def lookup(self, schema_id: int) -> str:
        from confluent_kafka.schema_registry.error import (  # noqa: PLC0415 - optional extra
            SchemaRegistryError,
        )

        try:
            return str(self._client.get_schema(schema_id).schema_str)
        except SchemaRegistryError as exc:
            raise UnknownSchema(
                f"schema id {schema_id} not found in the registry: {exc}", schema_id=schema_id
            ) from exc
