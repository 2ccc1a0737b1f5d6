"""The read commands, `run projector` and the demo, run as processes against the real servers.

Every command runs as `python -m chatlog.cli` with CHATLOG_* variables naming a topic,
dead-letter topic, Redis prefix and consumer group of its own, as an operator would run
it. Events are published in-process with the producer, so each test knows the exact
positions it waits for.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest
import redis
from confluent_kafka import Producer

from chatlog import wiring
from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.producers.partitioning import partition_for
from chatlog.projections.redis_vectors import recall_generations
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from dev.services.state import is_running
from tests.processes import ROOT, create_keys_topic, master_key_file

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    """One private topic, DLQ, Redis prefix and group, and ways to run the CLI on them."""

    settings: Settings

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
        for name in (
            "kafka_bootstrap",
            "redis_url",
            "topic",
            "dlq_topic",
            "keys_topic",
            "audit_topic",
            "redis_prefix",
            "projector_group",
            "master_key_file",
        ):
            env[Settings.env_name(name)] = str(getattr(self.settings, name))
        return env

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chatlog.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "chatlog.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def producer(self) -> ConversationProducer:
        # The test process keeps pytest's own SIGTERM behaviour.
        return wiring.producer(self.settings, flush_on_sigterm=False)

    def wait_projected(self, session: str, user: str, position: Position) -> None:
        reader = wiring.reader(self.settings)
        try:
            reader.context(session, user_id=user, after=position, timeout=20)
        finally:
            reader.client.close()


def _stack(kafka, redis_url: str, prefix: str) -> Stack:
    return Stack(
        Settings(
            kafka_bootstrap=kafka.bootstrap,
            redis_url=redis_url,
            topic=kafka.create_topic("cliread"),
            dlq_topic=kafka.create_topic("cliread.dlq"),
            keys_topic=create_keys_topic(kafka),
            audit_topic=kafka.create_topic("cliread.audit", partitions=1),
            redis_prefix=prefix,
            projector_group=f"cliread-{uuid.uuid4().hex[:10]}",
            master_key_file=master_key_file(),
        )
    )


def _drop_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


@pytest.fixture(scope="module")
def projected(kafka, redis_url) -> Iterator[Stack]:
    """A stack with `chatlog run projector` running for the whole module."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    stack = _stack(kafka, redis_url, prefix)
    projector = stack.start("run", "projector")
    try:
        yield stack
    finally:
        _stop(projector)
        _drop_keys(redis_url, prefix)


def _session() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def test_run_projector_projects_and_exits_0_on_sigterm(kafka, redis_url, redis_prefix):
    stack = _stack(kafka, redis_url, redis_prefix)
    projector = stack.start("run", "projector")
    try:
        with stack.producer() as producer:
            positions = [
                producer.append("s-run", user_id="u1", role="user", content=f"m{i}")
                for i in range(3)
            ]
        stack.wait_projected("s-run", "u1", positions[-1])
    finally:
        _, err = _stop(projector)
        _drop_keys(redis_url, redis_prefix)
    assert projector.returncode == 0, err
    settings = stack.settings
    assert (
        f"projecting {settings.topic} (group {settings.projector_group}) "
        f"into Redis prefix {redis_prefix}"
    ) in err
    assert "stopped: ProjectorStats(" in err


def test_run_projector_refuses_a_missing_topic_in_one_line(kafka, redis_url, redis_prefix):
    stack = Stack(
        Settings(
            kafka_bootstrap=kafka.bootstrap,
            redis_url=redis_url,
            topic=f"missing.{uuid.uuid4().hex}",
            redis_prefix=redis_prefix,
            master_key_file=master_key_file(),
        )
    )
    result = stack.cli("run", "projector")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("chatlog: error: topic ")
    assert "chatlog topics create" in line


def test_context_json_holds_the_messages_in_order_with_the_position(projected):
    session = _session()
    turns = [("user", "Where is #A7-1042?"), ("assistant", "On its way."), ("user", "Thanks")]
    with projected.producer() as producer:
        positions = [
            producer.append(session, user_id="alice", role=role, content=content)
            for role, content in turns
        ]

    result = projected.cli(
        "context", session, "--user", "alice", "--after", str(positions[-1]), "--json"
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "session_id": session,
        "user_id": "alice",
        "position": str(positions[-1]),
        "message_count": 3,
        "summary": None,
        "summary_withheld": False,
        "messages": [{"role": role, "content": content} for role, content in turns],
    }


