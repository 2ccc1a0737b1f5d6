"""A reader's opened messages, kept between reads: served only as every check allows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chatlog.projections import opening
from chatlog.projections.encoding import decode_view, encode_message, encode_meta
from chatlog.projections.opening import OpenedMessages, ViewOpener
from chatlog.projections.view import SessionView, fold
from chatlog.schemas.errors import Erased, Undecryptable
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from tests.unit.test_opening import PROVIDER, Keys


class Stored:
    """A sealed session as Redis holds it: the meta's view and the messages' bytes."""

    def __init__(self, keys: Keys, session: str = "s", user: str = "u1", count: int = 3) -> None:
        events = [keys.sealed(session, f"message {n} of {session}", user) for n in range(count)]
        view, _ = fold(None, [(e, Position(0, n)) for n, e in enumerate(events)])
        assert view is not None
        self.keys, self.view = keys, view
        self.raw = [encode_message(m).encode() for m in view.messages]

    def meta(self) -> SessionView:
        decoded = decode_view(encode_meta(self.view, window=20), ())
        assert decoded is not None
        return decoded

    def scope(self) -> KeyScope:
        return KeyScope(self.view.tenant, self.view.user_id)

    def read(self, opener: ViewOpener, raw: list[bytes] | None = None, **kw) -> list[str]:
        entries = self.keys.directory.entries(self.scope())
        opened = opener.open_stored(self.meta(), self.raw if raw is None else raw, entries, **kw)
        return [m.content for m in opened.messages]


@pytest.fixture
def decodes(monkeypatch) -> list[bytes]:
    """Every message the opener decodes (and opens) rather than finds."""
    seen: list[bytes] = []
    original = opening.decode_message

    def counting(raw, open_values=None):
        seen.append(raw)
        return original(raw, open_values)

    monkeypatch.setattr(opening, "decode_message", counting)
    return seen


def test_a_session_read_again_opens_only_what_is_new_and_reads_the_same(decodes):
    stored, opener = Stored(Keys()), ViewOpener(Keyring(PROVIDER))
    first = stored.read(opener)
    assert first == ["message 0 of s", "message 1 of s", "message 2 of s"]
    assert len(decodes) == 3
    decodes.clear()
    assert stored.read(opener) == first
    assert decodes == []
    newer = Stored(stored.keys, count=4)  # its fourth: a message appended since
    decodes.clear()
    stored.read(opener, raw=[*stored.raw, newer.raw[3]])
    assert decodes == [newer.raw[3]]


def test_a_redacted_or_dropped_message_is_opened_anew_and_leaves_the_cache(decodes):
    stored, opener = Stored(Keys()), ViewOpener(Keyring(PROVIDER))
    stored.read(opener)
    redacted = replace(stored.view.messages[1], content="[redacted]", redacted=True, sealed=None)
    changed = [stored.raw[0], encode_message(redacted).encode()]  # and the last one summarized
    decodes.clear()
    assert stored.read(opener, raw=changed) == ["message 0 of s", "[redacted]"]
    assert decodes == [changed[1]]
    held = opener.opened._sessions[("default", "u1", "s")]
    assert set(held) == set(changed)  # the original of the redacted one is not kept


def test_a_destroyed_key_opens_nothing_even_what_was_opened_before():
    stored, opener = Stored(Keys()), ViewOpener(Keyring(PROVIDER))
    stored.read(opener)
    stored.keys.directory.keys[stored.scope()] = {}  # the key destroyed, the user not erased
    with pytest.raises(Undecryptable, match="does not hold"):
        stored.read(opener)


def test_an_erased_owner_reads_as_erased_and_their_sessions_leave_the_cache():
    keys = Keys()
    ada, bob = Stored(keys, "s1", "ada"), Stored(keys, "s2", "bob")
    opener = ViewOpener(Keyring(PROVIDER))
    ada.read(opener)
    bob.read(opener)
    keys.directory.erase(keys.writer.erase(ada.scope(), key_ids=()))
    with pytest.raises(Erased):
        ada.read(opener)
    assert list(opener.opened._sessions) == [("default", "bob", "s2")]


def test_the_same_bytes_in_another_session_are_not_served_from_the_cache():
    # Copied by someone who can write to Redis: bound to the session they were sealed
    # for, they fail to open elsewhere, cached or not.
    keys = Keys()
    ada = Stored(keys, "s1", "ada")
    opener = ViewOpener(Keyring(PROVIDER))
    ada.read(opener)
    other = Stored(keys, "s2", "ada")
    with pytest.raises(Undecryptable, match="failed authentication"):
        other.read(opener, raw=ada.raw)


def test_a_read_that_reveals_neither_uses_nor_fills_the_cache(decodes):
    stored, opener = Stored(Keys()), ViewOpener(Keyring(PROVIDER))
    stored.read(opener, reveal=True)
    assert opener.opened._sessions == {}
    stored.read(opener)
    decodes.clear()
    stored.read(opener, reveal=True)
    assert len(decodes) == 3


def test_the_least_recently_read_sessions_go_first_beyond_the_limit():
    keys = Keys()
    opener = ViewOpener(Keyring(PROVIDER), cached_messages=5)
    sessions = [Stored(keys, f"s{n}", count=2) for n in range(3)]
    for session in sessions:
        session.read(opener)
    assert [slot[2] for slot in opener.opened._sessions] == ["s1", "s2"]
    sessions[1].read(opener)
    Stored(keys, "s3", count=2).read(opener)
    assert [slot[2] for slot in opener.opened._sessions] == ["s1", "s3"]


def test_without_a_cache_every_read_opens_every_message(decodes):
    stored = Stored(Keys())
    opener = ViewOpener(Keyring(PROVIDER), cached_messages=0)
    stored.read(opener)
    stored.read(opener)
    assert len(decodes) == 6
    assert opener.opened._sessions == {}


def test_forgetting_a_user_keeps_the_count_right():
    cache = OpenedMessages(10)
    keys = Keys()
    ada, bob = Stored(keys, "s1", "ada"), Stored(keys, "s2", "bob")
    opener = ViewOpener(Keyring(PROVIDER))
    opener.opened = cache
    ada.read(opener)
    bob.read(opener)
    cache.forget(ada.scope())
    Stored(keys, "s3", "cy", count=7).read(opener)  # 3 + 7 = 10: fits, nothing dropped
    assert [slot[2] for slot in cache._sessions] == ["s2", "s3"]
