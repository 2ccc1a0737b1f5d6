"""Erasing a user, step by step, against in-memory stand-ins for the keys and Redis."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from chatlog.processors.erasure import UserEraser
from chatlog.schemas.errors import Erased, InvalidId, StoreUnavailable, UnknownUser
from chatlog.schemas.key_records import ErasureRecord, decode_key_record
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.sealing import KeyScope
from tests.key_fakes import MemoryKeyDirectory, MemoryKeyLog

X, Y = KeyScope("acme", "xavier"), KeyScope("acme", "yvonne")


@dataclass
class Journal:
    """What happened, in order, across the fakes."""

    steps: list[str] = field(default_factory=list)


class Directory(MemoryKeyDirectory):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def erase(self, record: ErasureRecord) -> tuple[str, ...]:
        self.journal.steps.append("mark")
        return super().erase(record)


class Log(MemoryKeyLog):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def publish_erasure(self, record: ErasureRecord) -> None:
        self.journal.steps.append("publish")
        super().publish_erasure(record)


@dataclass
class Sessions:
    """The read-model's sessions by owner."""

    journal: Journal
    held: dict[KeyScope, set[str]] = field(default_factory=dict)

    def find(self, scope: KeyScope) -> set[str]:
        return set(self.held.get(scope, ()))

    def remove(self, scope: KeyScope) -> set[str]:
        self.journal.steps.append("remove")
        return self.held.pop(scope, set())


class Parts:
    def __init__(self) -> None:
        self.journal = Journal()
        self.log = Log(self.journal)
        self.directory = Directory(self.journal)
        self.sessions = Sessions(self.journal)
        provider = LocalKeyProvider.from_spec(new_master_key("k1"))
        self.keyring = Keyring(provider, log=self.log, directory=self.directory)
        self.caught_up: list[Directory] = []
        self.topic: Directory | None = None  # what a catch-up would bring back

    def catch_up(self) -> None:
        self.journal.steps.append("catch up")
        if self.topic is not None:
            self.directory.keys.update(self.topic.keys)
            self.directory.erased.update(self.topic.erased)

    def eraser(self) -> UserEraser:
        return UserEraser(
            keyring=self.keyring,
            directory=self.directory,
            catch_up=self.catch_up,
            sessions=self.sessions,
        )


def test_keys_are_destroyed_before_the_mark_and_sessions_go_after_it():
    parts = Parts()
    x_key = parts.keyring.for_writing(X)
    y_key = parts.keyring.for_writing(Y)
    parts.sessions.held = {X: {"x1", "x2"}, Y: {"y1"}}
    erasure = parts.eraser().erase("xavier", tenant="acme")
    assert parts.journal.steps == ["catch up", "publish", "mark", "remove"]
    assert (erasure.key_ids, erasure.sessions_removed, erasure.already_erased) == (
        (x_key.key_id,),
        2,
        False,
    )
    tombstone, record = parts.log.records[-2:]
    assert tombstone == (f"acme/xavier/{x_key.key_id}", None)
    assert decode_key_record(*record) == ErasureRecord(X, erasure.erased_at, (x_key.key_id,))
    # This process's writer is told at once; the other user is untouched.
    with pytest.raises(Erased):
        parts.keyring.for_writing(X)
    assert parts.keyring.for_writing(Y) is y_key
    assert parts.sessions.held == {Y: {"y1"}}


def test_a_key_made_between_the_look_up_and_the_mark_gets_its_tombstone_too():
    parts = Parts()
    first = parts.keyring.for_writing(X)
    # Another process, whose Redis look-up found nothing, makes a second key of X ...
    other = Keyring(parts.keyring.provider, log=parts.log, directory=MemoryKeyDirectory())
    late = other.for_writing(X)
    late_record = decode_key_record(*parts.log.records[-1])
    mark = parts.directory.erase

    def put_then_mark(record: ErasureRecord) -> tuple[str, ...]:
        parts.directory.put(late_record)  # ... and writes it through just before the mark
        return mark(record)

    parts.directory.erase = put_then_mark
    erasure = parts.eraser().erase("xavier", tenant="acme")
    assert erasure.key_ids == (first.key_id, late.key_id)
    tombstones = {key for key, value in parts.log.records if value is None}
    assert tombstones == {f"acme/xavier/{first.key_id}", f"acme/xavier/{late.key_id}"}


def test_erasing_twice_publishes_nothing_and_removes_what_is_left():
    parts = Parts()
    parts.keyring.for_writing(X)
    first = parts.eraser().erase("xavier", tenant="acme")
    published = len(parts.log.records)
    parts.sessions.held[X] = {"x-late"}  # say, an old generation restored meanwhile
    second = parts.eraser().erase("xavier", tenant="acme")
    assert len(parts.log.records) == published
    assert (second.already_erased, second.key_ids, second.sessions_removed) == (True, (), 1)
    assert second.erased_at == first.erased_at


def test_the_directory_is_caught_up_from_the_keys_topic_first():
    parts = Parts()
    key = parts.keyring.for_writing(X)
    parts.topic = Directory(Journal())
    parts.topic.keys = {X: dict(parts.directory.keys[X])}
    parts.directory.keys.clear()  # Redis lost the directory
    erasure = parts.eraser().erase("xavier", tenant="acme")
    assert parts.journal.steps[0] == "catch up"
    assert erasure.key_ids == (key.key_id,)


def test_a_user_erased_only_in_the_keys_topic_is_already_erased():
    parts = Parts()
    parts.keyring.for_writing(X)
    parts.eraser().erase("xavier", tenant="acme")
    parts.topic = Directory(Journal())
    parts.topic.erased = dict(parts.directory.erased)
    parts.directory.erased.clear()
    parts.journal.steps.clear()
    again = parts.eraser().erase("xavier", tenant="acme")
    assert again.already_erased
    assert parts.journal.steps == ["catch up", "remove"]


def test_an_unknown_user_is_an_error_naming_them_and_nothing_is_written():
    parts = Parts()
    parts.keyring.for_writing(Y)
    records = list(parts.log.records)
    with pytest.raises(UnknownUser, match="user xavier of tenant acme") as caught:
        parts.eraser().erase("xavier", tenant="acme")
    assert caught.value.context == {"user_id": "xavier", "tenant": "acme"}
    assert parts.log.records == records
    assert X not in parts.directory.erased
    assert parts.journal.steps == ["catch up"]


def test_a_user_with_sessions_but_no_key_is_erased_all_the_same():
    # Sessions written before sealing was turned on: no key to destroy, views to remove.
    parts = Parts()
    parts.sessions.held = {X: {"x-old"}}
    erasure = parts.eraser().erase("xavier", tenant="acme")
    assert (erasure.key_ids, erasure.sessions_removed) == ((), 1)
    assert X in parts.directory.erased


def test_ids_are_checked_before_anything_is_asked():
    parts = Parts()
    with pytest.raises(InvalidId):
        parts.eraser().erase("x:y", tenant="acme")
    assert parts.journal.steps == []


def test_an_erasure_cut_short_after_the_log_says_the_keys_are_gone_and_to_run_it_again():
    parts = Parts()
    parts.keyring.for_writing(X)

    def unreachable(record: ErasureRecord) -> tuple[str, ...]:
        raise StoreUnavailable("Redis did not answer")

    parts.directory.erase = unreachable
    with pytest.raises(StoreUnavailable, match=r"keys are destroyed .* run it again"):
        parts.eraser().erase("xavier", tenant="acme")
    assert any(value is None for _, value in parts.log.records)  # the tombstone is out
