"""The projector's logic on an in-memory store: folding, dead letters, conflicts, replays."""

from __future__ import annotations

import pytest

from chatlog.processors.projection import ProjectionCore, Record
from chatlog.producers.commands import append_message
from chatlog.projections.store import InMemoryViewStore
from chatlog.projections.view import ForeignEvent, WindowPolicy
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import DecodeError, InvalidEvent

CODEC = EventCodec()


def record(offset: int, event=None, *, partition: int = 0, key=None, value=None) -> Record:
    if event is not None:
        value = CODEC.encode(event)
        key = event.session_id.encode() if key is None else key
    return Record("events", partition, offset, key, value)


def msg(session: str, text: str, user: str = "u1"):
    return append_message(session, user_id=user, role="user", content=text)


@pytest.fixture
def store():
    return InMemoryViewStore()


def test_a_batch_is_folded_per_session_in_log_order(store):
    core = ProjectionCore(store)
    result = core.handle(
        [record(0, msg("a", "a1")), record(1, msg("b", "b1")), record(2, msg("a", "a2"))]
    )
    assert (result.events, result.applied, result.dead_letters) == (3, 2, [])
    assert [m.content for m in store.views["a"].messages] == ["a1", "a2"]
    assert [m.content for m in store.views["b"].messages] == ["b1"]
    assert store.views["a"].last_offset == 2


def test_replaying_a_batch_changes_nothing(store):
    batch = [record(n, msg("a", str(n))) for n in range(5)]
    ProjectionCore(store).handle(batch)
    before = dict(store.views)
    # A fresh core (a restarted projector) sees the same records again.
    result = ProjectionCore(store).handle(batch)
    assert (result.applied, result.unchanged) == (0, 1)
    assert store.views == before


def test_undecodable_records_are_dead_lettered_and_the_rest_applied(store):
    good = msg("a", "fine")
    result = ProjectionCore(store).handle(
        [
            record(0, value=b"garbage", key=b"a"),
            record(1, value=None, key=b"a"),
            record(2, good),
            record(3, msg("b", "x"), key=b"not-b"),
        ]
    )
    errors = {d.record.offset: d.error for d in result.dead_letters}
    assert set(errors) == {0, 1, 3}
    assert isinstance(errors[0], DecodeError)
    assert isinstance(errors[1], InvalidEvent)
    assert "record key b'not-b' is not the event's session_id 'b'" in errors[3].message
    assert [m.content for m in store.views["a"].messages] == ["fine"]
    assert "b" not in store.views


def test_an_event_from_another_user_is_dead_lettered_not_applied(store):
    core = ProjectionCore(store)
    result = core.handle(
        [
            record(0, msg("a", "mine", user="alice")),
            record(1, msg("a", "intruder", user="mallory")),
            record(2, msg("a", "mine again", user="alice")),
        ]
    )
    [letter] = result.dead_letters
    assert letter.record.offset == 1
    assert isinstance(letter.error, ForeignEvent)
    assert [m.content for m in store.views["a"].messages] == ["mine", "mine again"]


def test_a_zombie_projector_is_corrected_by_the_conflict_check(store):
    zombie = ProjectionCore(store)
    owner = ProjectionCore(store)
    zombie.handle([record(0, msg("a", "0"))])  # the zombie caches offset 0
    owner.handle([record(1, msg("a", "1")), record(2, msg("a", "2"))])
    # The zombie still believes the session is at offset 0 and sees offsets 1-3 again.
    result = zombie.handle([record(n, msg("a", str(n))) for n in (1, 2, 3)])
    assert result.conflicts == 1
    assert [m.content for m in store.views["a"].messages] == ["0", "1", "2", "3"]


def test_the_view_cache_is_bounded_and_reloads_from_the_store(store):
    core = ProjectionCore(store, cache_size=1, policy=WindowPolicy(window=2, max_overflow=0))
    core.handle([record(0, msg("a", "a0")), record(1, msg("b", "b0"))])
    core.handle([record(2, msg("a", "a1")), record(3, msg("a", "a2"))])
    assert [m.content for m in store.views["a"].messages] == ["a1", "a2"]
    assert store.views["a"].overflow_dropped == 1


