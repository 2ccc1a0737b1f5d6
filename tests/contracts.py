"""The `ViewStore` contract: one test class, subclassed once per backend.

Every store must load what it applied, apply only on the expected offset, ignore what
it has already, and keep a session's list exactly as the view says after any sequence
of evolutions (trims, redactions, summaries, erasure).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chatlog.projections.store import Change, Outcome, ViewStore
from chatlog.projections.view import SessionStatus, WindowPolicy, evolve
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    SummaryUpdated,
    ToolCall,
    UserErased,
)
from chatlog.schemas.position import Position

POLICY = WindowPolicy(window=3, max_overflow=2)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def event(session: str, payload, *, user: str = "u1", seconds: int = 0) -> ConversationEvent:
    return ConversationEvent(
        session_id=session,
        user_id=user,
        occurred_at=T0 + timedelta(seconds=seconds),
        payload=payload,
    )


def message(text: str, *, message_id: str | None = None, **fields) -> MessageAppended:
    return MessageAppended(
        message_id=message_id or f"m-{text}", role="user", content=text, **fields
    )


class ViewStoreContract:
    """Subclasses provide `store` (a fixture returning a fresh, empty `ViewStore`) and
    `erase_owner(store, tenant, user)`, which marks a user erased as an erasure does."""

    def erase_owner(self, store: ViewStore, tenant: str, user: str) -> None:
        raise NotImplementedError

    def evolve_and_apply(self, store: ViewStore, session: str, payloads, start: int = 0):
        view = store.load([session])[session]
        for n, payload in enumerate(payloads):
            at = Position(0, start + n)
            new = evolve(view, event(session, payload, seconds=start + n), at, POLICY)
            assert new is not None
            assert store.apply([Change(view, new)]) == [Outcome.APPLIED]
            view = new
            assert store.load([session])[session] == view
        return view

    def test_an_empty_store_has_no_views(self, store):
        assert store.load(["a", "b"]) == {"a": None, "b": None}

    def test_apply_then_load_round_trips_every_field(self, store):
        view = self.evolve_and_apply(
            store,
            "s1",
            [
                message("hello ✓ 日本語", message_id="m-u", name="alice", metadata={"k": "v"}),
                MessageAppended(
                    message_id="m-call",
                    role="assistant",
                    content="",
                    tool_calls=(ToolCall(id="c1", name="lookup", arguments='{"id": 1}'),),
                ),
                MessageAppended(message_id="m-res", role="tool", content="{}", tool_call_id="c1"),
            ],
        )
        assert [m.content for m in view.messages] == ["hello ✓ 日本語", "", "{}"]

    def test_trims_redactions_summaries_and_erasure_keep_the_list_exact(self, store):
        payloads = [message(str(i)) for i in range(8)]
        payloads.insert(3, MessageRedacted(message_id="m-2"))
        payloads.append(SummaryUpdated(summary="s", through_offset=4, model="m"))
        payloads.append(MessageRedacted(message_id="m-7"))
        view = self.evolve_and_apply(store, "s1", payloads)
        assert view.overflow_dropped > 0
        assert view.summary == "s"
        erased = self.evolve_and_apply(store, "s1", [UserErased()], start=len(payloads))
        assert erased.status is SessionStatus.ERASED
        assert erased.messages == ()

    def test_an_offset_at_or_below_the_stored_one_changes_nothing(self, store):
        view = self.evolve_and_apply(store, "s1", [message("a"), message("b")])
        replayed = evolve(None, event("s1", message("a")), Position(0, 0))
        assert store.apply([Change(None, replayed)]) == [Outcome.DUPLICATE]
        assert store.load(["s1"])["s1"] == view

    def test_a_stale_expected_view_is_a_conflict_and_writes_nothing(self, store):
        first = self.evolve_and_apply(store, "s1", [message("a")])
        second = evolve(first, event("s1", message("b"), seconds=1), Position(0, 1))
        assert store.apply([Change(first, second)]) == [Outcome.APPLIED]
        # A zombie that still believes `first` is stored tries to write offset 2.
        zombie = evolve(first, event("s1", message("z"), seconds=2), Position(0, 2))
        assert store.apply([Change(first, zombie)]) == [Outcome.CONFLICT]
        assert store.load(["s1"])["s1"] == second

    def test_a_new_session_expected_absent_conflicts_if_it_exists(self, store):
        self.evolve_and_apply(store, "s1", [message("a")])
        other = evolve(None, event("s1", message("b"), seconds=5), Position(0, 5))
        assert store.apply([Change(None, other)]) == [Outcome.CONFLICT]

    def test_sessions_in_one_apply_are_independent(self, store):
        changes = [
            Change(None, evolve(None, event(s, message(s)), Position(0, n)))
            for n, s in enumerate(["a", "b", "c"])
        ]
        assert store.apply(changes) == [Outcome.APPLIED] * 3
        loaded = store.load(["a", "b", "c"])
        assert {s: [m.content for m in v.messages] for s, v in loaded.items()} == {
            "a": ["a"],
            "b": ["b"],
            "c": ["c"],
        }

    def test_progress_marks_start_empty_and_only_move_forward(self, store):
        assert store.progress() == {}
        store.mark_progress({0: 10, 3: 4})
        store.mark_progress({0: 7, 1: 2})  # a zombie's or a replayed batch's older mark
        store.mark_progress({})
        assert store.progress() == {0: 10, 1: 2, 3: 4}
        store.mark_progress({3: 9})
        assert store.progress() == {0: 10, 1: 2, 3: 9}

    def test_a_view_of_an_erased_owner_is_never_written_and_its_stored_view_goes(self, store):
        kept = self.evolve_and_apply(store, "s1", [message("a")])
        self.erase_owner(store, kept.tenant, kept.user_id)
        # A batch opened before the owner's erasure and written after it.
        late = evolve(kept, event("s1", message("late"), seconds=1), Position(0, 1))
        fresh = evolve(None, event("s3", message("new")), Position(0, 2))
        # Another user, and the same user id in another tenant, are written as ever.
        other = evolve(None, event("s4", message("x"), user="u2"), Position(0, 3))
        elsewhere = evolve(
            None, event("s5", message("y")).model_copy(update={"tenant": "t2"}), Position(0, 4)
        )
        outcomes = store.apply(
            [Change(kept, late), Change(None, fresh), Change(None, other), Change(None, elsewhere)]
        )
        assert outcomes == [Outcome.ERASED, Outcome.ERASED, Outcome.APPLIED, Outcome.APPLIED]
        assert store.load(["s1", "s3", "s4", "s5"]) == {
            "s1": None,
            "s3": None,
            "s4": other,
            "s5": elsewhere,
        }
