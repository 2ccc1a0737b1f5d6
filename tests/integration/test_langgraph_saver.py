"""`ChatlogCheckpointSaver` beyond LangGraph's suite: its bound, ownership, sealing,
read-your-writes behind a stopped projector, and erasure. Real Kafka, Redis, projector.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from confluent_kafka.admin import ConfigResource
from langgraph.checkpoint.base import empty_checkpoint

from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.integrations.langgraph import ChatlogCheckpointSaver
from chatlog.integrations.positions import PositionBook
from chatlog.processors.replay import rebuild
from chatlog.schemas.errors import InvalidEvent, OwnershipError, ReadTimeout, SessionNotFound
from chatlog.schemas.events import MAX_CHECKPOINT_BYTES
from tests.processes import delete_prefix, running_projector, unique_settings

pytestmark = pytest.mark.integration

CANARY = "canary-4111111111111111-checkpoint"


@pytest.fixture(scope="module")
def stack(kafka, redis_url):
    prefix = f"lgs{uuid.uuid4().hex[:8]}"
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


def _thread() -> dict:
    return {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:12]}", "checkpoint_ns": ""}}


def _checkpoint(**values):
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = values
    checkpoint["channel_versions"] = dict.fromkeys(values, 1)
    return checkpoint


def _end_offsets(kafka, topic: str) -> list[int]:
    return [m.offset() for m in kafka.consume_all(topic)]


def test_the_bound_fits_the_brokers_record_limit_and_a_bigger_checkpoint_is_refused_unsent(
    kafka, stack, log, projector
):
    # What the broker takes, measured on the events topic itself.
    resource = ConfigResource("topic", stack.topic)
    described = kafka.admin().describe_configs([resource])[resource].result(timeout=30)
    record_limit = int(described["max.message.bytes"].value)
    assert record_limit == 1_048_588  # Kafka's default, which the bound is made for

    saver = ChatlogCheckpointSaver(log, user_id="bounded")
    # At the bound (serialized state a little under it: msgpack adds a few bytes), the
    # record is published and read back.
    state = b"\x00\xff" * ((MAX_CHECKPOINT_BYTES - 200) // 2)
    config = saver.put(_thread(), _checkpoint(blob=state), {}, {"blob": 1})
    assert saver.get_tuple(config).checkpoint["channel_values"]["blob"] == state
    sizes = [len(m.value()) for m in kafka.consume_all(stack.topic)]
    assert max(sizes) < record_limit
    print(f"max.message.bytes {record_limit}; largest record at the bound {max(sizes)}")

    before = _end_offsets(kafka, stack.topic)
    thread = _thread()
    with pytest.raises(InvalidEvent, match="MAX_CHECKPOINT_BYTES") as refused:
        saver.put(thread, _checkpoint(blob=b"x" * (MAX_CHECKPOINT_BYTES + 1)), {}, {"blob": 1})
    assert refused.value.context["limit"] == MAX_CHECKPOINT_BYTES
    assert "nothing was published" in refused.value.message
    with pytest.raises(InvalidEvent, match=r"payload\.writes"):
        saver.put_writes(
            {"configurable": {**thread["configurable"], "checkpoint_id": "c1"}},
            [("big", b"y" * (MAX_CHECKPOINT_BYTES + 1))],
            "task-1",
        )
    assert _end_offsets(kafka, stack.topic) == before
    assert saver.get_tuple(thread) is None


def test_another_users_thread_is_refused_on_write_and_absent_on_read(kafka, stack, log, projector):
    alice = ChatlogCheckpointSaver(log, user_id="alice-lg")
    bob = ChatlogCheckpointSaver(log, user_id="bob-lg")
    config = alice.put(_thread(), _checkpoint(secret="alice's"), {}, {"secret": 1})
    assert alice.get_tuple(config) is not None

    before = _end_offsets(kafka, stack.topic)
    with pytest.raises(OwnershipError, match="belongs to another user"):
        bob.put(config, _checkpoint(secret="bob's"), {}, {"secret": 1})
    with pytest.raises(OwnershipError):
        bob.put_writes(config, [("secret", "bob's")], "task-1")
    assert _end_offsets(kafka, stack.topic) == before
    # Reads answer as for a thread that does not exist; so does another tenant's.
    assert bob.get_tuple(config) is None
    assert list(bob.list(config)) == []
    elsewhere = ChatlogCheckpointSaver(log, user_id="alice-lg", tenant="other")
    assert elsewhere.get_tuple(config) is None
    bob.delete_thread(config["configurable"]["thread_id"])  # a no-op, not an erasure
    assert alice.get_tuple(config).checkpoint["channel_values"] == {"secret": "alice's"}


def test_state_is_sealed_in_the_log_and_in_redis(kafka, stack, redis_url, log, projector):
    saver = ChatlogCheckpointSaver(log, user_id="sealed-lg")
    config = saver.put(_thread(), _checkpoint(note=CANARY), {"source": CANARY}, {"note": 1})
    saver.put_writes(config, [("note", CANARY)], "task-1")
    found = saver.get_tuple(config)
    assert found.checkpoint["channel_values"]["note"] == CANARY
    assert found.metadata["source"] == CANARY
    assert found.pending_writes == [("task-1", "note", CANARY)]

    raw = b"".join(m.value() for m in kafka.consume_all(stack.topic))
    assert CANARY.encode() not in raw
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{stack.redis_prefix}:*:ckpt*"))
        assert keys, "the projector keeps the thread's hashes"
        stored = b"".join(b"".join(client.hgetall(key).values()) for key in keys)
    finally:
        client.close()
    assert CANARY.encode() not in stored


def test_a_read_waits_for_the_projector_to_apply_its_own_write(kafka, redis_url, redis_prefix):
    # A stack of its own: the module's projector must not be running here.
    stack = unique_settings(kafka, redis_url, redis_prefix)
    with running_projector(stack):
        pass  # makes the read-model live, then stops: the projector is behind from now on
    log = ChatLog.from_settings(stack, flush_on_sigterm=False)
    saver = ChatlogCheckpointSaver(log, user_id="waiting-lg", book=PositionBook(), read_timeout=1)
    try:
        # No projector: the read is bounded, and says so, rather than answer "none".
        config = saver.put(_thread(), _checkpoint(step=1), {}, {"step": 1})
        started = time.monotonic()
        with pytest.raises(ReadTimeout, match="projector"):
            saver.get_tuple(config)
        assert time.monotonic() - started < 5

        # A projector that starts while the read waits: the read returns the checkpoint.
        saver.read_timeout = 60
        found: list = []
        reader = threading.Thread(target=lambda: found.append(saver.get_tuple(config)))
        reader.start()
        with running_projector(stack):
            reader.join(timeout=90)
    finally:
        log.close()
    assert len(found) == 1
    assert found[0].checkpoint["channel_values"] == {"step": 1}


def test_delete_thread_erases_the_session_and_erasing_the_user_leaves_nothing(
    stack, redis_url, log, projector
):
    saver = ChatlogCheckpointSaver(log, user_id="erased-lg")
    kept, deleted = _thread(), _thread()
    kept_config = saver.put(kept, _checkpoint(a=1), {}, {"a": 1})
    saver.put(deleted, _checkpoint(a=2), {}, {"a": 1})
    saver.delete_thread(deleted["configurable"]["thread_id"])
    assert saver.get_tuple(deleted) is None
    assert list(saver.list(deleted)) == []
    # The session's erasure is the chat's too: the read-model answers not found.
    with pytest.raises(SessionNotFound, match="erased"):
        log.context(deleted["configurable"]["thread_id"], user_id="erased-lg")
    assert saver.get_tuple(kept_config) is not None

    log.erase_user("erased-lg")
    client = redis.Redis.from_url(redis_url)
    try:
        thread = kept["configurable"]["thread_id"]
        assert list(client.scan_iter(f"{stack.redis_prefix}:*{{{thread}}}*")) == []
    finally:
        client.close()


def test_a_replay_rebuilds_the_threads_checkpoints_from_the_log(stack, log, projector):
    saver = ChatlogCheckpointSaver(log, user_id="replayed-lg")
    first = saver.put(_thread(), _checkpoint(step=1), {"step": 1}, {"step": 1})
    second_config = {"configurable": {**first["configurable"]}}
    second = saver.put(second_config, _checkpoint(step=2), {"step": 2}, {"step": 1})
    saver.put_writes(second, [("step", 3)], "task-1")
    assert saver.get_tuple(second).pending_writes == [("task-1", "step", 3)]

    report = rebuild(wiring.replay_parts(stack), handover_s=0.5)
    assert report.generation != "g1"
    log.reader.keys(refresh=True)
    thread = {"configurable": {"thread_id": first["configurable"]["thread_id"]}}
    latest = saver.get_tuple(thread)  # from the new generation's hashes
    assert latest.config == second
    assert latest.pending_writes == [("task-1", "step", 3)]
    assert [t.metadata["step"] for t in saver.list(thread)] == [2, 1]