def test_context_applies_the_system_prompt_and_the_token_budget(projected):
    session = _session()
    with projected.producer() as producer:
        for content in ("x" * 400, "y" * 400, "the newest"):
            position = producer.append(session, user_id="bob", role="user", content=content)
    projected.wait_projected(session, "bob", position)

    result = projected.cli(
        "context", session, "--user", "bob", "--system", "Be brief.", "--max-tokens", "30",
        "--json",
    )  # fmt: skip
    human = projected.cli("context", session, "--user", "bob", "--max-tokens", "30")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "the newest"},
    ]
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines() == [
        f"session {session}  owner bob  position {position}  3 messages  showing the newest 1",
        "[user] the newest",
    ]


def test_run_projector_waits_for_a_redis_that_does_not_answer_and_stops_on_sigterm(
    kafka, redis_prefix
):
    # A port nothing listens on: refused at once, as for a Redis that is restarting.
    stack = Stack(
        Settings(
            kafka_bootstrap=kafka.bootstrap,
            redis_url="redis://127.0.0.1:1/0",
            topic=kafka.create_topic("events", partitions=1),
            keys_topic=create_keys_topic(kafka),
            redis_prefix=redis_prefix,
            master_key_file=master_key_file(),
        )
    )
    projector = stack.start("run", "projector")
    try:
        time.sleep(5)  # joined, assigned, and failing to read where to start
        assert projector.poll() is None, projector.communicate()[1]
        projector.send_signal(signal.SIGTERM)
        _, stderr = projector.communicate(timeout=15)
    finally:
        if projector.poll() is None:
            projector.kill()
            projector.communicate()
    assert projector.returncode == 0, stderr
    assert "consumption paused" in stderr
    assert "held, paused, until Redis says where they start" in stderr


def test_context_of_another_users_session_is_refused_in_one_line_as_a_missing_one(projected):
    session = _session()
    with projected.producer() as producer:
        position = producer.append(session, user_id="alice", role="user", content="secret #Z9-0001")
    projected.wait_projected(session, "alice", position)

    theirs = projected.cli("context", session, "--user", "mallory")
    missing = projected.cli("context", "s-missing", "--user", "mallory")

    assert theirs.returncode == missing.returncode == 1
    assert theirs.stdout == ""
    [line] = theirs.stderr.strip().splitlines()
    assert line == (
        f"chatlog: error: no session {session} of user mallory in tenant default; check the "
        f"session id, the user and the tenant"
    )
    assert line.replace(session, "s-missing") == missing.stderr.strip()


def test_context_after_waits_for_the_write(projected):
    session = _session()
    with projected.producer() as producer:
        first = producer.append(session, user_id="carol", role="user", content="first")
        projected.wait_projected(session, "carol", first)
        # Only this test writes to the module's topic now, so the next event of the
        # session's partition lands at the next offset: a position not written yet.
        awaited = Position(first.partition, first.offset + 1)
        reader = projected.start(
            "context", session, "--user", "carol", "--after", str(awaited), "--timeout", "20",
            "--json",
        )  # fmt: skip
        time.sleep(2.0)
        assert reader.poll() is None, "context returned before the awaited write existed"
        second = producer.append(session, user_id="carol", role="user", content="second")
    out, err = reader.communicate(timeout=30)

    assert second == awaited
    assert reader.returncode == 0, err
    shown = json.loads(out)
    assert shown["position"] == str(awaited)
    assert [m["content"] for m in shown["messages"]] == ["first", "second"]


def test_context_after_a_position_never_reached_times_out_in_one_line(projected):
    session = _session()
    with projected.producer() as producer:
        position = producer.append(session, user_id="dave", role="user", content="only")
    projected.wait_projected(session, "dave", position)
    later = Position(position.partition, position.offset + 1000)

    result = projected.cli(
        "context", session, "--user", "dave", "--after", str(later), "--timeout", "0.5"
    )

    assert result.returncode == 75  # temporary: asked again later, it may work
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"chatlog: error: the projection of session {session} did not reach")


