"""Opening sealed events with their owners' keys, a batch at a time.

Every reader of the log (the projector, a replay, `tail` and point-in-time reads) gets
events whose personal fields are sealed (`chatlog.schemas.sealing`). `EventOpener`
opens them: it fetches the key directory's entries of every owner in the batch in one
Redis round trip (so a destroyed key is never used again, whatever is cached), unwraps
each key once (`Keyring`), and opens each event. What it answers for each event:

* the event, opened (an event in the clear is returned as it is);
* `ERASED` when the event's key is gone and its owner was erased: an erased event,
  never poison; readers drop it;
* an `Undecryptable` error when a field does not open (altered, or a master key this
  process lacks), or when the key is in neither the directory nor, after a catch-up, the
  keys topic: the projector dead-letters it as ``undecryptable`` and moves on.

A key missing from the directory while its owner is not erased is looked for once in
the keys topic (`catch_up`, which rewrites the directory from it) before the event is
given up on: the directory is a copy Redis may have lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from chatlog.schemas.errors import Undecryptable
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.keyring import KeyDirectory, KeyEntries, Keyring
from chatlog.schemas.sealing import KeyScope, open_event

__all__ = ["ERASED", "EventOpener", "Opened"]


class _Erased:
    def __repr__(self) -> str:
        return "ERASED"


ERASED: Final = _Erased()

# What opening one event gave: the event, ERASED, or why it does not open.
Opened = ConversationEvent | _Erased | Undecryptable


class EventOpener:
    """Opens sealed events with keys from the directory and the keyring."""

    def __init__(
        self,
        keyring: Keyring,
        directory: KeyDirectory,
        *,
        catch_up: Callable[[], object] | None = None,
    ) -> None:
        self.keyring = keyring
        self.directory = directory
        self._catch_up = catch_up

    def open_batch(
        self,
        events: Sequence[ConversationEvent],
        *,
        known: dict[KeyScope, KeyEntries] | None = None,
    ) -> list[Opened]:
        """Each of `events` opened, `ERASED`, or `Undecryptable` (see the module).

        `known` carries owners' entries from one call to the next within one read (a
        session's history: one owner), so they are fetched once; it is filled here.
        """
        sealed = [e for e in events if e.sealed is not None]
        if not sealed:
            return list(events)
        entries = {} if known is None else known
        missing = {KeyScope.of(e) for e in sealed} - set(entries)
        entries.update(self.directory.entries_many(missing))
        unknown = {
            KeyScope.of(e)
            for e in sealed
            if _key_id(e) not in entries[KeyScope.of(e)].keys
            and entries[KeyScope.of(e)].erased_at is None
        }
        if unknown and self._catch_up is not None:
            self._catch_up()
            entries.update(self.directory.entries_many(unknown))
        return [self._open(event, entries) for event in events]

    def _open(self, event: ConversationEvent, entries: dict[KeyScope, KeyEntries]) -> Opened:
        if event.sealed is None:
            return event
        scope, key_id = KeyScope.of(event), event.sealed.key_id
        found = entries[scope]
        wrapped = found.keys.get(key_id)
        if wrapped is None:
            if found.erased_at is not None:
                return ERASED
            return Undecryptable(
                f"event {event.event_id} is sealed under data key {key_id} of user "
                f"{scope.user_id}, which is in neither the key directory nor the keys topic",
                event_id=event.event_id,
                session_id=event.session_id,
                key_id=key_id,
            )
        try:
            return open_event(event, self.keyring.for_reading(scope, key_id, wrapped))
        except Undecryptable as exc:
            return exc


def _key_id(event: ConversationEvent) -> str:
    assert event.sealed is not None
    return event.sealed.key_id
