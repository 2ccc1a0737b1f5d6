"""Master keys: how a data key is kept, wrapped, outside the process that uses it.

A user's data key (`chatlog.schemas.sealing.DataKey`) is never stored as it is: it is
*wrapped* (encrypted) by a master key, a key-encryption key (KEK), and only the wrapped
form goes to the `chatlog.keys` topic. A process that needs the data key asks the
`KeyProvider` to unwrap it. That is the shape of a KMS (AWS KMS `Encrypt`/`Decrypt`,
Vault Transit `encrypt`/`decrypt`, Google Cloud KMS): wrap and unwrap by key id, with an
encryption context that must match, and the master key never leaves the provider.

`LocalKeyProvider` is the embedded default: the master keys are given to the process
(`CHATLOG_MASTER_KEY`, or a key file), each named by an id, the first one current. New
data keys are wrapped under the current one; every listed one unwraps, so a rotation
lists the new key first and the old one after it until `chatlog keys rotate` has
re-wrapped every data key, after which the old one can be destroyed.

The provider also computes keyed MACs (HMAC-SHA256, as a KMS's `GenerateMac` does) under a
key derived from each master key for one purpose: the audit trail names a user by such a
MAC instead of their id. `Mac` says which master key made it, so a lookup (`macs`)
matches it after a rotation too, for as long as the old master key is configured.

The spec of a master key list is ``<id>:<base64 of 32 bytes>[,<id>:<base64>...]``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatlog.schemas.errors import ConfigError, Undecryptable
from chatlog.schemas.sealing import KEY_BYTES, DataKey, KeyScope, Mac, mac_key

__all__ = [
    "KeyProvider",
    "LocalKeyProvider",
    "Mac",
    "WrappedKey",
    "new_master_key",
    "unwrap_data_key",
    "user_pseudonym",
    "user_pseudonyms",
    "wrap_data_key",
]

_KEK_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_WRAP_LABEL = b"chatlog.data-key.v1"
_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted under master key `kek_id`; safe to store anywhere."""

    kek_id: str
    blob: bytes


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with a master key it keeps (a KMS, or local keys)."""

    @property
    def current(self) -> str:
        """The id of the master key new data keys are wrapped under."""
        ...

    def wrap(self, secret: bytes, *, context: bytes) -> WrappedKey:
        """`secret` encrypted under the current master key, bound to `context`."""
        ...

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        """The secret in `wrapped`; `Undecryptable` for an unknown master key, a wrong
        context or altered bytes."""
        ...

    def mac(self, purpose: str, data: bytes) -> Mac:
        """The HMAC-SHA256 of `data` under the current master key's MAC key for `purpose`."""
        ...

    def macs(self, purpose: str, data: bytes) -> tuple[Mac, ...]:
        """`data`'s MAC under every master key this provider has (to look one up)."""
        ...


