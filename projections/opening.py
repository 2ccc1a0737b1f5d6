"""Opening sealed events with their owners' keys, a batch at a time.

Every reader of the log (the projector, a replay, `tail` and point-in-time reads) gets
events whose personal fields are sealed (`chatlog.schemas.sealing`). `EventOpener`
opens them: it fetches the key directory's entries of every owner in the batch in one
Redis round trip (so a destroyed key is never used again, whatever is cached), unwraps
each key once (`Keyring`), and opens each event. What it answers for each event:

* the event, opened (an event in the clear is returned as it is, unless its owner was
  erased);
* `ERASED` when its owner was erased (its key is gone): an erased event,
  never poison; readers drop it;
* an `Undecryptable` error when a field does not open (altered, or a master key this
  process lacks), or when the key is in neither the directory nor, after a catch-up, the
  keys topic: the projector dead-letters it as ``undecryptable`` and moves on.

A key missing from the directory while its owner is not erased is looked for once in
the keys topic (`catch_up`, which rewrites the directory from it) before the event is
given up on: the directory is a copy Redis may have lost.

The projector only verifies (`open_batch(..., verify=True)`): it needs to know that an
event opens, to dead-letter the ones that do not, but it folds and stores the sealed
fields as they are, so Redis holds no plaintext. `ViewOpener` opens such a view for a
reader, with the owner's entries the reader fetched in the same round trip as the view.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from chatlog.projections.encoding import decode_message
from chatlog.projections.view import Message, SealedFields, SessionView, place_values
from chatlog.schemas.errors import Erased, Undecryptable
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.keyring import KeyDirectory, KeyEntries, Keyring
from chatlog.schemas.placeholders import reveal_field
from chatlog.schemas.sealing import (
    TOKENS,
    DataKey,
    KeyScope,
    open_event,
    open_fields,
    verify_event,
)

__all__ = ["CACHED_MESSAGES", "ERASED", "EventOpener", "Opened", "OpenedMessages", "ViewOpener"]

_REWRAPPED_CATCH_UP_S = 60.0
_LOOK_AGAIN_S = 60.0  # a key id a catch-up did not find is looked for again after this
_LOOKED_FOR_KEPT = 10_000


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keyring = keyring
        self.directory = directory
        self._catch_up = catch_up
        self._clock = clock
        self._rewrapped_at = float("-inf")
        self._looked_for: dict[str, float] = {}  # key id -> when a catch-up looked for it

    def open_batch(
        self,
        events: Sequence[ConversationEvent],
        *,
        known: dict[KeyScope, KeyEntries] | None = None,
        verify: bool = False,
    ) -> list[Opened]:
        """Each of `events` opened, `ERASED`, or `Undecryptable` (see the module).

        `known` carries owners' entries from one call to the next within one read (a
        session's history: one owner), so they are fetched once; it is filled here.
        With `verify`, an event that opens is answered as it is, still sealed.
        """
        if not events:
            return []
        # One `KeyScope` per owner, not per event: a batch holds thousands of events of a
        # few hundred owners, and each scope built and hashed was a Python call.
        owners: dict[tuple[str, str], KeyScope] = {}
        scopes = []
        for event in events:
            owner = (event.tenant, event.user_id)
            scope = owners.get(owner)
            if scope is None:
                scope = owners[owner] = KeyScope(*owner)
            scopes.append(scope)
        entries = {} if known is None else known
        # Every owner's entries, the clear events' too: an erased user's events written
        # before sealing was turned on must not be served either.
        entries.update(self.directory.entries_many(set(owners.values()) - set(entries)))
        missing = [
            (scope, event.sealed.key_id)
            for event, scope in zip(events, scopes, strict=True)
            if event.sealed is not None
            and event.sealed.key_id not in entries[scope].keys
            and entries[scope].erased_at is None
        ]
        unknown = {scope for scope, _ in missing}
        unknown_ids = {key_id for _, key_id in missing}
        if unknown and self._catch_up is not None and self._may_look_for(unknown_ids):
            self._catch_up()
            entries.update(self.directory.entries_many(unknown))
        batch = _Batch(self.keyring, entries, verify)
        opened = list(map(batch.open, events, scopes))
        stale = {s for s, o in zip(scopes, opened, strict=True) if _unwrap_failed(o)}
        catch_up = self._catch_up
        if stale and catch_up is not None and self._may_catch_up_rewrapped():
            # A wrapping under a master key this process lacks: the directory may hold one
            # a rotation replaced (a catch-up that overlapped it wrote the old one back).
            # The keys topic ends with each key's newest wrapping: read it once more.
            catch_up()
            entries.update(self.directory.entries_many(stale))
            batch = _Batch(self.keyring, entries, verify)
            opened = [
                batch.open(e, s) if _unwrap_failed(o) else o
                for e, s, o in zip(events, scopes, opened, strict=True)
            ]
        return opened

    def _may_look_for(self, key_ids: set[str]) -> bool:
        """Whether a catch-up may find `key_ids`: not if each was looked for in the last
        minute and was not there (a forged key id must not make every batch or request
        read the whole keys topic)."""
        now = self._clock()
        fresh = {
            k for k in key_ids if now - self._looked_for.get(k, float("-inf")) >= _LOOK_AGAIN_S
        }
        if not fresh:
            return False
        self._looked_for.update(dict.fromkeys(fresh, now))
        if len(self._looked_for) > _LOOKED_FOR_KEPT:
            self._looked_for = dict(list(self._looked_for.items())[-_LOOKED_FOR_KEPT // 2 :])
        return True

    def _may_catch_up_rewrapped(self) -> bool:
        """At most once a minute: a process given the wrong master key must not read the
        whole keys topic for every batch."""
        now = self._clock()
        if now - self._rewrapped_at < _REWRAPPED_CATCH_UP_S:
            return False
        self._rewrapped_at = now
        return True


def _unwrap_failed(opened: Opened) -> bool:
    # The master key's error names the master key id; a field's names the event.
    return isinstance(opened, Undecryptable) and "kek_id" in opened.context


class _Batch:
    """Opens the events of one batch, each data key unwrapped (or found) once."""

    def __init__(
        self, keyring: Keyring, entries: Mapping[KeyScope, KeyEntries], verify: bool
    ) -> None:
        self.keyring, self.entries, self.verify = keyring, entries, verify
        # By (tenant, user, key id): strings hash in C, a `KeyScope` in Python.
        self.keys: dict[tuple[str, str, str], DataKey] = {}
        self.forgotten: set[KeyScope] = set()

    def open(self, event: ConversationEvent, scope: KeyScope) -> Opened:
        found = self.entries[scope]
        if found.erased_at is not None:
            if scope not in self.forgotten:  # its keys are destroyed: drop the copies here
                self.keyring.forget(scope)
                self.forgotten.add(scope)
            return ERASED  # sealed or not: an erased owner's events are erased events
        if event.sealed is None:
            return event
        key_id = event.sealed.key_id
        wrapped = found.keys.get(key_id)
        if wrapped is None:
            return Undecryptable(
                f"event {event.event_id} is sealed under data key {key_id} of user "
                f"{scope.user_id}, which is in neither the key directory nor the keys topic",
                event_id=event.event_id,
                session_id=event.session_id,
                key_id=key_id,
            )
        try:
            at = (scope.tenant, scope.user_id, key_id)
            key = self.keys.get(at)
            if key is None:
                key = self.keys[at] = self.keyring.for_reading(scope, key_id, wrapped)
            if self.verify:
                verify_event(event, key)
                return event
            return open_event(event, key)
        except Undecryptable as exc:
            return exc


# How many opened messages a reader process keeps (`OpenedMessages`): about 0.7 KB
# each, so about 14 MB; the window and overflow of 90 long sessions, or of 1,000 of 20.
CACHED_MESSAGES = 20_000


class ViewOpener:
    """Opens a stored view's sealed fields with its owner's keys (`Keyring`).

    `cached_messages` bounds the messages kept opened between reads (`OpenedMessages`;
    0: none kept, every read opens every message).
    """

    def __init__(self, keyring: Keyring, *, cached_messages: int = CACHED_MESSAGES) -> None:
        self.keyring = keyring
        self.opened = OpenedMessages(cached_messages)

    def open(self, view: SessionView, entries: KeyEntries, *, reveal: bool = False) -> SessionView:
        """`view` with every sealed field opened; `entries` are its owner's, as the
        directory holds them now. `Erased` if the owner was erased; `Undecryptable` if
        a field does not open or its key is not in `entries`. With `reveal`, tokenized
        originals replace their placeholders (the caller decides who may ask)."""
        values = self.values_for(view, entries, reveal=reveal)  # `Erased` first
        if not view.sealed:
            return view
        messages = tuple(
            m if m.sealed is None else _opened(m, values(m.sealed)) for m in view.messages
        )
        return self._opened_meta(replace(view, messages=messages), values)

    def open_stored(
        self,
        view: SessionView,
        messages: Sequence[str | bytes],
        entries: KeyEntries,
        *,
        reveal: bool = False,
    ) -> SessionView:
        """`view` (decoded without its messages) with its stored `messages` decoded and
        every sealed field opened, each message built once: a read's hot path. A message
        stored as it was at this session's last read comes from `opened` (see there);
        with `reveal`, none does, and none is kept."""
        values = self.values_for(view, entries, reveal=reveal)  # `Erased` first
        if reveal or not self.opened.limit:
            decoded = tuple(decode_message(raw, values) for raw in messages)
        else:
            decoded = self.opened.decoded(view, messages, entries, values)
        return self._opened_meta(replace(view, messages=decoded), values)

    def values_for(
        self, view: SessionView, entries: KeyEntries, *, reveal: bool = False
    ) -> Callable[[SealedFields], dict[str, str]]:
        """What opens `view`'s sealed fields: each one's values by path. `Erased` if its
        owner was erased. Tokenized originals (``tokens.<name>``) are opened only with
        `reveal`: a read that does not ask never holds them in memory."""
        scope = KeyScope(view.tenant, view.user_id)
        if entries.erased_at is not None:
            # Its keys are destroyed: drop the copies held here, and what they opened.
            self.keyring.forget(scope)
            self.opened.forget(scope)
            raise Erased(
                f"session {view.session_id} belongs to a user who was erased at "
                f"{entries.erased_at.isoformat()}; its content is gone for good",
                session_id=view.session_id,
            )
        keys: dict[str, DataKey] = {}
        session_id, user_id, tenant = view.session_id, view.user_id, view.tenant

        # Called once per sealed message of a read: no generator, no attribute chains.
        def values(sealed: SealedFields) -> dict[str, str]:
            key = keys.get(sealed.key_id)
            if key is None:
                wrapped = entries.keys.get(sealed.key_id)
                if wrapped is None:
                    raise Undecryptable(
                        f"session {session_id} is sealed under data key "
                        f"{sealed.key_id} of user {user_id}, which the key directory "
                        f"does not hold; the projector puts it back from the keys topic",
                        session_id=session_id,
                        key_id=sealed.key_id,
                    )
                key = keys[sealed.key_id] = self.keyring.for_reading(scope, sealed.key_id, wrapped)
            fields = sealed.fields
            if not reveal:
                for path in fields:
                    if path.startswith(TOKENS):
                        fields = {p: b for p, b in fields.items() if not p.startswith(TOKENS)}
                        break
            return open_fields(
                key,
                fields,
                event_id=sealed.event_id,
                session_id=session_id,
                user_id=user_id,
                tenant=tenant,
            )

        return values

    @staticmethod
    def _opened_meta(
        view: SessionView, values: Callable[[SealedFields], dict[str, str]]
    ) -> SessionView:
        changes: dict[str, Any] = {}
        if view.title_sealed is not None:
            opened = values(view.title_sealed)
            originals = {
                path.removeprefix(TOKENS): value
                for path, value in opened.items()
                if path.startswith(TOKENS)
            }
            changes.update(
                title=reveal_field("title", opened["title"], originals),
                title_sealed=None,
            )
        if view.summary_sealed is not None:
            changes.update(summary=values(view.summary_sealed)["summary"], summary_sealed=None)
        if any(task.sealed for task in view.tasks):
            changes["tasks"] = tuple(
                task.opened({p: v for s in task.sealed for p, v in values(s).items()})
                for task in view.tasks
            )
        return replace(view, **changes) if changes else view


# A session's messages as its last read opened them: each by its stored bytes, with the
# id of the data key that sealed it (None: stored clear).
_Held = dict[str | bytes, tuple[str | None, Message]]


class OpenedMessages:
    """The messages each session's last read opened, by their stored bytes: a reader's
    cache, so that a session read turn after turn opens only what is new.

    Opening is most of a read's time (decoding the JSON, an AES-GCM open and a `Message`
    per message, about 6 µs each); a chat session is read at every turn, and all but the
    newest messages are stored exactly as at the turn before. A message is served from
    here only when all of these hold:

    * the read passed every check on what Redis holds now, first: the reader's and the
      owner's tenant and user (`chatlog.projections.access`), the owner not erased (the
      key directory's entries, read in the same MULTI as the view);
    * its stored bytes are byte for byte those this session's last read opened (so the
      same event, field, ciphertext and associated data: a redacted message is stored
      anew, and is opened anew);
    * the data key that sealed it is still in the owner's entries (a destroyed key opens
      nothing, cached or not).

    Each read replaces its session's messages here with its own, so what left the
    session in Redis (summarized, redacted) leaves this cache at the session's next
    read. An erasure met by `ViewOpener.values_for` drops the user's sessions, as the
    keyring drops their keys. Bounded by `limit` messages, least recently read sessions
    dropped first; reads that `reveal` tokenized data neither use nor fill it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sessions: OrderedDict[tuple[str, str, str], _Held] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()  # one reader may serve several threads

    def decoded(
        self,
        view: SessionView,
        messages: Sequence[str | bytes],
        entries: KeyEntries,
        values: Callable[[SealedFields], dict[str, str]],
    ) -> tuple[Message, ...]:
        """`messages` of `view` decoded and opened, the ones held here as they were."""
        slot = (view.tenant, view.user_id, view.session_id)
        with self._lock:
            held = self._sessions.get(slot, {})  # never changed once stored: read freely
        keys = entries.keys
        sealing: list[str] = []

        def opening(sealed: SealedFields) -> dict[str, str]:
            sealing.append(sealed.key_id)
            return values(sealed)

        now: _Held = {}
        decoded = []
        for raw in messages:
            found = held.get(raw)
            if found is None or (found[0] is not None and found[0] not in keys):
                sealing.clear()
                message = decode_message(raw, opening)
                found = (sealing[0] if sealing else None, message)
            now[raw] = found
            decoded.append(found[1])
        self._keep(slot, now)
        return tuple(decoded)

    def forget(self, scope: KeyScope) -> None:
        """Drop every session of `scope` (it was erased)."""
        with self._lock:
            for slot in [s for s in self._sessions if s[:2] == (scope.tenant, scope.user_id)]:
                self._count -= len(self._sessions.pop(slot))

    def _keep(self, slot: tuple[str, str, str], now: _Held) -> None:
        with self._lock:
            self._count += len(now) - len(self._sessions.pop(slot, {}))
            self._sessions[slot] = now
            while self._count > self.limit and self._sessions:
                self._count -= len(self._sessions.popitem(last=False)[1])


def _opened(message: Message, values: Mapping[str, str]) -> Message:
    """`message` with its sealed fields' `values` (by path) in their places."""
    content, name, calls, metadata = place_values(
        values,
        message_id=message.message_id,
        content=message.content,
        name=message.name,
        calls=message.tool_calls,
        metadata=message.metadata,
    )
    # The constructor, not `dataclasses.replace`: a read opens every message it returns.
    return Message(
        offset=message.offset,
        message_id=message.message_id,
        role=message.role,
        content=content,
        occurred_at_ms=message.occurred_at_ms,
        name=name,
        tool_calls=calls,
        tool_call_id=message.tool_call_id,
        metadata=metadata,
        redacted=message.redacted,
    )
