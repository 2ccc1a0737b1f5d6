"""The records of the `chatlog.keys` topic: wrapped data keys, their tombstones, erasures.

The topic is compacted and keyed so that compaction keeps exactly what is still needed:

* ``<tenant>/<user>/<key_id>`` → a `KeyRecord`: one wrapped data key. Its tombstone (the
  same Kafka key, a null value) is what erasing the user writes: once compaction has
  removed the record, the key is gone from every disk, and with it every copy of what it
  sealed (crypto-shredding).
* ``<tenant>/<user>`` → an `ErasureRecord`: the user was erased, when, and which keys
  were destroyed. Ids only, nothing personal; it stays, so that every process can answer
  "erased" rather than "not found", and so that a replay knows.
* ``tick:<partition>`` → a `KeysTick`: nothing but the time it was written. Projectors
  append one to every partition periodically (`chatlog.processors.kafka_keys_tick`),
  because Kafka rolls a segment only when a record arrives, and never compacts the
  segment being written: without them a tombstone on a quiet topic would never be
  compacted. One fixed key per partition, so compaction keeps one tick per partition.
  The ``:`` is in no id, so the key is no user's; a reader skips a tick.

Values are small JSON documents (a producer in any language can write them), with a
format number ``v`` so that later formats can be told apart. Ids never contain ``/``
(`chatlog.schemas.ids`), so the Kafka key splits unambiguously.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatlog.schemas.errors import DecodeError
from chatlog.schemas.events import epoch_millis, from_epoch_millis
from chatlog.schemas.master_keys import WrappedKey
from chatlog.schemas.sealing import KeyScope

__all__ = [
    "ErasureRecord",
    "KeyRecord",
    "KeysTick",
    "decode_key_record",
    "erasure_key",
    "key_record_key",
    "tick_key",
]

_FORMAT = 1
_TICK_PREFIX = "tick:"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One wrapped data key of one user."""

    scope: KeyScope
    key_id: str
    wrapped: WrappedKey
    created_at: datetime

    @property
    def kafka_key(self) -> str:
        """The record's key in the topic (also its tombstone's)."""
        return key_record_key(self.scope, self.key_id)

    def encode(self) -> bytes:
        """The record's value."""
        return _dump(
            {
                "v": _FORMAT,
                "kek": self.wrapped.kek_id,
                "wrapped": base64.b64encode(self.wrapped.blob).decode(),
                "created_at": epoch_millis(self.created_at),
            }
        )


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """The user was erased at `erased_at`; `key_ids` are the keys destroyed then."""

    scope: KeyScope
    erased_at: datetime
    key_ids: tuple[str, ...]

    @property
    def kafka_key(self) -> str:
        """The record's key in the topic."""
        return erasure_key(self.scope)

    def encode(self) -> bytes:
        """The record's value."""
        return _dump(
            {"v": _FORMAT, "erased_at": epoch_millis(self.erased_at), "keys": list(self.key_ids)}
        )


@dataclass(frozen=True, slots=True)
class KeysTick:
    """A record that exists to make the broker roll a segment of `partition` (see above)."""

    partition: int
    at: datetime

    @property
    def kafka_key(self) -> str:
        """The record's key in the topic: one per partition."""
        return tick_key(self.partition)

    def encode(self) -> bytes:
        """The record's value."""
        return _dump({"v": _FORMAT, "kind": "tick", "at": epoch_millis(self.at)})


def key_record_key(scope: KeyScope, key_id: str) -> str:
    """``<tenant>/<user>/<key_id>``."""
    return f"{scope.tenant}/{scope.user_id}/{key_id}"


def erasure_key(scope: KeyScope) -> str:
    """``<tenant>/<user>``."""
    return f"{scope.tenant}/{scope.user_id}"


def tick_key(partition: int) -> str:
    """``tick:<partition>``."""
    return f"{_TICK_PREFIX}{partition}"


def decode_key_record(
    kafka_key: bytes | str, value: bytes | None
) -> KeyRecord | ErasureRecord | KeysTick | tuple[KeyScope, str]:
    """A record of the keys topic: a `KeyRecord`, an `ErasureRecord`, a `KeysTick`, or,
    for a tombstone, the ``(scope, key_id)`` it destroys. `DecodeError` names what is
    wrong."""
    text = kafka_key.decode("utf-8", "replace") if isinstance(kafka_key, bytes) else kafka_key
    if text.startswith(_TICK_PREFIX):
        return _tick(text, value)
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise DecodeError(f"not a chatlog.keys record key: {text[:100]!r}")
    scope = KeyScope(parts[0], parts[1])
    if len(parts) == 3 and value is None:
        return scope, parts[2]
    if value is None:
        raise DecodeError(f"a tombstone for erasure record {text!r}: erasures are kept")
    body = _load(value, text)
    if body.get("v") != _FORMAT:
        raise DecodeError(f"keys record {text!r} has format {body.get('v')!r}, not {_FORMAT}")
    try:
        if len(parts) == 3:
            wrapped = WrappedKey(str(body["kek"]), base64.b64decode(body["wrapped"], validate=True))
            created_at = from_epoch_millis(int(body["created_at"]))
            return KeyRecord(scope, parts[2], wrapped, created_at)
        keys = tuple(str(k) for k in body["keys"])
        return ErasureRecord(scope, from_epoch_millis(int(body["erased_at"])), keys)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise DecodeError(f"keys record {text!r} is malformed: {exc!r}") from exc


def _tick(key: str, value: bytes | None) -> KeysTick:
    if value is None:
        raise DecodeError(f"a tombstone for tick {key!r}: ticks are never deleted")
    body = _load(value, key)
    if body.get("v") != _FORMAT or body.get("kind") != "tick":
        raise DecodeError(
            f"keys record {key!r} is not a tick of format {_FORMAT}: "
            f"format {body.get('v')!r}, kind {body.get('kind')!r}"
        )
    try:
        partition = int(key.removeprefix(_TICK_PREFIX))
        return KeysTick(partition, from_epoch_millis(int(body["at"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"keys record {key!r} is malformed: {exc!r}") from exc


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _load(value: bytes, key: str) -> dict[str, Any]:
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"keys record {key!r} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise DecodeError(f"keys record {key!r} is not a JSON object")
    return body
