"""What `ChatLog`'s task methods share, sync and async alike: the commands' payloads, the
decision to publish, the listing. No I/O here; the clients read and publish.

A task command is checked against the task as the read-model has it before anything is
published (`chatlog.projections.tasks.check_transition`): a finish after a cancel is an
`InvalidTransition`, with nothing in the log. The same command again (a retry after an
unknown outcome) finds the task already in the state it asks for and returns without
publishing, so retries are harmless.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from chatlog.projections.tasks import Task, TaskInfo, check_transition, find_task, is_repeat
from chatlog.schemas.errors import InvalidInput
from chatlog.schemas.events import TaskEvent, epoch_millis
from chatlog.schemas.ids import validate_id

__all__ = ["json_text", "listed", "must_publish", "now_ms", "task_id_of"]


def json_text(name: str, value: Any) -> str:
    """`value` as the JSON text an event carries ("" for None); `InvalidInput` naming
    `name` for a value JSON cannot hold."""
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"{name} must be JSON-serializable (dicts, lists, strings, numbers, booleans, "
            f"None): {exc}",
            field=name,
        ) from None


def task_id_of(task_id: str | None, new: str) -> str:
    """The caller's task id, checked, or `new` when none is given."""
    return new if task_id is None else validate_id(task_id, field="task_id")


def must_publish(tasks: Iterable[Task], payload: TaskEvent) -> bool:
    """Whether to publish `payload` given the session's `tasks`: False for a repeat,
    `InvalidTransition` for a move the task's state forbids."""
    current = find_task(tuple(tasks), payload.task_id)
    if is_repeat(current, payload):
        return False
    check_transition(current, payload)
    return True


def listed(
    by_session: Iterable[tuple[str, Iterable[Task]]], *, now_ms: int, stall_ms: int
) -> list[TaskInfo]:
    """Every task of the sessions, as of `now_ms`, the most recently started first."""
    infos = [
        TaskInfo.of(session_id, task, now_ms=now_ms, stall_ms=stall_ms)
        for session_id, tasks in by_session
        for task in tasks
    ]
    return sorted(infos, key=lambda info: (-info.started_at_ms, info.task_id))


def now_ms() -> int:
    """The wall clock in epoch milliseconds, as event times are."""
    return epoch_millis(datetime.now(UTC))
