"""The keyring: which data key seals a user's next event, and which opens a sealed one.

Where do keys live? Three places, each for a reason:

* the `chatlog.keys` topic (`KeyLog`): the durable copy, wrapped, compacted. Redis stays
  disposable because of it: a lost key directory is projected again from it;
* a key directory (`KeyDirectory`, in Redis): the same wrapped keys, one hash per user,
  for lookups in a millisecond. Readers fetch a user's entries with the session they
  read, so a destroyed key is never used again, whatever a process has cached;
* this process (`Keyring`): unwrapped keys, in a bounded LRU, because unwrapping may be
  a KMS call.

The rules, written once here:

* The first writer of a user makes their key: it publishes the wrapped key to the log
  and waits for the broker's acknowledgement *before* it seals anything with it, so no
  event can name a key the log lacks. Two writers that do so at the same instant both
  keep theirs: events name their key, and both keys stay usable.
* An erased user is retired: the directory refuses new keys for them, and a writer is
  told `Erased`. A writer that holds the user's key already asks the directory again
  once its answer is `recheck_s` old (1 s), so it is told too; until then what it seals
  is sealed under a destroyed key, which nobody can open. Nothing written for them
  afterwards can be read, so nothing of theirs reappears (late events, summaries in
  flight, retries).
* Appends do not wait for Redis: a writer that cannot reach the directory makes a key
  without looking (one more key for the user) and logs it. Readers that meet it project
  it into the directory from the log; if the user was erased meanwhile, the directory
  refuses it there, and what it sealed reads as erased.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from chatlog.schemas.errors import Erased, Unavailable
from chatlog.schemas.events import epoch_millis, from_epoch_millis
from chatlog.schemas.key_records import ErasureRecord, KeyRecord
from chatlog.schemas.master_keys import KeyProvider, WrappedKey, unwrap_data_key, wrap_data_key
from chatlog.schemas.sealing import DataKey, KeyScope

__all__ = ["KeyDirectory", "KeyEntries", "KeyLog", "Keyring"]

_K = TypeVar("_K")
_V = TypeVar("_V")

log = logging.getLogger("chatlog.keys")


@dataclass(frozen=True, slots=True)
class KeyEntries:
    """A user's keys as the directory holds them: wrapped, by key id."""

    keys: Mapping[str, WrappedKey] = field(default_factory=dict)
    # When the user was erased; None if they never were.
    erased_at: datetime | None = None


class KeyLog(Protocol):
    """The durable, compacted record of every data key (`chatlog.keys`)."""

    def publish_key(self, record: KeyRecord) -> None:
        """Append `record`; return once the broker has acknowledged it."""
        ...

    def publish_erasure(self, record: ErasureRecord) -> None:
        """Append a tombstone for each of `record.key_ids`, then `record`; return once
        the broker has acknowledged them all."""
        ...

    def publish_tombstone(self, scope: KeyScope, key_id: str) -> None:
        """Append the tombstone of one key; return once the broker has acknowledged it."""
        ...


class KeyDirectory(Protocol):
    """A fast copy of the key log: each user's wrapped keys, and whether they were erased."""

    def entries(self, scope: KeyScope) -> KeyEntries:
        """What the directory holds for `scope`."""
        ...

    def entries_many(self, scopes: Iterable[KeyScope]) -> dict[KeyScope, KeyEntries]:
        """What the directory holds for each of `scopes`, in one round trip."""
        ...

    def put(self, record: KeyRecord) -> bool:
        """Add `record`; False (and nothing added) if its user was erased."""
        ...


