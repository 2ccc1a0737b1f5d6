"""Topic creation and the command line, against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import ConfigResource, NewTopic

from chatlog.producers.kafka_topics import chatlog_topics, ensure_topics
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import ConfigError, TopicMissing
from chatlog.settings import Settings
from chatlog.wiring import check_keys_topic, create_topics, opener, topic_drift
from tests.processes import master_key_file

pytestmark = pytest.mark.integration


def _describe(kafka, topic: str) -> dict[str, str]:
    resource = ConfigResource("topic", topic)
    config = kafka.admin().describe_configs([resource])[resource].result(30)
    return {name: entry.value for name, entry in config.items()}


@pytest.fixture
def settings(kafka, redis_url):
    suffix = uuid.uuid4().hex[:8]
    topics = [f"cli.{suffix}", f"cli.{suffix}.dlq", f"cli.{suffix}.keys", f"cli.{suffix}.audit"]
    kafka.created.extend(topics)  # the session fixture deletes them at the end
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_url,
        topic=topics[0],
        dlq_topic=topics[1],
        keys_topic=topics[2],
        audit_topic=topics[3],
        redis_prefix=f"cli{suffix}",
        partitions=4,
        master_key_file=master_key_file(),
    )


def test_create_topics_configures_the_source_of_truth(kafka, settings):
    reports = {r.name: r for r in create_topics(settings)}
    assert reports[settings.topic].created
    assert reports[settings.topic].partitions == 4
    events = _describe(kafka, settings.topic)
    assert events["cleanup.policy"] == "delete"
    assert events["retention.ms"] == "-1"
    assert events["retention.bytes"] == "-1"
    assert events["min.insync.replicas"] == "1"
    dlq = _describe(kafka, settings.dlq_topic)
    assert dlq["retention.ms"] == str(7 * 24 * 3600 * 1000)
    keys = _describe(kafka, settings.keys_topic)
    assert keys["cleanup.policy"] == "compact"
    day = 24 * 3600 * 1000
    assert int(keys["max.compaction.lag.ms"]) + int(keys["segment.ms"]) < day
    audit = _describe(kafka, settings.audit_topic)  # its own retention, not the events'
    assert (audit["cleanup.policy"], audit["retention.ms"]) == ("delete", str(400 * day))
    check_keys_topic(settings)  # what every process runs at start: it passes


def test_retention_comes_from_the_settings_and_drift_is_reported_then_fixed(kafka, settings):
    create_topics(settings)
    assert topic_drift(settings) == []
    month = settings.model_copy(update={"retention": 30 * 24 * 3600.0, "dlq_retention": None})
    drift = {(d.topic, d.name): d for d in topic_drift(month)}
    assert set(drift) == {(settings.topic, "retention.ms"), (settings.dlq_topic, "retention.ms")}
    assert drift[(settings.topic, "retention.ms")].actual == "-1"
    assert drift[(settings.topic, "retention.ms")].wanted == str(30 * 24 * 3600 * 1000)
    reports = {r.name: r for r in create_topics(month)}
    assert "set retention.ms to 2592000000 (was -1)" in reports[settings.topic].note
    assert _describe(kafka, settings.dlq_topic)["retention.ms"] == "-1"
    assert topic_drift(month) == []


def test_a_keys_topic_that_would_keep_erased_keys_is_refused_with_the_fix(kafka, settings):
    kafka.admin().create_topics(
        [NewTopic(settings.keys_topic, 1, 1, config={"cleanup.policy": "delete"})]
    )[settings.keys_topic].result(30)
    kafka.wait_listed(settings.keys_topic, 1)
    with pytest.raises(ConfigError, match="would keep an erased user's key") as refused:
        check_keys_topic(settings)
    assert "cleanup.policy is delete, not compact" in str(refused.value)
    assert "chatlog topics create" in str(refused.value)
    create_topics(settings)
    check_keys_topic(settings)
    hour = settings.model_copy(update={"key_shred_within": 3600.0})
    with pytest.raises(ConfigError, match=r"max\.compaction\.lag\.ms is 43200000, above 1800000"):
        check_keys_topic(hour)


def test_a_missing_keys_topic_names_the_command_that_creates_it(settings):
    with pytest.raises(TopicMissing, match="chatlog topics create"):
        check_keys_topic(settings)


class _LaggingMetadata:
    """The real admin client, whose first full topic listing misses the topics: what a
    caller sees when another process creates them between its look and its create, or when
    the broker's metadata lags behind the controller."""

    def __init__(self, admin):
        self._admin = admin
        self._looked = False

    def list_topics(self, topic=None, timeout=-1):
        metadata = self._admin.list_topics(topic, timeout=timeout)
        if topic is None and not self._looked:
            self._looked = True
            metadata.topics = {}
        return metadata

    def create_topics(self, *args, **kwargs):
        return self._admin.create_topics(*args, **kwargs)


