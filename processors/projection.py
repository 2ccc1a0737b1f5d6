"""The projector's logic, without Kafka: turn a batch of records into view writes.

What does one batch do? It decodes every record, sets aside what cannot be projected
(undecodable bytes, a key that is not the event's session, an event from someone who
does not own the session), groups the rest by session, folds each session's events into
its view with `evolve`, and writes every changed view in one `ViewStore.apply`. It
returns the records to dead-letter rather than sending them: the Kafka adapter sends
them, and only then stores the batch's offsets (Kafka Streams' `forward`, in small).

A view whose owner was erased after the batch was opened is refused by the store
(`Outcome.ERASED`) and counted with the erased events: it is never retried.

A view written by someone else meanwhile (a zombie projector after a rebalance) makes
`apply` report a conflict; the session is then reloaded and folded again, and `evolve`
skips what the stored view already has. So any interleaving of crashes, restarts and
rebalances ends in the same views as one uninterrupted run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from chatlog.projections.checkpoints import (
    CheckpointKind,
    CheckpointRecord,
    CheckpointSink,
    checkpoint_records,
    is_thread_event,
)
from chatlog.projections.opening import ERASED, EventOpener, Opened
from chatlog.projections.store import Change, MarksWithWrites, Outcome, ViewStore
from chatlog.projections.view import DEFAULT_POLICY, SessionView, WindowPolicy, fold
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import (
    ChatlogError,
    Conflict,
    DecodeError,
    InvalidEvent,
    InvalidInput,
    Undecryptable,
)
from chatlog.schemas.events import ConversationEvent, epoch_millis
from chatlog.schemas.position import Position

__all__ = ["BatchResult", "DeadLetter", "ProjectionCore", "Record", "decode_record"]

_MAX_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record, as the core needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be projected, and why."""

    record: Record
    error: ChatlogError


