"""Create chatlog's topics with the configuration its guarantees need, and keep it so.

* `chatlog.events` is the source of truth: delete policy (never compacted: every event
  matters, not just the last per key), retention from `CHATLOG_RETENTION` (default
  forever; a replay rebuilds only what is retained), and a partition count that is fixed
  for the topic's life, because changing it moves sessions to other partitions and
  breaks their order.
* `chatlog.events.dlq`: delete policy, retention from `CHATLOG_DLQ_RETENTION`.
* `chatlog.audit`: delete policy, retention from `CHATLOG_AUDIT_RETENTION` (default 400
  days), set apart from the events' so that the trail can outlive what it describes.
* `chatlog.keys`: compacted, with the cleaner's bounds derived from
  `CHATLOG_KEY_SHRED_WITHIN` (`keys_topic_config`), so that an erased user's wrapped key
  is physically removed from every segment within that bound.

`ensure_topics` creates what is missing and sets the configuration of what exists to
what the settings say (`config_drift` shows what it would change); it never changes a
partition count, which it reports instead. `check_keys_topic` is what every process
runs at start: it refuses a keys topic that would keep erased keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from chatlog.schemas.errors import BrokerUnavailable, ConfigError, TopicMissing

__all__ = [
    "Drift",
    "TopicReport",
    "TopicSpec",
    "broker_count",
    "chatlog_topics",
    "check_keys_topic",
    "config_drift",
    "ensure_topics",
    "kafka_reason",
    "keys_tick_interval_ms",
    "keys_topic_config",
    "topic_partitions",
]

FOREVER_MS = -1
# Kafka's default `file.delete.delay.ms`: how long a segment replaced by the cleaner
# stays on disk, renamed `.deleted`.
_FILE_DELETE_DELAY_MS = 60_000
_SETTLE_S = 10.0


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


@dataclass(frozen=True)
class Drift:
    """One topic property that differs from what the settings say."""

    topic: str
    name: str
    actual: str | None
    wanted: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.name} is {self.actual}, settings say {self.wanted}"


def keys_topic_config(shred_within_ms: int) -> dict[str, str]:
    """The keys topic's properties that bound how long an erased key stays on disk.

    A tombstoned record is removed when the log cleaner compacts the segment holding it.
    `max.compaction.lag.ms` makes it eligible within half the bound, `segment.ms` rolls
    the active segment (never cleaned) within a quarter, and a low dirty ratio lets the
    cleaner run on a small topic; the cleaner's own backoff (15 s by default) fits in
    what is left. The segment the cleaner replaced is kept, renamed ``.deleted`` and key
    included, for `file.delete.delay.ms` (a minute by default, longer than what is left
    of the least bound, 60 s): a twelfth of the bound, at most that minute. Tombstones,
    which hold no key, stay `delete.retention.ms` longer, for consumers that were behind.

    Kafka checks `segment.ms` only when a record is appended: a quiet topic needs a
    record at least that often, which projectors write (`keys_tick_interval_ms`).
    """
    return {
        "cleanup.policy": "compact",
        "max.compaction.lag.ms": str(shred_within_ms // 2),
        "segment.ms": str(shred_within_ms // 4),
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(shred_within_ms),
        "file.delete.delay.ms": str(min(_FILE_DELETE_DELAY_MS, shred_within_ms // 12)),
    }


def keys_tick_interval_ms(shred_within_ms: int) -> int:
    """How often projectors append a tick to each partition of the keys topic.

    Half of `segment.ms`: the broker rolls the active segment at the first append after
    `segment.ms` has passed, so with a tick at least every half of it the roll comes
    within one and a half `segment.ms` of a tombstone (three eighths of the bound), before
    `max.compaction.lag.ms` makes the tombstone's segment due.
    """
    return int(keys_topic_config(shred_within_ms)["segment.ms"]) // 2


def chatlog_topics(
    *,
    events_topic: str,
    dlq_topic: str,
    keys_topic: str,
    partitions: int,
    replication_factor: int,
    min_insync_replicas: int | None = None,
    retention_ms: int = FOREVER_MS,
    dlq_retention_ms: int = 7 * 24 * 3600 * 1000,
    key_shred_within_ms: int = 24 * 3600 * 1000,
    audit_topic: str | None = None,
    audit_retention_ms: int = 400 * 24 * 3600 * 1000,
) -> list[TopicSpec]:
    """The topics chatlog needs, configured for its guarantees (-1: keep forever)."""
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
    # The trail's retention is its own: it must outlive the erasures it records.
    audit = (
        []
        if audit_topic is None
        else [
            TopicSpec(
                audit_topic,
                partitions,
                replication_factor,
                {
                    "cleanup.policy": "delete",
                    "retention.ms": str(audit_retention_ms),
                    "retention.bytes": "-1",
                    **durable,
                },
            )
        ]
    )
    return [
        TopicSpec(
            events_topic,
            partitions,
            replication_factor,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(retention_ms),
                "retention.bytes": "-1",
                **durable,
            },
        ),
        TopicSpec(
            dlq_topic,
            partitions,
            replication_factor,
            {"cleanup.policy": "delete", "retention.ms": str(dlq_retention_ms), **durable},
        ),
        TopicSpec(
            keys_topic,
            partitions,
            replication_factor,
            {**keys_topic_config(key_shred_within_ms), **durable},
        ),
        *audit,
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


def config_drift(
    admin: AdminClient, specs: Iterable[TopicSpec], *, timeout: float = 30.0
) -> list[Drift]:
    """Every property of an existing topic in `specs` that differs from its spec."""
    specs = list(specs)
    found = _topic_configs(admin, [spec.name for spec in specs], timeout=timeout)
    return [
        Drift(spec.name, name, actual.get(name), wanted)
        for spec in specs
        if (actual := found[spec.name]) is not None  # missing: for `ensure_topics`
        for name, wanted in spec.config.items()
        if actual.get(name) != wanted
    ]


def check_keys_topic(
    admin: AdminClient, topic: str, *, shred_within_ms: int, timeout: float = 30.0
) -> None:
    """Refuse to run on a keys topic that would keep an erased user's key beyond the bound."""
    actual = _topic_configs(admin, [topic], timeout=timeout)[topic]
    if actual is None:
        raise TopicMissing(
            f"topic {topic!r} (each user's data keys) does not exist; create it with "
            f"`chatlog topics create`",
            topic=topic,
        )
    wanted = keys_topic_config(shred_within_ms)
    problems = []
    policy = actual.get("cleanup.policy")
    if "compact" not in (policy or "").split(","):
        problems.append(f"cleanup.policy is {policy}, not compact")
    for name in ("max.compaction.lag.ms", "segment.ms", "file.delete.delay.ms"):
        have = actual.get(name)
        if int(have or 2**63) > int(wanted[name]):
            problems.append(f"{name} is {have}, above {wanted[name]}")
    if problems:
        raise ConfigError(
            f"topic {topic!r} would keep an erased user's key on disk beyond "
            f"CHATLOG_KEY_SHRED_WITHIN ({'; '.join(problems)}); run `chatlog topics create` "
            f"to set its configuration from the settings",
            topic=topic,
            setting="CHATLOG_KEY_SHRED_WITHIN",
        )


