"""Sealing: what a person wrote, encrypted under that person's own data key.

What is sealed? Every field that carries what a person wrote, or what is derived from
it: a message's content, name, tool call names and arguments and metadata values; a
session's title and metadata values; a summary; the reason of a redaction, a close or an
erasure; a LangGraph checkpoint, its metadata and each pending write's value; a task's
input, progress note, result, error and cancel reason. Ids, event
types, roles, timestamps and metadata *keys* stay clear: Kafka partitions by them, the
projection routes by them, and none is a person's words.

How? AES-256-GCM (`cryptography`'s AEAD, no hand-made cryptography) under a `DataKey`
that belongs to one (tenant, user). Each field is sealed on its own, with a fresh 96-bit
random nonce, and its associated data names the event and the field (event id, session,
user, tenant, field path): a ciphertext moved into another event, another session or
another field fails to open. A sealed field travels as ``version byte + nonce +
ciphertext + tag`` in the event's `sealed.fields` map, keyed by its path
(``content``, ``tool_calls.0.arguments``, ``metadata.order``), and the clear field keeps
an empty placeholder.

Why per user? Erasing a user destroys their data keys (crypto-shredding): every copy
sealed under them, in the log, the dead-letter topic, Redis and backups, is unreadable
from then on, without rewriting an immutable log.
"""

from __future__ import annotations

import functools
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chatlog.schemas.errors import InvalidInput, Undecryptable
from chatlog.schemas.events import (
    CheckpointSaved,
    CheckpointWritesSaved,
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Payload,
    Sealed,
    SessionClosed,
    SessionStarted,
    SummaryUpdated,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    TaskStarted,
    ToolCall,
    UserErased,
)
from chatlog.schemas.ids import new_id

__all__ = [
    "KEY_BYTES",
    "METADATA",
    "TOKENS",
    "TOOL_CALLS",
    "WRITES",
    "DataKey",
    "KeyScope",
    "Mac",
    "field_context",
    "mac_key",
    "map_fields",
    "open_event",
    "open_fields",
    "seal_event",
    "verify_event",
]

KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # GCM's standard nonce; random, so at most 2**32 seals per key (NIST)
_FORMAT = b"\x01"  # the layout above; a new one gets a new byte, and old ones still open
_CONTEXT_LABEL = b"chatlog.sealed-field.v1"
# The path of a tool call's part is ``tool_calls.<index>.<name|arguments>``, of a metadata
# value ``metadata.<key>``; the other paths are the field's own name.
TOOL_CALLS = "tool_calls."
_MAX_PART = 0xFFFF  # each part of the associated data carries a 2-byte length
METADATA = "metadata."
# The original of a reversible placeholder (`ConversationEvent.tokens`, redaction's
# tokenize mode) is sealed at ``tokens.<name>``: always sealed, never stored clear.
TOKENS = "tokens."
# A LangGraph write's value: ``writes.<index>.value``.
WRITES = "writes."


_MAC_LABEL = b"chatlog.mac.v1:"
_PURPOSE = re.compile(r"[a-z][a-z0-9.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Mac:
    """A keyed HMAC-SHA256 `digest`, made with a MAC key derived from key `key_id` (a
    master key's id, or a user's data key's)."""

    key_id: str
    digest: bytes

    def __str__(self) -> str:
        return f"{self.key_id}:{self.digest.hex()}"


def mac_key(secret: bytes, purpose: str) -> bytes:
    """The HMAC key for `purpose` derived from `secret` (HKDF-SHA256): a MAC made for one
    use never matches another's, and the key itself never keys an HMAC."""
    if _PURPOSE.fullmatch(purpose) is None:
        raise ValueError(f"MAC purpose {purpose!r}: use 1-64 of [a-z0-9.-]")
    hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=_MAC_LABEL + purpose.encode())
    return hkdf.derive(secret)


@dataclass(frozen=True, slots=True)
class KeyScope:
    """Whose data a key seals: one user of one tenant."""

    tenant: str
    user_id: str

    @classmethod
    def of(cls, event: ConversationEvent) -> KeyScope:
        """The scope of `event`'s owner."""
        return cls(event.tenant, event.user_id)


