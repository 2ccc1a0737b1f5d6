"""Sealed events through the projection: opened, dead-lettered as undecryptable, or erased."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chatlog.processors.dead_letters import dead_letter_reason
from chatlog.processors.projection import ProjectionCore, Record
from chatlog.producers.commands import append_message, new_event
from chatlog.projections.context import Context
from chatlog.projections.encoding import decode_view, encode_message, encode_meta
from chatlog.projections.opening import ERASED, EventOpener, ViewOpener
from chatlog.projections.store import InMemoryViewStore
from chatlog.projections.view import SessionView, WindowPolicy, fold
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import Erased, Undecryptable
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    Role,
    Sealed,
    SessionStarted,
    SummaryUpdated,
    ToolCall,
)
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key, wrap_data_key
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope, seal_event
from tests.key_fakes import MemoryKeyDirectory, MemoryKeyLog

CODEC = EventCodec()
PROVIDER = LocalKeyProvider.from_spec(new_master_key("k1"))


class Keys:
    """A writer's keyring and a reader's opener over one in-memory log and directory."""

    def __init__(self) -> None:
        self.log, self.directory = MemoryKeyLog(), MemoryKeyDirectory()
        self.writer = Keyring(PROVIDER, log=self.log, directory=self.directory)
        self.catch_ups = 0

    def opener(self, provider: LocalKeyProvider = PROVIDER) -> EventOpener:
        def catch_up() -> None:
            self.catch_ups += 1

        reading = Keyring(provider, directory=self.directory)
        return EventOpener(reading, self.directory, catch_up=catch_up)

    def sealed(self, session: str, text: str, user: str = "u1"):
        event = append_message(session, user_id=user, role="user", content=text)
        return self.seal(event)

    def seal(self, event: ConversationEvent) -> ConversationEvent:
        return seal_event(event, self.writer.for_writing(KeyScope.of(event)))

    def open_view(self, view: SessionView, provider: LocalKeyProvider = PROVIDER) -> SessionView:
        entries = self.directory.entries(KeyScope(view.tenant, view.user_id))
        return ViewOpener(Keyring(provider)).open(view, entries)


def record(offset: int, event) -> Record:
    return Record("events", 0, offset, event.session_id.encode(), CODEC.encode(event))


def test_sealed_events_are_projected_sealed_and_clear_ones_as_they_are():
    keys, store = Keys(), InMemoryViewStore()
    clear = append_message("a", user_id="u1", role="user", content="written before sealing")
    batch = [
        record(0, clear),
        record(1, keys.sealed("a", "card 4111")),
        record(2, keys.sealed("b", "x", "u2")),
    ]
    result = ProjectionCore(store, opener=keys.opener()).handle(batch)
    assert (result.events, result.dead_letters, result.erased) == (3, [], 0)
    stored = store.views["a"]
    assert [m.content for m in stored.messages] == ["written before sealing", ""]
    assert "4111" not in "".join(map(encode_message, stored.messages))
    opened = keys.open_view(stored)
    assert [m.content for m in opened.messages] == ["written before sealing", "card 4111"]
    assert not opened.sealed
    assert keys.catch_ups == 0


def test_an_altered_ciphertext_or_a_wrong_master_key_is_dead_lettered_and_the_rest_goes_on():
    keys, store = Keys(), InMemoryViewStore()
    good, bad = keys.sealed("a", "fine"), keys.sealed("a", "altered")
    assert bad.sealed is not None
    blob = bytearray(bad.sealed.fields["content"])
    blob[-1] ^= 1
    bad = bad.model_copy(
        update={"sealed": Sealed(key_id=bad.sealed.key_id, fields={"content": bytes(blob)})}
    )
    result = ProjectionCore(store, opener=keys.opener()).handle([record(0, bad), record(1, good)])
    [letter] = result.dead_letters
    assert letter.record.offset == 0
    assert dead_letter_reason(letter.error) == "undecryptable"
    assert [m.content for m in keys.open_view(store.views["a"]).messages] == ["fine"]

    stranger = LocalKeyProvider.from_spec(new_master_key("k1"))  # same id, another key
    other = InMemoryViewStore()
    result = ProjectionCore(other, opener=keys.opener(stranger)).handle([record(0, good)])
    assert dead_letter_reason(result.dead_letters[0].error) == "undecryptable"
    assert "a" not in other.views


def test_an_erased_users_events_are_skipped_as_erased_never_dead_lettered():
    keys, store = Keys(), InMemoryViewStore()
    events = [keys.sealed("a", "secret"), keys.sealed("b", "kept", "u2")]
    scope = KeyScope.of(events[0])
    keys.directory.erase(keys.writer.erase(scope, key_ids=(events[0].sealed.key_id,)))
    result = ProjectionCore(store, opener=keys.opener()).handle(
        [record(0, events[0]), record(1, events[1])]
    )
    assert (result.erased, result.events, result.dead_letters) == (1, 1, [])
    assert "a" not in store.views
    assert [m.content for m in keys.open_view(store.views["b"]).messages] == ["kept"]


def test_a_key_the_directory_lacks_is_looked_for_in_the_log_once_then_given_up():
    keys = Keys()
    event = keys.sealed("a", "x")
    keys.directory.keys.clear()  # Redis lost the directory, and the topic has nothing either
    [opened] = keys.opener().open_batch([event])
    assert isinstance(opened, Undecryptable)
    assert "in neither the key directory nor the keys topic" in opened.message
    assert keys.catch_ups == 1


def test_the_owners_entries_are_fetched_once_per_read():
    keys = Keys()
    events = [keys.sealed("a", str(n)) for n in range(3)]
    fetched = []
    original = keys.directory.entries_many

    def counting(scopes):
        scopes = list(scopes)
        fetched.append(scopes)
        return original(scopes)

    keys.directory.entries_many = counting
    opener, known = keys.opener(), {}
    contents = [opener.open_batch([e], known=known)[0].payload.content for e in events]
    assert contents == ["0", "1", "2"]
    assert sum(len(f) for f in fetched) == 1
    assert all(e is not ERASED for e in events)


def _rich_session(keys: Keys) -> list[ConversationEvent]:
    """A session with every sealed kind of field a view keeps."""
    call = ToolCall(id="c1", name="lookup_order", arguments='{"order": "A-77"}')
    payloads = [
        SessionStarted(title="Refund for Ada", metadata={"channel": "web"}),
        MessageAppended(
            message_id="m1", role=Role.USER, content="I am Ada", name="ada_l", metadata={"o": "7!"}
        ),
        MessageAppended(message_id="m2", role=Role.ASSISTANT, content="", tool_calls=(call,)),
        MessageAppended(message_id="m3", role=Role.TOOL, content="shipped.", tool_call_id="c1"),
        MessageAppended(message_id="m4", role=Role.USER, content="thanks!"),
        SummaryUpdated(
            summary="Ada asked about A-77", through_offset=1, model="m", covered_messages=1
        ),
    ]
    return [new_event("s", user_id="u-7", payload=p) for p in payloads]


def test_a_view_folded_sealed_opens_to_the_view_folded_from_the_opened_events():
    keys = Keys()
    events = _rich_session(keys)
    sealed = [keys.seal(e) for e in events]
    policy = WindowPolicy(window=2)
    at = [Position(0, n) for n in range(len(events))]
    plain, _ = fold(None, list(zip(events, at, strict=True)), policy)
    stored, _ = fold(None, list(zip(sealed, at, strict=True)), policy)
    assert stored is not None
    assert stored.sealed
    # What Redis would hold names no personal word (each has a character base64 lacks).
    stored_text = encode_meta(stored, window=2) | {
        str(n): encode_message(m) for n, m in enumerate(stored.messages)
    }
    for word in ("for Ada", "am Ada", "ada_l", "7!", "A-77", "shipped.", "thanks!", "lookup_order"):
        assert word not in str(stored_text), word
    # Through the Redis encoding and back, then opened: exactly the plaintext fold.
    messages = [encode_message(m) for m in stored.messages]
    decoded = decode_view(encode_meta(stored, window=2), messages)
    assert decoded == stored
    assert keys.open_view(decoded) == plain


def test_a_sealed_view_does_not_open_for_an_erased_owner_a_missing_key_or_a_stranger_key():
    keys = Keys()
    sealed = [keys.seal(e) for e in _rich_session(keys)]
    view, _ = fold(None, [(e, Position(0, n)) for n, e in enumerate(sealed)])
    assert view is not None
    with pytest.raises(Undecryptable, match="master key of that id is another one"):
        keys.open_view(view, LocalKeyProvider.from_spec(new_master_key("k1")))
    message = view.messages[0]
    assert message.sealed is not None
    moved = replace(message, sealed=replace(message.sealed, event_id=sealed[2].event_id))
    with pytest.raises(Undecryptable, match="failed authentication"):
        keys.open_view(replace(view, messages=(moved,)))
    scope = KeyScope("default", "u-7")
    keys.directory.keys[scope] = {}
    with pytest.raises(Undecryptable, match="does not hold"):
        keys.open_view(view)
    keys.directory.erase(keys.writer.erase(scope, key_ids=()))
    with pytest.raises(Erased):
        keys.open_view(view)


def test_a_context_is_never_built_from_a_view_still_sealed():
    keys = Keys()
    view, _ = fold(None, [(keys.sealed("a", "secret"), Position(0, 0))])
    assert view is not None
    with pytest.raises(ValueError, match="still sealed"):
        Context.from_view(view, window_size=20)


def test_a_wrapping_under_a_master_key_this_process_lacks_is_looked_for_once_in_the_log():
    # The directory kept k1's wrapping (a catch-up overlapping a rotation wrote it back);
    # the keys topic ends with k2's. This process has only k2.
    keys = Keys()
    event = keys.sealed("a", "after the rotation")
    assert event.sealed is not None
    scope, key_id = KeyScope.of(event), event.sealed.key_id
    old = keys.directory.keys[scope][key_id]
    k2 = LocalKeyProvider.from_spec(new_master_key("k2"))
    in_topic = [wrap_data_key(k2, Keyring(PROVIDER).for_reading(scope, key_id, old))]
    now, catch_ups = [0.0], []

    def catch_up() -> None:
        catch_ups.append(now[0])
        keys.directory.keys[scope][key_id] = in_topic[0]

    opener = EventOpener(Keyring(k2), keys.directory, catch_up=catch_up, clock=lambda: now[0])
    [opened] = opener.open_batch([event])
    assert opened.payload.content == "after the rotation"
    assert catch_ups == [0.0]

    # A master key that is simply missing (the topic has no newer wrapping either) is
    # dead-lettered, and the keys topic is read for it at most once a minute.
    keys.directory.keys[scope][key_id] = in_topic[0] = old
    for now[0] in (10.0, 30.0, 61.0, 62.0):
        [opened] = opener.open_batch([event])
        assert isinstance(opened, Undecryptable)
        assert "does not have" in opened.message
    assert catch_ups == [0.0, 61.0]


def test_an_erased_owners_view_is_erased_sealed_or_not_and_their_keys_leave_the_caches():
    keys = Keys()
    clear = append_message("a", user_id="u1", role="user", content="written before sealing")
    sealed = keys.sealed("a", "sealed later")
    reading = Keyring(PROVIDER)
    opener = EventOpener(reading, keys.directory)
    assert all(isinstance(o, ConversationEvent) for o in opener.open_batch([clear, sealed]))
    assert len(reading._opened) == 1  # the owner's key, unwrapped once

    scope = KeyScope.of(sealed)
    assert sealed.sealed is not None
    keys.directory.erase(keys.writer.erase(scope, key_ids=(sealed.sealed.key_id,)))
    assert opener.open_batch([clear, sealed]) == [ERASED, ERASED]
    assert reading._opened == {}  # dropped as soon as the erasure was seen

    view, _ = fold(None, [(clear, Position(0, 0))])
    assert view is not None
    assert not view.sealed
    with pytest.raises(Erased):
        ViewOpener(reading).open(view, keys.directory.entries(scope))