def test_a_topic_created_by_someone_else_is_reported_as_it_is(kafka, settings):
    create_topics(settings)
    specs = chatlog_topics(
        events_topic=settings.topic,
        dlq_topic=settings.dlq_topic,
        keys_topic=settings.keys_topic,
        partitions=8,
        replication_factor=1,
    )
    reports = {r.name: r for r in ensure_topics(_LaggingMetadata(kafka.admin()), specs)}
    assert not reports[settings.topic].created
    assert reports[settings.topic].partitions == 4
    assert "fixed for its life" in reports[settings.topic].note


def test_create_topics_is_idempotent_and_never_changes_partitions(kafka, settings):
    create_topics(settings)
    again = {r.name: r for r in create_topics(settings.model_copy(update={"partitions": 8}))}
    assert not again[settings.topic].created
    assert again[settings.topic].partitions == 4
    assert "fixed for its life" in again[settings.topic].note
    partitions = kafka.admin().list_topics(settings.topic, timeout=10).topics[settings.topic]
    assert len(partitions.partitions) == 4


def _cli(
    settings: Settings, *args: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    extra = extra or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    env |= {
        "CHATLOG_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CHATLOG_REDIS_URL": settings.redis_url,
        "CHATLOG_TOPIC": settings.topic,
        "CHATLOG_DLQ_TOPIC": settings.dlq_topic,
        "CHATLOG_KEYS_TOPIC": settings.keys_topic,
        "CHATLOG_AUDIT_TOPIC": settings.audit_topic,
        "CHATLOG_MASTER_KEY_FILE": str(settings.master_key_file),
        "CHATLOG_REDIS_PREFIX": settings.redis_prefix,
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "chatlog.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_creates_topics_and_publishes(kafka, settings):
    created = _cli(settings, "topics", "create", "--json")
    assert created.returncode == 0, created.stderr
    assert {row["name"] for row in json.loads(created.stdout)} == {
        settings.topic,
        settings.dlq_topic,
        settings.keys_topic,
        settings.audit_topic,
    }
    checked = _cli(settings, "topics", "check")
    assert checked.returncode == 0, checked.stderr
    drifted = _cli(settings, "topics", "check", extra={"CHATLOG_RETENTION": "90d"})
    assert drifted.returncode == 1
    assert f"{settings.topic}: retention.ms is -1, settings say 7776000000" in drifted.stdout

    published = _cli(
        settings, "publish", "s-cli", "--user", "u1", "--role", "user", "--content", "hi", "--json"
    )
    assert published.returncode == 0, published.stderr
    position = json.loads(published.stdout)["position"]
    [message] = kafka.consume_all(settings.topic)
    assert position == f"{message.partition()}:{message.offset()}"
    event = EventCodec().decode(message.value())
    assert event.sealed is not None  # what was written is sealed under the user's key
    [opened] = opener(settings).open_batch([event])
    assert opened.payload.content == "hi"

    human = _cli(settings, "publish", "s-cli", "--user", "u1", "--role", "user", "--content", "x")
    assert human.stdout.startswith("session_id: s-cli\nposition: ")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["publish", "a:b", "--user", "u", "--role", "user", "--content", "x"], "session_id"),
        (["publish", "s", "--user", "{u}", "--role", "user", "--content", "x"], "user_id"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(settings, args, expected):
    create = _cli(settings, "topics", "create")
    assert create.returncode == 0, create.stderr
    result = _cli(settings, *args)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("chatlog: error: ")
    assert expected in line


def test_cli_reports_a_missing_topic_with_the_fix(settings):
    result = _cli(settings, "publish", "s", "--user", "u", "--role", "user", "--content", "x")
    assert result.returncode == 1
    assert "chatlog topics create" in result.stderr


def test_cli_usage_errors_exit_2(settings):
    result = _cli(settings, "publish", "s", "--user", "u", "--role", "robot", "--content", "x")
    assert result.returncode == 2
    assert "invalid choice: 'robot'" in result.stderr