class DataKey:
    """One (tenant, user)'s AES-256-GCM data key, named by `key_id`.

    A user may have more than one (two writers that created one at the same instant
    both keep theirs); every event names the key that sealed it.
    """

    __slots__ = ("_aead", "_mac_keys", "_secret", "key_id", "scope")

    def __init__(self, key_id: str, scope: KeyScope, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(secret)}")
        self.key_id = key_id
        self.scope = scope
        self._secret = secret
        self._aead = AESGCM(secret)
        self._mac_keys: dict[str, bytes] = {}

    @classmethod
    def new(cls, scope: KeyScope) -> DataKey:
        """A fresh random key for `scope`."""
        return cls(new_id(), scope, AESGCM.generate_key(bit_length=KEY_BYTES * 8))

    @property
    def secret(self) -> bytes:
        """The key itself: only for wrapping it under the master key."""
        return self._secret

    def mac(self, purpose: str, data: bytes) -> Mac:
        """`data`'s HMAC-SHA256 under this key's MAC key for `purpose`: only this user's
        equal values match, and destroying the key leaves nothing to match them with."""
        key = self._mac_keys.get(purpose)
        if key is None:
            key = self._mac_keys[purpose] = mac_key(self._secret, purpose)
        return Mac(self.key_id, hmac.digest(key, data, "sha256"))

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """`plaintext` encrypted and authenticated, bound to `context`."""
        nonce = os.urandom(_NONCE_BYTES)
        return _FORMAT + nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """The plaintext of `sealed`; `Undecryptable` if it was tampered with, sealed
        under another key, or sealed for another context."""
        if sealed[:1] != _FORMAT or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise Undecryptable(
                f"not a sealed value of a known format ({len(sealed)} bytes, "
                f"starting {sealed[:1].hex() or 'empty'})",
                key_id=self.key_id,
            )
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, context)
        except InvalidTag:
            raise Undecryptable(
                "a sealed value failed authentication: it was altered, moved from another "
                "event or field, or sealed under another key",
                key_id=self.key_id,
            ) from None

    def __repr__(self) -> str:  # never the secret
        return f"DataKey({self.key_id!r}, {self.scope!r})"


def field_context(
    *, event_id: str, session_id: str, user_id: str, tenant: str, field: str
) -> bytes:
    """The associated data of one sealed field: which event and which field it is.

    Each part is length-prefixed, so no two different tuples encode the same bytes.
    """
    return _event_context(event_id, session_id, user_id, tenant) + _part(field)


def _part(text: str) -> bytes:
    data = text.encode()
    if len(data) > _MAX_PART:
        raise InvalidInput(
            f"a sealed field's path or id is {len(data):,} bytes long; the limit is "
            f"{_MAX_PART:,} (a metadata key that long?)"
        )
    return len(data).to_bytes(2, "big") + data


def _event_context(event_id: str, session_id: str, user_id: str, tenant: str) -> bytes:
    return _CONTEXT_LABEL + _part(event_id) + _session_part(session_id, user_id, tenant)


# A read opens the same few paths (`content`, ...) in every message.
_path_part = functools.lru_cache(maxsize=1024)(_part)


@functools.lru_cache(maxsize=4096)
def _session_part(session_id: str, user_id: str, tenant: str) -> bytes:
    # The same for every event of a session: a read opens 20 of them, a batch hundreds.
    return _part(session_id) + _part(user_id) + _part(tenant)


def _context_of(event: ConversationEvent) -> Callable[[str], bytes]:
    # The event's part once, each field's appended: sealing is on every event's path.
    prefix = _event_context(event.event_id, event.session_id, event.user_id, event.tenant)

    def context(field: str) -> bytes:
        return prefix + _part(field)

    return context


def seal_event(event: ConversationEvent, key: DataKey) -> ConversationEvent:
    """`event` with every personal field sealed under `key` (its owner's key)."""
    if event.sealed is not None:
        return event
    if key.scope != KeyScope.of(event):
        raise ValueError(f"{key!r} is not the key of {KeyScope.of(event)!r}")
    context = _context_of(event)
    fields: dict[str, bytes] = {}

    def seal(path: str, value: str) -> str:
        fields[path] = key.seal(value.encode(), context(path))
        return ""

    payload = map_fields(event.payload, seal)
    tokens = _map_tokens(event.tokens, seal)
    if not fields:
        return event
    return event.model_copy(
        update={
            "payload": payload,
            "tokens": tokens,
            # Built without validation: made right here, a key id and a dict of bytes.
            "sealed": Sealed.model_construct(key_id=key.key_id, fields=fields),
        }
    )


def open_event(event: ConversationEvent, key: DataKey) -> ConversationEvent:
    """`event` with its sealed fields opened with `key`; `Undecryptable` if one fails.

    The caller finds `key` by `event.sealed.key_id` (an erased user has none left).
    """
    sealed = event.sealed
    if sealed is None:
        return event
    values = _open_sealed(event, key)
    payload = map_fields(event.payload, values.pop)
    tokens = _map_tokens(event.tokens, values.pop)
    if values:
        # A field this payload does not have: added to the map after sealing.
        raise Undecryptable(
            f"event {event.event_id} carries sealed fields its payload has no place for: "
            f"{', '.join(sorted(values))}",
            event_id=event.event_id,
            session_id=event.session_id,
        )
    return event.model_copy(update={"payload": payload, "tokens": tokens, "sealed": None})