def test_progress_marks_the_last_record_of_each_partition_even_a_refused_one(store):
    core = ProjectionCore(store)
    core.handle(
        [
            record(0, msg("a", "mine", user="alice")),
            record(5, msg("b", "other partition"), partition=1),
            record(1, msg("a", "intruder", user="mallory")),  # refused: moves no view
            record(2, value=b"not avro", key=b"a"),  # dead-lettered: moves no view
        ]
    )
    assert store.views["a"].last_offset == 0
    assert store.progress() == {0: 2, 1: 5}


def test_a_session_whose_owner_is_erased_after_opening_is_counted_erased_not_retried(store):
    core = ProjectionCore(store)
    core.handle([record(0, msg("a", "a1")), record(1, msg("b", "b1", user="u2"))])
    store.erased.add(("default", "u1"))  # erased between two batches, views still cached
    result = core.handle(
        [record(2, msg("a", "a2")), record(3, msg("a", "a3")), record(4, msg("b", "b2", "u2"))]
    )
    assert (result.erased, result.applied, result.conflicts) == (2, 1, 0)
    assert "a" not in store.views
    assert [m.content for m in store.views["b"].messages] == ["b1", "b2"]


def test_forgetting_partitions_drops_only_their_sessions_views(store):
    core = ProjectionCore(store)
    core.handle(
        [
            record(0, msg("a", "a1"), partition=0),
            record(0, msg("b", "b1"), partition=1),
            record(1, msg("c", "c1"), partition=1),
            record(0, msg("d", "d1"), partition=2),
        ]
    )
    core.forget_partitions([1])
    assert sorted(core._cache) == ["a", "d"]
    # A forgotten session is reloaded from the store on its next event.
    core.handle([record(2, msg("b", "b2"), partition=1)])
    assert [m.content for m in store.views["b"].messages] == ["b1", "b2"]


def test_a_batch_reports_when_each_event_it_applied_was_appended(store):
    from chatlog.schemas.events import epoch_millis

    first, second = msg("a", "a1"), msg("b", "b1")
    result = ProjectionCore(store).handle([record(0, first), record(1, second)])
    assert result.applied_at_ms == [
        epoch_millis(first.occurred_at),
        epoch_millis(second.occurred_at),
    ]
    # A replayed range is taken in by no view: no time is reported for it.
    assert ProjectionCore(store).handle([record(0, first)]).applied_at_ms == []


class MarkingStore(InMemoryViewStore):
    """A store that marks progress with its writes (`MarksWithWrites`), as the Redis one
    does on one node: only if every written session stands at its new offset."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def apply_marking(self, changes, applied):
        outcomes = self.apply(changes)
        self.calls.append("apply_marking")
        for change in changes:
            stored = self.views.get(change.new.session_id)
            if stored is None or stored.last_offset < change.new.last_offset:
                return outcomes, False
        super().mark_progress(applied)
        return outcomes, True

    def mark_progress(self, applied):
        self.calls.append("mark_progress")
        super().mark_progress(applied)


def test_a_store_that_marks_with_its_writes_is_not_asked_to_mark_again():
    store = MarkingStore()
    ProjectionCore(store).handle([record(0, msg("a", "a0")), record(3, msg("b", "b0"))])
    assert store.calls == ["apply_marking"]
    assert store.progress() == {0: 3}
    # Nothing to write (a replayed batch): the mark has a call of its own.
    ProjectionCore(store).handle([record(0, msg("a", "a0"))])
    assert store.calls == ["apply_marking", "mark_progress"]


def test_a_conflict_leaves_the_mark_to_the_core_once_the_session_is_written():
    store = MarkingStore()
    zombie, owner = ProjectionCore(store), ProjectionCore(store)
    zombie.handle([record(0, msg("a", "0"))])
    owner.handle([record(1, msg("a", "1")), record(2, msg("a", "2"))])
    store.calls.clear()
    result = zombie.handle([record(n, msg("a", str(n))) for n in (1, 2, 3)])
    assert result.conflicts == 1
    # The first write conflicted (not marked); the retry's write stands at 3 and marks.
    assert store.calls == ["apply_marking", "apply_marking"]
    assert store.progress() == {0: 3}
    assert [m.content for m in store.views["a"].messages] == ["0", "1", "2", "3"]
