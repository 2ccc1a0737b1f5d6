"""A session's long-running tasks, folded by the pure view: transitions, stalls, storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chatlog.projections.encoding import decode_view, encode_meta
from chatlog.projections.tasks import TaskStatus, check_transition, find_task
from chatlog.projections.view import SessionView, fold
from chatlog.schemas.errors import InvalidTransition
from chatlog.schemas.events import (
    ConversationEvent,
    Payload,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    TaskStarted,
    UserErased,
    epoch_millis,
)
from chatlog.schemas.position import Position

T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


def _fold(*payloads: Payload, view: SessionView | None = None) -> SessionView:
    start = -1 if view is None else view.last_offset
    events = [
        (
            ConversationEvent(
                session_id="s-1",
                user_id="u-1",
                occurred_at=T0 + timedelta(seconds=start + 1 + i),
                payload=payload,
            ),
            Position(0, start + 1 + i),
        )
        for i, payload in enumerate(payloads)
    ]
    folded, refused = fold(view, events)
    assert folded is not None
    assert not refused
    return folded


def test_a_task_runs_reports_progress_and_finishes():
    view = _fold(
        TaskStarted(task_id="t-1", kind="report", input='{"m": 11}'),
        TaskProgressed(task_id="t-1", progress=0.5, note="half"),
        TaskFinished(task_id="t-1", result='{"ok": true}'),
    )
    (task,) = view.tasks
    assert task.status is TaskStatus.SUCCEEDED
    assert (task.kind, task.input, task.note, task.result) == (
        "report",
        '{"m": 11}',
        "half",
        '{"ok": true}',
    )
    assert task.progress == 1.0
    assert task.started_at_ms == epoch_millis(T0)
    assert task.heartbeat_at_ms == epoch_millis(T0 + timedelta(seconds=1))
    assert task.ended_at_ms == epoch_millis(T0 + timedelta(seconds=2))


def test_a_task_leaves_running_once_and_a_repeated_start_changes_nothing():
    view = _fold(
        TaskStarted(task_id="t-1", kind="a"),
        TaskCancelled(task_id="t-1", reason="asked"),
        TaskFinished(task_id="t-1", result="1"),  # a finish racing the cancel: ignored
        TaskProgressed(task_id="t-1", progress=0.9),  # a late heartbeat: ignored
        TaskStarted(task_id="t-1", kind="b"),  # a repeat: ignored
        TaskFailed(task_id="t-unknown", error="x"),  # no such task: ignored
    )
    (task,) = view.tasks
    assert (task.status, task.kind, task.reason, task.result) == (
        TaskStatus.CANCELLED,
        "a",
        "asked",
        None,
    )


def test_check_transition_names_the_task_and_its_state():
    view = _fold(TaskStarted(task_id="t-1", kind="a"), TaskFailed(task_id="t-1", error="boom"))
    current = find_task(view.tasks, "t-1")
    with pytest.raises(InvalidTransition, match="cannot finish task t-1: it is failed already"):
        check_transition(current, TaskFinished(task_id="t-1"))
    with pytest.raises(InvalidTransition, match="no such task"):
        check_transition(None, TaskCancelled(task_id="t-2"))
    with pytest.raises(InvalidTransition, match="exists already"):
        check_transition(current, TaskStarted(task_id="t-1", kind="a"))


def test_stalled_is_read_from_the_last_heartbeat_never_stored():
    view = _fold(TaskStarted(task_id="t-1", kind="a"), TaskProgressed(task_id="t-1"))
    (task,) = view.tasks
    beat = task.heartbeat_at_ms
    assert task.status_at(beat + 30_000, 30_000) is TaskStatus.RUNNING
    assert task.status_at(beat + 30_001, 30_000) is TaskStatus.STALLED
    # A heartbeat arriving late makes it running again, with nothing to undo.
    later = _fold(TaskProgressed(task_id="t-1"), view=view).tasks[0]
    assert later.status_at(beat + 30_001, 30_000) is TaskStatus.RUNNING
    finished = _fold(TaskFinished(task_id="t-1"), view=view).tasks[0]
    assert finished.status_at(beat + 10**9, 30_000) is TaskStatus.SUCCEEDED


def test_tasks_round_trip_through_the_stored_meta_and_go_with_an_erasure():
    view = _fold(
        TaskStarted(task_id="t-1", kind="a", input="[1]"),
        TaskProgressed(task_id="t-1", progress=0.25, note="n"),
        TaskStarted(task_id="t-2", kind="b"),
    )
    stored = decode_view(encode_meta(view, window=20), ())
    assert stored is not None
    assert stored.tasks == view.tasks
    assert _fold(UserErased(), view=view).tasks == ()
