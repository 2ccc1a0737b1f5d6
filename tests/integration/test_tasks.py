"""Long-running tasks on the session's log: their life, stalls, another user, erasure, a
replay, the async client. Real Kafka, Redis and projector; sealed as in production."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import redis

from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.processors.replay import rebuild
from chatlog.projections.tasks import TaskStatus
from chatlog.schemas.errors import InvalidTransition, OwnershipError, SessionNotFound
from tests.processes import chatlog_cli, delete_prefix, running_projector, unique_settings

pytestmark = pytest.mark.integration

CANARY = "canary-4111111111111111-task"


@pytest.fixture(scope="module")
def stack(kafka, redis_url):
    prefix = f"tsk{uuid.uuid4().hex[:8]}"
    settings = unique_settings(kafka, redis_url, prefix)
    yield settings
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def projector(stack):
    with running_projector(stack):
        yield


@pytest.fixture
def log(stack):
    log = ChatLog.from_settings(stack, flush_on_sigterm=False)
    log.read_timeout_s = 30
    yield log
    log.close()


def _session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def _raw_redis(redis_url: str, prefix: str) -> bytes:
    """Every value under the prefix, concatenated: what Redis holds at rest."""
    client = redis.Redis.from_url(redis_url)
    try:
        held = b""
        for key in client.scan_iter(f"{prefix}:*"):
            if client.type(key) == b"hash":
                held += b"".join(client.hgetall(key).values())
        return held
    finally:
        client.close()


def test_a_task_runs_to_its_end_and_cannot_move_after(stack, redis_url, log, projector):
    session = _session()
    task_id = log.start_task(session, user_id="ana", kind="report", input={"q": CANARY})
    log.progress(task_id, session_id=session, user_id="ana", progress=0.5, note="half")
    position = log.finish(task_id, session_id=session, user_id="ana", result={"url": "r.pdf"})
    assert position is not None

    (task,) = log.tasks("ana", session_id=session)
    assert (task.task_id, task.kind, task.status) == (task_id, "report", TaskStatus.SUCCEEDED)
    assert (task.input, task.note, task.result, task.progress) == (
        {"q": CANARY},
        "half",
        {"url": "r.pdf"},
        1.0,
    )
    assert task.started_at_ms <= task.heartbeat_at_ms <= task.ended_at_ms
    # The user's listing (across sessions, from their session index) has it too.
    assert task_id in [t.task_id for t in log.tasks("ana")]

    # A retry of the finish is answered without publishing; a cancel is refused.
    assert log.finish(task_id, session_id=session, user_id="ana", result={"url": "r.pdf"}) is None
    with pytest.raises(InvalidTransition, match=f"cannot cancel task {task_id}: it is succeeded"):
        log.cancel(task_id, session_id=session, user_id="ana")
    # An unknown task is waited for up to the read timeout (another process may have
    # started it), then refused.
    log.read_timeout_s = 1
    started = time.monotonic()
    with pytest.raises(InvalidTransition, match="no such task"):
        log.fail("t-unknown", session_id=session, user_id="ana", error="x")
    assert time.monotonic() - started < 5
    assert log.context(session, user_id="ana").position == position  # nothing published

    # Sealed at rest like content: Redis holds no input in the clear.
    assert CANARY.encode() not in _raw_redis(redis_url, stack.redis_prefix)

    # The person's export (read from the log, opened with their key) holds the task.
    document = log.export_user("ana")
    [exported] = [s for s in document["sessions"] if s["session_id"] == session]
    [shown] = [t for t in exported["tasks"] if t["task_id"] == task_id]
    assert (shown["status"], shown["input"], shown["result"]) == (
        "succeeded",
        {"q": CANARY},
        {"url": "r.pdf"},
    )


def test_the_cli_lists_a_users_tasks(stack, log, projector):
    session = _session()
    task_id = log.start_task(session, user_id="gus", kind="export", input={"a": 1})
    log.progress(task_id, session_id=session, user_id="gus", progress=0.4)

    listed = chatlog_cli(stack, "tasks", "--user", "gus", "--session", session, "--json")
    human = chatlog_cli(stack, "tasks", "--user", "gus", "--session", session)
    refused = chatlog_cli(stack, "tasks", "--user", "mallory", "--session", session)

    assert listed.returncode == 0, listed.stderr
    [shown] = json.loads(listed.stdout)
    assert (shown["task_id"], shown["status"], shown["progress"], shown["input"]) == (
        task_id,
        "running",
        0.4,
        {"a": 1},
    )
    assert human.stdout.split() == [task_id, "export", "running", "40%", session]
    assert refused.returncode != 0
    assert "not found" in refused.stderr.lower() or "no session" in refused.stderr.lower()


def test_a_task_without_heartbeats_reads_as_stalled_until_one_arrives(log, projector):
    session = _session()
    log.task_stall_ms = 1500
    task_id = log.start_task(session, user_id="ben", kind="import")
    (task,) = log.tasks("ben", session_id=session)
    assert task.status is TaskStatus.RUNNING
    time.sleep(1.6)
    assert log.tasks("ben", session_id=session)[0].status is TaskStatus.STALLED
    log.progress(task_id, session_id=session, user_id="ben", progress=0.1)
    assert log.tasks("ben", session_id=session)[0].status is TaskStatus.RUNNING


def test_another_users_session_and_tasks_are_refused(log, projector):
    session = _session()
    task_id = log.start_task(session, user_id="cleo", kind="report")
    with pytest.raises(SessionNotFound):
        log.cancel(task_id, session_id=session, user_id="mallory")
    with pytest.raises(SessionNotFound):
        log.tasks("mallory", session_id=session)
    with pytest.raises(OwnershipError):
        log.start_task(session, user_id="mallory", kind="report")
    assert log.tasks("mallory") == []
    assert log.tasks("cleo", session_id=session)[0].status is TaskStatus.RUNNING


def test_erasing_the_user_removes_their_tasks(stack, redis_url, log, projector):
    session = _session()
    task_id = log.start_task(session, user_id="dora", kind="report", input=CANARY)
    log.fail(task_id, session_id=session, user_id="dora", error=f"failed on {CANARY}")
    assert log.tasks("dora", session_id=session)[0].error == f"failed on {CANARY}"

    log.erase_user("dora")
    assert log.tasks("dora") == []
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(f"{stack.redis_prefix}:*{{{session}}}*")) == []
    finally:
        client.close()


def test_a_replay_rebuilds_the_tasks_from_the_log(stack, log, projector):
    session = _session()
    done = log.start_task(session, user_id="eli", kind="a", input=[1])
    log.cancel(done, session_id=session, user_id="eli", reason="asked")
    running = log.start_task(session, user_id="eli", kind="b")
    log.progress(running, session_id=session, user_id="eli", progress=0.25, note="n")
    before = log.tasks("eli", session_id=session)

    rebuild(wiring.replay_parts(stack), handover_s=0.5)
    log.reader.keys(refresh=True)
    after = log.tasks("eli", session_id=session)
    assert after == before
    assert {t.task_id: t.status for t in after} == {
        done: TaskStatus.CANCELLED,
        running: TaskStatus.RUNNING,
    }


def test_the_async_client_runs_a_task(stack, projector):
    async def run() -> list:
        log = AsyncChatLog.from_settings(stack, flush_on_sigterm=False)
        log.read_timeout_s = 30
        try:
            session = _session()
            task_id = await log.start_task(session, user_id="fay", kind="sync", input={"n": 1})
            await log.progress(task_id, session_id=session, user_id="fay", progress=0.9)
            await log.finish(task_id, session_id=session, user_id="fay", result=2)
            with pytest.raises(InvalidTransition):
                await log.progress(task_id, session_id=session, user_id="fay")
            return await log.tasks("fay")
        finally:
            await log.aclose()

    (task,) = asyncio.run(run())
    assert (task.status, task.input, task.result) == (TaskStatus.SUCCEEDED, {"n": 1}, 2)
