"""Long-running tasks as the read-model keeps them: a session's tasks, folded from its log.

What is a task? Work that outlives the request that started it (a report, an import, an
agent's long run), recorded on the session's log beside the chat: `TaskStarted`, then
heartbeats (`TaskProgressed`), then one outcome (`TaskFinished`, `TaskFailed` or
`TaskCancelled`). `apply_task` folds one such event into the session's tuple of tasks;
`chatlog.projections.view.evolve` calls it, so tasks are stored with the view, atomically
with its offset (a replay changes nothing, a rebuild makes them again, an erasure drops
them with the session).

A task leaves `running` once, for one outcome: an event that would move a finished,
failed or cancelled task (a late heartbeat, a cancel racing a finish) is ignored here, as
it is refused before publishing by the client (`check_transition`). Starting a task id the
session already has is a repeat and changes nothing.

`stalled` is never stored: it is what a running task whose last heartbeat is older than
the stall time looks like *now* (`Task.status_at`), computed when the task is read. A
stored flag would need a sweeper to write it and would be stale between sweeps; reading it
from the heartbeat is exact at every read, and a late heartbeat makes the task running
again with nothing to undo. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from chatlog.schemas.errors import InvalidTransition
from chatlog.schemas.events import (
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    TaskStarted,
)

if TYPE_CHECKING:
    from chatlog.projections.view import SealedFields

__all__ = [
    "SEALED_TASK_FIELDS",
    "InvalidTransition",
    "Task",
    "TaskInfo",
    "TaskStatus",
    "apply_task",
    "check_transition",
    "find_task",
    "is_repeat",
]

# The task's fields that carry the user's data: sealed in events, kept sealed in Redis.
SEALED_TASK_FIELDS = ("input", "note", "result", "error", "reason")


class TaskStatus(enum.StrEnum):
    """Where a task is. `STALLED` is never stored: see `Task.status_at`."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STALLED = "stalled"


_OUTCOMES: Mapping[type[TaskEvent], TaskStatus] = {
    TaskFinished: TaskStatus.SUCCEEDED,
    TaskFailed: TaskStatus.FAILED,
    TaskCancelled: TaskStatus.CANCELLED,
}
_VERBS: Mapping[type[TaskEvent], str] = {
    TaskStarted: "start",
    TaskProgressed: "report progress on",
    TaskFinished: "finish",
    TaskFailed: "fail",
    TaskCancelled: "cancel",
}


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a session. Times are epoch milliseconds; `offset` is its start's."""

    task_id: str
    kind: str
    status: TaskStatus
    offset: int
    started_at_ms: int
    updated_at_ms: int
    heartbeat_at_ms: int
    ended_at_ms: int | None = None
    progress: float | None = None
    input: str = ""
    note: str | None = None
    result: str | None = None
    error: str | None = None
    reason: str | None = None
    # Each sealed field's ciphertext (one entry per event that sealed some), while the
    # fields above hold the empty placeholders the events carried.
    sealed: tuple[SealedFields, ...] = ()

    def status_at(self, now_ms: int, stall_ms: int) -> TaskStatus:
        """The status as a reader sees it at `now_ms`: a running task whose last
        heartbeat is more than `stall_ms` old is `STALLED`."""
        if self.status is TaskStatus.RUNNING and now_ms - self.heartbeat_at_ms > stall_ms:
            return TaskStatus.STALLED
        return self.status

    def opened(self, values: Mapping[str, str]) -> Task:
        """The task with its sealed fields replaced by their opened `values` (by path)."""
        update: dict[str, Any] = {k: v for k, v in values.items() if k in _FIELDS}
        return replace(self, sealed=(), **update)


_FIELDS = frozenset(SEALED_TASK_FIELDS)


def find_task(tasks: tuple[Task, ...], task_id: str) -> Task | None:
    """The task `task_id` of `tasks`, or None."""
    return next((task for task in tasks if task.task_id == task_id), None)


def is_repeat(current: Task | None, payload: TaskEvent) -> bool:
    """Whether `payload` asks for what `current` already is (a retried start of the same
    kind, a second finish, fail or cancel): a retry, answered without publishing."""
    if current is None or isinstance(payload, TaskProgressed):
        return False
    if isinstance(payload, TaskStarted):
        return current.kind == payload.kind
    return current.status is _OUTCOMES[type(payload)]