def _topic_configs(
    admin: AdminClient, topics: list[str], *, timeout: float
) -> dict[str, dict[str, str | None] | None]:
    """Each topic's properties, by name; None for a topic that does not exist."""
    if not topics:
        return {}
    resources = {topic: ConfigResource(ResourceType.TOPIC, topic) for topic in topics}
    try:
        futures = admin.describe_configs(list(resources.values()), request_timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnavailable(f"no Kafka broker answered: {kafka_reason(exc)}") from exc
    configs: dict[str, dict[str, str | None] | None] = {}
    for topic, resource in resources.items():
        try:
            entries = futures[resource].result(timeout)
        except TimeoutError as exc:
            # The future's own timeout: with no broker up, the admin client never answers.
            raise BrokerUnavailable(
                f"no Kafka broker answered within {timeout:g} s (describing topic {topic!r})",
                topic=topic,
            ) from exc
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise BrokerUnavailable(f"no Kafka broker answered: {kafka_reason(exc)}") from exc
            configs[topic] = None
            continue
        configs[topic] = {name: entry.value for name, entry in entries.items()}
    return configs


def ensure_topics(
    admin: AdminClient, specs: Iterable[TopicSpec], *, timeout: float = 30.0
) -> list[TopicReport]:
    """Create each missing topic; set each existing one's configuration to its spec, and
    report a partition count that differs (it is never changed)."""
    specs = list(specs)
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
    existing_specs = [spec for spec in specs if spec not in missing]
    changed = _align(admin, config_drift(admin, existing_specs, timeout=timeout), timeout)
    created = {report.name for report in reports if report.created}
    _await_configs(admin, [s for s in specs if s.name in created or s.name in changed], timeout)
    return [_with_changes(report, changed.get(report.name, [])) for report in reports]


def _await_configs(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    """Return once the brokers list `specs`' topics with a leader for every partition and
    describe them as configured (at most `_SETTLE_S`): the controller acknowledges a new
    topic or configuration a moment before the brokers serve it, and a process started
    right after `chatlog topics create` reads its partitions and checks the keys topic's
    configuration at once."""
    deadline = time.monotonic() + min(timeout, _SETTLE_S)
    while specs and not (
        all(_led(admin, spec.name, timeout) for spec in specs)
        and not config_drift(admin, specs, timeout=timeout)
        and None not in _topic_configs(admin, [s.name for s in specs], timeout=timeout).values()
    ):
        if time.monotonic() >= deadline:
            return  # the report says what was set; `chatlog topics check` shows the rest
        time.sleep(0.1)


def _led(admin: AdminClient, topic: str, timeout: float) -> bool:
    """True when metadata lists `topic` with a leader for each of its partitions."""
    try:
        found = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        raise BrokerUnavailable(f"no Kafka broker answered: {exc.args[0]}") from exc
    return (
        found is not None
        and found.error is None
        and bool(found.partitions)
        and all(p.leader >= 0 for p in found.partitions.values())
    )


def _align(admin: AdminClient, drift: list[Drift], timeout: float) -> dict[str, list[Drift]]:
    """Set every drifted property to what the settings say; the changes by topic."""
    by_topic: dict[str, list[Drift]] = {}
    for item in drift:
        by_topic.setdefault(item.topic, []).append(item)
    if not by_topic:
        return {}
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(d.name, d.wanted, incremental_operation=AlterConfigOpType.SET)
                for d in items
            ],
        )
        for topic, items in by_topic.items()
    ]
    futures = admin.incremental_alter_configs(resources, request_timeout=timeout)
    for resource, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            raise ConfigError(
                f"could not set the configuration of topic {resource.name!r}: {kafka_reason(exc)}",
                topic=resource.name,
            ) from exc
    return by_topic


def _with_changes(report: TopicReport, changes: list[Drift]) -> TopicReport:
    if not changes:
        return report
    done = "; ".join(f"set {d.name} to {d.wanted} (was {d.actual})" for d in changes)
    note = f"{report.note}; {done}" if report.note else done
    return TopicReport(report.name, report.created, report.partitions, note)


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