def test_sessions_json_lists_the_users_sessions_newest_first(projected):
    user = f"u-{uuid.uuid4().hex[:8]}"
    older, newer = _session(), _session()
    with projected.producer() as producer:
        producer.append(older, user_id=user, role="user", content="one")
        last_older = producer.append(older, user_id=user, role="assistant", content="two")
        time.sleep(0.01)  # distinct last-activity milliseconds
        last_newer = producer.append(newer, user_id=user, role="user", content="three")
        producer.append(_session(), user_id="someone-else", role="user", content="not listed")
    projected.wait_projected(older, user, last_older)
    projected.wait_projected(newer, user, last_newer)

    result = projected.cli("sessions", user, "--json")
    human = projected.cli("sessions", user)

    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(s["session_id"], s["message_count"], s["status"]) for s in listed] == [
        (newer, 1, "open"),
        (older, 2, "open"),
    ]
    assert datetime.fromisoformat(listed[0]["last_activity"]) >= datetime.fromisoformat(
        listed[1]["last_activity"]
    )
    assert human.returncode == 0, human.stderr
    [heading, first, second] = human.stdout.splitlines()
    assert heading.split() == ["SESSION", "STATUS", "MESSAGES", "LAST", "ACTIVITY", "TITLE"]
    assert first.startswith(newer)
    assert second.startswith(older)


def test_tail_no_follow_json_shows_exactly_the_sessions_events(projected, kafka):
    session = _session()
    partitions = projected.settings.partitions
    partition = partition_for(session, partitions)
    # A neighbour on the same partition: tail must leave its events out.
    neighbour = next(
        s for s in (_session() for _ in range(1000)) if partition_for(s, partitions) == partition
    )
    with projected.producer() as producer:
        mine = [producer.append(session, user_id="erin", role="user", content="hello")]
        producer.append(neighbour, user_id="frank", role="user", content="not erin's")
        raw = Producer({"bootstrap.servers": kafka.bootstrap})
        raw.produce(
            projected.settings.topic, key=session.encode(), value=b"not avro", partition=partition
        )
        raw.flush(10)
        mine.append(producer.append(session, user_id="erin", role="assistant", content="hi"))

    result = projected.cli("tail", session, "--user", "erin", "--no-follow", "--json")

    assert result.returncode == 0, result.stderr
    shown = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["position"] for e in shown] == [str(p) for p in mine]
    assert [(e["type"], e["payload"]["content"]) for e in shown] == [
        ("MessageAppended", "hello"),
        ("MessageAppended", "hi"),
    ]
    assert {e["session_id"] for e in shown} == {session}
    [warning] = result.stderr.strip().splitlines()
    assert warning.startswith(f"chatlog: warning: {partition}:{mine[0].offset + 2}: skipped")

    # Another user's session answers as a missing one: nothing of it, no existence oracle.
    theirs = projected.cli("tail", session, "--user", "frank", "--no-follow", "--json")
    missing = projected.cli("tail", _session(), "--user", "frank", "--no-follow", "--json")
    for refused in (theirs, missing):
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert "no session " in refused.stderr
        assert "of user frank (tenant default) in the log" in refused.stderr
    assert f"no session {session} of user frank" in theirs.stderr
    # The operator sees it whoever owns it, and neither flag is a usage error.
    assert projected.cli("tail", session, "--operator", "--no-follow").returncode == 0
    assert projected.cli("tail", session, "--no-follow").returncode == 2


def test_tail_follows_new_events_until_sigterm(projected):
    session = _session()
    with projected.producer() as producer:
        producer.append(session, user_id="grace", role="user", content="before")
        tail = projected.start("tail", session, "--user", "grace", "--json")
        try:
            assert _read_json_line(tail, timeout=20)["payload"]["content"] == "before"
            producer.append(session, user_id="grace", role="user", content="while following")
            assert _read_json_line(tail, timeout=20)["payload"]["content"] == "while following"
        finally:
            _, err = _stop(tail)
    assert tail.returncode == 0, err


def _read_json_line(process: subprocess.Popen[str], *, timeout: float) -> dict:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no line within {timeout} s")
    return json.loads(process.stdout.readline())