class Keyring:
    """Data keys for sealing and opening, from a key log, a directory and a master key."""

    def __init__(
        self,
        provider: KeyProvider,
        *,
        log: KeyLog | None = None,
        directory: KeyDirectory | None = None,
        cache_size: int = 10_000,
        recheck_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self._log = log
        self._directory = directory
        self._cache_size = cache_size
        self._recheck_s = recheck_s
        self._clock = clock
        # Each scope's key for writing, and when the directory last said it may be used.
        self._writing: OrderedDict[KeyScope, tuple[DataKey, float]] = OrderedDict()
        # Unwrapped keys by (key id, master key id, wrapped bytes): an entry is only ever
        # found with the exact record it came from, so a re-wrapped key is unwrapped again.
        self._opened: OrderedDict[tuple[str, str, bytes], DataKey] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[KeyScope, threading.Lock] = {}

    def for_writing(self, scope: KeyScope) -> DataKey:
        """The key to seal `scope`'s next event with; made (and logged) if there is none.

        `Erased` if the directory says the user was erased.
        """
        now = self._clock()
        with self._lock:
            cached = self._writing.get(scope)
            if cached is not None:
                self._writing.move_to_end(scope)
        if cached is not None:
            key, checked_at = cached
            if now - checked_at < self._recheck_s:
                return key
            self._recheck(scope)
        else:
            key = self._first_key(scope, now)
        with self._lock:
            self._writing[scope] = (key, now)
            _trim(self._writing, self._cache_size)
        return key

    def _first_key(self, scope: KeyScope, now: float) -> DataKey:
        # One look-up (and at most one new key) per scope at a time in this process:
        # threads writing a new user's first messages together share the key one made.
        with self._lock:
            making = self._making.setdefault(scope, threading.Lock())
        try:
            with making:
                with self._lock:
                    cached = self._writing.get(scope)
                if cached is not None:
                    return cached[0]
                key = self._existing(scope) or self._create(scope)
                with self._lock:
                    self._writing[scope] = (key, now)
                return key
        finally:
            with self._lock:
                self._making.pop(scope, None)

    def for_reading(self, scope: KeyScope, key_id: str, wrapped: WrappedKey) -> DataKey:
        """Data key `key_id` of `scope`, unwrapped from `wrapped` (found by the caller in
        the directory, which is what says the key still exists)."""
        slot = (key_id, wrapped.kek_id, wrapped.blob)
        with self._lock:
            key = self._opened.get(slot)
            if key is not None:
                self._opened.move_to_end(slot)
                return key
        key = unwrap_data_key(self.provider, wrapped, key_id=key_id, scope=scope)
        with self._lock:
            self._opened[slot] = key
            _trim(self._opened, self._cache_size)
        return key

    def forget(self, scope: KeyScope) -> None:
        """Drop every cached key of `scope` (it was erased)."""
        with self._lock:
            self._writing.pop(scope, None)
            for slot in [s for s, key in self._opened.items() if key.scope == scope]:
                del self._opened[slot]

    def erase(self, scope: KeyScope, *, key_ids: tuple[str, ...]) -> ErasureRecord:
        """Destroy `key_ids` of `scope` in the log (tombstones) and record the erasure."""
        if self._log is None:
            raise ValueError("this keyring reads only: it has no key log to erase in")
        # In milliseconds, as the log and the directory keep it: a second erasure answers
        # with exactly the time the first one did.
        record = ErasureRecord(scope, from_epoch_millis(epoch_millis(datetime.now(UTC))), key_ids)
        self._log.publish_erasure(record)
        self.forget(scope)
        return record

    def _recheck(self, scope: KeyScope) -> None:
        """Ask the directory again whether `scope` was erased: `Erased` (and the key
        dropped) if so. Unanswered, the key held stays in use, as a writer that cannot
        reach the directory makes a key without looking."""
        if self._directory is None:
            return
        try:
            entries = self._directory.entries(scope)
        except Unavailable as exc:
            log.warning("key directory unavailable (%s); still sealing %s's events", exc, scope)
            return
        if entries.erased_at is not None:
            self.forget(scope)
            _refuse_erased(scope, entries)

    def destroy(self, scope: KeyScope, key_ids: tuple[str, ...]) -> None:
        """Tombstone `key_ids` of `scope` in the log (keys an erasure found only later)."""
        if self._log is None:
            raise ValueError("this keyring reads only: it has no key log to destroy keys in")
        for key_id in key_ids:
            self._log.publish_tombstone(scope, key_id)
        self.forget(scope)

    def _existing(self, scope: KeyScope) -> DataKey | None:
        if self._directory is None:
            return None
        try:
            entries = self._directory.entries(scope)
        except Unavailable as exc:
            log.warning("key directory unavailable (%s); making a new key for %s", exc, scope)
            return None
        _refuse_erased(scope, entries)
        if not entries.keys:
            return None
        # Any of them will do; the same one each time keeps a user's events on one key.
        key_id = min(entries.keys)
        return self.for_reading(scope, key_id, entries.keys[key_id])

    def _create(self, scope: KeyScope) -> DataKey:
        if self._log is None:
            raise ValueError("this keyring reads only: it has no key log to make keys in")
        key = DataKey.new(scope)
        record = KeyRecord(scope, key.key_id, wrap_data_key(self.provider, key), datetime.now(UTC))
        self._log.publish_key(record)
        if self._directory is not None and not self._put(record):
            # Erased between the look-up and now: nothing was sealed with the key yet, and
            # no reader will find it in the directory; its tombstone takes it off the disks.
            self._log.publish_tombstone(scope, key.key_id)
            _refuse_erased(scope, self._directory.entries(scope))
        return key

    def _put(self, record: KeyRecord) -> bool:
        """Write `record` through to the directory; True if it is there or may be (Redis
        away: readers project it from the log), False if its user is erased."""
        assert self._directory is not None
        try:
            return self._directory.put(record)
        except Unavailable:
            return True


def _refuse_erased(scope: KeyScope, entries: KeyEntries) -> None:
    if entries.erased_at is not None:
        raise Erased(
            f"user {scope.user_id} of tenant {scope.tenant} was erased at "
            f"{entries.erased_at.isoformat()}; an erased user id is retired and cannot be "
            f"written to again: give the person a new user id",
            user_id=scope.user_id,
            tenant=scope.tenant,
        )


def _trim(cache: OrderedDict[_K, _V], size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)
