"""In-memory stand-ins for the key log and the key directory, for the keyring's tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from chatlog.schemas.key_records import ErasureRecord, KeyRecord, key_record_key
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.master_keys import WrappedKey
from chatlog.schemas.sealing import KeyScope


@dataclass
class MemoryKeyLog:
    """The keys topic as a list of (key, value) records."""

    records: list[tuple[str, bytes | None]] = field(default_factory=list)

    def publish_key(self, record: KeyRecord) -> None:
        self.records.append((record.kafka_key, record.encode()))

    def publish_erasure(self, record: ErasureRecord) -> None:
        for key_id in record.key_ids:
            self.records.append((key_record_key(record.scope, key_id), None))
        self.records.append((record.kafka_key, record.encode()))

    def publish_tombstone(self, scope: KeyScope, key_id: str) -> None:
        self.records.append((key_record_key(scope, key_id), None))


@dataclass
class MemoryKeyDirectory:
    keys: dict[KeyScope, dict[str, WrappedKey]] = field(default_factory=dict)
    erased: dict[KeyScope, datetime] = field(default_factory=dict)

    def entries(self, scope: KeyScope) -> KeyEntries:
        return KeyEntries(dict(self.keys.get(scope, {})), self.erased.get(scope))

    def entries_many(self, scopes) -> dict[KeyScope, KeyEntries]:
        return {scope: self.entries(scope) for scope in scopes}

    def put(self, record: KeyRecord) -> bool:
        if record.scope in self.erased:
            return False
        self.keys.setdefault(record.scope, {})[record.key_id] = record.wrapped
        return True

    def remove(self, scope: KeyScope, key_id: str) -> None:
        self.keys.get(scope, {}).pop(key_id, None)

    def erase(self, record: ErasureRecord) -> tuple[str, ...]:
        self.erased.setdefault(record.scope, record.erased_at)
        return tuple(sorted(self.keys.pop(record.scope, {})))
