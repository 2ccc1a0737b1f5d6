"""A LangGraph thread's state beside its session: what the projector keeps, what a reader folds.

What is a thread here? A LangGraph ``thread_id`` is a chatlog session: its checkpoints
(`CheckpointSaved`) and each task's pending writes (`CheckpointWritesSaved`) are events
on the session's log, so they share its owner, partition, order, sealing and erasure.
`evolve` lets them make the session (owner, offset) and nothing else; the projector hands
them to a `CheckpointSink`, which keeps, per namespace, the newest checkpoint (by id, as
LangGraph orders them) and the pending writes against it, plus where every checkpoint
sits in the log. Older checkpoints and their writes are read from the log itself.

The rules written once here, for the Redis store and the log reader alike:

* which events the sink receives (`checkpoint_records`): the thread's checkpoints and
  writes, and its erasure, which drops everything the sink holds of it;
* pending writes (`pending_writes`): a task's write at index ``i`` is kept once, the first
  one stored (a retried `put_writes` repeats it); LangGraph's special channels (an error,
  an interrupt: negative indices) are replaced by the newest; they are ordered by task
  path, task id and index, as LangGraph applies them;
* a thread's history (`thread_history`): the checkpoints of the events read from the log,
  each with its writes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from chatlog.schemas.events import (
    CheckpointSaved,
    CheckpointWrite,
    CheckpointWritesSaved,
    ConversationEvent,
    UserErased,
)
from chatlog.schemas.position import Position

__all__ = [
    "CheckpointKind",
    "CheckpointRecord",
    "CheckpointSink",
    "PendingWrite",
    "ThreadCheckpoint",
    "checkpoint_records",
    "is_thread_event",
    "pending_writes",
    "thread_history",
]


class CheckpointKind(enum.StrEnum):
    """What a record does to the thread's stored state."""

    SAVED = "c"
    WRITES = "w"
    ERASED = "e"


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """One event of a thread for the sink: its kind, where it is, and its bytes as logged
    (sealed: the store keeps them as they are, readers open them with the owner's key)."""

    kind: CheckpointKind
    session_id: str
    position: Position
    checkpoint_ns: str = ""
    checkpoint_id: str = ""
    value: bytes = b""


@runtime_checkable
class CheckpointSink(Protocol):
    """A view store that also keeps threads' checkpoints (the Redis store does)."""

    def apply_checkpoints(self, records: Sequence[CheckpointRecord]) -> None:
        """Apply `records` (in log order per session); applying one again changes nothing."""


def is_thread_event(event: ConversationEvent) -> bool:
    """Whether a sink receives `event`: a checkpoint, pending writes, or an erasure."""
    return isinstance(event.payload, CheckpointSaved | CheckpointWritesSaved | UserErased)


def checkpoint_records(
    session_id: str,
    events: Iterable[tuple[ConversationEvent, Position]],
    values: Mapping[tuple[int, int], bytes],
) -> list[CheckpointRecord]:
    """The records a sink receives of the session's projected `events`; `values` holds
    each event's bytes by (partition, offset)."""
    found = []
    for event, position in events:
        payload = event.payload
        value = values.get((position.partition, position.offset), b"")
        if isinstance(payload, CheckpointSaved):
            kind = CheckpointKind.SAVED
        elif isinstance(payload, CheckpointWritesSaved):
            kind = CheckpointKind.WRITES
        elif isinstance(payload, UserErased):
            found.append(CheckpointRecord(CheckpointKind.ERASED, session_id, position))
            continue
        else:
            continue
        found.append(
            CheckpointRecord(
                kind, session_id, position, payload.checkpoint_ns, payload.checkpoint_id, value
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """One pending write, still serialized: LangGraph's ``(task_id, channel, value)``."""

    task_id: str
    task_path: str
    channel: str
    idx: int
    value_type: str
    value: str


def pending_writes(saved: Iterable[CheckpointWritesSaved]) -> list[PendingWrite]:
    """The pending writes that `saved` (in log order) leave, in the order LangGraph
    applies them (see the module docstring)."""
    kept: dict[tuple[str, int], PendingWrite] = {}
    for batch in saved:
        for write in batch.writes:
            key = (batch.task_id, write.idx)
            if write.idx >= 0 and key in kept:
                continue  # a retried put_writes: the first one stands
            kept[key] = _pending(batch, write)
    return sorted(kept.values(), key=lambda w: (w.task_path, w.task_id, w.idx))


def _pending(batch: CheckpointWritesSaved, write: CheckpointWrite) -> PendingWrite:
    return PendingWrite(
        batch.task_id, batch.task_path, write.channel, write.idx, write.value_type, write.value
    )


@dataclass(slots=True)
class ThreadCheckpoint:
    """One checkpoint of a thread, as read from the log, with the writes against it."""

    saved: CheckpointSaved
    position: Position
    writes: list[CheckpointWritesSaved] = field(default_factory=list)


def thread_history(
    events: Iterable[tuple[ConversationEvent, Position]],
) -> dict[tuple[str, str], ThreadCheckpoint]:
    """Each checkpoint the (opened, owner's) `events` hold, by (namespace, id), with its
    pending writes; an erasure forgets what came before it, as the read-model does."""
    found: dict[tuple[str, str], ThreadCheckpoint] = {}
    for event, position in events:
        payload = event.payload
        if isinstance(payload, CheckpointSaved):
            key = (payload.checkpoint_ns, payload.checkpoint_id)
            found.setdefault(key, ThreadCheckpoint(payload, position))
        elif isinstance(payload, CheckpointWritesSaved):
            checkpoint = found.get((payload.checkpoint_ns, payload.checkpoint_id))
            if checkpoint is not None:
                checkpoint.writes.append(payload)
        elif isinstance(payload, UserErased):
            found.clear()
    return found
