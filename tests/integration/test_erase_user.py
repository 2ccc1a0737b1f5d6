"""Erasing a user against the real Kafka and Redis: every read path, and nothing left.

User X has a live session (a title, a summary, more messages than the window), a session
that expired from Redis (only the log has it) and a session erased on its own (a
tombstone in Redis); user Y has a live session. After `erase_user(X)` every read path
answers erased or not found for every session of X, never content: the read-model, a
point-in-time read, `tail`, the conversation store (which pages beyond the window from
the log), the LangChain history, a replay and `replay --verify`. Nothing of X is left in
Redis, in any generation. Y reads exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.integrations.langchain import ChatlogMessageHistory
from chatlog.integrations.store import ChatlogConversationStore
from chatlog.processors.replay import rebuild, verify
from chatlog.producers.commands import new_event
from chatlog.schemas.errors import Erased, SessionNotFound, UnknownUser
from chatlog.schemas.events import SummaryUpdated, UserErased
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from tests.llm_stub import LlmStub, slow
from tests.processes import (
    ROOT,
    chatlog_cli,
    chatlog_env,
    full_chatlog,
    running_processor,
    running_projector,
    unique_settings,
    wait_for_group,
    wait_until,
)

pytestmark = pytest.mark.integration

X, Y = "xavier", "yvonne"
X_SESSIONS = ("x-live", "x-expired", "x-deleted")


def secret(user: str, what: str) -> str:
    return f"secret-{user}-{what}-4111111111111111"


@pytest.fixture
def settings(kafka, redis_url, redis_prefix) -> Settings:
    # Sealing is what is tested: the canaries must reach it as written, whatever a
    # detector would make of them (redaction has tests of its own).
    return unique_settings(
        kafka, redis_url, redis_prefix, window=2, max_overflow=50, pii_mode="off"
    )


@pytest.fixture
def chat(settings):
    log = full_chatlog(settings)
    yield log
    log.close()


def write_session(chat: ChatLog, user: str, session: str, messages: int) -> Position:
    chat.start_session(session, user_id=user, title=secret(user, f"{session}-title"))
    for n in range(messages):
        role = "user" if n % 2 == 0 else "assistant"
        position = chat.append(
            session, user_id=user, role=role, content=secret(user, f"{session}-{n}")
        )
    summary = SummaryUpdated(
        summary=secret(user, f"{session}-summary"), through_offset=position.offset - 2, model="t"
    )
    return chat.producer.publish(new_event(session, user_id=user, payload=summary))


def projected(kafka, settings: Settings) -> bool:
    store = wiring.live_store(settings)
    marks = store.progress()
    return all(
        marks.get(p, -1) >= end - 1 for p, end in kafka.end_offsets(settings.topic).items() if end
    )


def redis_dump(redis_url: str, prefix: str) -> dict[str, str]:
    """Every key under `prefix`, with its value as text (hashes, lists, sets, strings)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        dump: dict[str, str] = {}
        for key in client.scan_iter(f"{prefix}:*", count=1000):
            kind = client.type(key)
            if kind == "hash":
                value: Any = client.hgetall(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "zset":
                value = client.zrange(key, 0, -1)
            else:
                value = client.get(key)
            dump[key] = json.dumps(value)
        return dump
    finally:
        client.close()


def of_x(dump: dict[str, str]) -> list[str]:
    """The keys of `dump` that name one of X's sessions or X, or hold X's content."""
    return [
        key
        for key, value in dump.items()
        if any(f"{{{s}}}" in key for s in X_SESSIONS)
        or f"{{u:default:{X}}}" in key  # their index (of the first key layout: {u:X})
        or f"{{u:{X}}}" in key
        or f"secret-{X}" in value
    ]


def everything_y_reads(chat: ChatLog, settings: Settings, at: Position) -> dict[str, Any]:
    async def store_and_history() -> tuple[Any, Any, Any]:
        store = ChatlogConversationStore.from_settings(settings)
        try:
            session = await store.get_session("y-live", user_id=Y)
            page = await store.get_messages("y-live", user_id=Y, limit=None)
        finally:
            await store.close()
        return session, page, None

    session, page, _ = asyncio.run(store_and_history())
    return {
        "context": chat.context("y-live", user_id=Y),
        "sessions": chat.sessions(Y),
        "as_of": chat.context("y-live", user_id=Y, as_of=at),
        "store session": session,
        "store page": page,
        "langchain": ChatlogMessageHistory("y-live", Y, log=chat).messages,
        "tail": chatlog_cli(
            settings, "tail", "y-live", "--user", Y, "--no-follow", "--json"
        ).stdout,
    }


def test_every_read_path_answers_erased_for_x_and_y_reads_as_before(
    kafka, settings, chat, redis_url, redis_prefix
):
    write_session(chat, X, "x-live", 6)
    write_session(chat, X, "x-expired", 3)
    write_session(chat, X, "x-deleted", 2)
    chat.producer.publish(new_event("x-deleted", user_id=X, payload=UserErased(reason="bye")))
    y_at = write_session(chat, Y, "y-live", 6)
    with running_projector(settings):
        wait_until(lambda: projected(kafka, settings), timeout=60, what="the projection")
        # x-expired leaves Redis as a session's TTL would take it: only the log has it.
        keys = wiring.live_store(settings).keys
        client = redis.Redis.from_url(redis_url)
        client.delete(keys.meta("x-expired"), keys.messages("x-expired"))
        client.zrem(keys.user_sessions("default", X), "x-expired")
        assert of_x(redis_dump(redis_url, redis_prefix))  # x-live and x-deleted's tombstone
        before = everything_y_reads(chat, settings, y_at)
        assert secret(Y, "y-live-5") in before["tail"]

        erasure = chat.erase_user(X)
        assert (len(erasure.key_ids), erasure.sessions_removed, erasure.already_erased) == (
            1,
            2,  # x-live and x-deleted's tombstone; x-expired had nothing left in Redis
            False,
        )
        assert of_x(redis_dump(redis_url, redis_prefix)) == []

        now = datetime.now(UTC)
        for session in X_SESSIONS:
            with pytest.raises(SessionNotFound):
                chat.context(session, user_id=X)
            with pytest.raises(Erased):
                chat.context(session, user_id=X, as_of=now)
            for args in (
                ("tail", session, "--operator", "--no-follow"),
                ("tail", session, "--user", X, "--no-follow", "--json"),
            ):
                shown = chatlog_cli(settings, *args)
                assert f"secret-{X}" not in shown.stdout + shown.stderr
                assert "erased" in shown.stderr
        assert chat.sessions(X) == []
        for session in X_SESSIONS:
            assert ChatlogMessageHistory(session, X, log=chat).messages == []

        async def from_the_store() -> list[Any]:
            store = ChatlogConversationStore.from_settings(settings)
            try:
                return [
                    (
                        await store.get_session(s, user_id=X),
                        await store.get_messages(s, user_id=X, limit=None),
                    )
                    for s in X_SESSIONS
                ]
            finally:
                await store.close()

        assert asyncio.run(from_the_store()) == [(None, [])] * 3

        # A replay brings none of X back, and --verify finds the live generation whole.
        rebuilt = rebuild(wiring.replay_parts(settings), handover_s=0.0)
        assert rebuilt.generation != "g1"
        assert of_x(redis_dump(redis_url, redis_prefix)) == []
        assert verify(wiring.replay_parts(settings)).differences == []
        checked = chatlog_cli(settings, "replay", "--verify")
        assert checked.returncode == 0, checked.stdout + checked.stderr

        assert everything_y_reads(chat, settings, y_at) == before

        # Twice: harmless, and says so.
        again = chat.erase_user(X)
        assert (again.already_erased, again.key_ids, again.sessions_removed) == (True, (), 0)
        assert again.erased_at == erasure.erased_at
        shown = chatlog_cli(settings, "erase", "--user", X, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["already_erased"] is True


def test_erasing_an_unknown_user_names_them_and_writes_nothing(
    kafka, settings, chat, redis_url, redis_prefix
):
    chat.append("y-1", user_id=Y, role="user", content="hello")
    ends = kafka.end_offsets(settings.keys_topic)
    dump = redis_dump(redis_url, redis_prefix)
    with pytest.raises(UnknownUser, match="user nobody of tenant default"):
        chat.erase_user("nobody")
    shown = chatlog_cli(settings, "erase", "--user", "nobody", "--tenant", "acme")
    assert shown.returncode == 1
    assert "nothing to erase for user nobody of tenant acme" in shown.stderr
    assert kafka.end_offsets(settings.keys_topic) == ends
    assert redis_dump(redis_url, redis_prefix) == dump


# A writer of X and of Y in a process of its own, until the file named by argv[1] exists:
# it appends in turn to X's and Y's sessions and, once told X is erased, keeps trying X
# (a client that retries). It prints what happened as JSON.
WRITER = """
import json, pathlib, sys, time
from chatlog import ChatLog, Erased
stop, counts = pathlib.Path(sys.argv[1]), {"x": 0, "x_erased": 0, "y": 0}
with ChatLog.from_env() as chat:
    n = 0
    while not stop.exists():
        try:
            chat.append(f"x-{n % 4}", user_id="xavier", role="user", content=f"secret-xavier-{n}")
            counts["x"] += 1
        except Erased:
            counts["x_erased"] += 1
        chat.append("y-0", user_id="yvonne", role="user", content=f"secret-yvonne-{n}")
        counts["y"] += 1
        n += 1
        time.sleep(0.01)
print(json.dumps(counts))
"""


def test_erasing_while_a_projector_summarizer_replay_and_writer_of_x_run_leaves_nothing_of_x(
    kafka, redis_url, redis_prefix, tmp_path
):
    with LlmStub() as stub:
        settings = unique_settings(
            kafka,
            redis_url,
            redis_prefix,
            window=2,
            max_overflow=50,
            summary_threshold=3,
            summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
            llm_base_url=stub.base_url,
            llm_model="stub-model",
            llm_timeout_s=10.0,
            partitions=3,
        )
        # Summaries take a while: some of X's are in flight when X is erased.
        stub.script(*[slow(1.5)] * 40)
        stop_file = tmp_path / "stop"
        with (
            running_projector(settings, log=tmp_path / "projector.log"),
            running_processor(
                "summarizer", settings, log=tmp_path / "summarizer.log"
            ) as summarizer,
        ):
            wait_for_group(kafka, settings.summarizer_group)
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(stop_file)],
                env=chatlog_env(settings),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_until(lambda: len(stub.requests) >= 2, timeout=60, what="summaries under way")
            # A rebuild into a new generation runs through the erasure too.
            replay = subprocess.Popen(
                [sys.executable, "-m", "chatlog.cli", "replay"],
                env=chatlog_env(settings),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            time.sleep(0.5)
            with full_chatlog(settings) as chat:
                erasure = chat.erase_user(X)
            time.sleep(3.0)  # late appends, retries, summaries that were in flight
            stop_file.touch()
            out, err = writer.communicate(timeout=60)
            assert writer.returncode == 0, err
            counts = json.loads(out)
            replayed, _ = replay.communicate(timeout=120)
            assert replay.returncode == 0, replayed
            wait_until(lambda: projected(kafka, settings), timeout=60, what="the projection")
            quiet = {"requests": -1, "since": time.monotonic()}

            def llm_quiet() -> bool:
                if len(stub.requests) != quiet["requests"]:
                    quiet["requests"], quiet["since"] = len(stub.requests), time.monotonic()
                return time.monotonic() - quiet["since"] > 4.0

            wait_until(llm_quiet, timeout=120, what="the summarizer to settle")
            wait_until(lambda: projected(kafka, settings), timeout=60, what="the projection")
            assert summarizer.poll() is None  # it carried on
        summarizer_log = (tmp_path / "summarizer.log").read_text()

    assert erasure.key_ids
    assert not erasure.already_erased
    # The writer was told: X refused within the keyring's recheck time, Y never.
    assert counts["x"] > 0
    assert counts["x_erased"] > 0
    assert counts["y"] > 0
    dump = redis_dump(redis_url, redis_prefix)
    assert of_x(dump) == []
    live = wiring.generations(settings).live()
    assert f"{redis_prefix}:{live}:s:{{y-0}}:meta" in dump
    assert "dropped the summary of x-" in summarizer_log, summarizer_log[-3000:]
