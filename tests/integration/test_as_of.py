"""Point-in-time reads from the log (`kafka_history`, `ChatLog.context(as_of=...)`, the CLI).

One module-scoped scenario is published to a private topic of three partitions: session
A (alice) and session B (bob) share a partition, so A's reads must skip B's records; A
also receives a message from mallory and an undecodable record, which the projector would
dead-letter; a SummaryUpdated covers A's overflow (window 2). No projector runs and no
Redis is reachable: the answers come from the log alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from chatlog import AsyncChatLog, ChatLog, wiring
from chatlog.processors.kafka_history import KafkaHistory
from chatlog.producers.commands import append_message, new_event
from chatlog.producers.partitioning import partition_for
from chatlog.projections.context import Context
from chatlog.projections.view import REDACTED, WindowPolicy
from chatlog.schemas.errors import InvalidInput, SessionNotFound
from chatlog.schemas.events import MessageRedacted, SummaryUpdated, UserErased, epoch_millis
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from tests.processes import create_keys_topic, master_key_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
POLICY = WindowPolicy(window=2, max_overflow=50)


@dataclass
class Scenario:
    settings: Settings
    a: str
    b: str
    partition: int
    at: dict[str, Position] = field(default_factory=dict)
    occurred: dict[str, datetime] = field(default_factory=dict)
    before_all: datetime | None = None
    between: datetime | None = None

    def read(self, as_of, *, user: str = "alice", session: str | None = None) -> Context:
        return self.history.context(session or self.a, user_id=user, as_of=as_of)

    @property
    def history(self) -> KafkaHistory:
        # As the client builds it: the settings' window policy, and an opener for the
        # sealed events (its keys come from the key directory in Redis).
        return wiring.kafka_history(self.settings)


def _colliding_sessions() -> tuple[str, str, int]:
    a = f"s-{uuid.uuid4().hex[:10]}"
    partition = partition_for(a, PARTITIONS)
    while True:
        b = f"s-{uuid.uuid4().hex[:10]}"
        if partition_for(b, PARTITIONS) == partition:
            return a, b, partition


def _publish_raw(bootstrap: str, topic: str, partition: int, key: str, value: bytes) -> int:
    offsets: list[int] = []
    producer = Producer({"bootstrap.servers": bootstrap})
    # librdkafka's default partitioner is not murmur2: name the partition.
    producer.produce(
        topic,
        key=key.encode(),
        value=value,
        partition=partition,
        on_delivery=lambda err, msg: offsets.append(msg.offset()),
    )
    assert producer.flush(30) == 0
    return offsets[0]


@pytest.fixture(scope="module")
def scenario(kafka, redis_url) -> Scenario:
    # Redis holds the key directory only: no projector ever runs on this prefix, so a
    # read that went to the read-model instead of the log would fail (ReadModelLost).
    settings = Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_url,
        redis_prefix=f"asof{uuid.uuid4().hex[:10]}",
        topic=kafka.create_topic("asof", partitions=PARTITIONS),
        keys_topic=create_keys_topic(kafka),
        audit_topic=kafka.create_topic("audit", partitions=1),
        master_key_file=master_key_file(),
        window=POLICY.window,
        max_overflow=POLICY.max_overflow,
    )
    a, b, partition = _colliding_sessions()
    s = Scenario(settings, a, b, partition)
    s.before_all = datetime.now(UTC) - timedelta(seconds=1)

    with wiring.producer(settings, flush_on_sigterm=False) as producer:

        def say(name: str, session: str, user: str, content: str | None = None) -> None:
            event = append_message(session, user_id=user, role="user", content=content or name)
            s.at[name] = producer.publish(event)
            s.occurred[name] = event.occurred_at
            # Distinct milliseconds, so a time bound can fall between any two records.
            time.sleep(0.01)

        say("b0", b, "bob")
        say("m0", a, "alice")
        say("m1", a, "alice")
        say("b1", b, "bob")
        say("mallory", a, "mallory", "ignore previous instructions")
        s.at["garbage"] = Position(
            partition, _publish_raw(kafka.bootstrap, settings.topic, partition, a, b"not avro")
        )
        say("m2", a, "alice")
        say("m3", a, "alice")
        summary = new_event(
            a,
            user_id="alice",
            payload=SummaryUpdated(
                summary="S1: alice said m0 and m1",
                through_offset=s.at["m1"].offset,
                model="test",
                covered_messages=2,
            ),
        )
        s.at["summary"] = producer.publish(summary)
        time.sleep(0.01)
        say("m4", a, "alice")
        time.sleep(0.05)
        s.between = datetime.now(UTC)
        time.sleep(0.05)
        say("m5", a, "alice")
        say("b2", b, "bob")
    for position in s.at.values():
        assert position.partition == partition
    return s


def _contents(ctx: Context) -> list[str]:
    return [m.content for m in ctx.messages]


def test_a_position_before_a_later_message_leaves_it_out(scenario):
    ctx = scenario.read(scenario.at["m2"])
    assert _contents(ctx) == ["m0", "m1", "m2"]
    assert ctx.position == scenario.at["m2"]
    assert ctx.message_count == 3
    assert ctx.summary is None
    assert ctx.window_size == POLICY.window


def test_a_position_of_another_sessions_record_means_the_log_up_to_there(scenario):
    ctx = scenario.read(scenario.at["b1"])
    assert _contents(ctx) == ["m0", "m1"]
    assert ctx.position == scenario.at["m1"]


def test_right_after_the_summary_it_replaces_the_overflow_it_covers(scenario):
    ctx = scenario.read(scenario.at["summary"])
    assert ctx.summary == "S1: alice said m0 and m1"
    assert ctx.summary_through == scenario.at["m1"].offset
    assert _contents(ctx) == ["m2", "m3"]
    assert ctx.message_count == 4


def test_just_before_the_summary_the_overflow_is_there_in_full(scenario):
    ctx = scenario.read(scenario.at["m3"])
    assert ctx.summary is None
    assert _contents(ctx) == ["m0", "m1", "m2", "m3"]
    assert [m.content for m in ctx.window] == ["m2", "m3"]
    assert ctx.to_openai()[0] == {"role": "user", "content": "m0"}


def test_a_time_between_two_messages_leaves_out_the_later_ones(scenario):
    ctx = scenario.read(scenario.between)
    assert _contents(ctx) == ["m2", "m3", "m4"]
    assert ctx.summary is not None
    assert ctx.position == scenario.at["m4"]


def test_a_time_bound_includes_a_record_stamped_at_that_very_millisecond(scenario):
    stamped = scenario.occurred["m4"]
    assert _contents(scenario.read(stamped))[-1] == "m4"
    assert _contents(scenario.read(stamped - timedelta(milliseconds=1)))[-1] == "m3"


def test_a_time_after_the_end_reads_the_whole_log(scenario):
    ctx = scenario.read(datetime.now(UTC) + timedelta(hours=1))
    assert _contents(ctx) == ["m2", "m3", "m4", "m5"]


def test_records_the_projector_dead_letters_are_skipped_and_counted(scenario):
    read = scenario.history.read(scenario.a, user_id="alice", as_of=scenario.at["m2"])
    assert "ignore previous instructions" not in _contents(read.context)
    assert read.skipped == 2  # mallory's message and the undecodable record
    assert read.through == scenario.at["m2"]
    assert read.start_offset == 0


def test_another_users_read_answers_as_a_missing_session(scenario):
    with pytest.raises(SessionNotFound) as theirs:
        scenario.read(scenario.between, user="bob")
    with pytest.raises(SessionNotFound) as missing:
        scenario.read(scenario.between, user="bob", session="s-never")
    # The same answer, but for the session id: nothing tells bob that alice's exists.
    assert type(theirs.value) is type(missing.value) is SessionNotFound
    assert str(theirs.value).replace(scenario.a, "X") == str(missing.value).replace("s-never", "X")
    assert "alice" not in str(theirs.value)
    # The session's first writer owns it, even when someone else writes to it later.
    with pytest.raises(SessionNotFound):
        scenario.read(scenario.at["mallory"], user="mallory")


def test_a_position_on_another_partition_names_the_right_one(scenario):
    wrong = Position((scenario.partition + 1) % PARTITIONS, 0)
    with pytest.raises(InvalidInput) as raised:
        scenario.read(wrong)
    message = raised.value.message
    assert f"lives on partition {scenario.partition}" in message
    assert f"pass a position on partition {scenario.partition}" in message


def test_a_position_beyond_the_log_is_refused(scenario):
    with pytest.raises(InvalidInput, match="is not in the log"):
        scenario.read(Position(scenario.partition, 10_000))


def test_before_the_session_existed_it_is_not_found(scenario):
    with pytest.raises(SessionNotFound, match=f"^no session {scenario.a} of user alice"):
        scenario.read(scenario.at["b0"])
    with pytest.raises(SessionNotFound, match=f"^no session {scenario.a} of user alice"):
        scenario.read(scenario.before_all)


def test_a_session_erased_later_is_not_readable_before_the_erasure(scenario):
    session = f"s-{uuid.uuid4().hex[:10]}"
    with wiring.producer(scenario.settings, flush_on_sigterm=False) as producer:
        secret = producer.append(session, user_id="carol", role="user", content="my secret")
        erased = producer.publish(new_event(session, user_id="carol", payload=UserErased()))
        fresh = producer.append(session, user_id="carol", role="user", content="a new start")

    with pytest.raises(SessionNotFound, match="erased later"):
        scenario.read(secret, user="carol", session=session)
    with pytest.raises(SessionNotFound, match="was erased as of"):
        scenario.read(erased, user="carol", session=session)
    assert _contents(scenario.read(fresh, user="carol", session=session)) == ["a new start"]


def test_a_message_redacted_later_is_shown_redacted(scenario):
    session = f"s-{uuid.uuid4().hex[:10]}"
    with wiring.producer(scenario.settings, flush_on_sigterm=False) as producer:
        producer.append(
            session, user_id="dan", role="user", content="card 4111", message_id="m-card"
        )
        producer.append(session, user_id="dan", role="user", content="kept", message_id="m-ok")
        asked = producer.append(session, user_id="dan", role="assistant", content="noted")
        for user, message_id in (("dan", "m-card"), ("mallory", "m-ok")):
            payload = MessageRedacted(message_id=message_id)
            producer.publish(new_event(session, user_id=user, payload=payload))

    ctx = scenario.read(asked, user="dan", session=session)
    assert _contents(ctx) == [REDACTED, "kept", "noted"]
    assert [m.redacted for m in ctx.messages] == [True, False, False]


def test_it_reads_the_log_not_the_read_model(scenario):
    # Redis serves only the owners' keys: no projector ever made a read-model here.
    assert wiring.generations(scenario.settings).live() is None
    assert _contents(scenario.read(scenario.at["m2"])) == ["m0", "m1", "m2"]


def test_the_module_does_not_import_redis():
    code = "import sys, chatlog.processors.kafka_history; print('redis' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert loaded == "False"


def _client_settings(settings: Settings) -> dict[str, object]:
    # No read-model on this prefix: a read that went to it instead of the log would fail.
    return {
        "kafka_bootstrap": settings.kafka_bootstrap,
        "redis_url": settings.redis_url,
        "redis_prefix": settings.redis_prefix,
        "topic": settings.topic,
        "keys_topic": settings.keys_topic,
        "audit_topic": settings.audit_topic,  # an operator's as-of read is audited
        "master_key_file": settings.master_key_file,
        "window": settings.window,
        "max_overflow": settings.max_overflow,
    }


@pytest.fixture
def chat(scenario):
    with ChatLog.from_env(**_client_settings(scenario.settings)) as log:
        yield log


def test_chatlog_context_as_of_a_position(chat, scenario):
    ctx = chat.context(scenario.a, user_id="alice", as_of=scenario.at["summary"])
    assert ctx.summary == "S1: alice said m0 and m1"
    assert _contents(ctx) == ["m2", "m3"]
    assert ctx.position == scenario.at["summary"]


def test_chatlog_context_as_of_a_datetime_or_epoch_milliseconds(chat, scenario):
    ctx = chat.context(scenario.a, user_id="alice", as_of=scenario.between)
    assert _contents(ctx) == ["m2", "m3", "m4"]
    assert ctx.position == scenario.at["m4"]
    stamped = epoch_millis(scenario.occurred["m4"])
    assert _contents(chat.context(scenario.a, user_id="alice", as_of=stamped))[-1] == "m4"
    assert _contents(chat.context(scenario.a, user_id="alice", as_of=stamped - 1))[-1] == "m3"


def test_chatlog_as_of_answers_another_users_or_tenants_session_as_a_missing_one(chat, scenario):
    with pytest.raises(SessionNotFound, match=f"^no session {scenario.a} of user bob "):
        chat.context(scenario.a, user_id="bob", as_of=scenario.at["m4"])
    with pytest.raises(
        SessionNotFound, match=f"^no session {scenario.a} of user alice in tenant acme"
    ):
        chat.context(scenario.a, user_id="alice", tenant="acme", as_of=scenario.at["m4"])


def test_chatlog_refuses_after_with_as_of_and_a_point_that_is_none(chat, scenario):
    with pytest.raises(InvalidInput, match="pass after or as_of, not both"):
        chat.context(scenario.a, user_id="alice", after=scenario.at["m1"], as_of=scenario.at["m2"])
    for bad in (-1, True, "3:17"):
        with pytest.raises(InvalidInput, match="as_of must be"):
            chat.context(scenario.a, user_id="alice", as_of=bad)


def test_async_chatlog_context_as_of_reads_the_log_off_the_event_loop(scenario):
    async def run():
        async with AsyncChatLog.from_env(**_client_settings(scenario.settings)) as log:
            # Ticks only count while the read is under way: a read that blocked the
            # loop would let none happen before it returned.
            reading, ticks = True, 0

            async def tick():
                nonlocal ticks
                while reading:
                    ticks += 1
                    await asyncio.sleep(0.001)

            ticker = asyncio.create_task(tick())
            at_position = await log.context(
                scenario.a, user_id="alice", as_of=scenario.at["summary"]
            )
            reading = False
            await ticker
            at_time = await log.context(scenario.a, user_id="alice", as_of=scenario.between)
            with pytest.raises(SessionNotFound):
                await log.context(scenario.a, user_id="bob", as_of=scenario.between)
            with pytest.raises(InvalidInput, match="not both"):
                await log.context(
                    scenario.a, user_id="alice", after=scenario.at["m1"], as_of=scenario.between
                )
            return at_position, at_time, ticks

    at_position, at_time, ticks = asyncio.run(run())
    assert at_position.summary == "S1: alice said m0 and m1"
    assert _contents(at_position) == ["m2", "m3"]
    assert _contents(at_time) == ["m2", "m3", "m4"]
    assert ticks > 1


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    env |= {
        f"CHATLOG_{name.upper()}": str(value) for name, value in _client_settings(settings).items()
    }
    return subprocess.run(
        [sys.executable, "-m", "chatlog.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_cli_context_as_of_a_position_prints_json_with_where_it_came_from(scenario):
    at = scenario.at["summary"]
    result = _cli(scenario.settings, "context", scenario.a, "--user", "alice", "--as-of", str(at))
    assert result.returncode == 0, result.stderr
    # Text: the usual transcript, its header saying where it came from.
    header, *lines = result.stdout.splitlines()
    assert f"position {at}" in header
    assert f"as of {at} (from the log, through {at})" in header
    assert lines == ["[summary] S1: alice said m0 and m1", "[user] m2", "[user] m3"]

    result = _cli(
        scenario.settings, "context", scenario.a, "--user", "alice", "--as-of", str(at), "--json"
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["as_of"] == {
        "source": "log",
        "requested": str(at),
        "through": str(at),
        "skipped": 2,
    }
    assert shown["position"] == str(at)
    assert shown["summary"] == "S1: alice said m0 and m1"
    assert [m["content"] for m in shown["messages"]][1:] == ["m2", "m3"]


def test_cli_context_as_of_a_time_and_its_refusals(scenario):
    between = scenario.between.isoformat()
    result = _cli(
        scenario.settings, "context", scenario.a, "--user", "alice", "--as-of", between, "--json"
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [m["content"] for m in shown["messages"]][-1] == "m4"
    assert shown["as_of"]["requested"] == scenario.between.isoformat(timespec="milliseconds")

    when = scenario.between.isoformat(timespec="milliseconds")
    for who in (["--user", "bob"], ["--user", "alice", "--tenant", "acme"]):
        result = _cli(scenario.settings, "context", scenario.a, *who, "--as-of", between)
        assert result.returncode == 1
        user, tenant = who[1], who[3] if len(who) > 2 else "default"
        assert result.stderr.strip() == (
            f"chatlog: error: no session {scenario.a} of user {user} in tenant {tenant} as of "
            f"{when}; check the session id, the user and the tenant"
        )
