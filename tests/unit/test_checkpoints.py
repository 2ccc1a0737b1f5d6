"""The pure rules of LangGraph threads (`chatlog.projections.checkpoints`) and their events."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chatlog.processors.projection import ProjectionCore, Record
from chatlog.producers.commands import new_event
from chatlog.projections.checkpoints import (
    CheckpointKind,
    CheckpointRecord,
    checkpoint_records,
    pending_writes,
    thread_history,
)
from chatlog.projections.store import InMemoryViewStore
from chatlog.projections.view import SessionStatus
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import InvalidEvent
from chatlog.schemas.events import (
    MAX_CHECKPOINT_BYTES,
    CheckpointSaved,
    CheckpointWrite,
    CheckpointWritesSaved,
    UserErased,
)
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import DataKey, KeyScope, open_event, seal_event


def _saved(checkpoint_id: str, ns: str = "", state: str = "c3RhdGU=") -> CheckpointSaved:
    return CheckpointSaved(
        checkpoint_ns=ns,
        checkpoint_id=checkpoint_id,
        checkpoint_type="msgpack",
        checkpoint=state,
        metadata_type="msgpack",
        metadata="bWV0YQ==",
    )


def _writes(checkpoint_id: str, task: str, *writes: tuple[str, int, str], path: str = ""):
    return CheckpointWritesSaved(
        checkpoint_id=checkpoint_id,
        task_id=task,
        task_path=path,
        writes=tuple(
            CheckpointWrite(channel=c, idx=i, value_type="str", value=v) for c, i, v in writes
        ),
    )


def test_a_retried_write_is_kept_once_and_a_special_one_is_replaced():
    found = pending_writes(
        [
            _writes("c1", "t2", ("a", 0, "first"), path="b"),
            _writes("c1", "t1", ("a", 0, "first"), ("__error__", -1, "old"), path="a"),
            _writes("c1", "t1", ("a", 0, "retried"), ("__error__", -1, "new"), path="a"),
        ]
    )
    assert [(w.task_id, w.channel, w.value) for w in found] == [
        ("t1", "__error__", "new"),  # sorted by task path, task id, index
        ("t1", "a", "first"),
        ("t2", "a", "first"),
    ]


def test_a_threads_history_has_each_checkpoint_with_its_writes_and_forgets_an_erasure():
    at = iter(range(100))

    def event(payload):
        return new_event("thread-1", user_id="alice", payload=payload), Position(0, next(at))

    events = [
        event(_saved("c1")),
        event(_writes("c1", "t1", ("a", 0, "x"))),
        event(_saved("c2")),
        event(_writes("c9", "t1", ("a", 0, "orphan"))),
    ]
    history = thread_history(events)
    assert sorted(history) == [("", "c1"), ("", "c2")]
    assert len(history[("", "c1")].writes) == 1
    assert history[("", "c2")].writes == []
    assert thread_history([*events, event(UserErased())]) == {}


def test_a_checkpoint_over_the_bound_is_refused_naming_the_constant():
    too_big = "A" * ((MAX_CHECKPOINT_BYTES + 3) * 4 // 3)
    with pytest.raises(InvalidEvent, match="MAX_CHECKPOINT_BYTES") as refused:
        new_event("thread-1", user_id="alice", payload=_saved("c1", state=too_big))
    assert refused.value.context["field"] == "payload.checkpoint"


def test_state_and_write_values_are_sealed_and_open_again():
    key = DataKey.new(KeyScope("default", "alice"))
    for payload in (_saved("c1"), _writes("c1", "t1", ("a", 0, "dmFsdWU="))):
        event = new_event("thread-1", user_id="alice", payload=payload)
        sealed = seal_event(event, key)
        assert sealed.sealed is not None
        assert sorted(sealed.sealed.fields) in (["checkpoint", "metadata"], ["writes.0.value"])
        assert open_event(sealed, key) == event


def test_the_projector_makes_the_session_and_hands_the_thread_to_a_sink():
    class Sink(InMemoryViewStore):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[CheckpointRecord] = []

        def apply_checkpoints(self, records):
            self.records += records

    codec, sink = EventCodec(), Sink()
    payloads = [_saved("c1", ns="child:1"), _writes("c1", "t1", ("a", 0, "eA==")), UserErased()]
    records = [
        Record(
            "events",
            0,
            offset,
            b"thread-1",
            codec.encode(new_event("thread-1", user_id="alice", payload=p)),
        )
        for offset, p in enumerate(payloads)
    ]
    ProjectionCore(sink, codec=codec).handle(records)
    view = sink.load(["thread-1"])["thread-1"]
    assert view is not None
    assert (view.user_id, view.status) == ("alice", SessionStatus.ERASED)
    assert [(r.kind, r.checkpoint_ns, r.checkpoint_id) for r in sink.records] == [
        (CheckpointKind.SAVED, "child:1", "c1"),
        (CheckpointKind.WRITES, "", "c1"),
        (CheckpointKind.ERASED, "", ""),
    ]
    assert sink.records[0].value == records[0].value  # stored as logged
    assert checkpoint_records("thread-1", [], {}) == []


def test_the_saver_without_langgraph_names_the_extra_to_install():
    code = (
        "import sys; sys.modules['langgraph'] = None\n"
        "try:\n"
        "    import chatlog.integrations.langgraph\n"
        "except ImportError as missing:\n"
        "    print(missing)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "pip install 'chatlog-memory[langgraph]'" in done.stdout, done.stderr
