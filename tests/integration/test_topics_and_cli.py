"""Topic creation and the command line, against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import ConfigResource

from chatlog.producers.kafka_topics import chatlog_topics, ensure_topics
from chatlog.schemas.codec import EventCodec
from chatlog.settings import Settings
from chatlog.wiring import create_topics

pytestmark = pytest.mark.integration


def _describe(kafka, topic: str) -> dict[str, str]:
    resource = ConfigResource("topic", topic)
    config = kafka.admin().describe_configs([resource])[resource].result(30)
    return {name: entry.value for name, entry in config.items()}


@pytest.fixture
def settings(kafka, redis_url):
    suffix = uuid.uuid4().hex[:8]
    topics = [f"cli.{suffix}", f"cli.{suffix}.dlq"]
    kafka.created.extend(topics)  # the session fixture deletes them at the end
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_url,
        topic=topics[0],
        dlq_topic=topics[1],
        partitions=4,
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


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    env |= {
        "CHATLOG_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CHATLOG_REDIS_URL": settings.redis_url,
        "CHATLOG_TOPIC": settings.topic,
        "CHATLOG_DLQ_TOPIC": settings.dlq_topic,
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
    }

    published = _cli(
        settings, "publish", "s-cli", "--user", "u1", "--role", "user", "--content", "hi", "--json"
    )
    assert published.returncode == 0, published.stderr
    position = json.loads(published.stdout)["position"]
    [message] = kafka.consume_all(settings.topic)
    assert position == f"{message.partition()}:{message.offset()}"
    assert EventCodec().decode(message.value()).payload.content == "hi"

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
