"""Service API keys for back ends: made once, stored hashed, checked in constant time.

What is a service key? A back end (a bot, a support tool) that calls the gateway for
many users of one tenant cannot hold each user's JWT. It holds one key,
``clk_`` + 43 URL-safe characters (256 random bits), and names the user it acts for in
the ``Chatlog-User`` header (`chatlog.gateway.principals`). An *operator* key reads no
user's data at all.

Only the key's SHA-256 is kept. A password needs a slow hash (bcrypt, scrypt) because
people choose guessable ones; a key of 256 random bits cannot be guessed, so the one
thing a hash must do is not let the file give the key back, and a fast hash does that
while checking a request in microseconds. Every stored hash is compared with
`hmac.compare_digest` and none is skipped, so the time a check takes tells nothing of
which key, or how much of one, matched.

The keys live in a JSON file (``CHATLOG_API_KEYS_FILE``, default
``<CHATLOG_STATE_DIR>/api-keys.json``), mode 0600, replaced atomically by ``chatlog
apikey create`` and ``revoke`` under a lock. Not in Redis: the read-model's Redis may be
non-persistent and is rebuilt from Kafka, which holds no keys. The gateway reads the file
again whenever it changes, so a revocation holds from the next request on.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from chatlog.schemas.errors import ConfigError, InvalidInput, Unauthenticated
from chatlog.schemas.ids import validate_id
from chatlog.settings import Settings

__all__ = ["API_KEY_PREFIX", "ApiKey", "ApiKeys", "Scope", "is_api_key"]

API_KEY_PREFIX = "clk_"
"""How every chatlog API key starts: a scanner for leaked secrets can find them."""

_KEY_BYTES = 32  # 256 random bits
_FORMAT = 1

Scope = Literal["service", "operator"]


def is_api_key(credential: str) -> bool:
    """Whether `credential` is shaped like a chatlog API key (rather than a JWT)."""
    return credential.startswith(API_KEY_PREFIX)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as stored: its name, tenant and scope, and its hash (never the key)."""

    name: str
    tenant: str
    scope: Scope
    sha256: str
    created_at_ms: int

    def shown(self) -> dict[str, Any]:
        """What `chatlog apikey list` shows: everything but the hash."""
        return {
            "name": self.name,
            "tenant": self.tenant,
            "scope": self.scope,
            "created_at_ms": self.created_at_ms,
        }


class ApiKeys:
    """The API keys file: `create`, `revoke` and `stored` for the CLI, `check` for the gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime) last read
        self._keys: tuple[ApiKey, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        return cls(settings.api_keys_path)

    def stored(self) -> list[ApiKey]:
        """The keys (no secrets in them), oldest first."""
        return list(self._current())

    def check(self, key: str) -> ApiKey:
        """The stored key that `key` is; `Unauthenticated` for any other (never quoting it)."""
        digest = _digest(key)
        found: ApiKey | None = None
        for stored in self._current():
            # All compared, none skipped: the time taken does not tell which one matched.
            if hmac.compare_digest(stored.sha256, digest):
                found = stored
        if found is None:
            raise Unauthenticated("the API key is not valid (unknown or revoked)")
        return found

    def create(self, name: str, *, tenant: str, scope: Scope = "service") -> tuple[str, ApiKey]:
        """A new key named `name` of `tenant`: the key itself (shown once, kept nowhere)
        and what is stored of it. `InvalidInput` if a key of that name exists."""
        validate_id(name, field="--name")
        validate_id(tenant, field="--tenant")
        key = API_KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
        record = ApiKey(
            name=name,
            tenant=tenant,
            scope=scope,
            sha256=_digest(key),
            created_at_ms=int(time.time() * 1000),
        )
        with self._locked():
            keys = self._read()
            if any(k.name == name for k in keys):
                raise InvalidInput(
                    f"an API key named {name} exists: revoke it first "
                    f"(chatlog apikey revoke {name}) or choose another name",
                    field="--name",
                )
            self._write([*keys, record])
        return key, record

    def revoke(self, name: str) -> ApiKey:
        """Remove the key named `name`; `InvalidInput` if there is none."""
        with self._locked():
            keys = self._read()
            gone = [k for k in keys if k.name == name]
            if not gone:
                known = ", ".join(k.name for k in keys) or "none"
                raise InvalidInput(
                    f"no API key named {name} (keys: {known}); chatlog apikey list shows them",
                    field="name",
                )
            self._write([k for k in keys if k.name != name])
        return gone[0]

    def _current(self) -> tuple[ApiKey, ...]:
        """The keys as the file holds them now: read again only when it changed."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return ()
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            if seen != self._seen:
                self._keys = tuple(self._read())
                self._seen = seen
            return self._keys

    def _read(self) -> list[ApiKey]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return []
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            # Whoever can write the file can add a key of their own.
            raise ConfigError(
                f"{self.path} (CHATLOG_API_KEYS_FILE) is writable by others, who could add "
                f"a key of their own: chmod 600 {self.path}",
                setting="CHATLOG_API_KEYS_FILE",
            )
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}, not {_FORMAT}")
            return [ApiKey(**entry) for entry in data["keys"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(
                f"{self.path} (CHATLOG_API_KEYS_FILE) is not an API keys file ({exc}); "
                f"chatlog apikey create writes one",
                setting="CHATLOG_API_KEYS_FILE",
            ) from None

    def _write(self, keys: list[ApiKey]) -> None:
        text = json.dumps({"format": _FORMAT, "keys": [asdict(k) for k in keys]}, indent=2)
        # A new file, 0600 from its creation, then renamed over the old one: a reader
        # (the gateway) sees the old keys or the new ones, never half a file.
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".api-keys.")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(text + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Held by one `create` or `revoke` at a time, across processes."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(self.path.name + ".lock")
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)