@dataclass(slots=True)
class BatchResult:
    """What one batch did."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    applied: int = 0
    unchanged: int = 0
    duplicates: int = 0
    conflicts: int = 0
    events: int = 0
    # An erased user's events: sealed under a destroyed key and skipped, or opened before
    # the erasure and refused by the store after it.
    erased: int = 0
    # The last offset of each partition in the batch: all projected once `handle` returns.
    last_offsets: dict[int, int] = field(default_factory=dict)
    # Events that a written view took in (`applied` counts the views), kept for
    # `applied_at_ms`.
    events_applied: int = 0
    applied_events: list[ConversationEvent] = field(default_factory=list)

    @property
    def applied_at_ms(self) -> list[int]:
        """When each applied event was appended (`occurred_at`, epoch ms): the metrics'
        publish-to-visible latency. Computed when asked: a replay never asks, and the
        conversion was about 5% of its CPU."""
        return [epoch_millis(event.occurred_at) for event in self.applied_events]


class ProjectionCore:
    """Folds batches into a `ViewStore`, caching recently written views."""

    def __init__(
        self,
        store: ViewStore,
        *,
        codec: EventCodec | None = None,
        policy: WindowPolicy = DEFAULT_POLICY,
        cache_size: int = 10_000,
        opener: EventOpener | None = None,
    ) -> None:
        self.store = store
        self.codec = codec or EventCodec()
        # Checks that sealed events open (those that do not are dead-lettered); they are
        # folded and stored sealed. Without one, they are projected unchecked.
        self.opener = opener
        self.policy = policy
        self.cache_size = cache_size
        # Views as last written by this process, so a hot session needs no read per batch.
        self._cache: OrderedDict[str, SessionView] = OrderedDict()
        # Which optional roles `store` has, checked once per store (it changes when the
        # live generation does): an isinstance of a runtime-checkable protocol takes
        # 6-15 µs, twice a batch, and a live batch holds a few events.
        self._roles_of: ViewStore | None = None
        self._roles = (False, False)

    def _store_roles(self) -> tuple[bool, bool]:
        """Whether the store is a `CheckpointSink`, and whether it `MarksWithWrites`."""
        if self._roles_of is not self.store:
            self._roles_of = self.store
            self._roles = (
                isinstance(self.store, CheckpointSink),
                isinstance(self.store, MarksWithWrites),
            )
        return self._roles

    def handle(self, records: Sequence[Record]) -> BatchResult:
        """Project `records` (in log order per partition); see the module docstring."""
        result = BatchResult()
        by_session: dict[str, list[tuple[ConversationEvent, Position]]] = {}
        last = result.last_offsets
        decoded: list[tuple[Record, ConversationEvent]] = []
        for record in records:
            if record.offset > last.get(record.partition, -1):
                last[record.partition] = record.offset
            event = self._decode(record, result)
            if event is not None:
                decoded.append((record, event))
        for record, opened in self._open(decoded):
            if opened is ERASED:
                result.erased += 1  # its owner's key is destroyed: nothing to project
                continue
            if isinstance(opened, Undecryptable):
                result.dead_letters.append(DeadLetter(record, opened))
                continue
            assert isinstance(opened, ConversationEvent)
            result.events += 1
            position = Position(record.partition, record.offset)
            by_session.setdefault(opened.session_id, []).append((opened, position))
        pending = by_session
        marked = False
        for _ in range(_MAX_ROUNDS):
            pending, marked_now = self._write(pending, records, result)
            marked = marked or marked_now
            if not pending:
                # Readers that must know a whole partition is projected up to an offset
                # (the summarizer, a replay catching up) read this mark, not the views:
                # an event refused as foreign moves no view. A store that marks with its
                # writes did so once every session it wrote stood at its new offset.
                if not marked:
                    self.store.mark_progress(last)
                return result
            self.forget(pending)  # someone else wrote these sessions: reload them
        raise Conflict(
            f"sessions kept changing under the projector for {_MAX_ROUNDS} rounds: "
            f"{sorted(pending)[:5]}; is a second projector writing the same generation?"
        )

    def forget(self, session_ids: Iterable[str] | None = None) -> None:
        """Drop cached views (all of them by default), e.g. when partitions move."""
        if session_ids is None:
            self._cache.clear()
        else:
            for session_id in session_ids:
                self._cache.pop(session_id, None)

    def forget_partitions(self, partitions: Collection[int]) -> None:
        """Drop the cached views of the sessions of `partitions` (a replay done with them)."""
        gone = [s for s, view in self._cache.items() if view.partition in partitions]
        self.forget(gone)

    def _open(self, decoded: list[tuple[Record, ConversationEvent]]) -> list[tuple[Record, Opened]]:
        if self.opener is None or not decoded:
            return list(decoded)
        opened = self.opener.open_batch([event for _, event in decoded], verify=True)
        return [(record, o) for (record, _), o in zip(decoded, opened, strict=True)]

    def _decode(self, record: Record, result: BatchResult) -> ConversationEvent | None:
        try:
            return decode_record(self.codec, record)
        except (DecodeError, InvalidInput) as exc:
            result.dead_letters.append(DeadLetter(record, exc))
            return None

    def _write(
        self,
        by_session: dict[str, list[tuple[ConversationEvent, Position]]],
        records: Sequence[Record],
        result: BatchResult,
    ) -> tuple[dict[str, list[tuple[ConversationEvent, Position]]], bool]:
        """Fold and write `by_session`: the sessions to fold again (written by someone
        else meanwhile), and whether the store marked the batch's progress."""
        views = self._views(by_session)
        records_at: dict[tuple[int, int], Record] | None = None  # built only if needed
        changes = []
        taken: dict[str, list[ConversationEvent]] = {}
        for session_id, events in by_session.items():
            before = views[session_id]
            after, refused = fold(before, events, self.policy)
            # What the view did not have yet: a replayed range is skipped by `evolve`.
            skipped = {id(event) for event, _, _ in refused}
            seen = before.last_offset if before is not None else -1
            taken[session_id] = [
                event for event, at in events if id(event) not in skipped and at.offset > seen
            ]
            for _, position, error in refused:
                if records_at is None:
                    records_at = {(r.partition, r.offset): r for r in records}
                record = records_at[(position.partition, position.offset)]
                if all(d.record is not record for d in result.dead_letters):
                    result.dead_letters.append(DeadLetter(record, error))
            if after is None or (before is not None and after.last_offset == before.last_offset):
                result.unchanged += 1
                if before is not None:
                    self._remember(before)  # a replayed range: next batch needs no reload
                continue
            changes.append(Change(before, after))
        self._keep_checkpoints(taken, by_session, records)
        marked = False
        if changes and self._store_roles()[1]:
            outcomes, marked = cast(MarksWithWrites, self.store).apply_marking(
                changes, result.last_offsets
            )
        else:
            outcomes = self.store.apply(changes)
        retry: dict[str, list[tuple[ConversationEvent, Position]]] = {}
        for change, outcome in zip(changes, outcomes, strict=True):
            session_id = change.new.session_id
            if outcome is Outcome.APPLIED:
                result.applied += 1
                result.events_applied += len(taken[session_id])
                result.applied_events += taken[session_id]
                self._remember(change.new)
                continue
            if outcome is Outcome.ERASED:
                # Its owner was erased after the batch was opened: the store wrote nothing
                # (and deleted what it had), and nothing of it may stay here either.
                result.erased += len(by_session[session_id])
                self.forget([session_id])
                self._drop_checkpoints(session_id, change.new.position)
                continue
            # Someone else wrote the session meanwhile (DUPLICATE: these very events):
            # reload it and fold again; evolve skips what the stored view already has.
            if outcome is Outcome.DUPLICATE:
                result.duplicates += 1
            else:
                result.conflicts += 1
            retry[session_id] = by_session[session_id]
        return retry, marked

    def _keep_checkpoints(
        self,
        taken: dict[str, list[ConversationEvent]],
        by_session: dict[str, list[tuple[ConversationEvent, Position]]],
        records: Sequence[Record],
    ) -> None:
        """Hand the LangGraph threads' events the views took in to the store that keeps
        them, before the views: a reader that sees a view's offset finds them."""
        if not self._store_roles()[0]:
            return
        found = []
        values: dict[tuple[int, int], bytes] | None = None
        for session_id, events in taken.items():
            chosen = {id(event) for event in events if is_thread_event(event)}
            if not chosen:
                continue
            if values is None:
                values = {(r.partition, r.offset): r.value or b"" for r in records}
            kept = [(e, at) for e, at in by_session[session_id] if id(e) in chosen]
            found += checkpoint_records(session_id, kept, values)
        cast(CheckpointSink, self.store).apply_checkpoints(found)

    def _drop_checkpoints(self, session_id: str, position: Position) -> None:
        if self._store_roles()[0]:
            erased = CheckpointRecord(CheckpointKind.ERASED, session_id, position)
            cast(CheckpointSink, self.store).apply_checkpoints([erased])

    def _views(self, session_ids: Iterable[str]) -> dict[str, SessionView | None]:
        views: dict[str, SessionView | None] = {}
        missing = []
        for session_id in session_ids:
            cached = self._cache.get(session_id)
            if cached is None:
                missing.append(session_id)
            else:
                self._cache.move_to_end(session_id)
                views[session_id] = cached
        if missing:
            views.update(self.store.load(missing))
        return views

    def _remember(self, view: SessionView) -> None:
        self._cache[view.session_id] = view
        self._cache.move_to_end(view.session_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def decode_record(codec: EventCodec, record: Record) -> ConversationEvent:
    """The event `record` carries; `DecodeError` or `InvalidInput` if it is not a chatlog
    event keyed by its session (the projector dead-letters those)."""
    if record.value is None:
        raise InvalidEvent("record has no value (a tombstone?); events are never null")
    event = codec.decode(record.value)
    if record.key != event.session_id.encode():
        raise InvalidEvent(
            f"record key {record.key!r} is not the event's session_id "
            f"{event.session_id!r}; chatlog keys every event by its session"
        )
    return event