def check_transition(current: Task | None, payload: TaskEvent) -> None:
    """Raise `InvalidTransition` unless `payload` may be applied to `current` (the task
    as the read-model has it, None for none)."""
    verb = _VERBS[type(payload)]
    if isinstance(payload, TaskStarted):
        if current is not None:
            raise InvalidTransition(
                f"task {payload.task_id} exists already ({current.status.value}); start a "
                f"task under a new id (or leave task_id unset to get one)",
                task_id=payload.task_id,
                status=current.status.value,
            )
        return
    if current is None:
        raise InvalidTransition(
            f"cannot {verb} task {payload.task_id}: the session has no such task in the "
            f"read-model (start it with start_task first, in this session; if it was "
            f"started elsewhere, it is not projected yet: retry)",
            task_id=payload.task_id,
            status=None,
        )
    if current.status is not TaskStatus.RUNNING:
        raise InvalidTransition(
            f"cannot {verb} task {payload.task_id}: it is {current.status.value} already, "
            f"and a task leaves running only once",
            task_id=payload.task_id,
            status=current.status.value,
        )


def apply_task(
    tasks: tuple[Task, ...],
    payload: TaskEvent,
    *,
    offset: int,
    at_ms: int,
    sealed: SealedFields | None,
) -> tuple[Task, ...]:
    """`tasks` after one task event (at `offset`, `at_ms`; `sealed`: its sealed fields).

    An event its task's state does not allow changes nothing (see the module's doc).
    """
    current = find_task(tasks, payload.task_id)
    try:
        check_transition(current, payload)
    except InvalidTransition:
        return tasks
    kept = (sealed,) if sealed is not None else ()
    if isinstance(payload, TaskStarted):
        started = Task(
            task_id=payload.task_id,
            kind=payload.kind,
            status=TaskStatus.RUNNING,
            offset=offset,
            started_at_ms=at_ms,
            updated_at_ms=at_ms,
            heartbeat_at_ms=at_ms,
            input=payload.input,
            sealed=kept,
        )
        return (*tasks, started)
    assert current is not None  # check_transition refused the rest
    update: dict[str, Any] = {"updated_at_ms": max(current.updated_at_ms, at_ms)}
    if isinstance(payload, TaskProgressed):
        update["heartbeat_at_ms"] = max(current.heartbeat_at_ms, at_ms)
        if payload.progress is not None:
            update["progress"] = payload.progress
        if payload.note is not None:
            update["note"] = payload.note
            # A new note's ciphertext replaces the old one's.
            update["sealed"] = _without(current.sealed, "note") + kept
    else:
        update["status"] = _OUTCOMES[type(payload)]
        update["ended_at_ms"] = at_ms
        if isinstance(payload, TaskFinished):
            update["result"], update["progress"] = payload.result, 1.0
        elif isinstance(payload, TaskFailed):
            update["error"] = payload.error
        else:
            update["reason"] = payload.reason
        update["sealed"] = current.sealed + kept
    changed = replace(current, **update)
    return tuple(changed if task is current else task for task in tasks)


def _without(sealed: tuple[SealedFields, ...], path: str) -> tuple[SealedFields, ...]:
    return tuple(entry for entry in sealed if path not in entry.fields)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as a reader gets it: opened, its status as of the read (`stalled` included),
    `input` and `result` parsed from their JSON text."""

    session_id: str
    task_id: str
    kind: str
    status: TaskStatus
    started_at_ms: int
    updated_at_ms: int
    heartbeat_at_ms: int
    ended_at_ms: int | None
    progress: float | None
    input: Any
    note: str | None
    result: Any
    error: str | None
    reason: str | None

    @classmethod
    def of(cls, session_id: str, task: Task, *, now_ms: int | None, stall_ms: int = 0) -> TaskInfo:
        """What `task` (of an opened view) looks like at `now_ms` (None: as recorded,
        never `stalled`)."""
        return cls(
            session_id=session_id,
            task_id=task.task_id,
            kind=task.kind,
            status=task.status if now_ms is None else task.status_at(now_ms, stall_ms),
            started_at_ms=task.started_at_ms,
            updated_at_ms=task.updated_at_ms,
            heartbeat_at_ms=task.heartbeat_at_ms,
            ended_at_ms=task.ended_at_ms,
            progress=task.progress,
            input=_parsed(task.input),
            note=task.note,
            result=None if task.result is None else _parsed(task.result),
            error=task.error,
            reason=task.reason,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (the CLI's and the gateway's)."""
        doc = {name: getattr(self, name) for name in self.__slots__}
        doc["status"] = self.status.value
        return doc


def _parsed(text: str) -> Any:
    # Written by `chatlog.client` as JSON; a producer in another language may write any
    # text, which is then returned as it is.
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