def test_the_demo_runs_end_to_end_and_leaves_only_its_chat_page_running(
    kafka, redis_url, recall_redis_url, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    env |= {
        "CHATLOG_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "CHATLOG_REDIS_URL": redis_url,
        "CHATLOG_RECALL_REDIS_URL": recall_redis_url,  # the demo shows recall with it
        "CHATLOG_STATE_DIR": str(tmp_path),  # the projector's log goes there
        "CHATLOG_MASTER_KEY_FILE": str(master_key_file()),
        # The demo cuts its lines to the terminal's width; xdist's workers set COLUMNS=80,
        # which would cut the recalled rows this test reads.
        "COLUMNS": "120",
    }
    result = None
    try:
        result = subprocess.run(
            # Any free port: a developer's own demo may have the default one.
            [sys.executable, "-m", "dev.demo", "--page-port", "0"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        _check_the_demo(result.stdout)
        _check_its_recall(result.stdout, env)
        _check_its_chat_page(result.stdout)
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "dev.demo_page", "stop"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        if result is not None:
            _drop_the_demos_data(kafka, redis_url, result.stdout, recall_redis_url)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the demo's chat page" in stopped.stdout
    for name in ("chatlog serve --dev --bot echo", "a projector"):
        pid = re.search(rf"{name} \(pid (\d+)\)", result.stdout)
        assert pid is not None, result.stdout
        # Detached, so their parent is init: a stopped one may be a zombie for a moment.
        assert not is_running(int(pid.group(1)), marker="chatlog"), f"{name} still runs"


def _check_the_demo(stdout: str) -> None:
    # What it shows is checked by tests (test_support_chats.py); it says it saw it all.
    assert "sanity: every session read back with all its messages" in stdout
    assert "the long chat's 127 turns = " in stdout
    # The card number appended is redacted before it is stored (the default mode).
    assert "readers get 'My card is [CARD], please refund it'" in stdout
    assert "make services-stop" in stdout
    for name in ("projector", "summarizer", "embedder"):
        pid = re.search(rf"{name} +pid (\d+)", stdout)
        assert pid is not None, stdout
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid.group(1)), 0)


def _check_its_recall(stdout: str, env: dict[str, str]) -> None:
    """It recalled the first visit's answer, and its `chatlog recall` line finds it too."""
    assert "Asked about it, recall finds it by meaning:" in stdout
    assert re.search(r"^ +0\.\d+ .*\[assistant\] Unfortunately not: loan machines", stdout, re.M)
    command = re.search(
        r"^  (CHATLOG_RECALL=true (\S+) recall .*?)   # semantic recall$", stdout, re.M
    )
    assert command is not None, stdout
    exported = dict(re.findall(r"^ +(?:export )?(CHATLOG_[A-Z_]+)=(\S+)(?: \\)?$", stdout, re.M))
    variable, *argv = shlex.split(command.group(1))
    answer = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env | exported | dict([variable.split("=", 1)]),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    assert "loan machines are only offered in Berlin and Munich" in answer.stdout


def test_the_demo_skips_recall_saying_why_without_a_query_engine(redis_url, tmp_path):
    from dev.demo import with_recall

    base = {"redis_url": redis_url, "state_dir": tmp_path}
    settings, skipped = with_recall({**base, "recall_redis_url": redis_url})
    assert not settings.recall
    assert skipped is not None
    assert "has no query engine" in skipped
    assert "CHATLOG_RECALL_REDIS_URL" in skipped
    settings, skipped = with_recall({**base, "recall_redis_url": None})
    assert not settings.recall
    assert skipped is not None
    assert "no Redis with the query engine is known" in skipped
    assert "make services" in skipped


def _check_its_chat_page(stdout: str) -> None:
    """The URL it prints serves the page, and its curl line answers the customer's list."""
    url = re.search(r"chat page +(http://127\.0\.0\.1:\d+/) ", stdout)
    curl = re.search(r"^curl +(curl .*)$", stdout, re.MULTILINE)
    user = re.search(r"sign in as (\S+) to see", stdout)
    assert url is not None, stdout
    assert curl is not None, stdout
    assert user is not None, stdout
    page = httpx.get(url.group(1), timeout=30)
    assert page.status_code == 200
    assert "<title>chatlog</title>" in page.text
    answer = subprocess.run(
        [*shlex.split(curl.group(1)), "-sf"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    sessions = json.loads(answer.stdout)["sessions"]
    assert sessions, f"{user.group(1)} has no sessions"
    dev_token = httpx.post(f"{url.group(1)}dev/token", json={"user": user.group(1)}, timeout=30)
    assert dev_token.status_code == 200


def _drop_the_demos_data(kafka, redis_url, stdout: str, recall_redis_url: str) -> None:
    topic = re.search(r"CHATLOG_TOPIC=(\S+)", stdout)
    prefix = re.search(r"CHATLOG_REDIS_PREFIX=(\S+)", stdout)
    if topic:
        kafka.created.extend([topic.group(1), f"{topic.group(1)}.dlq"])
    if prefix:
        _drop_keys(redis_url, prefix.group(1))
        recall = redis.Redis.from_url(recall_redis_url)
        try:
            for generation in recall_generations(recall, prefix=prefix.group(1)):
                recall.execute_command("FT.DROPINDEX", f"{prefix.group(1)}:{generation}:recall")
        finally:
            recall.close()
        _drop_keys(recall_redis_url, prefix.group(1))
