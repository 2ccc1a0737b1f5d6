"""The key directory in Redis: each user's wrapped data keys, and whether they were erased.

One hash per user, outside every generation (``chatlog:keys:{k:<tenant>:<user>}``):
field ``<key id>`` holds ``<master key id>:<base64 of the wrapped key>``, and field
``!erased`` (`ERASED_FIELD`) the time of the user's erasure in epoch milliseconds.
It is a copy of the `chatlog.keys` topic,
written through by the writer that makes a key and projected from the topic by the
projector, so losing it loses nothing: it is projected again.

Why in Redis? A reader fetches a user's entries with the session it reads, so a key
that was destroyed is never used again, whatever a process has cached. Only wrapped keys
are here: a Redis dump without the master key opens nothing.

Atomic rules, in Lua: a key is added only if the user is not erased; erasing removes
every key and sets the mark in one step. An erased user stays erased.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from chatlog.projections.keys import ERASED_FIELD, KeySpace
from chatlog.projections.redis_store import redis_errors, text, text_map
from chatlog.schemas.errors import DecodeError
from chatlog.schemas.events import epoch_millis, from_epoch_millis
from chatlog.schemas.key_records import ErasureRecord, KeyRecord
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.master_keys import WrappedKey
from chatlog.schemas.sealing import KeyScope

__all__ = ["ERASED_FIELD", "RedisKeyDirectory", "entries_of"]

# KEYS: the user's hash. ARGV: the key id, its wrapped form. 1 if added, 0 if erased.
_PUT = f"""
if redis.call('HEXISTS', KEYS[1], '{ERASED_FIELD}') == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: the user's hash. ARGV: the erasure time (ms). Keeps the earliest erasure time;
# returns the key ids it removed.
_ERASE = f"""
local at = redis.call('HGET', KEYS[1], '{ERASED_FIELD}') or ARGV[1]
local removed = {{}}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if field ~= '{ERASED_FIELD}' then table.insert(removed, field) end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '{ERASED_FIELD}', at)
return removed
"""


class RedisKeyDirectory:
    """Each user's wrapped data keys, in one Redis hash per user."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self.client = client
        self.keys = KeySpace(prefix)
        self._put = client.register_script(_PUT)
        self._erase = client.register_script(_ERASE)

    def key_of(self, scope: KeyScope) -> str:
        """The Redis key of `scope`'s hash (for a caller that reads it in its own pipeline)."""
        return self.keys.user_keys(scope.tenant, scope.user_id)

    def entries(self, scope: KeyScope) -> KeyEntries:
        """What the directory holds for `scope`."""
        with redis_errors():
            raw = self.client.hgetall(self.key_of(scope))
        return entries_of(scope, raw)

    def entries_many(self, scopes: Iterable[KeyScope]) -> dict[KeyScope, KeyEntries]:
        """What the directory holds for each of `scopes`, in one round trip."""
        wanted = list(dict.fromkeys(scopes))
        if not wanted:
            return {}
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for scope in wanted:
                pipe.hgetall(self.key_of(scope))
            replies = pipe.execute()
        return {scope: entries_of(scope, raw) for scope, raw in zip(wanted, replies, strict=True)}

    def put(self, record: KeyRecord) -> bool:
        """Add `record`; False (nothing added) if its user was erased."""
        with redis_errors():
            added = self._put(keys=[self.key_of(record.scope)], args=[record.key_id, _dump(record)])
        return bool(added)

    def remove(self, scope: KeyScope, key_id: str) -> None:
        """Drop one key (its tombstone was seen)."""
        with redis_errors():
            self.client.hdel(self.key_of(scope), key_id)

    def erase(self, record: ErasureRecord) -> tuple[str, ...]:
        """Remove every key of the user and mark them erased; idempotent. Returns the ids
        of the keys it removed (one made while the erasure ran may be among them)."""
        with redis_errors():
            removed = self._erase(
                keys=[self.key_of(record.scope)], args=[epoch_millis(record.erased_at)]
            )
        return tuple(sorted(text(key_id) for key_id in removed))


def entries_of(scope: KeyScope, raw: Mapping[Any, Any]) -> KeyEntries:
    """A user's hash, as `HGETALL` returned it, as `KeyEntries`."""
    fields = text_map(dict(raw))
    erased = fields.pop(ERASED_FIELD, None)
    keys = {key_id: _load(scope, key_id, value) for key_id, value in fields.items()}
    return KeyEntries(keys, None if erased is None else from_epoch_millis(int(erased)))


def _dump(record: KeyRecord) -> str:
    return f"{record.wrapped.kek_id}:{base64.b64encode(record.wrapped.blob).decode()}"


def _load(scope: KeyScope, key_id: str, value: str) -> WrappedKey:
    kek_id, _, encoded = value.partition(":")
    try:
        return WrappedKey(kek_id, base64.b64decode(encoded, validate=True))
    except binascii.Error as exc:
        raise DecodeError(
            f"the key directory entry {key_id} of {scope.tenant}/{scope.user_id} is damaged; "
            f"it is projected again from the chatlog.keys topic",
            key_id=key_id,
        ) from exc
