"""Sealed events through the projection: opened, dead-lettered as undecryptable, or erased."""

from __future__ import annotations

from chatlog.processors.dead_letters import dead_letter_reason
from chatlog.processors.projection import ProjectionCore, Record
from chatlog.producers.commands import append_message
from chatlog.projections.opening import ERASED, EventOpener
from chatlog.projections.store import InMemoryViewStore
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import Undecryptable
from chatlog.schemas.events import Sealed
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
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
        return seal_event(event, self.writer.for_writing(KeyScope.of(event)))


def record(offset: int, event) -> Record:
    return Record("events", 0, offset, event.session_id.encode(), CODEC.encode(event))


def test_sealed_events_are_projected_opened_and_clear_ones_as_they_are():
    keys, store = Keys(), InMemoryViewStore()
    clear = append_message("a", user_id="u1", role="user", content="written before sealing")
    batch = [
        record(0, clear),
        record(1, keys.sealed("a", "card 4111")),
        record(2, keys.sealed("b", "x", "u2")),
    ]
    result = ProjectionCore(store, opener=keys.opener()).handle(batch)
    assert (result.events, result.dead_letters, result.erased) == (3, [], 0)
    assert [m.content for m in store.views["a"].messages] == ["written before sealing", "card 4111"]
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
    assert [m.content for m in store.views["a"].messages] == ["fine"]

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
    assert [m.content for m in store.views["b"].messages] == ["kept"]


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