def verify_event(event: ConversationEvent, key: DataKey) -> None:
    """Check that every sealed field of `event` opens with `key` (`Undecryptable` if
    one does not), without building the opened event: for a projector that stores the
    sealed fields as they are."""
    sealed = event.sealed
    if sealed is None:
        return
    _open_sealed(event, key, decode=False)
    # Every sealed path must have a place in the payload (as `open_event` requires): a
    # stray one that reached Redis would fail every read of the session.
    places: set[str] = set()

    def place(path: str, value: str) -> str:
        places.add(path)
        return value

    map_fields(event.payload, place, rebuild=False)
    _map_tokens(event.tokens, place)
    stray = set(sealed.fields) - places
    if stray:
        raise Undecryptable(
            f"event {event.event_id} carries sealed fields its payload has no place for: "
            f"{', '.join(sorted(stray))}",
            event_id=event.event_id,
            session_id=event.session_id,
        )


def open_fields(
    key: DataKey,
    fields: Mapping[str, bytes],
    *,
    event_id: str,
    session_id: str,
    user_id: str,
    tenant: str,
    decode: bool = True,
) -> dict[str, str]:
    """Each of `fields` (path -> ciphertext) of one event, opened with `key` (checked
    only, and answered empty, unless `decode`)."""
    prefix = _event_context(event_id, session_id, user_id, tenant)
    opened = {}
    for path, blob in fields.items():
        try:
            plain = key.open(blob, prefix + _path_part(path))
        except Undecryptable as exc:
            raise Undecryptable(
                f"field {path} of event {event_id}: {exc.message}",
                event_id=event_id,
                session_id=session_id,
                field=path,
                key_id=key.key_id,
            ) from None
        if decode:
            opened[path] = plain.decode()
    return opened


def _open_sealed(event: ConversationEvent, key: DataKey, *, decode: bool = True) -> dict[str, str]:
    sealed = event.sealed
    assert sealed is not None
    if key.key_id != sealed.key_id:
        raise ValueError(f"{key!r} is not key {sealed.key_id!r}, which sealed the event")
    return open_fields(
        key,
        sealed.fields,
        event_id=event.event_id,
        session_id=event.session_id,
        user_id=event.user_id,
        tenant=event.tenant,
        decode=decode,
    )


# The one list of what is personal, per payload type: each sealable field, by path, and
# how to put it back. `convert(path, value)` returns the value to keep in its place.
def map_fields(
    payload: Payload, convert: Callable[[str, str], str], *, rebuild: bool = True
) -> Payload:
    """`payload` with each sealable field replaced by `convert(path, value)`; without
    `rebuild`, `convert` only sees each field and `payload` comes back as it is."""
    update: dict[str, Any] = {}
    if isinstance(payload, SessionStarted):
        if payload.title is not None:
            update["title"] = convert("title", payload.title)
        update["metadata"] = _map_metadata(payload.metadata, convert)
    elif isinstance(payload, MessageAppended):
        update["content"] = convert("content", payload.content)
        if payload.name is not None:
            update["name"] = convert("name", payload.name)
        update["tool_calls"] = tuple(
            ToolCall(
                id=call.id,
                name=convert(f"{TOOL_CALLS}{i}.name", call.name),
                arguments=convert(f"{TOOL_CALLS}{i}.arguments", call.arguments),
            )
            for i, call in enumerate(payload.tool_calls)
        )
        update["metadata"] = _map_metadata(payload.metadata, convert)
    elif isinstance(payload, SummaryUpdated):
        update["summary"] = convert("summary", payload.summary)
    elif isinstance(payload, CheckpointSaved):
        # A graph's state holds the conversation (and whatever its tools fetched).
        update["checkpoint"] = convert("checkpoint", payload.checkpoint)
        update["metadata"] = convert("metadata", payload.metadata)
    elif isinstance(payload, CheckpointWritesSaved):
        update["writes"] = tuple(
            write.model_copy(update={"value": convert(f"{WRITES}{i}.value", write.value)})
            for i, write in enumerate(payload.writes)
        )
    elif isinstance(payload, TaskStarted):
        # What a task works on and what it makes are the user's (a report on their data).
        update["input"] = convert("input", payload.input)
    elif isinstance(payload, TaskProgressed):
        if payload.note is not None:
            update["note"] = convert("note", payload.note)
    elif isinstance(payload, TaskFinished):
        update["result"] = convert("result", payload.result)
    elif isinstance(payload, TaskFailed):
        update["error"] = convert("error", payload.error)
    elif (
        isinstance(payload, MessageRedacted | SessionClosed | UserErased | TaskCancelled)
        and payload.reason is not None
    ):
        update["reason"] = convert("reason", payload.reason)
    return payload.model_copy(update=update) if rebuild else payload


def _map_tokens(tokens: Mapping[str, str], convert: Callable[[str, str], str]) -> dict[str, str]:
    return {name: convert(f"{TOKENS}{name}", value) for name, value in tokens.items()}


def _map_metadata(
    metadata: Mapping[str, str], convert: Callable[[str, str], str]
) -> dict[str, str]:
    return {name: convert(f"{METADATA}{name}", value) for name, value in metadata.items()}
