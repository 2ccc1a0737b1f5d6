"""Create chatlog's topics with the configuration its guarantees need.

`chatlog.events` is the source of truth: infinite retention, delete policy (never
compacted: every event matters, not just the last per key), and a partition count that
is fixed for the topic's life, because changing it moves sessions to other partitions
and breaks their order. So `ensure_topics` creates what is missing and never alters what
exists; it reports a partition count that differs from the settings instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from chatlog.schemas.errors import BrokerUnavailable, ConfigError, TopicMissing

__all__ = [
    "TopicReport",
    "TopicSpec",
    "broker_count",
    "chatlog_topics",
    "ensure_topics",
    "kafka_reason",
    "topic_partitions",
]

DLQ_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """What a topic should look like."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicReport:
    """What `ensure_topics` found or did for one topic."""

    name: str
    created: bool
    partitions: int
    note: str = ""


def chatlog_topics(
    *,
    events_topic: str,
    dlq_topic: str,
    partitions: int,
    replication_factor: int,
    min_insync_replicas: int | None = None,
) -> list[TopicSpec]:
    """The topics chatlog needs, configured for its guarantees."""
    if partitions < 1:
        raise ConfigError(f"partitions must be at least 1, got {partitions}", setting="partitions")
    if replication_factor < 1:
        raise ConfigError(
            f"replication factor must be at least 1, got {replication_factor}",
            setting="replication_factor",
        )
    # One replica may be lost without refusing writes, as long as one is left in sync.
    min_isr = min_insync_replicas or max(1, min(2, replication_factor - 1))
    if min_isr > replication_factor:
        raise ConfigError(
            f"min.insync.replicas {min_isr} exceeds the replication factor "
            f"{replication_factor}: every write would be refused",
            setting="min_insync_replicas",
        )
    durable = {"min.insync.replicas": str(min_isr)}
    return [
        TopicSpec(
            events_topic,
            partitions,
            replication_factor,
            {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1", **durable},
        ),
        TopicSpec(
            dlq_topic,
            partitions,
            replication_factor,
            {"cleanup.policy": "delete", "retention.ms": str(DLQ_RETENTION_MS), **durable},
        ),
    ]


def topic_partitions(
    client: Any, topic: str, *, bootstrap_servers: str, timeout: float = 10.0
) -> int:
    """The partition count of `topic`; fails fast, naming the fix, if it or the broker is missing.

    `client` is any confluent-kafka client (producer, consumer, admin): all answer
    `list_topics`.
    """
    try:
        metadata = client.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"no Kafka broker answered at {bootstrap_servers} within {timeout:g} s "
            f"({kafka_reason(exc)}); start one (`make services`) or set CHATLOG_KAFKA_BOOTSTRAP",
            bootstrap_servers=bootstrap_servers,
        ) from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise TopicMissing(
            f"topic {topic!r} does not exist on {bootstrap_servers}; "
            f"create it with `chatlog topics create`",
            topic=topic,
        )
    return len(found.partitions)


def kafka_reason(exc: KafkaException) -> str:
    """librdkafka's own description of what went wrong."""
    error = exc.args[0] if exc.args else exc
    return error.str() if isinstance(error, KafkaError) else str(error)


def broker_count(admin: AdminClient, *, timeout: float = 10.0) -> int:
    """How many brokers the cluster has (to default the replication factor)."""
    try:
        return len(admin.list_topics(timeout=timeout).brokers)
    except KafkaException as exc:
        raise BrokerUnavailable(f"no Kafka broker answered: {exc.args[0]}") from exc


def ensure_topics(
    admin: AdminClient, specs: Iterable[TopicSpec], *, timeout: float = 30.0
) -> list[TopicReport]:
    """Create each missing topic; leave existing ones alone and report how they differ."""
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(f"no Kafka broker answered: {exc.args[0]}") from exc
    reports: list[TopicReport] = []
    missing: list[TopicSpec] = []
    for spec in specs:
        found = existing.get(spec.name)
        if found is None or found.error is not None:
            missing.append(spec)
            continue
        reports.append(_existing(spec, len(found.partitions)))
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config))
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for spec in missing:
            if _created(spec, futures[spec.name], timeout):
                reports.append(TopicReport(spec.name, created=True, partitions=spec.partitions))
            else:
                # Another process created it between our look and our create (or the
                # metadata we looked at lagged behind the controller): report the topic as
                # it is, never as the settings would have made it.
                count = _listed_partitions(admin, spec.name, timeout=timeout)
                reports.append(_existing(spec, count))
    return reports


def _existing(spec: TopicSpec, count: int) -> TopicReport:
    note = ""
    if count != spec.partitions:
        note = (
            f"has {count} partitions, settings say {spec.partitions}; a topic's partition "
            f"count is fixed for its life (migrate with a new topic and a replay)"
        )
    return TopicReport(spec.name, created=False, partitions=count, note=note)


def _created(spec: TopicSpec, future: Future[None], timeout: float) -> bool:
    """True when this call created the topic; False when it already existed."""
    try:
        future.result(timeout)
    except KafkaException as exc:
        error = exc.args[0]
        if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise ConfigError(f"could not create topic {spec.name!r}: {error}") from exc
    return True


def _listed_partitions(admin: AdminClient, topic: str, *, timeout: float) -> int:
    """The partition count of a topic the controller says exists, once metadata lists it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        except KafkaException as exc:
            raise BrokerUnavailable(f"no Kafka broker answered: {exc.args[0]}") from exc
        if found is not None and found.error is None and found.partitions:
            return len(found.partitions)
        if time.monotonic() > deadline:
            raise ConfigError(
                f"topic {topic!r} exists according to the controller but no broker lists it "
                f"after {timeout:g} s; check the cluster's health and run again",
                topic=topic,
            )
        time.sleep(0.1)