class LocalKeyProvider:
    """Master keys held by this process, from `CHATLOG_MASTER_KEY` or a key file."""

    def __init__(self, keys: Mapping[str, bytes], *, current: str) -> None:
        if current not in keys:
            raise ConfigError(f"the current master key {current!r} is not among the keys")
        for kek_id, secret in keys.items():
            if _KEK_ID.fullmatch(kek_id) is None or len(secret) != KEY_BYTES:
                raise ConfigError(
                    f"master key {kek_id!r} is not an id of 1-64 letters, digits, '_', '-', '.' "
                    f"with {KEY_BYTES} bytes of key"
                )
        self._current = current
        self._aeads = {kek_id: AESGCM(secret) for kek_id, secret in keys.items()}
        self._secrets = dict(keys)
        self._mac_keys: dict[tuple[str, str], bytes] = {}

    @classmethod
    def from_spec(cls, spec: str, *, setting: str = "CHATLOG_MASTER_KEY") -> LocalKeyProvider:
        """Parse ``<id>:<base64>[,<id>:<base64>...]``; the first key is the current one.

        The error names `setting` and never quotes the key material.
        """
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for entry in spec.replace("\n", ",").split(",") if entry.strip()]
        for n, entry in enumerate(entries, start=1):
            kek_id, colon, encoded = entry.partition(":")
            try:
                secret = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                secret = b""
            if not colon or _KEK_ID.fullmatch(kek_id) is None or len(secret) != KEY_BYTES:
                raise ConfigError(
                    f"{setting}: entry {n} is not '<id>:<base64 of {KEY_BYTES} bytes>'; make "
                    f"a master key with `chatlog keys new-master-key`",
                    setting=setting,
                )
            if kek_id in keys:
                raise ConfigError(f"{setting}: master key id {kek_id!r} is listed twice")
            keys[kek_id] = secret
        if not keys:
            raise ConfigError(
                f"{setting} is empty; make a master key with `chatlog keys new-master-key`",
                setting=setting,
            )
        return cls(keys, current=entries[0].partition(":")[0])

    @property
    def current(self) -> str:
        """The id of the master key new data keys are wrapped under."""
        return self._current

    @property
    def known(self) -> tuple[str, ...]:
        """The ids of every master key this provider can unwrap with."""
        return tuple(self._aeads)

    def wrap(self, secret: bytes, *, context: bytes) -> WrappedKey:
        """`secret` encrypted under the current master key, bound to `context`."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aeads[self._current].encrypt(nonce, secret, context)
        return WrappedKey(self._current, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, *, context: bytes) -> bytes:
        """The secret in `wrapped`; `Undecryptable` if it cannot be opened here."""
        aead = self._aeads.get(wrapped.kek_id)
        if aead is None:
            raise Undecryptable(
                f"the data key is wrapped under master key {wrapped.kek_id!r}, which this "
                f"process does not have (it has {', '.join(self._aeads)}); add it to "
                f"CHATLOG_MASTER_KEY, after the current one",
                kek_id=wrapped.kek_id,
            )
        nonce, sealed = wrapped.blob[:_NONCE_BYTES], wrapped.blob[_NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, sealed, context)
        except InvalidTag:
            raise Undecryptable(
                f"a data key wrapped under master key {wrapped.kek_id!r} does not open: the "
                f"master key of that id is another one, or the record was altered",
                kek_id=wrapped.kek_id,
            ) from None

    def mac(self, purpose: str, data: bytes) -> Mac:
        """The HMAC-SHA256 of `data` under the current master key's MAC key for `purpose`."""
        return self._mac(self._current, purpose, data)

    def macs(self, purpose: str, data: bytes) -> tuple[Mac, ...]:
        """`data`'s MAC under every master key this provider has, the current one first."""
        return tuple(self._mac(kek_id, purpose, data) for kek_id in self._aeads)

    def _mac(self, kek_id: str, purpose: str, data: bytes) -> Mac:
        key = self._mac_keys.get((kek_id, purpose))
        if key is None:
            key = self._mac_keys[(kek_id, purpose)] = mac_key(self._secrets[kek_id], purpose)
        return Mac(kek_id, hmac.digest(key, data, "sha256"))

    def __repr__(self) -> str:  # never the keys
        return f"LocalKeyProvider(current={self._current!r}, known={list(self._aeads)!r})"


def new_master_key(kek_id: str) -> str:
    """A fresh random master key, as one entry of the spec: ``<id>:<base64>``."""
    if _KEK_ID.fullmatch(kek_id) is None:
        raise ConfigError(f"master key id {kek_id!r}: use 1-64 letters, digits, '_', '-', '.'")
    return f"{kek_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def _wrap_context(key_id: str, scope: KeyScope) -> bytes:
    # Bound to whose key it is: a wrapped key copied to another user's record fails.
    parts = [p.encode() for p in (key_id, scope.tenant, scope.user_id)]
    return _WRAP_LABEL + b"".join(struct.pack(">H", len(p)) + p for p in parts)


def wrap_data_key(provider: KeyProvider, key: DataKey) -> WrappedKey:
    """`key` wrapped by `provider`'s current master key, bound to its id and owner."""
    return provider.wrap(key.secret, context=_wrap_context(key.key_id, key.scope))


def unwrap_data_key(
    provider: KeyProvider, wrapped: WrappedKey, *, key_id: str, scope: KeyScope
) -> DataKey:
    """The data key `key_id` of `scope` from its wrapped form."""
    secret = provider.unwrap(wrapped, context=_wrap_context(key_id, scope))
    return DataKey(key_id, scope, secret)


_USER_PURPOSE = "user"


def _user_data(tenant: str, user_id: str) -> bytes:
    parts = [p.encode() for p in (tenant, user_id)]
    return b"".join(struct.pack(">H", len(p)) + p for p in parts)


def user_pseudonym(provider: KeyProvider, *, tenant: str, user_id: str) -> Mac:
    """How records that outlive an erasure (the audit trail) name a user: a MAC of the
    tenant and id, which nobody without the master key can link to the person."""
    return provider.mac(_USER_PURPOSE, _user_data(tenant, user_id))


def user_pseudonyms(provider: KeyProvider, *, tenant: str, user_id: str) -> tuple[Mac, ...]:
    """The user's pseudonym under every master key `provider` has (to find their records)."""
    return provider.macs(_USER_PURPOSE, _user_data(tenant, user_id))
