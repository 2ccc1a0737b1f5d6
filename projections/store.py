"""The view store role: where projected session views live, and its in-memory stand-in.

The projector loads the views a batch touches, folds the batch with `evolve`, and hands
back (expected, new) pairs. `apply` writes each new view only if the stored one still has
the expected last offset, which makes every write idempotent and safe against a second,
zombie projector: an offset at or below the stored one changes nothing (DUPLICATE), and
a view that changed under our feet is reported (CONFLICT) for the caller to reload and
fold again. A view whose owner was erased is never written (ERASED), and what was
stored of it goes: a batch opened before the erasure and written after it must not
bring the user's views back. `InMemoryViewStore` is the tiny fake beside the role; the
Redis adapter must behave the same, and one contract test class checks both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from chatlog.projections.access import may_read
from chatlog.projections.encoding import decode_view
from chatlog.projections.tasks import Task
from chatlog.projections.view import SessionStatus, SessionView

__all__ = [
    "Change",
    "InMemoryViewStore",
    "MarksWithWrites",
    "Outcome",
    "SessionEntry",
    "ViewStore",
    "entry",
    "session_entries",
]


class Outcome(enum.Enum):
    """What `apply` did with one change."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    ERASED = "erased"  # its owner was erased: nothing written, and no view left


@dataclass(frozen=True, slots=True)
class Change:
    """Replace `expected` (the view as loaded; None if there was none) by `new`."""

    expected: SessionView | None
    new: SessionView


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """One line of a user's session list."""

    session_id: str
    title: str | None
    status: SessionStatus
    message_count: int
    created_at_ms: int
    updated_at_ms: int
    # The session's tenant: always the tenant the list was asked for.
    tenant: str = "default"
    # The session's long-running tasks, opened (`chatlog.projections.tasks`).
    tasks: tuple[Task, ...] = field(default=(), repr=False)


class ViewStore(Protocol):
    """Stores session views; see the module docstring for the contract."""

    def load(self, session_ids: Collection[str]) -> dict[str, SessionView | None]:
        """The stored view of each session (None where there is none)."""
        ...

    def apply(self, changes: Sequence[Change]) -> list[Outcome]:
        """Write each change if its expected view is still the stored one."""
        ...

    def mark_progress(self, applied: Mapping[int, int]) -> None:
        """Record that every record up to `applied[partition]` (inclusive) is projected.

        A partition's mark never moves back, so a zombie or a replayed batch cannot
        make the projection look further behind than it is.
        """
        ...

    def progress(self) -> dict[int, int]:
        """The last projected offset of each partition with a mark."""
        ...


@runtime_checkable
class MarksWithWrites(Protocol):
    """A view store that can mark progress in the same round trip as the writes (the
    Redis store on one node does): the live projector's batches are small, and a round
    trip of their own for the mark was a tenth of its CPU."""

    def apply_marking(
        self, changes: Sequence[Change], applied: Mapping[int, int]
    ) -> tuple[list[Outcome], bool]:
        """`apply(changes)`, then `mark_progress(applied)` only if every change's session
        now stands at or past its new offset (what a reader of the mark relies on: a
        conflict leaves it for the caller to mark once the session is written); the
        outcomes, and whether it marked."""
        ...


def entry(view: SessionView) -> SessionEntry:
    """The session-list line of `view`."""
    return SessionEntry(
        session_id=view.session_id,
        title=view.title,
        status=view.status,
        message_count=view.message_count,
        created_at_ms=view.created_at_ms,
        updated_at_ms=view.updated_at_ms,
        tenant=view.tenant,
        tasks=view.tasks,
    )


class InMemoryViewStore:
    """A `ViewStore` in a dict, for the pure core's tests."""

    def __init__(self) -> None:
        self.views: dict[str, SessionView] = {}
        self.marks: dict[int, int] = {}
        # (tenant, user) of erased owners, as the key directory's erased mark says.
        self.erased: set[tuple[str, str]] = set()

    def load(self, session_ids: Collection[str]) -> dict[str, SessionView | None]:
        return {s: self.views.get(s) for s in session_ids}

    def apply(self, changes: Sequence[Change]) -> list[Outcome]:
        outcomes = []
        for change in changes:
            stored = self.views.get(change.new.session_id)
            if (change.new.tenant, change.new.user_id) in self.erased:
                self.views.pop(change.new.session_id, None)
                outcomes.append(Outcome.ERASED)
            elif stored is not None and stored.last_offset >= change.new.last_offset:
                outcomes.append(Outcome.DUPLICATE)
            elif _offset(stored) != _offset(change.expected):
                outcomes.append(Outcome.CONFLICT)
            else:
                self.views[change.new.session_id] = change.new
                outcomes.append(Outcome.APPLIED)
        return outcomes

    def mark_progress(self, applied: Mapping[int, int]) -> None:
        for partition, offset in applied.items():
            self.marks[partition] = max(offset, self.marks.get(partition, -1))

    def progress(self) -> dict[int, int]:
        return dict(self.marks)


def session_entries(
    session_ids: Sequence[str],
    metas: Sequence[Mapping[str, str]],
    *,
    tenant: str,
    user_id: str,
    open_view: Callable[[SessionView], SessionView],
) -> tuple[list[SessionEntry], list[str]]:
    """Session-list lines from meta hashes, each view opened with `open_view` (titles
    are sealed); and the ids whose meta is gone or not theirs."""
    entries, gone = [], []
    for session_id, meta in zip(session_ids, metas, strict=True):
        view = decode_view(meta, ())
        if view is not None and may_read(view, tenant=tenant, user_id=user_id):
            entries.append(entry(open_view(view)))
        else:
            gone.append(session_id)
    return entries, gone


def _offset(view: SessionView | None) -> int:
    return -1 if view is None else view.last_offset
